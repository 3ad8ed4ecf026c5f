//! Webhook ingress: verifies HubSpot's signature, drops duplicate events,
//! routes events to connections by `portalId`, enqueues one `ProcessWebhook`
//! per connection and object, and answers within milliseconds. It never
//! touches the database in production: routes come from Redis (published by
//! the CLI and the scheduler, see [`routes`]), and so does dedupe.
//!
//! Answers: 204 accepted (also for events of unknown portals, which are
//! counted: HubSpot must not retry them forever); 401 bad, missing or stale
//! signature; 400 malformed body, or more than [`MAX_ACCOUNTS_PER_DELIVERY`]
//! accounts in one delivery; 413 too large; 503 when Redis or the queue is
//! down (HubSpot retries). Every error is `application/problem+json`.
//!
//! Work before authentication is bounded: the app secret is tried first
//! (one HMAC over the body, no parsing, no lookup); only when it fails does
//! ingress parse the body's `portalId`s, refusing more than the cap before
//! any lookup, and a connection's own (private-app) secret is tried only for
//! a delivery naming one account — a private app lives in one account. An
//! unsigned request thus costs O(body) CPU and at most two route round
//! trips, whatever it lists.

pub mod intake;
pub mod routes;
pub mod stats;

use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::domain::{ConnectionId, CrmObject, TenantId, WebhookCredentialKind};
use crate::jobs::ProcessWebhookJob;
use crate::providers::intake::{
    self as crm_webhooks, Delivered, Delivery, WebhookApp, WebhookError,
};
use crate::queue::Queue;
use crate::secrets::KeyRing;
use crate::store::WebhookCredential;
use crate::sync::events::{Coalesced, Event, coalesce};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use intake::{Arrival, Destination};
use routes::{Dedupe, Route, Routes};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use stats::{WebhookCounts, WebhookStats};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the webhook handler needs.
#[derive(Clone)]
pub struct Ingress {
    /// Each CRM's app-wide webhook settings.
    apps: Arc<BTreeMap<ProviderKind, WebhookApp>>,
    key: Option<Arc<KeyRing>>,
    public_url: Option<Arc<str>>,
    /// The scheme and authority a CRM's signature covers; set by
    /// [`Ingress::router`] from `public_url` or the bound address.
    signed_base: Arc<str>,
    allow_legacy: bool,
    routes: Routes,
    known: KnownRoutes,
    /// Round trips to the route store (not cache hits), ever.
    lookups: Arc<AtomicU64>,
    dedupe: Dedupe,
    stats: WebhookStats,
    queue: Queue,
}

/// Routes looked up in the last [`ROUTE_TTL`], per account: a busy account
/// costs one lookup a second instead of one per delivery. A pause or a new
/// secret takes effect within that second.
type KnownRoutes =
    Arc<std::sync::Mutex<HashMap<(ProviderKind, String), (Vec<Route>, std::time::Instant)>>>;

/// How long ingress trusts a route it looked up.
const ROUTE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// How many accounts [`KnownRoutes`] holds before it drops its stale
/// entries (and, when all are fresh, everything): memory stays bounded and
/// each insert costs amortised O(1), not a scan of the map.
const KNOWN_ROUTES_MAX: usize = 10_000;

/// The most distinct accounts (`portalId`s) one delivery may name. HubSpot
/// sends at most 100 events per request, so a genuine delivery never names
/// more; refusing more before any lookup bounds what a forged one costs.
pub const MAX_ACCOUNTS_PER_DELIVERY: usize = 100;

/// The base of the URL HubSpot's v3 signature covers: `public_url` when set
/// (the only source behind a proxy); else, on a loopback listener, the bound
/// address over http. Never the request's `Host` header: a client chooses
/// it, and a signature made for another URL must not verify. A non-loopback
/// listener without `public_url` is a start-up error.
pub fn signed_base(
    public_url: Option<&str>,
    bound: SocketAddr,
) -> Result<String, crate::config::ConfigError> {
    match public_url {
        Some(url) => Ok(url.trim_end_matches('/').to_string()),
        None if bound.ip().is_loopback() => Ok(format!("http://{bound}")),
        None => Err(crate::config::ConfigError::Value {
            key: "CRMSYNC__INGRESS__PUBLIC_URL",
            message: format!(
                "must be set when ingress listens on {bound}, which is not a loopback address: \
                 a CRM's webhook signature covers the URL it called (e.g. https://hooks.example.com), \
                 which ingress cannot learn from the request"
            ),
        }),
    }
}

