//! The operator side of the api: connections (create with a private-app
//! token, list, change, pause, resume, delete), syncs on demand, sync runs,
//! conflicts and their resolution, webhook stats, and a record's field
//! history. Every call is scoped to the bearer token's tenant.

use super::input::{Params, json_object, list_limit, number};
use super::{Api, Problem, Tenant};
use crate::domain::validate::DELTA_INTERVAL_SECS;
use crate::domain::{ConnectionId, ConnectionStatus, CrmObject, ProviderKind, RecordId, RunId};
use crate::jobs::DeltaSyncJob;
use crate::providers::error::ProviderError;
use crate::store::{
    ConnectionRow, Credentials, NewConnection, ObjectMapping, Resolution, StoreError,
};
use crate::sync::ConflictStrategy;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

fn parse_connection(id: &str) -> Result<ConnectionId, Problem> {
    id.parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no connection {id}")))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    json_object(body)
}

/// A connection as operators see it: never its credentials or secret.
async fn render(api: &Api, row: &ConnectionRow) -> Value {
    let stats = match api.stats.get(row.id).await {
        Ok(s) => json!({
            "received": s.received,
            "duplicates": s.duplicates,
            "rejected": s.rejected,
            "droppedPaused": s.dropped_paused,
            "lastReceivedAt": s.last_received_at_ms
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "webhook stats unavailable");
            Value::Null
        }
    };
    json!({
        "id": row.id,
        "provider": row.provider,
        "portalId": row.external_account_id,
        "rateBudget": rate_budget(api, row).await,
        "health": latest_health(api, row).await,
        "status": row.status,
        "statusReason": row.status_reason,
        "strategy": row.settings.strategy,
        "objects": row.settings.objects,
        "deltaIntervalSecs": row.delta_interval_secs,
        "parkedRecords": parked_records(api, row).await,
        "hasWebhookSecret": row.has_webhook_secret(),
        "webhookStats": stats,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    })
}

/// Records of the connection parked and not yet fixed or replayed (`null`
/// when the store cannot say).
async fn parked_records(api: &Api, row: &ConnectionRow) -> Value {
    match api.store.parked_counts(row.tenant).await {
        Ok(counts) => json!(
            counts
                .into_iter()
                .find(|(c, _)| *c == row.id)
                .map_or(0, |(_, n)| n)
        ),
        Err(e) => {
            tracing::warn!(error = %e, "parked records unavailable");
            Value::Null
        }
    }
}

/// The connection's latest health check (`null` before the first).
async fn latest_health(api: &Api, row: &ConnectionRow) -> Value {
    match api.store.health_history(row.tenant, row.id, 1).await {
        Ok(checks) => checks.into_iter().next().map_or(Value::Null, |c| json!(c)),
        Err(e) => {
            tracing::warn!(error = %e, "health unavailable");
            Value::Null
        }
    }
}

/// The account's fleet-wide budget as the workers see it: its size, its use
/// today, and — while callers wait for quota or a 429 cools it down — until
/// when. `null` in the embedded mode (each process has its own budgets).
async fn rate_budget(api: &Api, row: &ConnectionRow) -> Value {
    let Some(conn) = &api.redis else {
        return Value::Null;
    };
    let budget =
        crate::providers::watched_budget(row.provider, &api.settings, &row.external_account_id);
    match crate::ratelimit::shared::status(
        conn,
        &api.settings.queue.namespace,
        &budget.name,
        budget.window,
    )
    .await
    {
        Ok(status) => {
            let mut view = budget.limits;
            view.extend([
                ("share".to_string(), json!(api.settings.budgets.share)),
                ("requestsToday".to_string(), json!(status.requests_today)),
                (
                    "waitingForQuotaUntil".to_string(),
                    json!(status.waiting_until),
                ),
                ("coolDownUntil".to_string(), json!(status.cool_down_until)),
            ]);
            Value::Object(view)
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate budget unavailable");
            Value::Null
        }
    }
}

/// The connection as it is now, rendered.
async fn current(
    api: &Api,
    tenant: crate::domain::TenantId,
    id: ConnectionId,
) -> Result<Response, Problem> {
    let row = api.store.connection(tenant, id).await?;
    Ok(axum::Json(render(api, &row).await).into_response())
}

