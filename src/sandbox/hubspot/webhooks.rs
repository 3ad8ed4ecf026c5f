//! Webhooks both ways: HubSpot's Webhooks v3 management API (settings and
//! subscriptions per app, authenticated with the developer `hapikey`), and
//! the sender that delivers every change to the app's target URL the way
//! HubSpot does — JSON arrays of at most 100 events, signed v1 and v3, at
//! most `maxConcurrentRequests` in flight per account, a 5-second timeout,
//! and up to 10 retries with growing delays, each attempt signed afresh.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Sandbox;
use super::error::{ApiError, standard_error};
use super::model::{Actor, Change, ObjectType, iso_ms};
use super::objects::{parse_body, query_one, query_pairs};
use super::signature;
use super::state::{Account, App, Subscription, WebhookSettings, lock, now_ms};
use crate::sandbox::faults::Faults;
use crate::sandbox::webhook_delivery::{
    DeliveryTuning, Destination, RetrySchedule, WebhookCounters, WebhookEngine,
};

/// Most events in one delivery ("Each request can contain up to 100 events").
pub const MAX_BATCH: usize = 100;

/// Every `eventType` the v3 spec accepts; the sandbox raises events for the
/// `contact.*` and `object.*` ones.
pub const EVENT_TYPES: &[&str] = &[
    "company.associationChange",
    "company.creation",
    "company.deletion",
    "company.merge",
    "company.propertyChange",
    "company.restore",
    "contact.associationChange",
    "contact.creation",
    "contact.deletion",
    "contact.merge",
    "contact.privacyDeletion",
    "contact.propertyChange",
    "contact.restore",
    "conversation.creation",
    "conversation.deletion",
    "conversation.newMessage",
    "conversation.privacyDeletion",
    "conversation.propertyChange",
    "deal.associationChange",
    "deal.creation",
    "deal.deletion",
    "deal.merge",
    "deal.propertyChange",
    "deal.restore",
    "event.completed",
    "line_item.associationChange",
    "line_item.creation",
    "line_item.deletion",
    "line_item.merge",
    "line_item.propertyChange",
    "line_item.restore",
    "object.associationChange",
    "object.creation",
    "object.deletion",
    "object.merge",
    "object.propertyChange",
    "object.restore",
    "product.creation",
    "product.deletion",
    "product.merge",
    "product.propertyChange",
    "product.restore",
    "ticket.associationChange",
    "ticket.creation",
    "ticket.deletion",
    "ticket.merge",
    "ticket.propertyChange",
    "ticket.restore",
];

/// How HubSpot's sender behaves; HubSpot spreads 10 retries over 24 hours,
/// the sandbox compresses that to `retry_base × 2^n` capped at `retry_max`,
/// ±20 %.
pub fn tuning(
    timeout: Duration,
    max_retries: u32,
    retry_base: Duration,
    retry_max: Duration,
) -> DeliveryTuning {
    DeliveryTuning {
        timeout,
        max_batch: MAX_BATCH,
        batch_window: Duration::from_millis(25),
        retries: RetrySchedule {
            max_retries,
            base: retry_base,
            max: retry_max,
            jitter: 0.2,
        },
    }
}

/// HubSpot's sender: the shared engine, one queue per (app, account).
pub type WebhookSender = WebhookEngine<(u64, u64)>;

/// The `User-Agent` HubSpot's webhook requests carry.
pub const USER_AGENT: &str = "HubSpot Connect 2.0 (crmsync sandbox)";

/// Where one (app, account)'s batches go: the app's target URL, as a JSON
/// array signed v1 and v3 with the app's client secret, `attemptNumber`
/// stamped on each event.
struct AppTarget {
    sandbox: Sandbox,
    app_id: u64,
    portal_id: u64,
}

impl Destination for AppTarget {
    type Account = Account;

    fn account(&self) -> Option<Arc<Account>> {
        self.sandbox.state.account(self.portal_id)
    }

    fn count(&self, account: &Account, update: impl FnOnce(&mut WebhookCounters)) {
        update(&mut lock(&account.counters).webhooks);
    }

    fn faults(&self) -> &Faults {
        &self.sandbox.state.faults
    }

