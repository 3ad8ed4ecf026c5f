//! OAuth 2.0 as HubSpot serves it (spec `oauth/v1/oauth.json`,
//! `oauth/v3/oauth.json`): authorization codes, the token endpoint with the
//! `authorization_code` and `refresh_token` grants, introspection and
//! revocation; plus account details, which tell a private-app token's portal.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Sandbox;
use super::error::{ApiError, correlation_id};
use super::gate::Caller;
use super::model::iso_ms;
use super::objects::{query_one, query_pairs};
use super::state::{AuthCode, RefreshGrant, TokenInfo, TokenKind, lock, now_ms};
use crate::sandbox::rng::random_token;

/// Scopes granted when a request names none.
/// (HubSpot's space-separated `scope` form: the scopes crmsync's app asks
/// for, so an install that names none works with it.)
pub const DEFAULT_SCOPES: &str = "oauth crm.objects.contacts.read crm.objects.contacts.write \
     crm.objects.leads.read crm.objects.leads.write crm.schemas.contacts.write";

/// The token endpoint's own error shape (not the CRM `Error`): HTTP 400 with
/// `status` such as `BAD_REFRESH_TOKEN` and the OAuth `error` code.
fn token_error(status: &str, error: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "status": status,
            "message": message,
            "error": error,
            "error_description": message,
            "correlationId": correlation_id(),
        })),
    )
        .into_response()
}

fn form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Issues an access token (and keeps the refresh token) for a grant.
pub fn issue(sb: &Sandbox, grant: &RefreshGrant, refresh_token: &str) -> Value {
    let ttl = lock(&sb.state.runtime).token_ttl_secs;
    let access = random_token("CN");
    lock(&sb.state.tokens).access.insert(
        access.clone(),
        TokenInfo {
            portal_id: grant.portal_id,
            app_id: grant.app_id,
            scopes: grant.scopes.clone(),
            kind: TokenKind::OAuth {
                expires_at: Instant::now() + Duration::from_secs(ttl),
                issued_ms: now_ms(),
                user_id: grant.user_id,
            },
        },
    );
    json!({
        "token_type": "bearer",
        "refresh_token": refresh_token,
        "access_token": access,
        "expires_in": ttl,
        "hub_id": grant.portal_id,
        "user_id": grant.user_id,
        "scopes": grant.scopes,
        "token_use": "access_token",
    })
}

/// Creates an authorization code, as a user's consent on HubSpot's install page would.
pub fn authorize(
    sb: &Sandbox,
    portal_id: u64,
    app_id: u64,
    user_id: u64,
    redirect_uri: &str,
    scopes: Vec<String>,
) -> String {
    let code = random_token("code-");
    lock(&sb.state.tokens).codes.insert(
        code.clone(),
        AuthCode {
            grant: RefreshGrant {
                portal_id,
                app_id,
                user_id,
                scopes,
            },
            redirect_uri: redirect_uri.to_string(),
        },
    );
    code
}

/// `POST /oauth/v1/token` and `POST /oauth/v3/token` (form-encoded).
pub async fn token(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let fields = form(&body);
    let get = |k: &str| query_one(&fields, k).unwrap_or_default().to_string();
    let client_id = get("client_id");
    let app = lock(&sb.state.apps)
        .values()
        .find(|a| a.client_id == client_id)
        .cloned();
    let Some(app) = app else {
        return token_error(
            "BAD_CLIENT_ID",
            "invalid_client",
            "missing or unknown client id",
        );
    };
    if get("client_secret") != app.client_secret {
        return token_error(
            "BAD_CLIENT_SECRET",
            "invalid_client",
            "missing or invalid client secret",
        );
    }
    match get("grant_type").as_str() {
        "authorization_code" => {
            let code = lock(&sb.state.tokens).codes.remove(&get("code"));
            let Some(code) = code.filter(|c| c.grant.app_id == app.app_id) else {
                return token_error(
                    "BAD_AUTH_CODE",
                    "invalid_grant",
                    "missing or unknown auth code",
                );
            };
            if code.redirect_uri != get("redirect_uri") {
                return token_error(
                    "BAD_REDIRECT_URI",
                    "invalid_grant",
                    "redirect_uri does not match the authorization request",
                );
            }
            let refresh = random_token("na1-");
            lock(&sb.state.tokens)
                .refresh
                .insert(refresh.clone(), code.grant.clone());
            sb.state.ensure_account(code.grant.portal_id);
            sb.install_app(code.grant.portal_id, app.app_id);
            axum::Json(issue(&sb, &code.grant, &refresh)).into_response()
        }
        "refresh_token" => {
            let refresh = get("refresh_token");
            let grant = lock(&sb.state.tokens).refresh.get(&refresh).cloned();
            match grant.filter(|g| g.app_id == app.app_id) {
                Some(grant) => axum::Json(issue(&sb, &grant, &refresh)).into_response(),
                None => token_error(
                    "BAD_REFRESH_TOKEN",
                    "invalid_grant",
                    "refresh token is invalid, expired or revoked",
                ),
            }
        }
        other => token_error(
            "BAD_GRANT_TYPE",
            "unsupported_grant_type",
            &format!("unsupported grant_type: {other}"),
        ),
    }
}