/// Re-publishes ingress routes after a change (not fatal: the scheduler
/// re-publishes every minute).
pub(super) async fn publish_routes(api: &Api) {
    if let Some(conn) = &api.redis
        && let Err(e) =
            crate::ingress::routes::publish(&api.store, conn, &api.settings.queue.namespace).await
    {
        tracing::warn!(error = %e, "routes not published; the scheduler will");
    }
}

/// `POST /v1/connections` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateConnection {
    provider: String,
    private_app_token: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    portal_id: Option<Option<u64>>,
    webhook_secret: Option<String>,
    strategy: Option<String>,
    objects: Option<Vec<ObjectMapping>>,
    #[serde(default, deserialize_with = "super::present")]
    delta_interval_secs: Option<Option<u64>>,
    full_sync: Option<bool>,
}

fn strategy(name: Option<&str>, default: ConflictStrategy) -> Result<ConflictStrategy, Problem> {
    name.map_or(Ok(default), |s| {
        s.parse().map_err(|e: String| Problem::field("strategy", e))
    })
}

fn objects(mappings: Vec<ObjectMapping>) -> Result<Vec<ObjectMapping>, Problem> {
    if mappings.is_empty() {
        return Err(Problem::field(
            "objects",
            "must name at least one CRM object",
        ));
    }
    let mut seen: Vec<CrmObject> = Vec::new();
    let mut kinds = Vec::new();
    for m in &mappings {
        if seen.contains(&m.crm_object) {
            return Err(Problem::field(
                "objects",
                format!("maps {} twice", m.crm_object),
            ));
        }
        // One platform kind fed by two CRM objects would make each person
        // two platform records.
        if kinds.contains(&m.record_kind) {
            return Err(Problem::field(
                "objects",
                format!(
                    "maps platform {} from two CRM objects; map it from one",
                    m.record_kind
                ),
            ));
        }
        seen.push(m.crm_object);
        kinds.push(m.record_kind);
    }
    Ok(mappings)
}

/// `deltaIntervalSecs`: left out, `default` (brought into range: a row
/// from before the range keeps working); otherwise within
/// [`DELTA_INTERVAL_SECS`], never `null`.
fn interval(secs: Option<Option<u64>>, default: u64) -> Result<u64, Problem> {
    let given = number("deltaIntervalSecs", secs, |s| {
        DELTA_INTERVAL_SECS.contains(&s)
    })?;
    Ok(given
        .unwrap_or_else(|| default.clamp(*DELTA_INTERVAL_SECS.start(), *DELTA_INTERVAL_SECS.end())))
}

pub(super) async fn create_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let input: CreateConnection = json_body(&body)?;
    let provider: ProviderKind = input
        .provider
        .parse()
        .map_err(|e| Problem::field("provider", format!("{e}")))?;
    let token = input
        .private_app_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            Problem::field(
                "privateAppToken",
                "is required (OAuth connections are made with `crmsync connect`)",
            )
        })?;
    // A token travels in a header: visible ASCII only.
    if !token.trim().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::field(
            "privateAppToken",
            "must be printable ASCII without spaces",
        ));
    }
    let claimed_portal = number("portalId", input.portal_id, |p| p > 0)?;
    let token = SecretString::from(token.trim().to_string());
    let mut settings = crate::providers::default_settings(provider);
    settings.strategy = strategy(input.strategy.as_deref(), settings.strategy)?;
    if let Some(mappings) = input.objects {
        settings.objects = objects(mappings)?;
    }
    let delta_interval_secs = interval(
        input.delta_interval_secs,
        api.settings.sync.delta_interval_secs,
    )?;
    // The token must work, and it names its account.
    let crm = api.provider(provider)?;
    let portal = match crm.identify(None, &token).await {
        Ok(portal) => portal,
        Err(ProviderError::Unauthorized(why)) => {
            return Err(Problem::field(
                "privateAppToken",
                format!("was refused by the CRM: {why}"),
            ));
        }
        Err(e) => {
            return Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                format!("could not check the token with the CRM: {e}"),
            ));
        }
    };
    if let Some(claimed) = claimed_portal
        && claimed.to_string() != portal
    {
        return Err(Problem::field(
            "portalId",
            format!("is {claimed}, but the token belongs to portal {portal}"),
        ));
    }
    let id = api
        .store
        .upsert_connection(NewConnection {
            tenant,
            provider,
            external_account_id: portal,
            credentials: Credentials::PrivateAppToken { token },
            settings: settings.clone(),
            delta_interval_secs,
        })
        .await?;
    // A re-authorisation keeps the row; the request's settings apply anyway.
    api.store
        .update_connection(tenant, id, &settings, delta_interval_secs)
        .await?;
    if let Some(secret) = input.webhook_secret.filter(|s| !s.is_empty()) {
        api.store
            .set_webhook_secret(tenant, id, Some(&SecretString::from(secret)))
            .await?;
    }
    publish_routes(&api).await;
    if input.full_sync.unwrap_or(true) {
        crate::jobs::full_sync::start(&api.store, &api.queue, tenant, id)
            .await
            .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    let row = api.store.connection(tenant, id).await?;
    Ok((StatusCode::CREATED, axum::Json(render(&api, &row).await)).into_response())
}