    fn request(
        &self,
        client: &reqwest::Client,
        batch: &mut [Value],
        attempt: u32,
    ) -> Option<reqwest::RequestBuilder> {
        let (url, secret) = lock(&self.sandbox.state.apps)
            .get(&self.app_id)
            .and_then(|a| {
                a.settings
                    .as_ref()
                    .map(|s| (s.target_url.clone(), a.client_secret.clone()))
            })?;
        for event in batch.iter_mut() {
            event["attemptNumber"] = json!(attempt);
        }
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        let timestamp = now_ms();
        Some(
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-hubspot-signature", signature::v1(&secret, &body))
                .header("x-hubspot-signature-version", "v1")
                .header(
                    "x-hubspot-signature-v3",
                    signature::v3(&secret, "POST", &url, &body, timestamp),
                )
                .header("x-hubspot-request-timestamp", timestamp.to_string())
                .body(body),
        )
    }
}

fn event_types_for(change: &Change) -> (&'static str, ObjectType) {
    match change {
        Change::Created { object, .. } => ("creation", *object),
        Change::PropertyChanged { object, .. } => ("propertyChange", *object),
        Change::Deleted { object, .. } => ("deletion", *object),
        Change::Restored { object, .. } => ("restore", *object),
        Change::Merged { object, .. } => ("merge", *object),
        Change::PrivacyDeleted { object, .. } => ("privacyDeletion", *object),
    }
}

fn subscription_matches(
    sub: &Subscription,
    object: ObjectType,
    action: &str,
    property: Option<&str>,
) -> bool {
    if !sub.active {
        return false;
    }
    let (family, sub_action) = sub.event_type.split_once('.').unwrap_or_default();
    let family_ok = match family {
        "contact" => object == ObjectType::Contacts,
        "object" => sub.object_type_id.as_deref().and_then(ObjectType::parse) == Some(object),
        _ => false,
    };
    family_ok
        && sub_action == action
        && (action != "propertyChange" || sub.property_name.as_deref() == property)
}

impl Sandbox {
    /// Marks an app installed in an account, so its subscriptions fire there.
    pub fn install_app(&self, portal_id: u64, app_id: u64) {
        if let Some(account) = self.state.account(portal_id) {
            lock(&account.installed_apps).insert(app_id);
        }
    }

    /// Turns changes into events for every installed app subscribed to them
    /// and queues them for delivery.
    pub fn emit(&self, account: &Account, actor: Actor, occurred_at: i64, changes: Vec<Change>) {
        let installed: Vec<u64> = lock(&account.installed_apps).iter().copied().collect();
        for app_id in installed {
            let Some(app) = lock(&self.state.apps).get(&app_id).cloned() else {
                continue;
            };
            let mut events = Vec::new();
            for change in &changes {
                events.extend(self.events_for(&app, account.portal_id, actor, occurred_at, change));
            }
            if events.is_empty() {
                continue;
            }
            lock(&account.counters).webhooks.events += events.len() as u64;
            if app.settings.is_none() {
                lock(&account.counters).webhooks.undeliverable_events += events.len() as u64;
                continue;
            }
            let max_concurrent = app
                .settings
                .as_ref()
                .map(|s| s.max_concurrent_requests)
                .unwrap_or(10);
            let sandbox = self.clone();
            let portal_id = account.portal_id;
            self.webhooks
                .enqueue((app_id, portal_id), max_concurrent, events, || AppTarget {
                    sandbox,
                    app_id,
                    portal_id,
                });
        }
    }

