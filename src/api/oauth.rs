//! OAuth connect: `GET /v1/oauth/{provider}/authorize?redirectUri=…` (a
//! tenant's bearer token) answers the CRM's consent URL with a signed,
//! single-use `state`; the CRM sends the user to
//! `GET /oauth/{provider}/callback?code=…&state=…` (no token: the state
//! says who asked), which exchanges the code, creates or re-authorises the
//! tenant's connection to that account, and sends the user on to the
//! `redirectUri` with `connectionId` — or `error`.
//!
//! A state that is not ours (forged, altered, cut) is refused with a 400 and
//! no redirect: its `redirectUri` cannot be trusted. One that is ours but
//! used, expired or for another CRM goes back to its own `redirectUri` with
//! `error=invalid_state`. Neither creates anything.

mod state;

use super::input::Params;
use super::{Api, Problem, Tenant};
use crate::domain::ProviderKind;
use crate::providers::{Provider, ProviderError};
use crate::store::{Consumed, Credentials, NewConnection, NewOAuthState, StoreError};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Deserialize;
use serde_json::json;
use state::{Claims, PKCE_KEY_PURPOSE, Pkce, STATE_KEY_PURPOSE};
use std::sync::Arc;

/// The api's clock for state expiry (tests move it forward ten minutes
/// instead of waiting them out).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(Utc::now)
    }
}

/// The longest `redirectUri` accepted (it is stored and put in a header).
const MAX_REDIRECT_LEN: usize = 2048;

/// The provider path segment, or a 404 naming the CRMs that have OAuth.
fn provider(segment: &str) -> Result<ProviderKind, Problem> {
    segment.parse().map_err(|e: crate::domain::UnknownName| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("no OAuth connect for this CRM: {e}"),
        )
    })
}

/// `redirectUri`: an absolute http(s) URL without credentials or fragment,
/// under an entry of `api.oauth_redirect_allow` when that list is set.
fn redirect_uri(given: Option<&str>, allow: &[String]) -> Result<Url, Problem> {
    let refuse = |why: &str| Problem::field("redirectUri", why);
    let given = given
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse("is required: where to send the user back to"))?;
    if given.len() > MAX_REDIRECT_LEN {
        return Err(refuse(&format!(
            "is longer than {MAX_REDIRECT_LEN} characters"
        )));
    }
    let url = Url::parse(given)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| refuse("must be an absolute http(s) URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("must not carry a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(refuse("must not have a #fragment"));
    }
    if !allow.is_empty() && !allow.iter().any(|entry| is_under(&url, entry)) {
        return Err(refuse(
            "is not under any URL of the api's oauth_redirect_allow list",
        ));
    }
    Ok(url)
}

/// Whether `url` has `entry`'s scheme, host and port, and a path at or
/// below `entry`'s (`/app` admits `/app` and `/app/x`, not `/apple`).
fn is_under(url: &Url, entry: &str) -> bool {
    let Ok(entry) = Url::parse(entry) else {
        return false;
    };
    let base = entry.path().trim_end_matches('/');
    url.scheme() == entry.scheme()
        && url.host_str() == entry.host_str()
        && url.port_or_known_default() == entry.port_or_known_default()
        && (url.path() == base || url.path().starts_with(&format!("{base}/")))
}

/// crmsync's own callback for `provider`: where the CRM sends the user.
fn callback_url(api: &Api, provider: ProviderKind) -> Result<String, Problem> {
    let base = api.settings.api.public_url.as_deref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OAuth connect is not set up: set CRMSYNC__API__PUBLIC_URL to the api's public \
             URL (the CRM sends users back to {public_url}/oauth/{provider}/callback)",
        )
    })?;
    Ok(format!(
        "{}/oauth/{provider}/callback",
        base.trim_end_matches('/')
    ))
}

/// The `purpose` keys of the store's key ring (current first).
fn keys(api: &Api, purpose: &str) -> Result<Vec<[u8; 32]>, Problem> {
    api.store
        .key()
        .map(|ring| ring.derived_keys(purpose))
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// The provider's adapter for OAuth connect, or a 503 naming what is not
/// configured.
fn oauth_provider(api: &Api, provider: ProviderKind) -> Result<Provider, Problem> {
    let unavailable = |detail: String| Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail);
    let crm = api.provider(provider)?;
    crm.oauth_ready().map_err(unavailable)?;
    Ok(crm)
}

/// Exchanges the code: the account's id and its credentials.
async fn exchange(
    crm: &Provider,
    code: &str,
    callback: &str,
    verifier: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(String, Credentials), ProviderError> {
    let (account, tokens) = crm.exchange_code(code, callback, verifier).await?;
    let valid = chrono::TimeDelta::from_std(tokens.expires_in).unwrap_or(chrono::TimeDelta::zero());
    Ok((
        account,
        Credentials::OAuth {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: now.checked_add_signed(valid).unwrap_or(now),
        },
    ))
}

/// `GET /v1/oauth/{provider}/authorize` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizeParams {
    redirect_uri: Option<String>,
}