impl Ingress {
    /// Builds the ingress from settings. The app secret
    /// (`CRMSYNC__HUBSPOT__CLIENT_SECRET`) verifies the public app's
    /// webhooks; connections made with a customer's private app carry their
    /// own secret, opened with the encryption key. Without either, nothing
    /// could ever be verified, so it refuses to start.
    pub fn new(
        settings: &Settings,
        routes: Routes,
        dedupe: Dedupe,
        stats: WebhookStats,
        queue: Queue,
    ) -> Result<Self, String> {
        let key = settings.secrets.key_ring().map_err(|e| e.to_string())?;
        let apps: BTreeMap<ProviderKind, WebhookApp> = ProviderKind::ALL
            .iter()
            .map(|kind| (*kind, crm_webhooks::webhook_app(*kind, settings)))
            .collect();
        if key.is_none() && apps.values().all(|app| app.secret.is_none()) {
            let secrets: Vec<&str> = ProviderKind::ALL
                .iter()
                .map(|kind| crm_webhooks::webhook_secret_key(*kind))
                .collect();
            return Err(format!(
                "neither an app's webhook secret ({}) nor \
                 CRMSYNC__SECRETS__ENCRYPTION_KEY (to open connections' own secrets) \
                 is set: ingress could not verify any webhook",
                secrets.join(", ")
            ));
        }
        Ok(Self {
            apps: Arc::new(apps),
            key: key.map(Arc::new),
            public_url: settings
                .ingress
                .public_url
                .as_deref()
                .map(|u| Arc::from(u.trim_end_matches('/'))),
            signed_base: Arc::from(""),
            allow_legacy: settings.ingress.allow_legacy_signatures,
            routes,
            known: KnownRoutes::default(),
            lookups: Arc::default(),
            dedupe,
            stats,
            queue,
        })
    }

    /// The axum app for a listener bound to `bound`: `POST
    /// /webhooks/hubspot` (the public app's deliveries for every account),
    /// `POST /webhooks/{provider}/{connection}` (one connection's own),
    /// `GET /health`, `GET /ready`; anything else is a
    /// problem+json 404 or 405. Fails when no signed URL can be known (see
    /// [`signed_base`]).
    pub fn router(
        mut self,
        max_body: usize,
        bound: SocketAddr,
    ) -> Result<Router, crate::config::ConfigError> {
        self.signed_base = Arc::from(signed_base(self.public_url.as_deref(), bound)?);
        Ok(Router::new()
            .route("/webhooks/{provider}", post(app_wide).fallback(post_only))
            .route(
                "/webhooks/{provider}/{connection}",
                post(per_connection).fallback(post_only),
            )
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(ready))
            .fallback(|uri: Uri| async move {
                problem(
                    StatusCode::NOT_FOUND,
                    &format!("no such endpoint: {}", uri.path()),
                )
            })
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(self))
    }

    /// How many round trips this ingress has made to the route store
    /// (Redis, or the embedded store) to look routes up, cache hits not
    /// counted: what deliveries cost beyond their bodies.
    pub fn route_lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

/// A verified body that is not an event batch.
fn malformed(why: &str) -> Response {
    metrics::counter!("crmsync_webhook_requests_total", "outcome" => "malformed").increment(1);
    problem(
        StatusCode::BAD_REQUEST,
        &format!("malformed webhook body: {why}"),
    )
}

/// Any method but POST on a webhook route.
async fn post_only() -> Response {
    (
        [("allow", "POST")],
        problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "webhooks are delivered with POST",
        ),
    )
        .into_response()
}

