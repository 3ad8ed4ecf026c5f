//! Webhook ingress: verifies HubSpot's signature, drops duplicate events,
//! routes events to connections by `portalId`, enqueues one `ProcessWebhook`
//! per connection and object, and answers within milliseconds. It never
//! touches the database in production: routes come from Redis (published by
//! the CLI and the scheduler, see [`routes`]), and so does dedupe.
//!
//! Answers: 204 accepted (also for events of unknown portals, which are
//! counted: HubSpot must not retry them forever); 401 bad, missing or stale
//! signature; 400 malformed body; 413 too large; 503 when Redis or the queue
//! is down (HubSpot retries).

pub mod routes;

use crate::config::Settings;
use crate::domain::CrmObject;
use crate::jobs::ProcessWebhookJob;
use crate::providers::hubspot::webhook::{
    self, SignatureHeaders, WebhookError, WebhookEvent, coalesce,
};
use crate::queue::Queue;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use routes::{Dedupe, Routes};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the webhook handler needs.
#[derive(Clone)]
pub struct Ingress {
    secret: Arc<SecretString>,
    public_url: Option<Arc<str>>,
    allow_legacy: bool,
    routes: Routes,
    dedupe: Dedupe,
    queue: Queue,
}

impl Ingress {
    /// Builds the ingress from settings; refuses to start without the app
    /// secret that signs HubSpot's webhooks.
    pub fn new(
        settings: &Settings,
        routes: Routes,
        dedupe: Dedupe,
        queue: Queue,
    ) -> Result<Self, String> {
        let secret = settings
            .hubspot
            .client_secret
            .clone()
            .ok_or("CRMSYNC__HUBSPOT__CLIENT_SECRET is not set: ingress cannot verify HubSpot's signatures")?;
        Ok(Self {
            secret: Arc::new(secret),
            public_url: settings
                .ingress
                .public_url
                .as_deref()
                .map(|u| Arc::from(u.trim_end_matches('/'))),
            allow_legacy: settings.ingress.allow_legacy_signatures,
            routes,
            dedupe,
            queue,
        })
    }

    /// The axum app: `POST /webhooks/hubspot`, `GET /health`, `GET /ready`.
    pub fn router(self, max_body: usize) -> Router {
        Router::new()
            .route("/webhooks/hubspot", post(hubspot))
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(ready))
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(self)
    }
}

async fn ready(State(ingress): State<Ingress>) -> Response {
    match ingress.dedupe.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The URL HubSpot called, as its v3 signature covers it.
fn called_url(ingress: &Ingress, headers: &HeaderMap, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match &ingress.public_url {
        Some(base) => format!("{base}{path}"),
        None => format!(
            "http://{}{path}",
            header(headers, "host").unwrap_or_default()
        ),
    }
}

/// Which CRM object an event is about.
fn object_of(event: &WebhookEvent) -> Option<CrmObject> {
    match event.subscription_type.split('.').next() {
        Some("contact") => Some(CrmObject::Contacts),
        Some("object") => match event.object_type_id.as_deref() {
            Some("0-1") => Some(CrmObject::Contacts),
            Some("0-136") => Some(CrmObject::Leads),
            _ => None,
        },
        _ => None,
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn hubspot(
    State(ingress): State<Ingress>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signatures = SignatureHeaders {
        v3: header(&headers, "x-hubspot-signature-v3"),
        timestamp: header(&headers, "x-hubspot-request-timestamp"),
        legacy: header(&headers, "x-hubspot-signature"),
        legacy_version: header(&headers, "x-hubspot-signature-version"),
    };
    let url = called_url(&ingress, &headers, &uri);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let verified = webhook::verify_batch(
        ingress.secret.expose_secret().as_bytes(),
        "POST",
        &url,
        &body,
        &signatures,
        now_ms,
        ingress.allow_legacy,
    );
    let events = match verified {
        Ok((_, batch)) => batch.into_inner(),
        Err(WebhookError::Malformed(why)) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "malformed")
                .increment(1);
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("malformed webhook body: {why}"),
            );
        }
        Err(e) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "rejected")
                .increment(1);
            tracing::warn!(error = %e, "webhook rejected");
            return problem(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    match accept(&ingress, events).await {
        Ok(()) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "accepted")
                .increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "unavailable")
                .increment(1);
            tracing::error!(error = %e, "webhook not accepted: queue or Redis unavailable");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unable to accept webhooks",
            )
        }
    }
}

/// Dedupes, routes and enqueues verified events.
async fn accept(ingress: &Ingress, events: Vec<WebhookEvent>) -> Result<(), String> {
    let mut fresh = Vec::with_capacity(events.len());
    for event in events {
        if ingress.dedupe.first_time(&event.dedupe_key()).await? {
            fresh.push(event);
        } else {
            metrics::counter!("crmsync_webhook_events_total", "outcome" => "duplicate")
                .increment(1);
        }
    }
    // (connection, object) → its events; one job each.
    let mut groups: BTreeMap<
        (
            crate::domain::TenantId,
            crate::domain::ConnectionId,
            CrmObject,
        ),
        Vec<WebhookEvent>,
    > = BTreeMap::new();
    let mut routes: BTreeMap<u64, Vec<(crate::domain::TenantId, crate::domain::ConnectionId)>> =
        BTreeMap::new();
    for event in fresh {
        let Some(object) = object_of(&event) else {
            metrics::counter!("crmsync_webhook_events_total", "outcome" => "ignored").increment(1);
            continue;
        };
        // One route lookup per account per delivery, not per event.
        let targets = match routes.get(&event.portal_id) {
            Some(targets) => targets,
            None => {
                let found = ingress.routes.lookup("hubspot", event.portal_id).await?;
                routes.entry(event.portal_id).or_insert(found)
            }
        };
        if targets.is_empty() {
            metrics::counter!("crmsync_webhook_events_total", "outcome" => "unknown_account")
                .increment(1);
            continue;
        }
        for (tenant, connection) in targets {
            groups
                .entry((*tenant, *connection, object))
                .or_default()
                .push(event.clone());
        }
    }
    for ((tenant, connection, object), events) in groups {
        let mut hasher = Sha256::new();
        for e in &events {
            hasher.update(e.dedupe_key().as_bytes());
            hasher.update(b"\n");
        }
        let delivery: String = hasher.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let job = ProcessWebhookJob::from_coalesced(
            tenant,
            connection,
            object,
            &coalesce(&events),
            delivery,
        );
        ingress
            .queue
            .push_process_webhook_after(&job, std::time::Duration::ZERO)
            .await
            .map_err(|e| e.to_string())?;
        metrics::counter!("crmsync_webhook_events_total", "outcome" => "accepted")
            .increment(events.len() as u64);
    }
    Ok(())
}