    fn events_for(
        &self,
        app: &App,
        portal_id: u64,
        actor: Actor,
        occurred_at: i64,
        change: &Change,
    ) -> Vec<Value> {
        let (action, object) = event_types_for(change);
        let mut out = Vec::new();
        let mut push =
            |sub: &Subscription, action: &str, extra: Map<String, Value>, object_id: u64| {
                let mut event = json!({
                    "eventId": self.state.next_event_id.fetch_add(1, Ordering::Relaxed),
                    "subscriptionId": sub.id,
                    "portalId": portal_id,
                    "appId": app.app_id,
                    "occurredAt": occurred_at,
                    "subscriptionType": sub.event_type,
                    "attemptNumber": 0,
                    "objectId": object_id,
                    "changeSource": actor.source_type(),
                    "sourceId": actor.source_id(),
                });
                if sub.event_type.starts_with("object.") {
                    event["objectTypeId"] = json!(object.type_id());
                }
                if action == "creation" {
                    event["changeFlag"] = json!("CREATED");
                }
                if let Value::Object(map) = &mut event {
                    map.extend(extra);
                }
                out.push(event);
            };
        for sub in &app.subscriptions {
            match change {
                Change::Created { id, values, .. } => {
                    if subscription_matches(sub, object, "creation", None) {
                        push(sub, "creation", Map::new(), *id);
                    }
                    // HubSpot also reports the values set at creation as property changes.
                    for (name, value) in values {
                        if subscription_matches(sub, object, "propertyChange", Some(name)) {
                            push(sub, "propertyChange", property_fields(name, value), *id);
                        }
                    }
                }
                Change::PropertyChanged {
                    id, name, value, ..
                } => {
                    if subscription_matches(sub, object, "propertyChange", Some(name)) {
                        push(sub, "propertyChange", property_fields(name, value), *id);
                    }
                }
                Change::Deleted { id, .. } | Change::Restored { id, .. } => {
                    if subscription_matches(sub, object, action, None) {
                        push(sub, action, Map::new(), *id);
                    }
                }
                Change::PrivacyDeleted { id, .. } => {
                    // A privacy deletion fires `privacyDeletion` and `deletion` (facts sheet §1.5).
                    for a in ["privacyDeletion", "deletion"] {
                        if subscription_matches(sub, object, a, None) {
                            push(sub, a, Map::new(), *id);
                        }
                    }
                }
                Change::Merged {
                    primary,
                    merged,
                    new_id,
                    moved,
                    ..
                } => {
                    if subscription_matches(sub, object, "merge", None) {
                        let mut extra = Map::new();
                        extra.insert("primaryObjectId".into(), json!(primary));
                        extra.insert("mergedObjectIds".into(), json!(merged));
                        extra.insert("newObjectId".into(), json!(new_id));
                        extra.insert("numberOfPropertiesMoved".into(), json!(moved));
                        push(sub, "merge", extra, *new_id);
                    }
                }
            }
        }
        out
    }
}

fn property_fields(name: &str, value: &str) -> Map<String, Value> {
    let mut extra = Map::new();
    extra.insert("propertyName".into(), json!(name));
    extra.insert("propertyValue".into(), json!(value));
    extra
}

// ---------------------------------------------------------------------------
// Management API

fn developer_app(sb: &Sandbox, app_id: u64, query: &Option<String>) -> Result<App, ApiError> {
    let pairs = query_pairs(query);
    let key = query_one(&pairs, "hapikey").unwrap_or_default();
    let app = lock(&sb.state.apps).get(&app_id).cloned();
    match app {
        Some(app) if !key.is_empty() && app.developer_api_key == key => Ok(app),
        None if !key.is_empty() => Err(ApiError::not_found(format!("App {app_id} not found"))),
        _ => Err(ApiError::unauthenticated()),
    }
}

fn settings_json(settings: &WebhookSettings) -> Value {
    json!({
        "targetUrl": settings.target_url,
        "throttling": {"maxConcurrentRequests": settings.max_concurrent_requests, "period": settings.period},
        "createdAt": iso_ms(settings.created_ms),
        "updatedAt": iso_ms(settings.updated_ms),
    })
}

