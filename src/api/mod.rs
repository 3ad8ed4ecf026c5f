//! The platform API (`crmsync-api`): leads and contacts as one deduplicated
//! view of platform- and CRM-originated records, behind a bearer token per
//! tenant. Writes commit with their outbox rows and enqueue a push, so a lead
//! created here reaches each connected CRM once. Errors are
//! `application/problem+json`.

use crate::domain::validate::{STATUSES, check_value};
use crate::domain::{
    CanonicalField, ConnectionId, Origin, RecordFields, RecordId, RecordKind, TenantId,
};
use crate::queue::Queue;
use crate::store::{RecordQuery, RecordView, Store, StoreError};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod auth;
mod input;
mod oauth;
mod operator;

pub use auth::{AUTH_CHECKS_BURST, AUTH_CHECKS_PER_SEC, TOKEN_TTL, Tenant};
pub use input::MAX_BODY_BYTES;
use input::{Params, json_object, list_limit};
pub use oauth::Clock;

/// Shared state of the API.
#[derive(Clone)]
pub struct Api {
    store: Store,
    queue: Queue,
    settings: std::sync::Arc<crate::config::Settings>,
    stats: crate::ingress::stats::WebhookStats,
    redis: Option<redis::aio::ConnectionManager>,
    /// Verified tokens (a busy client costs one lookup per [`TOKEN_TTL`])
    /// and the per-address budget of token checks.
    auth: std::sync::Arc<auth::Auth>,
    /// When OAuth states expire is read from this (tests move it).
    clock: Clock,
    /// The CRM adapters (token checks, OAuth code exchange): built once, so
    /// a request does not build an HTTP client; `Err` says why they could
    /// not be built.
    providers: Result<crate::providers::Providers, String>,
}

impl Api {
    /// Builds the API over a store, the queue pushes and syncs go to, the
    /// webhook stats ingress writes, and (in production) the Redis that
    /// holds ingress routes, re-published when a connection changes.
    pub fn new(
        store: Store,
        queue: Queue,
        settings: std::sync::Arc<crate::config::Settings>,
        stats: crate::ingress::stats::WebhookStats,
        redis: Option<redis::aio::ConnectionManager>,
    ) -> Self {
        let providers = crate::providers::Providers::new(&settings, Default::default())
            .map_err(|e| e.to_string());
        let auth = std::sync::Arc::new(auth::Auth::new(&settings.api.trusted_proxies));
        Self {
            store,
            queue,
            settings,
            stats,
            redis,
            auth,
            clock: Clock::default(),
            providers,
        }
    }

    /// The adapter for `kind`, or a 503 saying why there is none.
    fn provider(
        &self,
        kind: crate::domain::ProviderKind,
    ) -> Result<crate::providers::Provider, Problem> {
        self.providers
            .as_ref()
            .map(|p| p.get(kind))
            .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.clone()))
    }

    /// The same api reading time from `clock` (OAuth state expiry).
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// The axum app.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/leads", get(list_leads).post(create_lead))
            .route(
                "/v1/leads/{id}",
                get(get_lead).patch(patch_lead).delete(delete_lead),
            )
            .route("/v1/contacts", get(list_contacts).post(create_contact))
            .route(
                "/v1/contacts/{id}",
                get(get_contact).patch(patch_contact).delete(delete_contact),
            )
            .route("/v1/leads/{id}/history", get(operator::lead_history))
            .route("/v1/contacts/{id}/history", get(operator::contact_history))
            .route(
                "/v1/connections",
                get(operator::list_connections).post(operator::create_connection),
            )
            .route(
                "/v1/connections/{id}",
                get(operator::get_connection)
                    .patch(operator::patch_connection)
                    .delete(operator::delete_connection),
            )
            .route(
                "/v1/connections/{id}/pause",
                post(operator::pause_connection),
            )
            .route(
                "/v1/connections/{id}/resume",
                post(operator::resume_connection),
            )
            .route("/v1/connections/{id}/sync", post(operator::sync_connection))
            .route(
                "/v1/connections/{id}/health",
                get(operator::connection_health),
            )
            .route("/v1/sync-runs", get(operator::list_runs))
            .route("/v1/conflicts", get(operator::list_conflicts))
            .route(
                "/v1/conflicts/{id}/resolve",
                post(operator::resolve_conflict),
            )
            .route("/v1/dead-letters", get(operator::list_dead_letters))
            .route(
                "/v1/dead-letters/replay",
                post(operator::replay_dead_letters),
            )
            .route(
                "/v1/dead-letters/{id}/replay",
                post(operator::replay_dead_letter),
            )
            .route("/v1/oauth/{provider}/authorize", get(oauth::authorize))
            .route("/oauth/{provider}/callback", get(oauth::callback))
            .route("/openapi.json", get(openapi))
            .route("/health", get(|| async { "ok" }))
            .fallback(input::not_found)
            .method_not_allowed_fallback(input::method_not_allowed)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(input::problem_json))
            .layer(axum::middleware::from_fn(request_span))
            .with_state(self)
    }
}

