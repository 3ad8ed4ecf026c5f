//! The OAuth `state`: who asked (tenant), for which CRM, until when, and a
//! nonce naming its single-use record in the store — signed with a key
//! derived from the encryption key, so a forged or altered state is refused
//! before any lookup. The state travels through the user's browser and the
//! CRM, so it carries nothing secret; the PKCE verifier is derived from the
//! nonce with another derived key and never leaves crmsync.

use crate::domain::{ProviderKind, TenantId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// How long a state is accepted after it was issued.
pub const STATE_TTL: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// What the key ring derives the state-signing keys for.
pub const STATE_KEY_PURPOSE: &str = "crmsync:oauth-state:v1";
/// What the key ring derives the PKCE-verifier keys for.
pub const PKCE_KEY_PURPOSE: &str = "crmsync:oauth-pkce:v1";

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// version, nonce, tenant, expiry; then the provider's name.
const FIXED_LEN: usize = 1 + 16 + 16 + 8;

/// What a state says, once its signature checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Names the state's single-use record in the store.
    pub nonce: uuid::Uuid,
    /// The tenant that asked for the authorize URL.
    pub tenant: TenantId,
    /// The CRM the URL was for.
    pub provider: ProviderKind,
    /// When the state stops being accepted (whole seconds).
    pub expires_at: DateTime<Utc>,
}

/// Why a state was refused (the caller answers `invalid_state` for all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not base64, too short, an unknown version or provider.
    #[error("the state is malformed")]
    Malformed,
    /// No key of the ring signed it: forged or altered.
    #[error("the state's signature does not check")]
    BadSignature,
}

