//! HubSpot webhook verification and parsing, pure and synchronous (the clock
//! is passed in): unverified bytes cannot become events, because the only way
//! to get a [`Verified`] batch is through [`verify_batch`].
//!
//! Signatures (CRM_API_FACTS §1.5):
//! - v3: Base64 of HMAC-SHA256 over method, URI (HubSpot's listed
//!   percent-encodings decoded), body and timestamp, within 5 minutes either
//!   way;
//! - v1: hex SHA-256 of secret and body; v2: hex SHA-256 of secret, method,
//!   URI and body — accepted only where the operator allows them.
//!
//! Every comparison is constant-time.

use crate::domain::{CrmId, CrmObject};
use crate::sync::events::{Change, Event};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The signature headers of one request, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `X-HubSpot-Signature-v3`.
    pub v3: Option<String>,
    /// `X-HubSpot-Request-Timestamp` (epoch milliseconds).
    pub timestamp: Option<String>,
    /// `X-HubSpot-Signature` (v1 or v2).
    pub legacy: Option<String>,
    /// `X-HubSpot-Signature-Version` (`v1` or `v2`).
    pub legacy_version: Option<String>,
}

/// How a request proved it came from HubSpot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// HMAC with a timestamp (preferred).
    V3,
    /// Hash of secret and body (no replay protection of its own).
    V1,
    /// Hash of secret, method, URI and body (no replay protection of its own).
    V2,
}

/// Why a webhook was refused; says nothing about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// No signature this deployment accepts.
    #[error("missing signature")]
    MissingSignature,
    /// The v3 timestamp is absent or not a number.
    #[error("missing or malformed X-HubSpot-Request-Timestamp")]
    BadTimestamp,
    /// The v3 timestamp is outside the 5-minute window (a replay, or a clock
    /// far off).
    #[error("request timestamp outside the accepted window ({skew_ms} ms off)")]
    Stale {
        /// How far the timestamp is from now.
        skew_ms: i64,
    },
    /// The signature does not match.
    #[error("signature mismatch")]
    Mismatch,
    /// The body is not a JSON array of events.
    #[error("malformed webhook body: {0}")]
    Malformed(String),
}

/// The replay window HubSpot's SDKs use, applied both ways.
pub const MAX_SKEW_MS: i64 = 300_000;