/// One span per api request, named by its route (never by ids in the
/// path), so that the jobs and CRM calls it causes hang off it.
async fn request_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "api.request",
        http.method = %request.method(),
        http.route = %route,
        http.status = tracing::field::Empty
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.status", response.status().as_u16());
    response
}

/// An error answered as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    /// The fields a 400 refuses, for programs (`errors` in the body).
    errors: Vec<FieldError>,
    /// Seconds until a retry may succeed (`Retry-After`).
    retry_after: Option<u64>,
}

/// One refused field: its api name and why.
#[derive(Debug, Clone, Serialize)]
struct FieldError {
    field: String,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 400 naming the refused field (its camelCase api name).
    fn field(field: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            errors: vec![FieldError {
                field: field.to_string(),
                detail: detail.clone(),
            }],
            ..Self::new(StatusCode::BAD_REQUEST, format!("{field} {detail}"))
        }
    }

    fn retry_after(self, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = crate::http_server::problem_body(self.status, &self.detail);
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::domain::validate::FieldProblem> for Problem {
    fn from(p: crate::domain::validate::FieldProblem) -> Self {
        Problem::field(p.field.as_str(), p.reason)
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Problem::new(StatusCode::CONFLICT, m),
            StoreError::Invalid(m) => Problem::new(StatusCode::BAD_REQUEST, m),
            StoreError::NotFound(m) => {
                Problem::new(StatusCode::NOT_FOUND, format!("{m} not found"))
            }
            other => {
                tracing::error!(error = %other, "api store error");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable")
            }
        }
    }
}

/// A lead or contact as written by the platform (all fields optional on
/// PATCH; `null` clears a field).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordInput {
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    company: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    job_title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    status: Option<Option<String>>,
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`); absent
/// fields stay `None` through `#[serde(default)]`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl RecordInput {
    fn pairs(&self) -> [(CanonicalField, &Option<Option<String>>); 7] {
        [
            (CanonicalField::Email, &self.email),
            (CanonicalField::FirstName, &self.first_name),
            (CanonicalField::LastName, &self.last_name),
            (CanonicalField::Company, &self.company),
            (CanonicalField::JobTitle, &self.job_title),
            (CanonicalField::Phone, &self.phone),
            (CanonicalField::Status, &self.status),
        ]
    }

    /// Parses a record body: a JSON object whose every value follows the
    /// platform's field rules (`domain::validate`), or a 400 naming the
    /// first field that does not.
    fn parse(body: &[u8]) -> Result<Self, Problem> {
        let input: Self = json_object(body)?;
        for (field, value) in input.pairs() {
            if let Some(Some(v)) = value {
                check_value(field, v)?;
            }
        }
        Ok(input)
    }

    /// The fields with this input's values set (`null` clears one).
    fn apply(&self, mut fields: RecordFields) -> RecordFields {
        for (field, value) in self.pairs() {
            match value {
                None => {}
                Some(None) => fields.set(field, ""),
                Some(Some(v)) => fields.set(field, v),
            }
        }
        fields
    }

    /// Whether the input sets no field to a value (a create of nothing).
    fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, v)| {
            v.as_ref()
                .is_none_or(|v| v.as_deref().is_none_or(|v| v.trim().is_empty()))
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkOut {
    connection_id: ConnectionId,
    provider: &'static str,
    crm_id: String,
    sync_status: &'static str,
    last_synced_at: DateTime<Utc>,
}

fn render(view: &RecordView) -> Value {
    let f = |field| view.fields.get(field);
    let full_name = [f(CanonicalField::FirstName), f(CanonicalField::LastName)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let links: Vec<LinkOut> = view
        .links
        .iter()
        .map(|l| LinkOut {
            connection_id: l.connection,
            provider: l.provider.as_str(),
            crm_id: l.crm_id.clone(),
            sync_status: if l.unlinked {
                "unlinked"
            } else if l.crm_deleted_at.is_some() {
                "deleted_in_crm"
            } else {
                "synced"
            },
            last_synced_at: l.updated_at,
        })
        .collect();
    json!({
        "id": view.id,
        "email": f(CanonicalField::Email),
        "firstName": f(CanonicalField::FirstName),
        "lastName": f(CanonicalField::LastName),
        "company": f(CanonicalField::Company),
        "jobTitle": f(CanonicalField::JobTitle),
        "phone": f(CanonicalField::Phone),
        "status": f(CanonicalField::Status),
        "fullName": if full_name.is_empty() { None } else { Some(full_name) },
        "origin": view.origin,
        "originProvider": view.origin_provider,
        "originCrmId": view.origin_crm_id,
        "links": links,
        "createdAt": view.created_at,
        "updatedAt": view.updated_at,
    })
}

fn parse_id(id: &str) -> Result<RecordId, Problem> {
    id.parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("no record {id}")))
}