/// `GET /webhooks/v3/{appId}/settings`.
pub async fn get_settings(
    State(sb): State<Sandbox>,
    Path(app_id): Path<u64>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let app = developer_app(&sb, app_id, &q)?;
    match &app.settings {
        Some(settings) => Ok(axum::Json(settings_json(settings)).into_response()),
        None => Err(ApiError::not_found(format!(
            "No webhook settings for app {app_id}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Throttling {
    max_concurrent_requests: Option<u64>,
    period: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettingsChange {
    target_url: Option<String>,
    throttling: Option<Throttling>,
}

/// Validates and stores an app's webhook settings (shared with `--webhook-target`).
pub fn put_settings_for(
    sb: &Sandbox,
    app_id: u64,
    target_url: &str,
    max_concurrent_requests: u64,
    period: &str,
) -> Result<Value, ApiError> {
    if !(target_url.starts_with("http://") || target_url.starts_with("https://")) {
        return Err(ApiError::validation(format!(
            "targetUrl must be an http(s) URL, got {target_url:?}"
        )));
    }
    if max_concurrent_requests <= 5 {
        return Err(ApiError::validation(
            "throttling.maxConcurrentRequests must be a number greater than five",
        ));
    }
    if !matches!(period, "SECONDLY" | "ROLLING_MINUTE") {
        return Err(ApiError::validation(
            "throttling.period must be SECONDLY or ROLLING_MINUTE",
        ));
    }
    let now = now_ms();
    let mut apps = lock(&sb.state.apps);
    let app = apps
        .get_mut(&app_id)
        .ok_or_else(|| ApiError::not_found(format!("App {app_id} not found")))?;
    let created_ms = app.settings.as_ref().map(|s| s.created_ms).unwrap_or(now);
    let settings = WebhookSettings {
        target_url: target_url.to_string(),
        max_concurrent_requests,
        period: period.to_string(),
        created_ms,
        updated_ms: now,
    };
    let out = settings_json(&settings);
    app.settings = Some(settings);
    drop(apps);
    // New concurrency applies to new queues.
    sb.webhooks.reset_queues();
    Ok(out)
}

/// `PUT /webhooks/v3/{appId}/settings`.
pub async fn put_settings(
    State(sb): State<Sandbox>,
    Path(app_id): Path<u64>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    developer_app(&sb, app_id, &q)?;
    let change: SettingsChange = parse_body(&body)?;
    let target = change
        .target_url
        .ok_or_else(|| ApiError::validation("targetUrl is required"))?;
    let throttling = change
        .throttling
        .ok_or_else(|| ApiError::validation("throttling is required"))?;
    let max = throttling
        .max_concurrent_requests
        .ok_or_else(|| ApiError::validation("throttling.maxConcurrentRequests is required"))?;
    put_settings_for(
        &sb,
        app_id,
        &target,
        max,
        throttling.period.as_deref().unwrap_or("SECONDLY"),
    )
    .map(|v| axum::Json(v).into_response())
}

/// `DELETE /webhooks/v3/{appId}/settings` → 204; deliveries stop.
pub async fn delete_settings(
    State(sb): State<Sandbox>,
    Path(app_id): Path<u64>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    developer_app(&sb, app_id, &q)?;
    if let Some(app) = lock(&sb.state.apps).get_mut(&app_id) {
        app.settings = None;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /webhooks/v3/{appId}/subscriptions` → `{results}`.
pub async fn list_subscriptions(
    State(sb): State<Sandbox>,
    Path(app_id): Path<u64>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let app = developer_app(&sb, app_id, &q)?;
    let results: Vec<Value> = app
        .subscriptions
        .iter()
        .map(Subscription::to_json)
        .collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionCreate {
    event_type: Option<String>,
    property_name: Option<String>,
    active: Option<bool>,
    object_type_id: Option<String>,
}

/// Validates and adds a subscription (shared with `--webhook-target`).
pub fn add_subscription(
    sb: &Sandbox,
    app_id: u64,
    event_type: &str,
    property_name: Option<String>,
    object_type_id: Option<String>,
    active: bool,
) -> Result<Value, ApiError> {
    if !EVENT_TYPES.contains(&event_type) {
        return Err(ApiError::validation(format!(
            "Invalid eventType {event_type}"
        )));
    }
    if event_type.ends_with(".propertyChange") && property_name.as_deref().is_none_or(str::is_empty)
    {
        return Err(ApiError::validation(
            "propertyName is required for propertyChange subscriptions",
        ));
    }
    if event_type.starts_with("object.") && object_type_id.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::validation(
            "objectTypeId is required for object.* subscriptions",
        ));
    }
    let now = now_ms();
    let mut apps = lock(&sb.state.apps);
    let app = apps
        .get_mut(&app_id)
        .ok_or_else(|| ApiError::not_found(format!("App {app_id} not found")))?;
    if app.subscriptions.len() >= 1000 {
        return Err(ApiError::validation(
            "An app may have at most 1000 subscriptions",
        ));
    }
    // Normalise `leads` → `0-136` so events carry the raw type id.
    let object_type_id = object_type_id.map(|t| {
        ObjectType::parse(&t)
            .map(|o| o.type_id().to_string())
            .unwrap_or(t)
    });
    let duplicate = app.subscriptions.iter().any(|s| {
        s.event_type == event_type
            && s.property_name == property_name
            && s.object_type_id == object_type_id
    });
    if duplicate {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            "A subscription for this event already exists",
        ));
    }
    let sub = Subscription {
        id: app.next_subscription_id,
        event_type: event_type.to_string(),
        property_name,
        object_type_id,
        active,
        created_ms: now,
        updated_ms: now,
    };
    app.next_subscription_id += 1;
    let out = sub.to_json();
    app.subscriptions.push(sub);
    Ok(out)
}

/// `POST /webhooks/v3/{appId}/subscriptions` → 201 (created paused unless `active`).
pub async fn create_subscription(
    State(sb): State<Sandbox>,
    Path(app_id): Path<u64>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    developer_app(&sb, app_id, &q)?;
    let input: SubscriptionCreate = parse_body(&body)?;
    let event_type = input
        .event_type
        .ok_or_else(|| ApiError::validation("eventType is required"))?;
    add_subscription(
        &sb,
        app_id,
        &event_type,
        input.property_name,
        input.object_type_id,
        input.active.unwrap_or(false),
    )
    .map(|v| (StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `GET /webhooks/v3/{appId}/subscriptions/{subscriptionId}`.
pub async fn get_subscription(
    State(sb): State<Sandbox>,
    Path((app_id, sub_id)): Path<(u64, u64)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let app = developer_app(&sb, app_id, &q)?;
    app.subscriptions
        .iter()
        .find(|s| s.id == sub_id)
        .map(|s| axum::Json(s.to_json()).into_response())
        .ok_or_else(|| sub_not_found(sub_id))
}

fn sub_not_found(sub_id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "SUBSCRIPTION_ID_NOT_FOUND",
        format!(
            "Failed to find subscriptions by id `{sub_id}`. Try again using a different subscriptionId."
        ),
    )
}

#[derive(Deserialize)]
struct SubscriptionPatch {
    active: Option<bool>,
}

fn set_active(sb: &Sandbox, app_id: u64, sub_id: u64, active: Option<bool>) -> Option<Value> {
    let mut apps = lock(&sb.state.apps);
    let sub = apps
        .get_mut(&app_id)?
        .subscriptions
        .iter_mut()
        .find(|s| s.id == sub_id)?;
    if let Some(active) = active {
        sub.active = active;
        sub.updated_ms = now_ms();
    }
    Some(sub.to_json())
}

/// `PATCH /webhooks/v3/{appId}/subscriptions/{subscriptionId}` (`{active}`).
pub async fn patch_subscription(
    State(sb): State<Sandbox>,
    Path((app_id, sub_id)): Path<(u64, u64)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    developer_app(&sb, app_id, &q)?;
    let patch: SubscriptionPatch = parse_body(&body)?;
    set_active(&sb, app_id, sub_id, patch.active)
        .map(|v| axum::Json(v).into_response())
        .ok_or_else(|| sub_not_found(sub_id))
}

/// `DELETE /webhooks/v3/{appId}/subscriptions/{subscriptionId}` → 204.
pub async fn delete_subscription(
    State(sb): State<Sandbox>,
    Path((app_id, sub_id)): Path<(u64, u64)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    developer_app(&sb, app_id, &q)?;
    let mut apps = lock(&sb.state.apps);
    let app = apps
        .get_mut(&app_id)
        .ok_or_else(|| ApiError::not_found(format!("App {app_id} not found")))?;
    let before = app.subscriptions.len();
    app.subscriptions.retain(|s| s.id != sub_id);
    if app.subscriptions.len() == before {
        return Err(sub_not_found(sub_id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct BatchActive {
    inputs: Vec<BatchActiveInput>,
}

#[derive(Deserialize)]
struct BatchActiveInput {
    id: u64,
    active: bool,
}

/// `POST /webhooks/v3/{appId}/subscriptions/batch/update` → 200, or 207 for unknown ids.
pub async fn batch_update_subscriptions(
    State(sb): State<Sandbox>,
    Path(app_id): Path<u64>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    developer_app(&sb, app_id, &q)?;
    let started = now_ms();
    let input: BatchActive = parse_body(&body)?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for item in input.inputs {
        match set_active(&sb, app_id, item.id, Some(item.active)) {
            Some(v) => results.push(v),
            None => missing.push(item.id.to_string()),
        }
    }
    let mut body = json!({"status": "COMPLETE", "results": results, "startedAt": iso_ms(started), "completedAt": iso_ms(now_ms())});
    if missing.is_empty() {
        return Ok(axum::Json(body).into_response());
    }
    let mut ctx = Map::new();
    let message = format!(
        "Failed to find subscriptions by id `{}`. Try again using a different subscriptionId.",
        missing.join(", ")
    );
    ctx.insert("subscriptionIds".into(), json!(missing));
    let mut err = standard_error("error", "SUBSCRIPTION_ID_NOT_FOUND", &message, ctx);
    err["subCategory"] = json!("SubscriptionErrors.SUBSCRIPTION_IDS_NOT_FOUND");
    body["numErrors"] = json!(1);
    body["errors"] = json!([err]);
    Ok((StatusCode::MULTI_STATUS, axum::Json(body)).into_response())
}