/// `GET /ready`: whether deliveries can be accepted (Redis answers). The
/// reason it cannot is logged, never answered: a Redis error names hosts
/// and ports that are nobody else's business.
async fn ready(State(ingress): State<Ingress>) -> Response {
    match ingress.dedupe.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: Redis does not answer");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: webhooks cannot be accepted now",
            )
        }
    }
}

/// The URL HubSpot called, as its v3 signature covers it.
fn called_url(ingress: &Ingress, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", ingress.signed_base)
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = crate::http_server::problem_body(status, detail);
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Which connections a verified delivery may reach: those the app secret
/// serves (no secret of their own), or the one whose own secret signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signer {
    App,
    Connection(ConnectionId),
}

impl Signer {
    fn serves(&self, route: &Route) -> bool {
        match self {
            Signer::App => route.sealed_credential.is_none(),
            Signer::Connection(id) => route.connection == *id,
        }
    }
}

/// The routes of each account of one CRM a delivery names, looked up once
/// each.
struct RouteCache {
    kind: ProviderKind,
    by_account: BTreeMap<String, Vec<Route>>,
}

impl RouteCache {
    fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            by_account: BTreeMap::new(),
        }
    }

    fn get(&self, account: &str) -> Option<&Vec<Route>> {
        self.by_account.get(account)
    }
}

/// Puts the routes of `accounts` into `cache`: from the last second's
/// lookups unless `fresh`, the others in one round trip.
async fn prefetch(
    ingress: &Ingress,
    cache: &mut RouteCache,
    accounts: &[String],
    fresh: bool,
) -> Result<(), String> {
    let now = std::time::Instant::now();
    let mut missing = Vec::new();
    {
        let known = ingress.known.lock().ok().filter(|_| !fresh);
        for account in accounts {
            if cache.by_account.contains_key(account) {
                continue;
            }
            let hit = known.as_ref().and_then(|known| {
                known
                    .get(&(cache.kind, account.clone()))
                    .filter(|(_, at)| now.duration_since(*at) < ROUTE_TTL)
                    .map(|(routes, _)| routes.clone())
            });
            match hit {
                Some(routes) => {
                    cache.by_account.insert(account.clone(), routes);
                }
                None => missing.push(account.clone()),
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    ingress.lookups.fetch_add(1, Ordering::Relaxed);
    let found = ingress
        .routes
        .lookup_many(cache.kind.as_str(), &missing)
        .await?;
    if let Ok(mut known) = ingress.known.lock() {
        if known.len() + missing.len() > KNOWN_ROUTES_MAX {
            known.retain(|_, (_, at)| now.duration_since(*at) < ROUTE_TTL);
            if known.len() + missing.len() > KNOWN_ROUTES_MAX {
                known.clear();
            }
        }
        for (account, routes) in missing.iter().zip(&found) {
            known.insert((cache.kind, account.clone()), (routes.clone(), now));
        }
    }
    cache.by_account.extend(missing.into_iter().zip(found));
    Ok(())
}

/// What an unverified body claims about its accounts.
enum Claimed {
    /// Its distinct `portalId`s (none when it is not an event array).
    Accounts(Vec<String>),
    /// More distinct accounts than [`MAX_ACCOUNTS_PER_DELIVERY`].
    TooMany(usize),
}

/// The distinct accounts a body of `kind` names: one linear parse, no
/// lookup.
fn claimed_accounts(kind: ProviderKind, body: &[u8]) -> Claimed {
    distinct(crm_webhooks::claimed_accounts(kind, body).into_iter())
}

fn distinct(accounts: impl Iterator<Item = String>) -> Claimed {
    let set: std::collections::HashSet<String> = accounts.collect();
    if set.len() > MAX_ACCOUNTS_PER_DELIVERY {
        return Claimed::TooMany(set.len());
    }
    let mut accounts: Vec<String> = set.into_iter().collect();
    accounts.sort_unstable();
    Claimed::Accounts(accounts)
}

fn too_many_accounts(n: usize) -> Response {
    metrics::counter!("crmsync_webhook_requests_total", "outcome" => "too_many_accounts")
        .increment(1);
    problem(
        StatusCode::BAD_REQUEST,
        &format!(
            "a delivery may name at most {MAX_ACCOUNTS_PER_DELIVERY} accounts (portalId); \
             this one names {n}"
        ),
    )
}

/// A delivery for one connection (`/webhooks/{provider}/{connection}`):
/// the route names the connection, so exactly one credential verifies it —
/// its own, or the app's when it has none — and nothing is tried in a loop.
/// An unknown or deleted connection is answered 204 and counted: CRMs ban
/// and then delete webhooks that keep failing, and there is nothing to
/// retry.
#[tracing::instrument(name = "webhook.request", skip_all, fields(provider = %provider, connection.id = %connection))]
async fn per_connection(
    State(ingress): State<Ingress>,
    axum::extract::Path((provider, connection)): axum::extract::Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(kind) = provider.parse::<crate::domain::ProviderKind>() else {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no webhooks for {provider:?}: {}", known_providers()),
        );
    };
    let found = match connection.parse::<ConnectionId>() {
        Ok(id) => ingress.routes.lookup_connection(kind.as_str(), id).await,
        Err(_) => Ok(None),
    };
    ingress.lookups.fetch_add(1, Ordering::Relaxed);
    let (account, route) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "unknown_connection")
                .increment(1);
            return StatusCode::NO_CONTENT.into_response();
        }
        Err(e) => return unavailable(&e),
    };
    for_connection(&ingress, kind, (account, route), &uri, &headers, &body).await
}

