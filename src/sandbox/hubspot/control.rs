//! The control API under `/_sandbox/...` (a prefix no HubSpot API uses):
//! accounts and tokens, seeding, acting as a CRM user so webhooks carry user
//! attribution, counters for assertions, limits, fault knobs and reset.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Sandbox;
use super::error::ApiError;
use super::model::Actor;
use super::oauth::{self, DEFAULT_SCOPES};
use super::objects::{
    self, MergeInput, object_type, parse_body, query_one, query_pairs, write, write_error,
};
use super::seed;
use super::state::{Account, Limits, RuntimeSettings, TokenInfo, TokenKind, lock};
use crate::sandbox::faults::FaultSettings;
use crate::sandbox::rng::random_token;

fn account(sb: &Sandbox, portal_id: u64) -> Result<std::sync::Arc<Account>, ApiError> {
    sb.state
        .account(portal_id)
        .ok_or_else(|| ApiError::not_found(format!("No sandbox account {portal_id}")))
}

fn user(q: &Option<String>) -> Actor {
    let pairs = query_pairs(q);
    Actor::User {
        user_id: query_one(&pairs, "userId")
            .and_then(|u| u.parse().ok())
            .unwrap_or(1),
    }
}

/// `GET /_sandbox/health`.
pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

fn account_summary(account: &Account) -> Value {
    let data = lock(&account.data);
    let live = |s: &super::model::ObjectStore| {
        s.objects
            .values()
            .filter(|o| o.archived_ms.is_none())
            .count()
    };
    let archived = |s: &super::model::ObjectStore| {
        s.objects
            .values()
            .filter(|o| o.archived_ms.is_some())
            .count()
    };
    json!({
        "portalId": account.portal_id,
        "contacts": live(&data.contacts),
        "archivedContacts": archived(&data.contacts),
        "leads": live(&data.leads),
        "archivedLeads": archived(&data.leads),
        "installedApps": lock(&account.installed_apps).iter().collect::<Vec<_>>(),
        "limits": *lock(&account.limits),
    })
}

/// `GET /_sandbox/accounts`.
pub async fn list_accounts(State(sb): State<Sandbox>) -> Response {
    let accounts: Vec<_> = sb
        .state
        .accounts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    axum::Json(json!({"results": accounts.iter().map(|a| account_summary(a)).collect::<Vec<_>>()}))
        .into_response()
}