pub(super) async fn list_connections(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
) -> Result<Response, Problem> {
    let mut data = Vec::new();
    for row in api.store.list_connections(tenant).await? {
        data.push(render(&api, &row).await);
    }
    Ok(axum::Json(json!({ "data": data })).into_response())
}

/// A live (not deleted) connection of the tenant, or 404.
async fn live(
    api: &Api,
    tenant: crate::domain::TenantId,
    id: &str,
) -> Result<ConnectionRow, Problem> {
    let id = parse_connection(id)?;
    let row = api.store.connection(tenant, id).await?;
    if row.status == ConnectionStatus::Deleted {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("connection {id} was deleted"),
        ));
    }
    Ok(row)
}

pub(super) async fn get_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    Ok(axum::Json(render(&api, &row).await).into_response())
}

/// `GET /v1/connections/{id}/health` → `{"data": [...]}`: the last 50
/// health checks, newest first.
pub(super) async fn connection_health(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    let checks = api.store.health_history(tenant, row.id, 50).await?;
    Ok(axum::Json(json!({"data": checks})).into_response())
}

/// `PATCH /v1/connections/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchConnection {
    strategy: Option<String>,
    objects: Option<Vec<ObjectMapping>>,
    #[serde(default, deserialize_with = "super::present")]
    delta_interval_secs: Option<Option<u64>>,
    #[serde(default, deserialize_with = "super::present")]
    webhook_secret: Option<Option<String>>,
}

pub(super) async fn patch_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    let input: PatchConnection = json_body(&body)?;
    let mut settings = row.settings.clone();
    settings.strategy = strategy(input.strategy.as_deref(), settings.strategy)?;
    if let Some(mappings) = input.objects {
        settings.objects = objects(mappings)?;
    }
    let secs = interval(input.delta_interval_secs, row.delta_interval_secs)?;
    api.store
        .update_connection(tenant, row.id, &settings, secs)
        .await?;
    if let Some(secret) = input.webhook_secret {
        let secret = secret.filter(|s| !s.is_empty()).map(SecretString::from);
        api.store
            .set_webhook_secret(tenant, row.id, secret.as_ref())
            .await?;
        publish_routes(&api).await;
    }
    current(&api, tenant, row.id).await
}

pub(super) async fn pause_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    if row.status == ConnectionStatus::Active {
        api.store
            .set_connection_status(
                tenant,
                row.id,
                ConnectionStatus::Paused,
                Some("paused by an operator"),
            )
            .await?;
        publish_routes(&api).await;
    }
    current(&api, tenant, row.id).await
}

pub(super) async fn resume_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    match row.status {
        ConnectionStatus::NeedsReauth => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "the connection needs re-authorisation: create it again with a new token",
            ));
        }
        ConnectionStatus::Paused => {
            api.store
                .set_connection_status(tenant, row.id, ConnectionStatus::Active, None)
                .await?;
            publish_routes(&api).await;
            // Catch up on what changed while paused (webhooks were dropped).
            enqueue_delta(&api, tenant, row.id, "resume").await?;
        }
        ConnectionStatus::Active | ConnectionStatus::Deleted => {}
    }
    current(&api, tenant, row.id).await
}