fn known_providers() -> String {
    let known: Vec<&str> = crate::domain::ProviderKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    format!("known: {}", known.join(", "))
}

/// A delivery on a connection's own route: verified with the connection's
/// own secret (a HubSpot private app's, say) or else the app's; its events
/// for any other account are left out.
async fn for_connection(
    ingress: &Ingress,
    kind: ProviderKind,
    (account, route): (String, Route),
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let rejected = |why: String| async move {
        metrics::counter!("crmsync_webhook_requests_total", "outcome" => "rejected").increment(1);
        tracing::warn!(error = %why, "webhook rejected");
        let mut deltas = HashMap::new();
        deltas.insert(
            route.connection,
            WebhookCounts {
                rejected: 1,
                ..WebhookCounts::default()
            },
        );
        ingress.stats.add(&deltas).await;
        problem(StatusCode::UNAUTHORIZED, &why)
    };
    let app = ingress.apps.get(&kind).cloned().unwrap_or_default();
    let secret = match (&route.sealed_credential, &ingress.key, &app.secret) {
        (Some((kind @ WebhookCredentialKind::HmacSecret, sealed)), Some(key), _) => {
            match crate::store::open_webhook_credential(
                key,
                (route.tenant, route.connection),
                *kind,
                sealed,
            ) {
                Ok(WebhookCredential::HmacSecret(secret)) => secret,
                Ok(_) | Err(_) => {
                    return rejected("the connection's webhook secret cannot be opened".into())
                        .await;
                }
            }
        }
        (Some((WebhookCredentialKind::HmacSecret, _)), None, _) => {
            return rejected(
                "ingress has no encryption key to open the connection's webhook secret".into(),
            )
            .await;
        }
        (Some(_), _, _) => {
            return rejected(format!(
                "the connection's webhook credential cannot verify {kind} deliveries"
            ))
            .await;
        }
        (None, _, Some(app)) => app.clone(),
        (None, _, None) => {
            return rejected("no secret verifies this connection's webhooks".into()).await;
        }
    };
    let verified = crm_webhooks::verify(
        kind,
        secret.expose_secret().as_bytes(),
        Delivery {
            url: &called_url(ingress, uri),
            body,
            headers,
            now_ms: chrono::Utc::now().timestamp_millis(),
            allow_legacy: ingress.allow_legacy,
        },
        app.own_app,
    );
    let events = match verified {
        Ok(events) => events,
        Err(WebhookError::Malformed(why)) => return malformed(&why),
        Err(e) => return rejected(e.to_string()).await,
    };
    let (own, foreign): (Vec<Delivered>, Vec<Delivered>) =
        events.into_iter().partition(|e| e.account == account);
    if !foreign.is_empty() {
        metrics::counter!("crmsync_webhook_events_total", "outcome" => "unknown_account")
            .increment(foreign.len() as u64);
    }
    let mut cache = RouteCache::new(kind);
    cache
        .by_account
        .insert(account.clone(), vec![route.clone()]);
    match accept(
        ingress,
        &mut cache,
        &Signer::Connection(route.connection),
        std::slice::from_ref(&account),
        own,
    )
    .await
    {
        Ok(()) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "accepted")
                .increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => unavailable(&e),
    }
}