/// Decodes the percent-encodings HubSpot's v3 rule lists, and only those.
pub fn decode_uri(uri: &str) -> String {
    const DECODED: &[(&str, char)] = &[
        ("%3A", ':'),
        ("%2F", '/'),
        ("%3F", '?'),
        ("%40", '@'),
        ("%21", '!'),
        ("%24", '$'),
        ("%27", '\''),
        ("%28", '('),
        ("%29", ')'),
        ("%2A", '*'),
        ("%2C", ','),
        ("%3B", ';'),
    ];
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let candidate = rest.get(i..i + 3).unwrap_or("");
        match DECODED
            .iter()
            .find(|(code, _)| code.eq_ignore_ascii_case(candidate))
        {
            Some((_, c)) => {
                out.push(*c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The v3 signature of a request (what HubSpot sends), for tests and tools.
pub fn sign_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    STANDARD.encode(
        v3_mac(secret, method, uri, body, timestamp)
            .finalize()
            .into_bytes(),
    )
}

fn v3_mac(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: &str,
) -> hmac::Hmac<Sha256> {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(method.as_bytes());
    mac.update(decode_uri(uri).as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

/// `hex(SHA-256(secret + body))`.
pub fn sign_v1(secret: &[u8], body: &[u8]) -> String {
    hex(&Sha256::new()
        .chain_update(secret)
        .chain_update(body)
        .finalize())
}

/// `hex(SHA-256(secret + method + uri + body))`.
pub fn sign_v2(secret: &[u8], method: &str, uri: &str, body: &[u8]) -> String {
    hex(&Sha256::new()
        .chain_update(secret)
        .chain_update(method.as_bytes())
        .chain_update(uri.as_bytes())
        .chain_update(body)
        .finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a request's signature against `secret` at `now_ms`. v3 is always
/// accepted; v1/v2 only when `allow_legacy` (they carry no timestamp, so
/// replays of them are caught only by event dedupe).
pub fn verify_signature(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    headers: &SignatureHeaders,
    now_ms: i64,
    allow_legacy: bool,
) -> Result<SignatureVersion, WebhookError> {
    if let Some(signature) = &headers.v3 {
        let timestamp = headers
            .timestamp
            .as_deref()
            .ok_or(WebhookError::BadTimestamp)?;
        let sent_ms: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| WebhookError::BadTimestamp)?;
        let skew_ms = now_ms.saturating_sub(sent_ms);
        if skew_ms.abs() > MAX_SKEW_MS {
            return Err(WebhookError::Stale { skew_ms });
        }
        let given = STANDARD
            .decode(signature.trim())
            .map_err(|_| WebhookError::Mismatch)?;
        return v3_mac(secret, method, uri, body, timestamp)
            .verify_slice(&given)
            .map(|()| SignatureVersion::V3)
            .map_err(|_| WebhookError::Mismatch);
    }
    match (&headers.legacy, allow_legacy) {
        (Some(signature), true) => {
            let (version, expected) = match headers.legacy_version.as_deref().map(str::trim) {
                Some("v2") => (SignatureVersion::V2, sign_v2(secret, method, uri, body)),
                _ => (SignatureVersion::V1, sign_v1(secret, body)),
            };
            if constant_time_eq(
                signature.trim().to_ascii_lowercase().as_bytes(),
                expected.as_bytes(),
            ) {
                Ok(version)
            } else {
                Err(WebhookError::Mismatch)
            }
        }
        _ => Err(WebhookError::MissingSignature),
    }
}

/// One webhook event (HubSpot Webhooks v3 payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// Not unique on its own.
    pub event_id: u64,
    /// The subscription that fired.
    pub subscription_id: u64,
    /// The customer's account: routes the event to a connection.
    pub portal_id: u64,
    /// The app the subscription belongs to.
    #[serde(default)]
    pub app_id: Option<u64>,
    /// When it happened, epoch milliseconds.
    pub occurred_at: i64,
    /// `contact.propertyChange`, `object.creation`, … (`eventType` in the doc).
    #[serde(alias = "eventType")]
    pub subscription_type: String,
    /// Delivery attempt, from 0.
    #[serde(default)]
    pub attempt_number: u32,
    /// The record.
    pub object_id: u64,
    /// For generic `object.*` events (`0-1` contacts).
    #[serde(default)]
    pub object_type_id: Option<String>,
    /// propertyChange: the property.
    #[serde(default)]
    pub property_name: Option<String>,
    /// propertyChange: its new value (`REDACTED` for sensitive ones).
    #[serde(default)]
    pub property_value: Option<String>,
    /// Who changed it: `CRM_UI`, `INTEGRATION`, `IMPORT`, …
    #[serde(default)]
    pub change_source: Option<String>,
    /// For integrations, the writing app's id.
    #[serde(default)]
    pub source_id: Option<String>,
    /// Merge: the surviving record.
    #[serde(default)]
    pub primary_object_id: Option<u64>,
    /// Merge: the records merged away.
    #[serde(default)]
    pub merged_object_ids: Vec<u64>,
    /// Merge: the resulting record (may differ from the primary).
    #[serde(default)]
    pub new_object_id: Option<u64>,
}

impl WebhookEvent {
    /// The dedupe key: HubSpot's `eventId` alone is not unique, so the key
    /// combines every field that identifies one delivery of one change.
    pub fn dedupe_key(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}",
            self.portal_id,
            self.subscription_id,
            self.event_id,
            self.object_id,
            self.occurred_at,
            self.property_name.as_deref().unwrap_or("")
        )
    }
}

/// A batch that passed signature verification; only [`verify_batch`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The verified value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Verifies a delivery and parses its events.
pub fn verify_batch(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    headers: &SignatureHeaders,
    now_ms: i64,
    allow_legacy: bool,
) -> Result<(SignatureVersion, Verified<Vec<WebhookEvent>>), WebhookError> {
    let version = verify_signature(secret, method, uri, body, headers, now_ms, allow_legacy)?;
    let events: Vec<WebhookEvent> =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    Ok((version, Verified(events)))
}

impl WebhookEvent {
    /// Whether the event reports a write made by app `own_app`.
    pub fn made_by(&self, own_app: Option<u64>) -> bool {
        match (
            own_app,
            self.change_source.as_deref(),
            self.source_id.as_deref(),
        ) {
            (Some(app), Some("INTEGRATION"), Some(source)) => source == app.to_string(),
            _ => false,
        }
    }

    /// Which CRM object the event is about (`None`: one crmsync does not
    /// sync).
    pub fn object(&self) -> Option<CrmObject> {
        match self.subscription_type.split('.').next() {
            Some("contact") => Some(CrmObject::Contacts),
            Some("object") => match self.object_type_id.as_deref() {
                Some("0-1") => Some(CrmObject::Contacts),
                Some("0-136") => Some(CrmObject::Leads),
                _ => None,
            },
            _ => None,
        }
    }

    /// The event in the shape every CRM's events share; `None` for an
    /// object crmsync does not sync. Our own app's creations, edits and
    /// restores are marked `by_us` (`changeSource = INTEGRATION`,
    /// `sourceId` = `own_app`); a merge's survivor is its new record, or
    /// its primary.
    pub fn to_event(&self, own_app: Option<u64>) -> Option<Event> {
        let id = |n: u64| CrmId(n.to_string());
        let change = match self.subscription_type.rsplit('.').next().unwrap_or("") {
            "creation" | "propertyChange" | "restore" => Change::Changed,
            "deletion" => Change::Deleted,
            "privacyDeletion" => Change::Erased,
            "merge" => Change::Merged {
                absorbed: self.merged_object_ids.iter().copied().map(id).collect(),
            },
            // associationChange and unknown kinds change no mapped field.
            _ => Change::Other,
        };
        let record = match change {
            Change::Merged { .. } => self
                .new_object_id
                .or(self.primary_object_id)
                .unwrap_or(self.object_id),
            _ => self.object_id,
        };
        Some(Event {
            object: self.object()?,
            crm_id: id(record),
            by_us: matches!(change, Change::Changed) && self.made_by(own_app),
            change,
            occurred_at_ms: self.occurred_at,
            dedupe_key: self.dedupe_key(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::events::Coalesced;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const SDK_BODY: &str = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    const QUOTED: &str = "{'example_field':'example_value'}";
    const URI: &str = "https://www.example.com/webhook_uri";

    fn v3(signature: &str, timestamp: &str) -> SignatureHeaders {
        SignatureHeaders {
            v3: Some(signature.into()),
            timestamp: Some(timestamp.into()),
            ..Default::default()
        }
    }

    fn legacy(signature: &str, version: &str) -> SignatureHeaders {
        SignatureHeaders {
            legacy: Some(signature.into()),
            legacy_version: Some(version.into()),
            ..Default::default()
        }
    }

    #[test]
    fn official_v1_and_v2_vectors_verify() {
        let cases: [(&str, &str, &str, &str, &str); 5] = [
            (
                "v1",
                "POST",
                URI,
                SDK_BODY,
                "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
            ),
            (
                "v2",
                "GET",
                URI,
                "",
                "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e",
            ),
            (
                "v2",
                "POST",
                URI,
                r#"{"example_field":"example_value"}"#,
                "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900",
            ),
            (
                "v1",
                "POST",
                URI,
                QUOTED,
                "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750",
            ),
            (
                "v2",
                "POST",
                URI,
                QUOTED,
                "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383",
            ),
        ];
        for (version, method, uri, body, expected) in cases {
            let headers = legacy(expected, version);
            let ok = verify_signature(SECRET, method, uri, body.as_bytes(), &headers, 0, true);
            assert!(ok.is_ok(), "{version} {method} {body}: {ok:?}");
            // Legacy signatures are refused unless the operator allows them.
            let refused =
                verify_signature(SECRET, method, uri, body.as_bytes(), &headers, 0, false);
            assert_eq!(refused, Err(WebhookError::MissingSignature));
        }
    }

    #[test]
    fn official_v3_vectors_verify_at_their_time_and_not_six_minutes_later() {
        for (timestamp, expected) in [
            (
                "1693657560000",
                "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
            ),
            (
                "1700000300000",
                "RnbPH7+UMKVkbV32P8bz450N4M56aPmcru1+D3kSDtw=",
            ),
        ] {
            let now: i64 = timestamp.parse().unwrap_or_default();
            let headers = v3(expected, timestamp);
            assert_eq!(
                verify_signature(
                    SECRET,
                    "POST",
                    URI,
                    QUOTED.as_bytes(),
                    &headers,
                    now + 1_000,
                    false
                ),
                Ok(SignatureVersion::V3)
            );
            let late = verify_signature(
                SECRET,
                "POST",
                URI,
                QUOTED.as_bytes(),
                &headers,
                now + 360_000,
                false,
            );
            assert!(matches!(late, Err(WebhookError::Stale { .. })), "{late:?}");
            let early = verify_signature(
                SECRET,
                "POST",
                URI,
                QUOTED.as_bytes(),
                &headers,
                now - 360_000,
                false,
            );
            assert!(
                matches!(early, Err(WebhookError::Stale { .. })),
                "{early:?}"
            );
        }
    }

    #[test]
    fn v3_decodes_exactly_the_listed_percent_encodings() {
        let body = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":123,"propertyName":"firstname","propertyValue":"Zoë","changeSource":"INTEGRATION","sourceId":"54321","appId":54321}]"#;
        let raw = "https://example.com/hubspot/webhook?src=hs%3Aapp%2Fv3&x=%28a%29&sp=a%20b";
        assert_eq!(
            decode_uri(raw),
            "https://example.com/hubspot/webhook?src=hs:app/v3&x=(a)&sp=a%20b"
        );
        assert_eq!(
            sign_v3(SECRET, "POST", raw, body.as_bytes(), "1700000000000"),
            "otu9uGV5hSG3Ddxy0lTPyx7GNS9QIAtyfGRID+kaixM="
        );
        let headers = v3(
            "otu9uGV5hSG3Ddxy0lTPyx7GNS9QIAtyfGRID+kaixM=",
            "1700000000000",
        );
        assert!(
            verify_signature(
                SECRET,
                "POST",
                raw,
                body.as_bytes(),
                &headers,
                1_700_000_000_000,
                false
            )
            .is_ok()
        );
        // The undecoded URI's signature is the classic mistake: refused.
        let wrong = v3(
            "U2IeCfAlY7G3OirH7IAA6QEfuKH6Y7vdOu+0VawwqiE=",
            "1700000000000",
        );
        assert_eq!(
            verify_signature(
                SECRET,
                "POST",
                raw,
                body.as_bytes(),
                &wrong,
                1_700_000_000_000,
                false
            ),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn the_sdk_fixture_parses_and_keys_on_more_than_the_event_id() {
        let headers = legacy(
            "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
            "v1",
        );
        let (_, batch) = verify_batch(SECRET, "POST", URI, SDK_BODY.as_bytes(), &headers, 0, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let events = batch.into_inner();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].subscription_type, "contact.creation");
        assert_eq!(events[0].dedupe_key(), "62515:12345:1:123:1564113600000:");
    }

    #[test]
    fn a_signed_body_that_is_not_an_event_array_is_malformed() {
        let body = b"{\"not\":\"an array\"}";
        let headers = v3(&sign_v3(SECRET, "POST", URI, body, "1000"), "1000");
        assert!(matches!(
            verify_batch(SECRET, "POST", URI, body, &headers, 1000, false),
            Err(WebhookError::Malformed(_))
        ));
    }

    fn id(n: u64) -> CrmId {
        CrmId(n.to_string())
    }

    /// HubSpot's events as the core coalesces them.
    fn coalesce(events: &[WebhookEvent], own_app: Option<u64>) -> Coalesced {
        let events: Vec<Event> = events.iter().filter_map(|e| e.to_event(own_app)).collect();
        crate::sync::events::coalesce(&events)
    }

    fn event(kind: &str, object_id: u64, occurred_at: i64, event_id: u64) -> WebhookEvent {
        WebhookEvent {
            event_id,
            subscription_id: 7,
            portal_id: 62515,
            app_id: Some(54321),
            occurred_at,
            subscription_type: format!("contact.{kind}"),
            attempt_number: 0,
            object_id,
            object_type_id: None,
            property_name: (kind == "propertyChange").then(|| "firstname".to_string()),
            property_value: None,
            change_source: Some("CRM_UI".into()),
            source_id: None,
            primary_object_id: None,
            merged_object_ids: Vec::new(),
            new_object_id: None,
        }
    }

    #[test]
    fn a_deletion_after_a_change_deletes_and_a_restore_after_it_changes() {
        let batch = [
            event("propertyChange", 1, 10, 1),
            event("deletion", 1, 20, 2),
            event("propertyChange", 2, 5, 3),
            event("deletion", 2, 4, 4),
        ];
        let c = coalesce(&batch, None);
        assert!(c.deleted.contains(&id(1)) && !c.changed.contains(&id(1)));
        assert!(
            c.changed.contains(&id(2)) && !c.deleted.contains(&id(2)),
            "the change came after the deletion"
        );
        let erased = coalesce(
            &[
                event("privacyDeletion", 3, 1, 5),
                event("propertyChange", 3, 2, 6),
            ],
            None,
        );
        assert!(
            erased.erased.contains(&id(3)) && !erased.changed.contains(&id(3)),
            "an erased record never comes back"
        );
    }

    #[test]
    fn a_merge_remaps_the_absorbed_records_to_the_survivor() {
        let mut merge = event("merge", 10, 1, 1);
        merge.primary_object_id = Some(10);
        merge.merged_object_ids = vec![10, 11];
        merge.new_object_id = Some(12);
        let c = coalesce(&[event("propertyChange", 11, 0, 2), merge], None);
        assert_eq!(c.merged_into.get(&id(11)), Some(&id(12)));
        assert_eq!(c.merged_into.get(&id(10)), Some(&id(12)));
        assert!(c.changed.contains(&id(12)) && !c.changed.contains(&id(11)));
    }

    const OWN_APP: u64 = 54321;

    #[test]
    fn our_own_writes_are_echoes_unless_someone_else_changed_the_record_too() {
        let mut ours = event("propertyChange", 1, 10, 1);
        ours.change_source = Some("INTEGRATION".into());
        ours.source_id = Some(OWN_APP.to_string());
        let mut ours_later = ours.clone();
        ours_later.occurred_at = 30;
        ours_later.event_id = 9;
        let mut other_app = ours.clone();
        other_app.object_id = 2;
        other_app.source_id = Some("999".into());
        let mut user_too = ours.clone();
        user_too.object_id = 3;
        let c = coalesce(
            &[
                ours,
                ours_later,
                other_app,
                user_too,
                event("propertyChange", 3, 11, 4),
            ],
            Some(OWN_APP),
        );
        assert_eq!(c.echoed.get(&id(1)), Some(&30), "the latest of our writes");
        assert!(!c.changed.contains(&id(1)));
        assert!(
            c.changed.contains(&id(2)),
            "another app's write is a change"
        );
        assert!(
            c.changed.contains(&id(3)) && !c.echoed.contains_key(&id(3)),
            "a user edit alongside ours is fetched"
        );
        // Without our app id configured, nothing is an echo.
        let plain = coalesce(&[event("propertyChange", 1, 10, 1)], None);
        assert!(plain.echoed.is_empty());
    }

    #[test]
    fn events_of_objects_crmsync_does_not_sync_are_left_out_and_associations_change_nothing() {
        let mut company = event("creation", 1, 10, 1);
        company.subscription_type = "company.creation".into();
        assert_eq!(company.to_event(None), None);
        let mut lead = event("creation", 2, 10, 2);
        lead.subscription_type = "object.creation".into();
        lead.object_type_id = Some("0-136".into());
        assert_eq!(
            lead.to_event(None).map(|e| e.object),
            Some(CrmObject::Leads)
        );
        let association = event("associationChange", 3, 10, 3);
        let mapped = association.to_event(None);
        assert_eq!(mapped.as_ref().map(|e| &e.change), Some(&Change::Other));
        assert_eq!(mapped.as_ref().and_then(Event::changed_record), None);
        // Our own merge is still a merge: its survivor is read.
        let mut merge = event("merge", 4, 10, 4);
        merge.merged_object_ids = vec![4, 5];
        merge.primary_object_id = Some(5);
        merge.change_source = Some("INTEGRATION".into());
        merge.source_id = Some(OWN_APP.to_string());
        assert_eq!(
            merge
                .to_event(Some(OWN_APP))
                .and_then(|e| e.changed_record().cloned()),
            Some(id(5))
        );
    }

    proptest! {
        #[test]
        fn v3_verifies_what_it_signs_and_no_one_byte_change(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            flip in any::<usize>(),
            ts in 1_000_000_000_000i64..2_000_000_000_000,
        ) {
            let stamp = ts.to_string();
            let signature = sign_v3(SECRET, "POST", URI, &body, &stamp);
            let headers = v3(&signature, &stamp);
            prop_assert_eq!(verify_signature(SECRET, "POST", URI, &body, &headers, ts, false), Ok(SignatureVersion::V3));
            if !body.is_empty() {
                let mut changed = body.clone();
                changed[flip % body.len()] ^= 0x01;
                prop_assert_eq!(verify_signature(SECRET, "POST", URI, &changed, &headers, ts, false), Err(WebhookError::Mismatch));
            }
            prop_assert!(verify_signature(b"another-secret", "POST", URI, &body, &headers, ts, false).is_err());
        }

        #[test]
        fn v1_verifies_what_it_signs_and_no_one_byte_change(body in proptest::collection::vec(any::<u8>(), 1..300), flip in any::<usize>()) {
            let headers = legacy(&sign_v1(SECRET, &body), "v1");
            prop_assert!(verify_signature(SECRET, "POST", URI, &body, &headers, 0, true).is_ok());
            let mut changed = body.clone();
            changed[flip % body.len()] ^= 0x80;
            prop_assert_eq!(verify_signature(SECRET, "POST", URI, &changed, &headers, 0, true), Err(WebhookError::Mismatch));
        }
    }
}