pub(super) async fn delete_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    api.store.delete_connection(tenant, row.id).await?;
    publish_routes(&api).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn enqueue_delta(
    api: &Api,
    tenant: crate::domain::TenantId,
    connection: ConnectionId,
    why: &str,
) -> Result<(), Problem> {
    let job = DeltaSyncJob {
        tenant,
        connection,
        object: None,
        trigger: format!("api-{why}-{}", uuid::Uuid::now_v7()),
        attempt: 0,
        resume: None,
        redrives: 0,
    };
    api.queue
        .push_delta_sync(&job)
        .await
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// `POST /v1/connections/{id}/sync` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequest {
    full: Option<bool>,
}

pub(super) async fn sync_connection(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let row = live(&api, tenant, &id).await?;
    if row.status != ConnectionStatus::Active {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("connection {} is {}: resume it first", row.id, row.status),
        ));
    }
    let input: SyncRequest = json_body(&body)?;
    let no_cursor = api.store.cursors(tenant, row.id).await?.is_empty();
    if input.full.unwrap_or(false) || no_cursor {
        let runs = crate::jobs::full_sync::start(&api.store, &api.queue, tenant, row.id)
            .await
            .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"kind": "full_sync", "runs": runs})),
        )
            .into_response());
    }
    enqueue_delta(&api, tenant, row.id, "sync").await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"kind": "delta_sync", "runs": []})),
    )
        .into_response())
}

/// Paging parameters shared by the operator lists.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    connection_id: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

impl ListParams {
    fn limit(&self) -> Result<i64, Problem> {
        list_limit(self.limit)
    }

    /// The `cursor` of a list paged by id (a uuid).
    fn id_cursor(&self) -> Result<Option<uuid::Uuid>, Problem> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| Problem::field("cursor", "is invalid"))
            })
            .transpose()
    }

    fn connection(&self) -> Result<Option<ConnectionId>, Problem> {
        self.connection_id
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| Problem::field("connectionId", "is not a connection id"))
            })
            .transpose()
    }
}

pub(super) async fn list_runs(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    params: Params<ListParams>,
) -> Result<Response, Problem> {
    let Params(params) = params;
    if params.status.is_some() {
        return Err(Problem::field("status", "is no filter of sync-runs"));
    }
    let limit = params.limit()?;
    let before = match params.cursor.as_deref() {
        Some(c) => {
            Some(decode_run_cursor(c).ok_or_else(|| Problem::field("cursor", "is invalid"))?)
        }
        None => None,
    };
    let mut runs = api
        .store
        .list_runs(tenant, params.connection()?, before, limit + 1)
        .await?;
    let next = if runs.len() as i64 > limit {
        runs.truncate(limit as usize);
        runs.last()
            .map(|r| URL_SAFE_NO_PAD.encode(format!("{}|{}", r.started_at.to_rfc3339(), r.id)))
    } else {
        None
    };
    Ok(axum::Json(json!({"data": runs, "nextCursor": next})).into_response())
}

fn decode_run_cursor(cursor: &str) -> Option<(DateTime<Utc>, RunId)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        RunId(id.parse().ok()?),
    ))
}

pub(super) async fn list_conflicts(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    params: Params<ListParams>,
) -> Result<Response, Problem> {
    let Params(params) = params;
    let status = params.status.as_deref().unwrap_or("open");
    if !matches!(status, "open" | "resolved") {
        return Err(Problem::field("status", "must be open or resolved"));
    }
    let limit = params.limit()?;
    let rows = api
        .store
        .list_conflicts(
            tenant,
            status,
            params.connection()?,
            params.id_cursor()?,
            limit + 1,
        )
        .await?;
    Ok(id_page(rows, limit, |c| c.id))
}

/// `{"data": [...], "nextCursor": ...}` from up to `limit + 1` rows, newest
/// first, paged by id: the extra row says there is a next page.
fn id_page<T: serde::Serialize>(
    mut rows: Vec<T>,
    limit: i64,
    id: impl Fn(&T) -> uuid::Uuid,
) -> Response {
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|row| id(row).to_string())
    } else {
        None
    };
    axum::Json(json!({"data": rows, "nextCursor": next})).into_response()
}

/// `POST /v1/conflicts/{id}/resolve` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resolve {
    resolution: String,
    value: Option<String>,
}