/// `GET /_sandbox/accounts/{portalId}`.
pub async fn get_account(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
) -> Result<Response, ApiError> {
    let account = account(&sb, portal_id)?;
    Ok(axum::Json(account_summary(&account)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewAccount {
    portal_id: Option<u64>,
    private_app_token: Option<String>,
    #[serde(default = "yes")]
    install_app: bool,
    limits: Option<Limits>,
}

fn yes() -> bool {
    true
}

/// Creates a private-app token for an account, belonging to the start-up app.
pub fn add_private_app_token(sb: &Sandbox, portal_id: u64, token: String) -> String {
    lock(&sb.state.tokens).access.insert(
        token.clone(),
        TokenInfo {
            portal_id,
            app_id: sb.config.app_id,
            scopes: DEFAULT_SCOPES
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            kind: TokenKind::PrivateApp,
        },
    );
    token
}

/// `POST /_sandbox/accounts` → `{portalId, privateAppToken, appId}`.
pub async fn create_account(State(sb): State<Sandbox>, body: Bytes) -> Result<Response, ApiError> {
    let input: NewAccount = if body.is_empty() {
        NewAccount {
            install_app: true,
            ..Default::default()
        }
    } else {
        parse_body(&body)?
    };
    let portal_id = input.portal_id.unwrap_or_else(|| {
        let accounts = sb.state.accounts.read().unwrap_or_else(|p| p.into_inner());
        accounts
            .keys()
            .max()
            .copied()
            .unwrap_or(sb.config.portal_id)
            + 1
    });
    if sb.state.account(portal_id).is_some() {
        return Err(ApiError::conflict(format!(
            "Account {portal_id} already exists"
        )));
    }
    let account = sb.state.ensure_account(portal_id);
    if let Some(limits) = input.limits {
        *lock(&account.limits) = limits;
    }
    if input.install_app {
        sb.install_app(portal_id, sb.config.app_id);
    }
    let token = add_private_app_token(
        &sb,
        portal_id,
        input
            .private_app_token
            .unwrap_or_else(|| random_token("pat-na1-")),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"portalId": portal_id, "privateAppToken": token, "appId": sb.config.app_id}),
        ),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SeedInput {
    #[serde(default)]
    contacts: u64,
    #[serde(default)]
    leads: u64,
    seed: Option<u64>,
}

/// `POST /_sandbox/accounts/{portalId}/seed` `{contacts, leads, seed}`.
pub async fn seed_account(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: SeedInput = parse_body(&body)?;
    let account = account(&sb, portal_id)?;
    let (contacts, leads) = seed::seed(
        &account,
        input.contacts,
        input.leads,
        input.seed.unwrap_or(sb.config.seed),
    );
    Ok(axum::Json(json!({"contacts": contacts.len(), "leads": leads.len(), "contactIds": [contacts.first(), contacts.last()], "leadIds": [leads.first(), leads.last()]})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CodeInput {
    portal_id: Option<u64>,
    user_id: Option<u64>,
    redirect_uri: String,
    scopes: Option<Vec<String>>,
}

/// `POST /_sandbox/oauth/codes` → `{code}`: a user installed the app.
pub async fn create_code(State(sb): State<Sandbox>, body: Bytes) -> Result<Response, ApiError> {
    let input: CodeInput = parse_body(&body)?;
    let portal_id = input.portal_id.unwrap_or(sb.config.portal_id);
    account(&sb, portal_id)?;
    let scopes = input.scopes.unwrap_or_else(|| {
        DEFAULT_SCOPES
            .split_whitespace()
            .map(str::to_string)
            .collect()
    });
    let code = oauth::authorize(
        &sb,
        portal_id,
        sb.config.app_id,
        input.user_id.unwrap_or(1),
        &input.redirect_uri,
        scopes,
    );
    Ok(axum::Json(json!({"code": code})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpireInput {
    access_token: String,
}

/// `POST /_sandbox/oauth/expire` `{accessToken}`: the token expires now.
pub async fn expire_token(State(sb): State<Sandbox>, body: Bytes) -> Result<Response, ApiError> {
    let input: ExpireInput = parse_body(&body)?;
    let mut tokens = lock(&sb.state.tokens);
    match tokens.access.get_mut(&input.access_token) {
        Some(TokenInfo {
            kind: TokenKind::OAuth { expires_at, .. },
            ..
        }) => {
            *expires_at = Instant::now();
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ApiError::not_found("No such OAuth access token")),
    }
}

fn properties(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    let value: Value = parse_body(body)?;
    match value.get("properties") {
        Some(Value::Object(map)) => Ok(map.clone()),
        _ => Err(ApiError::validation("body must be {\"properties\": {...}}")),
    }
}

/// `POST /_sandbox/accounts/{portalId}/objects/{objectType}`: a user creates a record.
pub async fn user_create(
    State(sb): State<Sandbox>,
    Path((portal_id, ot)): Path<(u64, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let account = account(&sb, portal_id)?;
    let links = objects::inline_associations(object, &parse_body::<Value>(&body)?)?;
    objects::create_as(&sb, &account, user(&q), object, properties(&body)?, &links)
        .map(|v| (StatusCode::CREATED, axum::Json(v)).into_response())
}

/// `PATCH /_sandbox/accounts/{portalId}/objects/{objectType}/{id}`: a user edits a record.
pub async fn user_update(
    State(sb): State<Sandbox>,
    Path((portal_id, ot, id)): Path<(u64, String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let account = account(&sb, portal_id)?;
    objects::update_as(
        &sb,
        &account,
        user(&q),
        object,
        &id,
        None,
        properties(&body)?,
    )
    .map(|v| axum::Json(v).into_response())
}

/// `DELETE /_sandbox/accounts/{portalId}/objects/{objectType}/{id}`: a user deletes a record.
pub async fn user_archive(
    State(sb): State<Sandbox>,
    Path((portal_id, ot, id)): Path<(u64, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let account = account(&sb, portal_id)?;
    objects::archive_as(&sb, &account, user(&q), object, &[id])?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /_sandbox/accounts/{portalId}/objects/{objectType}/{id}/restore`.
pub async fn user_restore(
    State(sb): State<Sandbox>,
    Path((portal_id, ot, id)): Path<(u64, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let account = account(&sb, portal_id)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::validation("id must be a number"))?;
    let lag = sb.state.index_lag();
    write(&sb, &account, user(&q), |data, now, clock| {
        let store = data.store(object);
        let change = store
            .restore(id, now, clock, lag)
            .map_err(|e| write_error(object, e))?;
        Ok((store.objects[&id].to_json(object, &[], &[]), vec![change]))
    })
    .map(|v| axum::Json(v).into_response())
}

/// `POST /_sandbox/accounts/{portalId}/objects/contacts/merge`: a user merges two contacts.
pub async fn user_merge(
    State(sb): State<Sandbox>,
    Path((portal_id, ot)): Path<(u64, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let account = account(&sb, portal_id)?;
    let input: MergeInput = parse_body(&body)?;
    objects::merge_as(&sb, &account, user(&q), object, &input)
        .map(|v| axum::Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BulkUpdate {
    ids: Option<Vec<u64>>,
    limit: Option<usize>,
    properties: Map<String, Value>,
    #[serde(default)]
    suffix_with_id: bool,
}

/// `POST /_sandbox/accounts/{portalId}/objects/{objectType}/bulk-update`: a
/// user's import or workflow touching many records in one instant — every
/// record gets the same modification timestamp (the case that breaks naive
/// delta cursors). `ids`, or the first `limit` live records; with
/// `suffixWithId` each string value gets ` #<id>` appended so every record
/// really changes.
pub async fn user_bulk_update(
    State(sb): State<Sandbox>,
    Path((portal_id, ot)): Path<(u64, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let account = account(&sb, portal_id)?;
    let input: BulkUpdate = parse_body(&body)?;
    let actor = user(&q);
    let lag = sb.state.index_lag();
    let updated = write(&sb, &account, actor, |data, now, clock| {
        let store = data.store(object);
        let base = objects::validated(store, &input.properties)?;
        let ids: Vec<u64> = match &input.ids {
            Some(ids) => ids.clone(),
            None => store
                .objects
                .values()
                .filter(|o| o.archived_ms.is_none())
                .take(input.limit.unwrap_or(usize::MAX))
                .map(|o| o.id)
                .collect(),
        };
        let (mut count, mut skipped, mut changes) = (0usize, 0usize, Vec::new());
        for id in ids {
            let values: BTreeMap<String, String> = if input.suffix_with_id {
                base.iter()
                    .map(|(k, v)| (k.clone(), format!("{v} #{id}")))
                    .collect()
            } else {
                base.clone()
            };
            match store.update(id, values, actor, now, clock, lag) {
                Ok(c) => {
                    count += usize::from(!c.is_empty());
                    changes.extend(c);
                }
                // Gone, or a unique value another record holds: skip it, as an
                // import skips a row it cannot apply, and report how many.
                Err(_) => skipped += 1,
            }
        }
        Ok(((count, skipped, now), changes))
    })?;
    Ok(
        axum::Json(json!({"updated": updated.0, "skipped": updated.1, "timestamp": updated.2}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SilentUpdate {
    object_type: String,
    id: String,
    properties: Map<String, Value>,
}

/// `POST /_sandbox/accounts/{portalId}/silent-update`: a record's values
/// change with no webhook and no move of its modified time (a formula
/// field, or a change the search index missed) — what only a sweep that
/// reads every record can find. Body `{"objectType", "id", "properties"}`;
/// answers `{"changed": n}`.
pub async fn silent_update(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: SilentUpdate = parse_body(&body)?;
    let object = object_type(&input.object_type)?;
    let account = account(&sb, portal_id)?;
    let id: u64 = input
        .id
        .parse()
        .map_err(|_| ApiError::validation("id must be a number"))?;
    let actor = user(&q);
    // No changes returned: `write` then emits no webhook.
    let changed = write(&sb, &account, actor, |data, _, _| {
        let store = data.store(object);
        let values = objects::validated(store, &input.properties)?;
        let changed = store
            .silent_update(id, values, actor)
            .map_err(|e| write_error(object, e))?;
        Ok((changed, Vec::new()))
    })?;
    Ok(axum::Json(json!({"changed": changed})).into_response())
}

/// `GET /_sandbox/accounts/{portalId}/counters`.
pub async fn get_counters(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
) -> Result<Response, ApiError> {
    let account = account(&sb, portal_id)?;
    let counters = account.counters();
    let mut out = serde_json::to_value(&counters).unwrap_or_default();
    out["dailyUsed"] = json!(lock(&account.budget).daily_used);
    out["totalRequests"] = json!(counters.requests.values().sum::<u64>());
    out["totalRateLimited"] = json!(counters.rate_limited.values().sum::<u64>());
    let errors: u64 = counters
        .responses
        .iter()
        .filter(|(class, _)| class.as_str() != "2xx")
        .map(|(_, n)| n)
        .sum();
    out["totalErrors"] = json!(errors);
    Ok(axum::Json(out).into_response())
}

/// `DELETE /_sandbox/accounts/{portalId}/counters`.
pub async fn reset_counters(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
) -> Result<Response, ApiError> {
    let account = account(&sb, portal_id)?;
    account.reset_counters();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /_sandbox/accounts/{portalId}/limits`.
pub async fn get_limits(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(*lock(&account(&sb, portal_id)?.limits)).into_response())
}

/// `PUT /_sandbox/accounts/{portalId}/limits` `{perTenSeconds, daily, searchPerSecond}`.
pub async fn put_limits(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let limits: Limits = parse_body(&body)?;
    *lock(&account(&sb, portal_id)?.limits) = limits;
    Ok(axum::Json(limits).into_response())
}

/// `GET /_sandbox/faults`.
pub async fn get_faults(State(sb): State<Sandbox>) -> Response {
    axum::Json(sb.state.faults.settings()).into_response()
}

/// `PUT /_sandbox/faults` (every knob; omitted ones reset to 0).
pub async fn put_faults(State(sb): State<Sandbox>, body: Bytes) -> Result<Response, ApiError> {
    let settings: FaultSettings = parse_body(&body)?;
    settings.validate().map_err(ApiError::validation)?;
    sb.state.faults.set(settings.clone());
    Ok(axum::Json(settings).into_response())
}

/// `GET /_sandbox/settings`.
pub async fn get_settings(State(sb): State<Sandbox>) -> Response {
    axum::Json(*lock(&sb.state.runtime)).into_response()
}

/// `PUT /_sandbox/settings` `{indexLagMs, tokenTtlSecs}`.
pub async fn put_settings(State(sb): State<Sandbox>, body: Bytes) -> Result<Response, ApiError> {
    let settings: RuntimeSettings = parse_body(&body)?;
    *lock(&sb.state.runtime) = settings;
    Ok(axum::Json(settings).into_response())
}

/// `POST /_sandbox/reset`: back to the start-up state (accounts, tokens,
/// webhooks, counters, knobs as the flags gave them).
pub async fn reset(State(sb): State<Sandbox>) -> Result<Response, ApiError> {
    sb.reset().map_err(ApiError::validation)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct HoldRequest {
    route: String,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

/// `POST /_sandbox/accounts/{portalId}/holds` `{route, count}`: the next
/// `count` answers of `route` (method and path template, as in the
/// counters: `"POST /crm/v3/objects/{object_type}/batch/read"`) are held
/// after their request is carried out, until released.
pub async fn arm_hold(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hold: HoldRequest = parse_body(&body)?;
    account(&sb, portal_id)?.holds.arm(&hold.route, hold.count);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /_sandbox/accounts/{portalId}/holds`: `{armed: {route: n}, waiting}`.
pub async fn get_holds(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
) -> Result<Response, ApiError> {
    let (armed, waiting) = account(&sb, portal_id)?.holds.status();
    Ok(axum::Json(json!({"armed": armed, "waiting": waiting})).into_response())
}

/// `POST /_sandbox/accounts/{portalId}/holds/release`: every held answer
/// goes; holds not yet used are dropped.
pub async fn release_holds(
    State(sb): State<Sandbox>,
    Path(portal_id): Path<u64>,
) -> Result<Response, ApiError> {
    account(&sb, portal_id)?.holds.release();
    Ok(StatusCode::NO_CONTENT.into_response())
}