/// Asks for a push of each connection after a write committed its outbox
/// rows (`queue::push_request`: writes arriving together share one job).
async fn enqueue_pushes(api: &Api, tenant: TenantId, connections: &[ConnectionId]) {
    for connection in connections {
        // Not fatal: the row is in the outbox and the delta's sweep pushes it.
        if let Err(e) = api.queue.request_push(tenant, *connection, "api").await {
            tracing::warn!(error = %e, connection.id = %connection, "push not enqueued; the outbox keeps it");
        }
    }
}

async fn create(
    api: Api,
    tenant: TenantId,
    kind: RecordKind,
    body: &[u8],
) -> Result<Response, Problem> {
    let input = RecordInput::parse(body)?;
    if input.is_empty() {
        return Err(bad(format!(
            "a {kind} needs at least one field with a value"
        )));
    }
    let fields = input.apply(RecordFields::new());
    let (id, connections) = api
        .store
        .create_platform_record(tenant, kind, &fields)
        .await?;
    enqueue_pushes(&api, tenant, &connections).await;
    let view = api
        .store
        .record_view(tenant, kind, id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "gone"))?;
    Ok((StatusCode::CREATED, axum::Json(render(&view))).into_response())
}

async fn read(api: Api, tenant: TenantId, kind: RecordKind, id: &str) -> Result<Response, Problem> {
    let id = parse_id(id)?;
    match api.store.record_view(tenant, kind, id).await? {
        Some(view) => {
            let mut body = render(&view);
            // Where its sync is held: refused by a CRM or by the platform.
            let parked: Vec<Value> = api
                .store
                .parked_for_record(tenant, id)
                .await?
                .into_iter()
                .map(|d| {
                    json!({
                        "connectionId": d.connection_id,
                        "direction": if d.job_kind == crate::store::PUSH_RECORD { "push" } else { "pull" },
                        "reason": d.error,
                        "since": d.failed_at,
                        "deadLetterId": d.id,
                    })
                })
                .collect();
            body["parked"] = Value::Array(parked);
            Ok(axum::Json(body).into_response())
        }
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no {kind} {id}"),
        )),
    }
}

async fn patch(
    api: Api,
    tenant: TenantId,
    kind: RecordKind,
    id: &str,
    body: &[u8],
) -> Result<Response, Problem> {
    let id = parse_id(id)?;
    let input = RecordInput::parse(body)?;
    let Some((view, connections)) = api
        .store
        .patch_platform_record(tenant, kind, id, |current| Ok(input.apply(current)))
        .await?
    else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no {kind} {id}"),
        ));
    };
    enqueue_pushes(&api, tenant, &connections).await;
    Ok(axum::Json(render(&view)).into_response())
}

async fn delete(
    api: Api,
    tenant: TenantId,
    kind: RecordKind,
    id: &str,
) -> Result<Response, Problem> {
    let id = parse_id(id)?;
    if let Some(connections) = api.store.delete_platform_record(tenant, kind, id).await? {
        enqueue_pushes(&api, tenant, &connections).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no {kind} {id}"),
        ))
    }
}

/// `GET /v1/leads` query parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    origin: Option<String>,
    provider: Option<String>,
    connection_id: Option<String>,
    updated_since: Option<String>,
    sort: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
    include_crm_leads: Option<bool>,
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