/// An app-wide delivery (`/webhooks/{provider}`: HubSpot's public app
/// sends every account's events to one URL): the app's secret first, then
/// the own secrets of the connections of the one account the body names.
#[tracing::instrument(name = "webhook.request", skip_all, fields(provider = %provider))]
async fn app_wide(
    State(ingress): State<Ingress>,
    axum::extract::Path(provider): axum::extract::Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(kind) = provider.parse::<ProviderKind>() else {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no webhooks for {provider:?}: {}", known_providers()),
        );
    };
    let app = ingress.apps.get(&kind).cloned().unwrap_or_default();
    let url = called_url(&ingress, &uri);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let verify = |secret: &[u8]| {
        crm_webhooks::verify(
            kind,
            secret,
            Delivery {
                url: &url,
                body: &body,
                headers: &headers,
                now_ms,
                allow_legacy: ingress.allow_legacy,
            },
            app.own_app,
        )
    };
    let mut cache = RouteCache::new(kind);
    // The app secret first: one HMAC over the body, nothing parsed or
    // looked up before it verifies.
    let mut outcome = Err(WebhookError::MissingSignature);
    if let Some(secret) = &app.secret {
        outcome = verify(secret.expose_secret().as_bytes()).map(|events| (Signer::App, events));
    }
    let mut claimed = None;
    if matches!(
        outcome,
        Err(WebhookError::Mismatch | WebhookError::MissingSignature)
    ) {
        let accounts = match claimed_accounts(kind, &body) {
            Claimed::Accounts(accounts) => accounts,
            Claimed::TooMany(n) => return too_many_accounts(n),
        };
        match own_secret(&ingress, &mut cache, &accounts, &verify).await {
            Ok(Some(found)) => outcome = Ok(found),
            Ok(None) => {}
            Err(e) => return unavailable(&e),
        }
        claimed = Some(accounts);
    }
    let (signer, events) = match outcome {
        Ok(found) => found,
        Err(WebhookError::Malformed(why)) => return malformed(&why),
        Err(e) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "rejected")
                .increment(1);
            tracing::warn!(error = %e, "webhook rejected");
            let accounts = match claimed {
                Some(accounts) => accounts,
                None => match claimed_accounts(kind, &body) {
                    Claimed::Accounts(accounts) => accounts,
                    Claimed::TooMany(n) => return too_many_accounts(n),
                },
            };
            count_rejected(&ingress, &mut cache, &accounts).await;
            return problem(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let accounts = match distinct(events.iter().map(|e| e.account.clone())) {
        Claimed::Accounts(accounts) => accounts,
        Claimed::TooMany(n) => return too_many_accounts(n),
    };
    match accept(&ingress, &mut cache, &signer, &accounts, events).await {
        Ok(()) => {
            metrics::counter!("crmsync_webhook_requests_total", "outcome" => "accepted")
                .increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &str) -> Response {
    metrics::counter!("crmsync_webhook_requests_total", "outcome" => "unavailable").increment(1);
    tracing::error!(error = %e, "webhook not accepted: queue or Redis unavailable");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily unable to accept webhooks",
    )
}

type Verify<'a> = dyn Fn(&[u8]) -> Result<Vec<Delivered>, WebhookError> + Sync + 'a;

/// Tries the own secrets of the connections of the one account the body
/// names: a private app is installed in one account, so a delivery naming
/// several cannot be signed by one, and costs no lookup.
async fn own_secret(
    ingress: &Ingress,
    cache: &mut RouteCache,
    accounts: &[String],
    verify: &Verify<'_>,
) -> Result<Option<(Signer, Vec<Delivered>)>, String> {
    let (Some(key), [account]) = (&ingress.key, accounts) else {
        return Ok(None);
    };
    // Fresh routes: a secret set a moment ago must already verify.
    prefetch(ingress, cache, std::slice::from_ref(account), true).await?;
    for route in cache.get(account).into_iter().flatten() {
        let Some((kind @ WebhookCredentialKind::HmacSecret, sealed)) = &route.sealed_credential
        else {
            continue;
        };
        let secret = match crate::store::open_webhook_credential(
            key,
            (route.tenant, route.connection),
            *kind,
            sealed,
        ) {
            Ok(WebhookCredential::HmacSecret(secret)) => secret,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(connection.id = %route.connection, error = %e, "cannot open the connection's webhook secret");
                continue;
            }
        };
        if let Ok(events) = verify(secret.expose_secret().as_bytes()) {
            return Ok(Some((Signer::Connection(route.connection), events)));
        }
    }
    Ok(None)
}

