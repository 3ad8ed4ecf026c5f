//! What ingress needs from a CRM's webhooks, whatever the CRM: the app's
//! own secret, the verification of one delivery into neutral events with
//! the account each names, and the accounts an unverified body claims (to
//! find connections' own secrets and to count refusals). Each CRM adds an
//! arm; ingress names none.

use super::hubspot;
pub use super::hubspot::webhook::WebhookError;
use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::sync::events::Event;
use axum::http::HeaderMap;
use secrecy::SecretString;

/// A CRM app's webhook settings (for app-wide deliveries).
#[derive(Debug, Clone, Default)]
pub struct WebhookApp {
    /// The secret that signs the app's deliveries, if configured.
    pub secret: Option<SecretString>,
    /// crmsync's app id in that CRM: what marks an event as our own write.
    pub own_app: Option<u64>,
}

/// One verified event and the CRM account it names; `event` is `None` for
/// an object crmsync does not sync (counted, then ignored).
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The account as the connection stores it (`external_account_id`:
    /// a HubSpot portal id in decimal, an org or company id elsewhere).
    pub account: String,
    /// The event in the neutral shape.
    pub event: Option<Event>,
}

/// A delivery as ingress received it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The URL the CRM called, as its signature covers it.
    pub url: &'a str,
    /// The raw body.
    pub body: &'a [u8],
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Now, in epoch milliseconds (for replay windows).
    pub now_ms: i64,
    /// Whether signature versions without a timestamp are accepted.
    pub allow_legacy: bool,
}

/// The app's webhook settings of `kind`.
pub fn webhook_app(kind: ProviderKind, settings: &Settings) -> WebhookApp {
    match kind {
        ProviderKind::Hubspot => WebhookApp {
            secret: settings.hubspot.client_secret.clone(),
            own_app: settings.hubspot.app_id,
        },
    }
}

/// The setting that holds the app's webhook secret (for start-up errors).
pub fn webhook_secret_key(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Hubspot => "CRMSYNC__HUBSPOT__CLIENT_SECRET",
    }
}

/// Verifies `delivery` with `secret` and parses its events.
pub fn verify(
    kind: ProviderKind,
    secret: &[u8],
    delivery: Delivery<'_>,
    own_app: Option<u64>,
) -> Result<Vec<Delivered>, WebhookError> {
    match kind {
        ProviderKind::Hubspot => {
            let header = |name: &str| {
                delivery
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let signatures = hubspot::webhook::SignatureHeaders {
                v3: header("x-hubspot-signature-v3"),
                timestamp: header("x-hubspot-request-timestamp"),
                legacy: header("x-hubspot-signature"),
                legacy_version: header("x-hubspot-signature-version"),
            };
            let (_, batch) = hubspot::webhook::verify_batch(
                secret,
                "POST",
                delivery.url,
                delivery.body,
                &signatures,
                delivery.now_ms,
                delivery.allow_legacy,
            )?;
            Ok(batch
                .into_inner()
                .iter()
                .map(|e| Delivered {
                    account: e.portal_id.to_string(),
                    event: e.to_event(own_app),
                })
                .collect())
        }
    }
}

/// The accounts an unverified body names (none when it is not the CRM's
/// event shape): one linear parse, no lookup.
pub fn claimed_accounts(kind: ProviderKind, body: &[u8]) -> Vec<String> {
    match kind {
        ProviderKind::Hubspot => {
            #[derive(serde::Deserialize)]
            struct Claim {
                #[serde(rename = "portalId")]
                portal_id: u64,
            }
            serde_json::from_slice::<Vec<Claim>>(body)
                .unwrap_or_default()
                .iter()
                .map(|c| c.portal_id.to_string())
                .collect()
        }
    }
}