pub(super) async fn resolve_conflict(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let id: uuid::Uuid = id
        .parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no conflict {id}")))?;
    let input: Resolve = json_body(&body)?;
    let resolution = match (input.resolution.as_str(), input.value) {
        ("platform", None) => Resolution::Platform,
        ("crm", None) => Resolution::Crm,
        ("value", Some(v)) => Resolution::Value(v),
        ("value", None) => {
            return Err(Problem::field(
                "value",
                "is needed with resolution \"value\"",
            ));
        }
        ("platform" | "crm", Some(_)) => {
            return Err(Problem::field(
                "value",
                "is only given with resolution \"value\"",
            ));
        }
        (other, _) => {
            return Err(Problem::field(
                "resolution",
                format!("{other:?} is not one of platform, crm, value"),
            ));
        }
    };
    let resolved = api
        .store
        .resolve_conflict(tenant, id, &resolution)
        .await
        .map_err(|e| match e {
            // The chosen value breaks the rule of the conflict's field.
            StoreError::Invalid(why) => Problem::field("value", why),
            other => other.into(),
        })?;
    if let Err(e) = api
        .queue
        .request_push(tenant, resolved.connection_id, "resolve")
        .await
    {
        tracing::warn!(error = %e, "push not enqueued; the outbox keeps it");
    }
    Ok(axum::Json(resolved).into_response())
}

/// `GET /v1/leads/{id}/history`: why each field of the lead changed; 404
/// for an id that is no live lead of the tenant.
pub(super) async fn lead_history(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    record_history(&api, tenant, crate::domain::RecordKind::Lead, &id).await
}

/// `GET /v1/contacts/{id}/history`, as [`lead_history`].
pub(super) async fn contact_history(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    record_history(&api, tenant, crate::domain::RecordKind::Contact, &id).await
}

async fn record_history(
    api: &Api,
    tenant: crate::domain::TenantId,
    kind: crate::domain::RecordKind,
    id: &str,
) -> Result<Response, Problem> {
    let not_found = || Problem::new(StatusCode::NOT_FOUND, format!("no {kind} {id}"));
    let id: RecordId = id.parse().map_err(|_| not_found())?;
    if api.store.record_view(tenant, kind, id).await?.is_none() {
        return Err(not_found());
    }
    let changes = api.store.field_changes(tenant, id, 200).await?;
    Ok(axum::Json(json!({ "data": changes })).into_response())
}

/// `GET /v1/dead-letters?status=open|replayed&connectionId=&limit=&cursor=`:
/// jobs that failed for good, newest first.
pub(super) async fn list_dead_letters(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    params: Params<ListParams>,
) -> Result<Response, Problem> {
    let Params(params) = params;
    let replayed = match params.status.as_deref().unwrap_or("open") {
        "open" => false,
        "replayed" => true,
        _ => return Err(Problem::field("status", "must be open or replayed")),
    };
    let limit = params.limit()?;
    let rows = api
        .store
        .list_dead_letters(
            tenant,
            replayed,
            params.connection()?,
            params.id_cursor()?,
            limit + 1,
        )
        .await?;
    Ok(id_page(rows, limit, |d| d.id))
}

/// Replays one open dead letter (marked replayed, then its job queued:
/// see [`crate::jobs::replay::replay`]); `None` when it was not open any
/// more.
async fn replay_one(
    api: &Api,
    tenant: crate::domain::TenantId,
    dead: &crate::store::DeadLetter,
) -> Result<Option<chrono::DateTime<Utc>>, Problem> {
    let by = crate::store::ReplayedBy::Operator;
    crate::jobs::replay::replay(&api.queue, &api.store, (tenant, dead), by)
        .await
        .map_err(|e| match e {
            crate::jobs::JobError::Permanent(m) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, m)
            }
            other => Problem::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        })
}

/// `POST /v1/dead-letters/{id}/replay` → 202 with the dead letter, now
/// replayed; 404 for one that is unknown or replayed already.
pub(super) async fn replay_dead_letter(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::new(StatusCode::NOT_FOUND, format!("no open dead letter {id}"));
    let uuid: uuid::Uuid = id.parse().map_err(|_| not_found())?;
    let Some(mut dead) = api.store.open_dead_letter(tenant, uuid).await? else {
        return Err(not_found());
    };
    // Replayed or fixed since it was read: nothing was queued.
    let Some(at) = replay_one(&api, tenant, &dead).await? else {
        return Err(not_found());
    };
    dead.replayed_at = Some(at);
    dead.replayed_by = Some(crate::store::ReplayedBy::Operator.as_str().to_string());
    Ok((StatusCode::ACCEPTED, axum::Json(dead)).into_response())
}