/// Counts a refused delivery against the connections of the (at most
/// [`MAX_ACCOUNTS_PER_DELIVERY`]) accounts its body names: one round trip.
async fn count_rejected(ingress: &Ingress, cache: &mut RouteCache, accounts: &[String]) {
    if prefetch(ingress, cache, accounts, false).await.is_err() {
        return;
    }
    let mut deltas: HashMap<ConnectionId, WebhookCounts> = HashMap::new();
    for account in accounts {
        for route in cache.get(account).into_iter().flatten() {
            deltas.entry(route.connection).or_default().rejected += 1;
        }
    }
    ingress.stats.add(&deltas).await;
}

/// Routes, dedupes and enqueues verified events: one intake round trip,
/// then a job per connection and object unless one is already waiting for
/// records this delivery only marked as changed.
async fn accept(
    ingress: &Ingress,
    cache: &mut RouteCache,
    signer: &Signer,
    accounts: &[String],
    events: Vec<Delivered>,
) -> Result<(), String> {
    prefetch(ingress, cache, accounts, false).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut destinations: Vec<Destination> = Vec::new();
    let mut index: BTreeMap<(ConnectionId, CrmObject), usize> = BTreeMap::new();
    let mut arrivals: Vec<Arrival> = Vec::with_capacity(events.len());
    let mut routed: Vec<Event> = Vec::with_capacity(events.len());
    for delivered in events {
        let Some(event) = delivered.event else {
            metrics::counter!("crmsync_webhook_events_total", "outcome" => "ignored").increment(1);
            continue;
        };
        let object = event.object;
        let mut reached = Vec::new();
        for route in cache.get(&delivered.account).into_iter().flatten() {
            if !signer.serves(route) {
                continue;
            }
            let next = destinations.len();
            let at = *index.entry((route.connection, object)).or_insert(next);
            if at == next {
                destinations.push(Destination {
                    tenant: route.tenant,
                    connection: route.connection,
                    object,
                    paused: route.paused,
                });
            }
            reached.push(at);
        }
        if reached.is_empty() {
            metrics::counter!("crmsync_webhook_events_total", "outcome" => "unknown_account")
                .increment(1);
            continue;
        }
        arrivals.push(Arrival {
            dedupe_key: event.dedupe_key.clone(),
            occurred_at_ms: event.occurred_at_ms,
            record: event.changed_record().cloned(),
            destinations: reached,
        });
        routed.push(event);
    }
    if arrivals.is_empty() {
        return Ok(());
    }
    let intake = intake::record(
        &ingress.dedupe,
        &ingress.stats,
        &destinations,
        &arrivals,
        now_ms,
    )
    .await?;
    let mut groups: Vec<Vec<&Event>> = vec![Vec::new(); destinations.len()];
    let mut duplicates = 0;
    for ((event, arrival), first) in routed.iter().zip(&arrivals).zip(&intake.first) {
        if !first {
            duplicates += 1;
            continue;
        }
        for d in &arrival.destinations {
            if let Some(group) = groups.get_mut(*d) {
                group.push(event);
            }
        }
    }
    metrics::counter!("crmsync_webhook_events_total", "outcome" => "duplicate")
        .increment(duplicates);
    for ((destination, events), job_waiting) in
        destinations.iter().zip(groups).zip(&intake.job_waiting)
    {
        if destination.paused || events.is_empty() {
            continue;
        }
        metrics::counter!("crmsync_webhook_events_total", "outcome" => "accepted")
            .increment(events.len() as u64);
        let coalesced = coalesce(events.iter().copied());
        let only_changes = coalesced.only_changes();
        // Nothing to read or apply (association changes, say), or only
        // records that the waiting job will claim: no job of its own.
        if only_changes && (*job_waiting || coalesced.changed.is_empty()) {
            continue;
        }
        let job = ProcessWebhookJob {
            traceparent: crate::telemetry::current_traceparent(),
            ..job_from_coalesced(
                destination.tenant,
                destination.connection,
                destination.object,
                coalesced,
                delivery_id(&events),
            )
        };
        if let Err(e) = ingress
            .queue
            .push_process_webhook_after(&job, std::time::Duration::ZERO)
            .await
        {
            if !*job_waiting {
                ingress
                    .queue
                    .clear_webhook_job_waiting(destination.connection, destination.object)
                    .await;
            }
            return Err(e.to_string());
        }
    }
    Ok(())
}