/// `GET /v1/oauth/{provider}/authorize?redirectUri=…` → `{"url": …}`.
pub(super) async fn authorize(
    State(api): State<Api>,
    Tenant(tenant): Tenant,
    Path(segment): Path<String>,
    Params(params): Params<AuthorizeParams>,
) -> Result<Response, Problem> {
    let provider = provider(&segment)?;
    let redirect = redirect_uri(
        params.redirect_uri.as_deref(),
        &api.settings.api.oauth_redirect_allow,
    )?;
    let callback = callback_url(&api, provider)?;
    let crm = oauth_provider(&api, provider)?;
    let state_keys = keys(&api, STATE_KEY_PURPOSE)?;
    let pkce_keys = keys(&api, PKCE_KEY_PURPOSE)?;
    let (Some(state_key), Some(pkce_key)) = (state_keys.first(), pkce_keys.first()) else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no encryption key",
        ));
    };
    let now = api.clock.now();
    let claims = Claims::new(tenant, provider, now);
    api.store
        .insert_oauth_state(&NewOAuthState {
            nonce: claims.nonce,
            tenant,
            provider,
            redirect_uri: redirect.as_str(),
            created_at: now,
            expires_at: claims.expires_at,
        })
        .await?;
    let challenge = crm
        .uses_pkce()
        .then(|| Pkce::for_nonce(claims.nonce, pkce_key).challenge);
    let url = crm.authorize_url(&callback, &claims.sign(state_key), challenge.as_deref());
    Ok(axum::Json(json!({ "url": url })).into_response())
}

/// `redirect` with `pairs` added to its query, as a 303 the browser follows.
fn send_back(redirect: &str, pairs: &[(&str, &str)]) -> Response {
    let Ok(mut url) = Url::parse(redirect) else {
        return Problem::new(StatusCode::BAD_REQUEST, "the stored redirectUri is invalid")
            .into_response();
    };
    url.query_pairs_mut().extend_pairs(pairs);
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "the redirectUri is not a header value",
        )
        .into_response();
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    // The callback's URL carried a code: keep it out of caches and referrers.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn send_error(redirect: &str, error: &str) -> Response {
    send_back(redirect, &[("error", error)])
}

/// A CRM's `error` passed on: an OAuth error code's characters only.
fn error_code(given: &str) -> &str {
    let clean = !given.is_empty()
        && given.len() <= 64
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if clean { given } else { "access_denied" }
}

/// `GET /oauth/{provider}/callback?code=…&state=…` (or `?error=…&state=…`).
pub(super) async fn callback(
    State(api): State<Api>,
    Path(segment): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let provider = provider(&segment)?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let Some(state) = get("state").filter(|s| !s.is_empty()) else {
        let detail = match get("error").filter(|e| !e.is_empty()) {
            Some(error) => format!("is required (the CRM answered error={error})"),
            None => "is required".into(),
        };
        return Err(Problem::field("state", detail));
    };
    let (claims, signer) = Claims::verify(state, &keys(&api, STATE_KEY_PURPOSE)?).map_err(|e| {
        tracing::warn!(error = %e, "OAuth callback with a state crmsync did not issue");
        metrics::counter!("crmsync_oauth_callbacks_total", "outcome" => "forged_state")
            .increment(1);
        Problem::field("state", format!("is invalid: {e}"))
    })?;
    let now = api.clock.now();
    // Used, expired, or issued for another CRM than this callback's: the
    // conditional update matches none of them, and uses nothing.
    let consumed = api
        .store
        .consume_oauth_state(claims.tenant, claims.nonce, provider, now)
        .await?;
    let redirect = match consumed {
        Consumed::Fresh { redirect_uri } => redirect_uri,
        Consumed::Refused { redirect_uri } => {
            metrics::counter!("crmsync_oauth_callbacks_total", "outcome" => "invalid_state")
                .increment(1);
            return Ok(send_error(&redirect_uri, "invalid_state"));
        }
        Consumed::Unknown => {
            return Err(Problem::field("state", "is unknown (or was deleted)"));
        }
    };
    if let Some(error) = get("error").filter(|e| !e.is_empty()) {
        metrics::counter!("crmsync_oauth_callbacks_total", "outcome" => "crm_error").increment(1);
        return Ok(send_error(&redirect, error_code(error)));
    }
    let Some(code) = get("code").filter(|c| !c.is_empty()) else {
        return Ok(send_error(&redirect, "invalid_request"));
    };
    let outcome = connect(&api, &claims, signer, code, now).await;
    let label = match &outcome {
        Ok(_) => "connected",
        Err(_) => "failed",
    };
    metrics::counter!("crmsync_oauth_callbacks_total", "outcome" => label).increment(1);
    Ok(match outcome {
        Ok(id) => send_back(&redirect, &[("connectionId", &id.to_string())]),
        Err(error) => send_error(&redirect, error),
    })
}

