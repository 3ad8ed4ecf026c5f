//! Credentials at rest: XChaCha20-Poly1305 with a key from the environment and
//! the owning row's ids as associated data, so a ciphertext copied onto another
//! connection's row does not decrypt.
//!
//! Keys live in a [`KeyRing`]: the current key seals, previous keys still
//! open, so `crmsync secrets rotate` can move every credential to a new key
//! while every process keeps decrypting.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why a key or ciphertext was refused. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The configured key is not 32 bytes of standard base64.
    #[error("the encryption key must be 32 random bytes in standard base64 ({0})")]
    BadKey(String),
    /// Wrong key, tampered bytes, or a row the ciphertext was not made for.
    #[error("credentials do not decrypt with this key for this row")]
    Undecryptable,
    /// The OS random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

/// The AEAD key, and the root other keys are derived from (never the key
/// itself: a MAC key must not double as the cipher key); `Debug` shows
/// neither.
#[derive(Clone)]
pub struct EncryptionKey(XChaCha20Poly1305, [u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(***)")
    }
}

impl EncryptionKey {
    /// Parses the configured base64 key.
    pub fn parse(encoded: &SecretString) -> Result<Self, SecretsError> {
        let bytes = STANDARD
            .decode(encoded.expose_secret().trim())
            .map_err(|e| SecretsError::BadKey(e.to_string()))?;
        if bytes.len() != 32 {
            return Err(SecretsError::BadKey(format!("got {} bytes", bytes.len())));
        }
        let root = hmac_sha256(&bytes, b"crmsync:derived-keys:v1");
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(|cipher| Self(cipher, root))
            .map_err(|e| SecretsError::BadKey(e.to_string()))
    }

    /// A 32-byte key for one `purpose` (such as signing OAuth states),
    /// derived from this key: the same configuration serves every use, and
    /// no derived key reveals the encryption key or another purpose's key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        hmac_sha256(&self.1, purpose.as_bytes())
    }

    /// A fresh random key in its configured (base64) form.
    pub fn generate() -> Result<SecretString, SecretsError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretsError::Random(e.to_string()))?;
        Ok(SecretString::from(STANDARD.encode(bytes)))
    }

    /// Encrypts `plaintext` for the row identified by `row_binding`.
    pub fn seal(&self, plaintext: &[u8], row_binding: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretsError::Random(e.to_string()))?;
        let sealed = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: row_binding,
                },
            )
            .map_err(|_| SecretsError::Undecryptable)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts what [`Self::seal`] produced for the same row.
    pub fn open(&self, sealed: &[u8], row_binding: &[u8]) -> Result<Vec<u8>, SecretsError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT_V1 {
            return Err(SecretsError::Undecryptable);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: row_binding,
                },
            )
            .map_err(|_| SecretsError::Undecryptable)
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().into()
        }
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// The current key, which seals, and the previous ones, which only open.
#[derive(Clone, Debug)]
pub struct KeyRing {
    current: EncryptionKey,
    previous: Vec<EncryptionKey>,
}

