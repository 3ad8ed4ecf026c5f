//! HubSpot's webhook signatures as the sender computes them (facts sheet
//! §1.5): v1 `hex(SHA-256(secret + body))`, v2 `hex(SHA-256(secret + method +
//! uri + body))`, v3 `base64(HMAC-SHA256(secret, method + uri + body +
//! timestamp))`. The sandbox signs; crmsync's ingress verifies with its own
//! code, so a mistake in one shows up against the other.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `X-HubSpot-Signature` with `X-HubSpot-Signature-Version: v1`.
pub fn v1(client_secret: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(client_secret.as_bytes());
    hasher.update(body);
    hex(&hasher.finalize())
}

/// `X-HubSpot-Signature` with `X-HubSpot-Signature-Version: v2`.
pub fn v2(client_secret: &str, method: &str, uri: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(client_secret.as_bytes());
    hasher.update(method.as_bytes());
    hasher.update(uri.as_bytes());
    hasher.update(body);
    hex(&hasher.finalize())
}

/// `X-HubSpot-Signature-v3`; `uri` is the URL as called and `timestamp_ms` the
/// `X-HubSpot-Request-Timestamp` header value sent with it.
pub fn v3(client_secret: &str, method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(client_secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp_ms.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const SDK_BODY: &str = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    const URI: &str = "https://www.example.com/webhook_uri";

    #[test]
    fn official_v1_vectors() {
        assert_eq!(
            v1(SECRET, SDK_BODY.as_bytes()),
            "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
        );
        assert_eq!(
            v1(SECRET, b"{'example_field':'example_value'}"),
            "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
        );
    }

    #[test]
    fn official_v2_vectors() {
        assert_eq!(
            v2(SECRET, "GET", URI, b""),
            "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
        );
        assert_eq!(
            v2(SECRET, "POST", URI, br#"{"example_field":"example_value"}"#),
            "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
        );
        assert_eq!(
            v2(SECRET, "POST", URI, b"{'example_field':'example_value'}"),
            "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
        );
    }

    #[test]
    fn official_v3_vectors() {
        let body = b"{'example_field':'example_value'}";
        assert_eq!(
            v3(SECRET, "POST", URI, body, 1693657560000),
            "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
        );
        assert_eq!(
            v3(SECRET, "POST", URI, body, 1700000300000),
            "RnbPH7+UMKVkbV32P8bz450N4M56aPmcru1+D3kSDtw="
        );
    }

    /// The facts sheet's v3 example event (a first name with a non-ASCII letter).
    const FACTS_SHEET_EVENTS: &str = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":123,"propertyName":"firstname","propertyValue":"Zoë","changeSource":"INTEGRATION","sourceId":"54321","appId":54321}]"#;

    #[test]
    fn facts_sheet_v3_vector_with_decoded_uri() {
        let signed_over = "https://example.com/hubspot/webhook?src=hs:app/v3&x=(a)&sp=a%20b";
        let signature = v3(
            SECRET,
            "POST",
            signed_over,
            FACTS_SHEET_EVENTS.as_bytes(),
            1_700_000_000_000,
        );
        assert_eq!(signature, "otu9uGV5hSG3Ddxy0lTPyx7GNS9QIAtyfGRID+kaixM=");
    }

    proptest::proptest! {
        #[test]
        fn any_changed_body_byte_changes_the_v3_signature(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200), index in 0usize..200, flip in 1u8..=255) {
            let index = index % body.len();
            let mut other = body.clone();
            other[index] ^= flip;
            proptest::prop_assert_ne!(v3(SECRET, "POST", URI, &body, 1), v3(SECRET, "POST", URI, &other, 1));
        }
    }
}