/// Names a delivery's events for one connection (the job's idempotency key).
fn delivery_id(events: &[&Event]) -> String {
    let mut hasher = Sha256::new();
    for e in events {
        hasher.update(e.dedupe_key.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds the job for one connection from coalesced events.
fn job_from_coalesced(
    tenant: TenantId,
    connection: ConnectionId,
    object: CrmObject,
    coalesced: Coalesced,
    delivery: String,
) -> ProcessWebhookJob {
    ProcessWebhookJob {
        tenant,
        connection,
        object,
        changed: coalesced.changed.into_iter().collect(),
        deleted: coalesced.deleted.into_iter().collect(),
        erased: coalesced.erased.into_iter().collect(),
        merged: coalesced.merged_into.into_iter().collect(),
        echoed: coalesced.echoed.into_iter().collect(),
        delivery,
        attempt: 0,
        redrives: 0,
        traceparent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_url_is_the_public_url_or_a_loopback_address_never_anything_else() {
        let at = |s: &str| {
            s.parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        assert_eq!(
            signed_base(Some("https://hooks.example.com/"), at("0.0.0.0:8081")).ok(),
            Some("https://hooks.example.com".to_string())
        );
        assert_eq!(
            signed_base(None, at("127.0.0.1:8081")).ok(),
            Some("http://127.0.0.1:8081".to_string())
        );
        assert_eq!(
            signed_base(None, at("[::1]:8081")).ok(),
            Some("http://[::1]:8081".to_string())
        );
        for open in ["0.0.0.0:8081", "[::]:8081", "10.1.2.3:8081"] {
            let err = signed_base(None, at(open))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("CRMSYNC__INGRESS__PUBLIC_URL"),
                "{open}: {err}"
            );
        }
    }

    #[test]
    fn more_distinct_accounts_than_the_cap_are_counted_not_looked_up() {
        let body = serde_json::to_vec(
            &(0..=MAX_ACCOUNTS_PER_DELIVERY as u64)
                .map(|p| serde_json::json!({"portalId": p}))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        // The bodies are the first provider's (HubSpot's) event shape.
        let first = ProviderKind::ALL[0];
        assert!(matches!(
            claimed_accounts(first, &body),
            Claimed::TooMany(n) if n == MAX_ACCOUNTS_PER_DELIVERY + 1
        ));
        let repeated = br#"[{"portalId":7},{"portalId":7},{"portalId":3}]"#;
        assert!(
            matches!(claimed_accounts(first, repeated), Claimed::Accounts(a) if a == ["3", "7"])
        );
        assert!(
            matches!(claimed_accounts(first, b"not json"), Claimed::Accounts(a) if a.is_empty())
        );
    }
}