/// `GET /oauth/authorize?client_id&redirect_uri&scope&state[&portal_id]`: the
/// sandbox consents at once for the start-up account (or `portal_id`) and
/// redirects back with a code, so OAuth flows run without a browser.
pub async fn authorize_page(State(sb): State<Sandbox>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(&q);
    let client_id = query_one(&pairs, "client_id").unwrap_or_default();
    let redirect = query_one(&pairs, "redirect_uri")
        .unwrap_or_default()
        .to_string();
    let app = lock(&sb.state.apps)
        .values()
        .find(|a| a.client_id == client_id)
        .cloned();
    let Some(app) = app else {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    };
    if redirect.is_empty() {
        return (StatusCode::BAD_REQUEST, "redirect_uri is required").into_response();
    }
    let portal_id = query_one(&pairs, "portal_id")
        .and_then(|p| p.parse().ok())
        .unwrap_or(sb.config.portal_id);
    let scopes: Vec<String> = query_one(&pairs, "scope")
        .map(|s| {
            s.split([' ', '+'])
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_else(|| {
            DEFAULT_SCOPES
                .split_whitespace()
                .map(str::to_string)
                .collect()
        });
    let code = authorize(&sb, portal_id, app.app_id, 1, &redirect, scopes);
    let mut target = format!(
        "{redirect}{}code={code}",
        if redirect.contains('?') { '&' } else { '?' }
    );
    if let Some(state) = query_one(&pairs, "state") {
        target.push_str("&state=");
        target.extend(form_urlencoded::byte_serialize(state.as_bytes()));
    }
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(&target) {
        response.headers_mut().insert("location", location);
    }
    response
}

fn hub_domain(portal_id: u64) -> String {
    format!("portal-{portal_id}.sandbox.invalid")
}

fn access_info(sb: &Sandbox, token: &str, info: &TokenInfo) -> Value {
    let client_id = lock(&sb.state.apps)
        .get(&info.app_id)
        .map(|a| a.client_id.clone())
        .unwrap_or_default();
    let (expires_in, user_id) = match info.kind {
        TokenKind::OAuth {
            expires_at,
            user_id,
            ..
        } => (
            expires_at
                .saturating_duration_since(Instant::now())
                .as_secs(),
            user_id,
        ),
        TokenKind::PrivateApp => (0, 0),
    };
    json!({
        "token": token,
        "user": format!("user{user_id}@{}", hub_domain(info.portal_id)),
        "hub_domain": hub_domain(info.portal_id),
        "scopes": info.scopes,
        "scope_to_scope_group_pks": [],
        "trial_scopes": [],
        "trial_scope_to_scope_group_pks": [],
        "hub_id": info.portal_id,
        "app_id": info.app_id,
        "client_id": client_id,
        "expires_in": expires_in,
        "user_id": user_id,
        "token_type": "access",
        "is_private_distribution": false,
    })
}

fn live_access(sb: &Sandbox, token: &str) -> Option<TokenInfo> {
    sb.state.token(token).filter(|info| match info.kind {
        TokenKind::OAuth { expires_at, .. } => Instant::now() < expires_at,
        TokenKind::PrivateApp => false,
    })
}

/// `GET /oauth/v1/access-tokens/{token}`.
pub async fn access_token_info(State(sb): State<Sandbox>, Path(token): Path<String>) -> Response {
    match live_access(&sb, &token) {
        Some(info) => axum::Json(access_info(&sb, &token, &info)).into_response(),
        None => ApiError::not_found("Token not found or expired").into_response(),
    }
}

fn refresh_info(sb: &Sandbox, token: &str, grant: &RefreshGrant) -> Value {
    let client_id = lock(&sb.state.apps)
        .get(&grant.app_id)
        .map(|a| a.client_id.clone())
        .unwrap_or_default();
    json!({
        "token": token,
        "client_id": client_id,
        "app_id": grant.app_id,
        "hub_id": grant.portal_id,
        "user_id": grant.user_id,
        "scopes": grant.scopes,
        "token_type": "refresh",
        "user": format!("user{}@{}", grant.user_id, hub_domain(grant.portal_id)),
        "hub_domain": hub_domain(grant.portal_id),
    })
}

/// `GET /oauth/v1/refresh-tokens/{token}`.
pub async fn refresh_token_info(State(sb): State<Sandbox>, Path(token): Path<String>) -> Response {
    let grant = lock(&sb.state.tokens).refresh.get(&token).cloned();
    match grant {
        Some(grant) => axum::Json(refresh_info(&sb, &token, &grant)).into_response(),
        None => ApiError::not_found("Refresh token not found").into_response(),
    }
}

/// `DELETE /oauth/v1/refresh-tokens/{token}` → 204 ("will only delete the refresh token").
pub async fn delete_refresh_token(
    State(sb): State<Sandbox>,
    Path(token): Path<String>,
) -> Response {
    lock(&sb.state.tokens).refresh.remove(&token);
    StatusCode::NO_CONTENT.into_response()
}

fn client_ok(sb: &Sandbox, fields: &[(String, String)]) -> bool {
    let client_id = query_one(fields, "client_id").unwrap_or_default();
    let secret = query_one(fields, "client_secret").unwrap_or_default();
    lock(&sb.state.apps)
        .values()
        .any(|a| a.client_id == client_id && a.client_secret == secret)
}

fn bad_client() -> Response {
    token_error(
        "BAD_CLIENT_ID",
        "invalid_client",
        "missing or invalid client credentials",
    )
}

/// `POST /oauth/v3/token/introspect` → the token's grant, or `{"active": false}`.
pub async fn introspect(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let fields = form(&body);
    if !client_ok(&sb, &fields) {
        return bad_client();
    }
    let token = query_one(&fields, "token").unwrap_or_default().to_string();
    if let Some(info) = live_access(&sb, &token) {
        let mut out = access_info(&sb, &token, &info);
        out["active"] = json!(true);
        out["token_use"] = json!("access_token");
        out["token_type"] = json!("bearer");
        return axum::Json(out).into_response();
    }
    let grant = lock(&sb.state.tokens).refresh.get(&token).cloned();
    match grant {
        Some(grant) => {
            let mut out = refresh_info(&sb, &token, &grant);
            out["active"] = json!(true);
            out["token_use"] = json!("refresh_token");
            out["token_type"] = json!("bearer");
            axum::Json(out).into_response()
        }
        None => axum::Json(json!({"active": false})).into_response(),
    }
}

/// `POST /oauth/v3/token/revoke`: forgets an access or refresh token.
pub async fn revoke(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let fields = form(&body);
    if !client_ok(&sb, &fields) {
        return bad_client();
    }
    let token = query_one(&fields, "token").unwrap_or_default().to_string();
    let mut tokens = lock(&sb.state.tokens);
    tokens.access.remove(&token);
    tokens.refresh.remove(&token);
    axum::Json(json!({})).into_response()
}

/// `GET /account-info/v3/details` (`PortalInformationResponse`).
pub async fn account_details(Extension(caller): Extension<Caller>) -> Response {
    let portal_id = caller.account.portal_id;
    axum::Json(json!({
        "portalId": portal_id,
        "accountType": "STANDARD",
        "timeZone": "Etc/UTC",
        "companyCurrency": "USD",
        "additionalCurrencies": [],
        "utcOffset": "+00:00",
        "utcOffsetMilliseconds": 0,
        "uiDomain": "app.hubspot.com",
        "dataHostingLocation": "na1",
        "portalName": format!("Sandbox portal {portal_id}"),
    }))
    .into_response()
}

/// `GET /account-info/v3/api-usage/daily/private-apps`: the daily budget in use.
pub async fn daily_usage(Extension(caller): Extension<Caller>) -> Response {
    let limit = lock(&caller.account.limits).daily;
    let used = lock(&caller.account.budget).daily_used;
    let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0);
    axum::Json(json!({"results": [{
        "name": "api-calls-daily",
        "usageLimit": limit,
        "currentUsage": used,
        "collectedAt": iso_ms(now_ms()),
        "fetchStatus": "SUCCESS",
        "resetsAt": iso_ms(tomorrow),
    }]}))
    .into_response()
}
