//! The front door of HubSpot's CRM API: authentication, fault injection and
//! rate limits, applied to every `/crm/...` and `/account-info/...` request
//! before its handler runs, with the `X-HubSpot-RateLimit-*` headers added to
//! the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Sandbox;
use super::error::ApiError;
use super::model::Actor;
use super::state::{Account, Budget, Limits, TokenKind, lock};
use crate::sandbox::faults::RequestFault;
use crate::sandbox::gate::{CoolDown, GateReplies, delay, inject, status_class};
use crate::sandbox::window::RollingWindow;

/// The authenticated caller, handed to handlers through request extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The account the token opens.
    pub account: Arc<Account>,
    /// Who the writes are attributed to.
    pub actor: Actor,
    /// The app behind the token.
    pub app_id: u64,
    /// Private-app token (daily budget applies) rather than OAuth.
    pub private_app: bool,
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Policy name for the search limit. HubSpot documents the limit (5/s per
/// account) but not the body's `policyName`; "SECONDLY" is what the
/// deprecated secondly headers call that window (UNVERIFIED).
pub const SEARCH_POLICY: &str = "SECONDLY";

struct RateHeaders {
    max: u64,
    remaining: u64,
    daily: Option<(u64, u64)>,
}

impl RateHeaders {
    fn apply(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: u64| {
            headers.insert(name, HeaderValue::from(value));
        };
        put("x-hubspot-ratelimit-interval-milliseconds", 10_000);
        put("x-hubspot-ratelimit-max", self.max);
        put("x-hubspot-ratelimit-remaining", self.remaining);
        put("x-hubspot-ratelimit-secondly", self.max.div_ceil(10));
        put(
            "x-hubspot-ratelimit-secondly-remaining",
            self.remaining.min(self.max.div_ceil(10)),
        );
        if let Some((daily, left)) = self.daily {
            put("x-hubspot-ratelimit-daily", daily);
            put("x-hubspot-ratelimit-daily-remaining", left);
        }
    }
}

/// Spends one request of the account's budget, or names the policy that
/// refuses it (a refused request spends nothing). Search has its own
/// per-second budget and carries no headers (facts sheet §1.4); everything
/// else counts against the app's rolling 10-second window.
fn admit(
    budget: &mut Budget,
    limits: Limits,
    app_id: u64,
    private_app: bool,
    is_search: bool,
) -> (Result<(), &'static str>, Option<RateHeaders>) {
    budget.roll_day();
    let now = Instant::now();
    let daily_exhausted = private_app && budget.daily_used >= limits.daily;
    let verdict = if is_search {
        if daily_exhausted {
            Err("DAILY")
        } else if budget.search.try_admit(now, limits.search_per_second) {
            Ok(())
        } else {
            Err(SEARCH_POLICY)
        }
    } else {
        let window = budget
            .windows
            .entry(app_id)
            .or_insert_with(|| RollingWindow::new(Duration::from_secs(10)));
        if daily_exhausted {
            Err("DAILY")
        } else if window.try_admit(now, limits.per_ten_seconds) {
            Ok(())
        } else {
            Err("TEN_SECONDLY_ROLLING")
        }
    };
    if verdict.is_ok() {
        budget.daily_used += 1;
    }
    let headers = (!is_search).then(|| RateHeaders {
        max: limits.per_ten_seconds,
        remaining: budget
            .windows
            .get_mut(&app_id)
            .map(|w| w.remaining(now, limits.per_ten_seconds))
            .unwrap_or(0),
        daily: private_app.then(|| (limits.daily, limits.daily.saturating_sub(budget.daily_used))),
    });
    (verdict, headers)
}

/// How long a client must wait after a 429 of `policy` (what the answer
/// says: `Retry-After`, or the window the policy rolls over); `None` for
/// the daily budget (its own day count).
fn cool_down_of(policy: &str) -> Option<Duration> {
    match policy {
        "TEN_SECONDLY_ROLLING" => Some(Duration::from_secs(10)),
        "DAILY" => None,
        _ => Some(Duration::from_secs(1)),
    }
}

/// The middleware: counts each answer by status class around [`admit_and_run`].
pub async fn gate(
    State(sandbox): State<Sandbox>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let portal = bearer(request.headers())
        .and_then(|t| sandbox.state.token(t))
        .and_then(|info| sandbox.state.account(info.portal_id));
    let response = admit_and_run(sandbox, matched, request, next).await;
    if let Some(account) = portal {
        let class = status_class(response.status().as_u16());
        *lock(&account.counters)
            .responses
            .entry(class.into())
            .or_default() += 1;
    }
    response
}

/// HubSpot's answers to injected faults.
struct HubSpotReplies;

impl GateReplies for HubSpotReplies {
    fn unavailable(&self) -> Response {
        ApiError::unavailable().into_response()
    }

    /// A spurious throttle that says when to come back.
    fn throttled(&self, retry_after: Duration) -> Response {
        let mut response = ApiError::rate_limited("TEN_SECONDLY_ROLLING").into_response();
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(retry_after.as_secs()));
        response
    }

    fn timed_out(&self) -> Response {
        ApiError::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "GATEWAY_TIMEOUT",
            "timed out",
        )
        .into_response()
    }
}