fn mac(key: &[u8; 32]) -> hmac::Hmac<Sha256> {
    match <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

impl Claims {
    /// Claims for a new state issued at `now`.
    pub fn new(tenant: TenantId, provider: ProviderKind, now: DateTime<Utc>) -> Self {
        let expires_at = DateTime::from_timestamp((now + STATE_TTL).timestamp(), 0)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Self {
            nonce: uuid::Uuid::new_v4(),
            tenant,
            provider,
            expires_at,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + 16);
        out.push(VERSION);
        out.extend_from_slice(self.nonce.as_bytes());
        out.extend_from_slice(self.tenant.0.as_bytes());
        out.extend_from_slice(&self.expires_at.timestamp().to_be_bytes());
        out.extend_from_slice(self.provider.as_str().as_bytes());
        out
    }

    /// The state string: the claims and their MAC under `key`, URL-safe.
    pub fn sign(&self, key: &[u8; 32]) -> String {
        let mut bytes = self.payload();
        let mut m = mac(key);
        m.update(&bytes);
        bytes.extend_from_slice(&m.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks a state's MAC against each of `keys` (a key ring's, current
    /// first), then reads its claims; also says which key signed it.
    /// Expiry is the caller's to check.
    pub fn verify(state: &str, keys: &[[u8; 32]]) -> Result<(Self, usize), StateError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(state.as_bytes())
            .map_err(|_| StateError::Malformed)?;
        if bytes.len() <= FIXED_LEN + MAC_LEN {
            return Err(StateError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let signer = keys
            .iter()
            .position(|key| {
                let mut m = mac(key);
                m.update(payload);
                m.verify_slice(tag).is_ok()
            })
            .ok_or(StateError::BadSignature)?;
        Self::parse(payload)
            .map(|claims| (claims, signer))
            .ok_or(StateError::Malformed)
    }

    fn parse(payload: &[u8]) -> Option<Self> {
        let (fixed, provider) = payload.split_at_checked(FIXED_LEN)?;
        if fixed[0] != VERSION {
            return None;
        }
        let nonce = uuid::Uuid::from_slice(&fixed[1..17]).ok()?;
        let tenant = TenantId(uuid::Uuid::from_slice(&fixed[17..33]).ok()?);
        let secs = i64::from_be_bytes(fixed[33..41].try_into().ok()?);
        Some(Self {
            nonce,
            tenant,
            provider: std::str::from_utf8(provider).ok()?.parse().ok()?,
            expires_at: DateTime::from_timestamp(secs, 0)?,
        })
    }
}

/// The PKCE pair (RFC 7636, `S256`) of one state: the verifier is derived
/// from the nonce with a derived key, so nothing secret is stored and only
/// crmsync can produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkce {
    /// `code_verifier`: 43 characters of base64url, sent at the exchange.
    pub verifier: String,
    /// `code_challenge`: base64url(SHA-256(verifier)), sent to authorize.
    pub challenge: String,
}

impl Pkce {
    /// The pair for `nonce` under `key`.
    pub fn for_nonce(nonce: uuid::Uuid, key: &[u8; 32]) -> Self {
        let mut m = mac(key);
        m.update(nonce.as_bytes());
        let verifier = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        Self {
            challenge: challenge(&verifier),
            verifier,
        }
    }
}

/// The `S256` code challenge of a verifier.
fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims::new(TenantId(uuid::Uuid::new_v4()), ProviderKind::ALL[0], now)
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn a_signed_state_reads_back_and_lives_ten_minutes() {
        let issued = t(1_800_000_000);
        let c = claims(issued);
        let state = c.sign(&[7; 32]);
        assert_eq!(Claims::verify(&state, &[[7; 32]]), Ok((c.clone(), 0)));
        assert!(state.len() < 120, "short enough for a URL: {state}");
        assert_eq!(c.expires_at - issued, chrono::TimeDelta::minutes(10));
    }

    #[test]
    fn another_key_is_refused_and_a_previous_key_of_the_ring_accepted() {
        let c = claims(t(1_800_000_000));
        let state = c.sign(&[1; 32]);
        assert_eq!(
            Claims::verify(&state, &[[2; 32]]),
            Err(StateError::BadSignature)
        );
        assert_eq!(Claims::verify(&state, &[[2; 32], [1; 32]]), Ok((c, 1)));
        assert_eq!(Claims::verify("", &[[1; 32]]), Err(StateError::Malformed));
        assert_eq!(
            Claims::verify("not base64!", &[[1; 32]]),
            Err(StateError::Malformed)
        );
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let nonce = uuid::Uuid::new_v4();
        let pair = Pkce::for_nonce(nonce, &[3; 32]);
        assert_eq!(pair.verifier.len(), 43);
        assert_eq!(pair, Pkce::for_nonce(nonce, &[3; 32]));
        assert_ne!(pair, Pkce::for_nonce(nonce, &[4; 32]));
        assert_ne!(pair, Pkce::for_nonce(uuid::Uuid::new_v4(), &[3; 32]));
    }

    proptest! {
        /// Any change to any character of a state — including one that
        /// rewrites its tenant or provider — is refused.
        #[test]
        fn tampering_with_any_character_is_refused(
            key in any::<[u8; 32]>(),
            at in any::<proptest::sample::Index>(),
            replacement in proptest::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ "
                    .chars().collect::<Vec<_>>()),
        ) {
            let c = claims(t(1_800_000_000));
            let state = c.sign(&key);
            let mut chars: Vec<char> = state.chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != replacement);
            chars[i] = replacement;
            let tampered: String = chars.into_iter().collect();
            prop_assert!(Claims::verify(&tampered, &[key]).is_err());
        }

        /// Any change to any byte of the decoded state is refused too.
        #[test]
        fn flipping_any_bit_of_the_bytes_is_refused(
            key in any::<[u8; 32]>(),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let state = claims(t(1_800_000_000)).sign(&key);
            let mut bytes = URL_SAFE_NO_PAD.decode(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(Claims::verify(&URL_SAFE_NO_PAD.encode(bytes), &[key]).is_err());
        }

        /// Truncated or extended states are refused.
        #[test]
        fn cut_or_padded_states_are_refused(key in any::<[u8; 32]>(), keep in 0usize..200, extra in "[A-Za-z0-9_-]{1,8}") {
            let state = claims(t(1_800_000_000)).sign(&key);
            let cut: String = state.chars().take(keep.min(state.len() - 1)).collect();
            prop_assert!(Claims::verify(&cut, &[key]).is_err());
            let padded = format!("{state}{extra}");
            prop_assert!(Claims::verify(&padded, &[key]).is_err());
        }
    }
}