impl KeyRing {
    /// A ring of one key.
    pub fn single(current: EncryptionKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// Parses the current key and the previous ones (base64 keys separated
    /// by commas or whitespace).
    pub fn parse(
        current: &SecretString,
        previous: Option<&SecretString>,
    ) -> Result<Self, SecretsError> {
        let current = EncryptionKey::parse(current)?;
        let previous = previous
            .map(|list| {
                list.expose_secret()
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|k| !k.is_empty())
                    .map(|k| EncryptionKey::parse(&SecretString::from(k.to_string())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Self { current, previous })
    }

    /// Seals with the current key.
    pub fn seal(&self, plaintext: &[u8], row_binding: &[u8]) -> Result<Vec<u8>, SecretsError> {
        self.current.seal(plaintext, row_binding)
    }

    /// Opens with whichever key of the ring sealed it.
    pub fn open(&self, sealed: &[u8], row_binding: &[u8]) -> Result<Vec<u8>, SecretsError> {
        self.open_telling(sealed, row_binding)
            .map(|(plain, _)| plain)
    }

    /// The `purpose` key of each key of the ring, the current key's first:
    /// what the current key signs, and what any of them verifies while a
    /// rotation is under way.
    pub fn derived_keys(&self, purpose: &str) -> Vec<[u8; 32]> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| key.derive(purpose))
            .collect()
    }

    /// Opens and tells whether the current key sealed it (`false`: a
    /// previous one did, so it wants re-sealing).
    pub fn open_telling(
        &self,
        sealed: &[u8],
        row_binding: &[u8],
    ) -> Result<(Vec<u8>, bool), SecretsError> {
        if let Ok(plain) = self.current.open(sealed, row_binding) {
            return Ok((plain, true));
        }
        self.previous
            .iter()
            .find_map(|key| key.open(sealed, row_binding).ok())
            .map(|plain| (plain, false))
            .ok_or(SecretsError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> EncryptionKey {
        let encoded = EncryptionKey::generate().ok();
        encoded
            .and_then(|k| EncryptionKey::parse(&k).ok())
            .unwrap_or_else(|| unreachable!())
    }

    proptest! {
        #[test]
        fn sealed_credentials_open_only_for_their_row(msg in proptest::collection::vec(any::<u8>(), 0..200), flip in 0usize..400) {
            let key = key();
            let sealed = key.seal(&msg, b"row-a").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(key.open(&sealed, b"row-a").ok(), Some(msg.clone()));
            prop_assert!(key.open(&sealed, b"row-b").is_err());
            let mut tampered = sealed.clone();
            let i = flip % tampered.len();
            tampered[i] ^= 0x01;
            prop_assert!(key.open(&tampered, b"row-a").is_err());
        }
    }

    #[test]
    fn a_ring_opens_what_its_previous_keys_sealed_and_seals_with_the_current_one() {
        let (old, new) = (
            EncryptionKey::generate().unwrap_or_else(|_| unreachable!()),
            EncryptionKey::generate().unwrap_or_else(|_| unreachable!()),
        );
        let before = KeyRing::parse(&old, None).unwrap_or_else(|_| unreachable!());
        let sealed_before = before
            .seal(b"token", b"row")
            .unwrap_or_else(|_| unreachable!());
        let after = KeyRing::parse(&new, Some(&old)).unwrap_or_else(|_| unreachable!());
        let (plain, current) = after
            .open_telling(&sealed_before, b"row")
            .unwrap_or_else(|_| unreachable!());
        assert_eq!((plain.as_slice(), current), (&b"token"[..], false));
        let resealed = after
            .seal(b"token", b"row")
            .unwrap_or_else(|_| unreachable!());
        assert!(matches!(
            after.open_telling(&resealed, b"row"),
            Ok((_, true))
        ));
        // Without the old key in the ring, the old ciphertext is lost...
        let new_only = KeyRing::parse(&new, None).unwrap_or_else(|_| unreachable!());
        assert!(new_only.open(&sealed_before, b"row").is_err());
        // ...and the old key alone cannot read what the new one sealed.
        assert!(before.open(&resealed, b"row").is_err());
        // A list with a bad key names no key material.
        let bad = KeyRing::parse(&new, Some(&SecretString::from("not-a-key")));
        assert!(bad.is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_by_key_and_the_current_comes_first() {
        let (old, new) = (
            EncryptionKey::generate().unwrap_or_else(|_| unreachable!()),
            EncryptionKey::generate().unwrap_or_else(|_| unreachable!()),
        );
        let ring = KeyRing::parse(&new, Some(&old)).unwrap_or_else(|_| unreachable!());
        let states = ring.derived_keys("oauth-state");
        assert_eq!(states.len(), 2);
        assert_ne!(states[0], states[1]);
        assert_ne!(states[0], ring.derived_keys("other")[0]);
        let again = KeyRing::parse(&new, None).unwrap_or_else(|_| unreachable!());
        assert_eq!(again.derived_keys("oauth-state"), vec![states[0]]);
    }

    #[test]
    fn short_or_long_keys_are_refused() {
        assert!(EncryptionKey::parse(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(EncryptionKey::parse(&SecretString::from("not base64!")).is_err());
        assert!(format!("{:?}", key()).contains("***"));
    }
}