/// The middleware for HubSpot's calls outside the CRM API (OAuth, the
/// webhook management API): the per-call latency, no faults, no budget.
pub async fn latency_only(
    State(sandbox): State<Sandbox>,
    request: Request,
    next: Next,
) -> Response {
    delay(&sandbox.state.faults).await;
    next.run(request).await
}

/// 401 without a valid token; faults; budgets; headers; cool-downs.
async fn admit_and_run(
    sandbox: Sandbox,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = format!(
        "{} {}",
        request.method(),
        matched
            .as_ref()
            .map(|m| m.as_str())
            .unwrap_or(request.uri().path())
    );
    let is_search = request.uri().path().ends_with("/search");
    let state = &sandbox.state;

    let Some(info) = bearer(request.headers()).and_then(|t| state.token(t)) else {
        return ApiError::unauthenticated().into_response();
    };
    if let TokenKind::OAuth { expires_at, .. } = info.kind {
        let now = Instant::now();
        if now >= expires_at {
            return ApiError::expired(now.duration_since(expires_at).as_secs() as i64)
                .into_response();
        }
    }
    let Some(account) = state.account(info.portal_id) else {
        return ApiError::unauthenticated().into_response();
    };
    *lock(&account.counters)
        .requests
        .entry(route.clone())
        .or_default() += 1;
    let budget_class = usize::from(is_search);
    let arrived = Instant::now();
    let cooling =
        lock(&account.budget).cool_downs[budget_class].is_some_and(|cool| cool.ignored_by(arrived));
    if cooling {
        let mut counters = lock(&account.counters);
        counters.requests_in_cool_down += 1;
        *counters.cool_down_routes.entry(route.clone()).or_default() += 1;
    }
    let cool_down = |policy: &str| {
        if let Some(wait) = cool_down_of(policy) {
            lock(&account.budget).cool_downs[budget_class] =
                Some(CoolDown::starting(Instant::now(), wait));
        }
    };

    let counted = |fault| match fault {
        RequestFault::RateLimited => {
            *lock(&account.counters)
                .rate_limited
                .entry("INJECTED".into())
                .or_default() += 1;
            cool_down("INJECTED");
        }
        _ => lock(&account.counters).faults_injected += 1,
    };
    if let Some(answer) = inject(&state.faults, &HubSpotReplies, counted).await {
        return answer;
    }

    let private_app = info.kind == TokenKind::PrivateApp;
    let limits = *lock(&account.limits);
    let (verdict, headers) = admit(
        &mut lock(&account.budget),
        limits,
        info.app_id,
        private_app,
        is_search,
    );
    if let Err(policy) = verdict {
        cool_down(policy);
        *lock(&account.counters)
            .rate_limited
            .entry(policy.to_string())
            .or_default() += 1;
        let mut response = ApiError::rate_limited(policy).into_response();
        if let Some(headers) = headers {
            headers.apply(response.headers_mut());
        }
        return response;
    }

    let actor = Actor::Integration {
        app_id: info.app_id,
    };
    let caller_account = Arc::clone(&account);
    request.extensions_mut().insert(Caller {
        account,
        actor,
        app_id: info.app_id,
        private_app,
    });
    let held = Arc::clone(&caller_account);
    let mut response = next.run(request).await;
    held.holds.pass(&route).await;
    if let Some(headers) = headers {
        headers.apply(response.headers_mut());
    }
    response
}