async fn list(
    api: Api,
    tenant: TenantId,
    kind: RecordKind,
    params: ListParams,
) -> Result<Response, Problem> {
    let limit = list_limit(params.limit)?;
    if let Some(status) = params.status.as_deref()
        && !STATUSES.contains(&status)
    {
        return Err(Problem::field(
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    let mut origin = match params.origin.as_deref() {
        Some(o) => Some(
            o.parse::<Origin>()
                .map_err(|e| Problem::field("origin", e.to_string()))?,
        ),
        None => None,
    };
    if params.include_crm_leads == Some(false) {
        origin = Some(Origin::Platform);
    }
    let provider = match params.provider.as_deref() {
        Some(provider) => Some(
            provider
                .parse::<crate::domain::ProviderKind>()
                .map_err(|e| Problem::field("provider", e.to_string()))?,
        ),
        None => None,
    };
    let connection = match params.connection_id.as_deref() {
        Some(c) => Some(
            c.parse::<ConnectionId>()
                .map_err(|_| Problem::field("connectionId", "is not a connection id"))?,
        ),
        None => None,
    };
    let updated_since = match params.updated_since.as_deref() {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| Problem::field("updatedSince", "must be an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let (by_updated, newest_first) = match params.sort.as_deref() {
        None | Some("createdAt") => (false, false),
        Some("-createdAt") => (false, true),
        Some("updatedAt") => (true, false),
        Some("-updatedAt") => (true, true),
        Some(other) => {
            return Err(Problem::field(
                "sort",
                format!("{other:?} is not one of createdAt, -createdAt, updatedAt, -updatedAt"),
            ));
        }
    };
    let sort_key = if by_updated { "u" } else { "c" };
    let after =
        match params.cursor.as_deref() {
            Some(c) => Some(decode_cursor(c, sort_key).ok_or_else(|| {
                Problem::field("cursor", "is invalid (or from another sort order)")
            })?),
            None => None,
        };
    let query = RecordQuery {
        provider,
        origin,
        status: params.status,
        updated_since,
        connection,
        by_updated,
        newest_first,
        after,
        limit: limit + 1,
    };
    let mut page = api.store.list_records(tenant, kind, &query).await?;
    let next = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last().map(|v| {
            encode_cursor(
                sort_key,
                if by_updated {
                    v.updated_at
                } else {
                    v.created_at
                },
                v.id,
            )
        })
    } else {
        None
    };
    let data: Vec<Value> = page.iter().map(render).collect();
    Ok(axum::Json(json!({"data": data, "nextCursor": next})).into_response())
}

/// A cursor names its sort order, the last row's sort time and id.
fn encode_cursor(sort: &str, at: DateTime<Utc>, id: RecordId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{sort}|{}|{}", at.to_rfc3339(), id))
}

fn decode_cursor(cursor: &str, sort: &str) -> Option<(DateTime<Utc>, RecordId)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let rest = text.strip_prefix(sort)?.strip_prefix('|')?;
    let (at, id) = rest.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        id.parse().ok()?,
    ))
}

macro_rules! kind_routes {
    ($kind:expr, $list:ident, $create:ident, $get:ident, $patch:ident, $delete:ident) => {
        async fn $list(
            State(api): State<Api>,
            Tenant(t): Tenant,
            Params(params): Params<ListParams>,
        ) -> Result<Response, Problem> {
            list(api, t, $kind, params).await
        }
        async fn $create(
            State(api): State<Api>,
            Tenant(t): Tenant,
            body: axum::body::Bytes,
        ) -> Result<Response, Problem> {
            create(api, t, $kind, &body).await
        }
        async fn $get(
            State(api): State<Api>,
            Tenant(t): Tenant,
            Path(id): Path<String>,
        ) -> Result<Response, Problem> {
            read(api, t, $kind, &id).await
        }
        async fn $patch(
            State(api): State<Api>,
            Tenant(t): Tenant,
            Path(id): Path<String>,
            body: axum::body::Bytes,
        ) -> Result<Response, Problem> {
            patch(api, t, $kind, &id, &body).await
        }
        async fn $delete(
            State(api): State<Api>,
            Tenant(t): Tenant,
            Path(id): Path<String>,
        ) -> Result<Response, Problem> {
            delete(api, t, $kind, &id).await
        }
    };
}

kind_routes!(
    RecordKind::Lead,
    list_leads,
    create_lead,
    get_lead,
    patch_lead,
    delete_lead
);
kind_routes!(
    RecordKind::Contact,
    list_contacts,
    create_contact,
    get_contact,
    patch_contact,
    delete_contact
);

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI document of the endpoints above.
const OPENAPI: &str = include_str!("openapi.json");