/// Exchanges the code and creates or re-authorises the connection; an
/// OAuth error code for the user's redirect when that fails.
async fn connect(
    api: &Api,
    claims: &Claims,
    signer: usize,
    code: &str,
    now: DateTime<Utc>,
) -> Result<crate::domain::ConnectionId, &'static str> {
    let (tenant, provider) = (claims.tenant, claims.provider);
    let callback = callback_url(api, provider).map_err(|_| "server_error")?;
    let crm = oauth_provider(api, provider).map_err(|_| "server_error")?;
    // The verifier under the key that signed the state (a rotation may
    // have made it a previous one): the only key whose challenge matches.
    let verifier = if crm.uses_pkce() {
        let pkce_keys = keys(api, PKCE_KEY_PURPOSE).map_err(|_| "server_error")?;
        pkce_keys
            .get(signer)
            .map(|key| Pkce::for_nonce(claims.nonce, key).verifier)
    } else {
        None
    };
    let (account, credentials) = exchange(&crm, code, &callback, verifier.as_deref(), now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, %provider, "OAuth code exchange failed");
            if e.is_retryable() {
                "temporarily_unavailable"
            } else {
                "invalid_grant"
            }
        })?;
    // A live connection to the account is re-authorised and keeps its
    // cursors; a new one (or a deleted one brought back: the list leaves
    // those out) starts with a full sync.
    let live = api
        .store
        .list_connections(tenant)
        .await
        .map_err(store_failed)?
        .iter()
        .any(|c| c.provider == provider && c.external_account_id == account);
    let id = api
        .store
        .upsert_connection(NewConnection {
            tenant,
            provider,
            external_account_id: account,
            credentials,
            settings: crate::providers::default_settings(provider),
            delta_interval_secs: api.settings.sync.delta_interval_secs,
        })
        .await
        .map_err(store_failed)?;
    super::operator::publish_routes(api).await;
    if !live && let Err(e) = crate::jobs::full_sync::start(&api.store, &api.queue, tenant, id).await
    {
        // The connection exists; its scheduled delta or a manual sync starts it.
        tracing::warn!(error = %e, connection.id = %id, "first full sync not queued");
    }
    Ok(id)
}

fn store_failed(e: StoreError) -> &'static str {
    tracing::error!(error = %e, "OAuth connect could not store the connection");
    "server_error"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    fn refused_field(r: Result<Url, Problem>) -> Option<String> {
        r.err()
            .and_then(|p| p.errors.first().map(|e| e.field.clone()))
    }

    #[test]
    fn a_redirect_uri_must_be_an_absolute_http_url_without_credentials_or_fragment() {
        assert!(redirect_uri(Some("https://app.example.com/done?x=1"), &[]).is_ok());
        for bad in [
            None,
            Some(""),
            Some("/relative"),
            Some("javascript:alert(1)"),
            Some("ftp://example.com/"),
            Some("https://user:pw@example.com/"),
            Some("https://example.com/#frag"),
        ] {
            assert_eq!(
                refused_field(redirect_uri(bad, &[])).as_deref(),
                Some("redirectUri"),
                "{bad:?}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_REDIRECT_LEN));
        assert!(redirect_uri(Some(&long), &[]).is_err());
    }

    #[test]
    fn the_allow_list_admits_its_origins_at_or_below_their_paths() {
        let list = allow(&["https://app.example.com/settings", "http://localhost:3000"]);
        for ok in [
            "https://app.example.com/settings",
            "https://app.example.com/settings/crm?tab=1",
            "https://app.example.com:443/settings/x",
            "http://localhost:3000/anything",
        ] {
            assert!(redirect_uri(Some(ok), &list).is_ok(), "{ok}");
        }
        for bad in [
            "https://app.example.com/settingsx",
            "https://app.example.com/",
            "http://app.example.com/settings",
            "https://evil.example.com/settings",
            "https://app.example.com.evil.com/settings",
            "http://localhost:3001/",
        ] {
            assert!(redirect_uri(Some(bad), &list).is_err(), "{bad}");
        }
    }

    #[test]
    fn crm_error_codes_pass_through_and_anything_else_becomes_access_denied() {
        assert_eq!(error_code("access_denied"), "access_denied");
        assert_eq!(error_code("invalid_scope"), "invalid_scope");
        assert_eq!(error_code("<script>"), "access_denied");
        assert_eq!(error_code(""), "access_denied");
    }

    #[test]
    fn sending_back_keeps_the_redirect_query_and_adds_the_outcome() {
        let r = send_back(
            "https://app.example.com/done?x=1",
            &[("connectionId", "abc")],
        );
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            r.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("https://app.example.com/done?x=1&connectionId=abc")
        );
    }
}