/// `POST /v1/dead-letters/replay[?connectionId=]` → 202 `{"replayed": n}`:
/// every dead letter (of one connection) open when the request came,
/// queued again. Dead letters made after that — a replayed job failing
/// again — stay open: a replay never chases its own failures.
pub(super) async fn replay_dead_letters(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    params: Params<ListParams>,
) -> Result<Response, Problem> {
    let Params(params) = params;
    let connection = params.connection()?;
    // Ids are time-ordered (v7): one made now is after every one open now.
    let mut before = uuid::Uuid::now_v7();
    let mut replayed = 0;
    loop {
        let batch = api
            .store
            .list_dead_letters(tenant, false, connection, Some(before), 200)
            .await?;
        let Some(last) = batch.last() else {
            break;
        };
        before = last.id;
        for dead in &batch {
            if replay_one(&api, tenant, dead).await?.is_some() {
                replayed += 1;
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"replayed": replayed})),
    )
        .into_response())
}

#[cfg(test)]
mod openapi_tests {
    use serde_json::Value;
    use std::collections::BTreeSet;

    /// Every route of `Api::router` with its methods; keep in step with it.
    const SERVED: &[(&str, &[&str])] = &[
        ("/v1/leads", &["get", "post"]),
        ("/v1/leads/{id}", &["get", "patch", "delete"]),
        ("/v1/contacts", &["get", "post"]),
        ("/v1/contacts/{id}", &["get", "patch", "delete"]),
        ("/v1/leads/{id}/history", &["get"]),
        ("/v1/contacts/{id}/history", &["get"]),
        ("/v1/connections", &["get", "post"]),
        ("/v1/connections/{id}", &["get", "patch", "delete"]),
        ("/v1/connections/{id}/pause", &["post"]),
        ("/v1/connections/{id}/resume", &["post"]),
        ("/v1/connections/{id}/sync", &["post"]),
        ("/v1/connections/{id}/health", &["get"]),
        ("/v1/sync-runs", &["get"]),
        ("/v1/conflicts", &["get"]),
        ("/v1/conflicts/{id}/resolve", &["post"]),
        ("/v1/dead-letters", &["get"]),
        ("/v1/dead-letters/replay", &["post"]),
        ("/v1/dead-letters/{id}/replay", &["post"]),
        ("/v1/oauth/{provider}/authorize", &["get"]),
        ("/oauth/{provider}/callback", &["get"]),
        ("/openapi.json", &["get"]),
        ("/health", &["get"]),
    ];

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
            _ => {}
        }
    }

    /// Every `deltaIntervalSecs` schema in `v`.
    fn interval_schemas<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "deltaIntervalSecs" && value.is_object() {
                        out.push(value);
                    }
                    interval_schemas(value, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| interval_schemas(i, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_states_the_delta_interval_range_the_api_holds() {
        let doc: Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON");
        let mut found = Vec::new();
        interval_schemas(&doc, &mut found);
        assert!(found.len() >= 3, "the connection, its create and its patch");
        let range = crate::domain::validate::DELTA_INTERVAL_SECS;
        for schema in found {
            assert_eq!(schema["minimum"], *range.start(), "{schema}");
            assert_eq!(schema["maximum"], *range.end(), "{schema}");
        }
    }

    #[test]
    fn the_document_covers_every_route_with_its_methods() {
        let doc: Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths is an object");
        for (path, methods) in SERVED {
            let item = paths
                .get(*path)
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("{path} is not documented"));
            let documented: BTreeSet<&str> = item
                .keys()
                .map(String::as_str)
                .filter(|k| METHODS.contains(k))
                .collect();
            let served: BTreeSet<&str> = methods.iter().copied().collect();
            assert_eq!(documented, served, "methods of {path}");
        }
        let served: BTreeSet<&str> = SERVED.iter().map(|(p, _)| *p).collect();
        let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(
            documented, served,
            "documented paths the router does not serve"
        );
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for r in found {
            assert!(
                doc.pointer(r.trim_start_matches('#')).is_some(),
                "dangling $ref {r}"
            );
        }
    }
}
