//! OAuth connect end to end over HTTP: the api hands out the sandbox
//! HubSpot's install URL, the sandbox consents and redirects to the api's
//! callback, the callback exchanges the code at the sandbox's token
//! endpoint and sends the browser on to the platform's `redirectUri`. A
//! new account becomes an active connection that syncs; an account already
//! connected is re-authorised in place. A replayed, expired, forged or
//! altered state is refused and creates nothing.

use crate::fleet::{Fleet, assert_mirrors_sandbox, on_both_backends, wait_for};
use crate::support::PORTAL;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{TimeDelta, Utc};
use crmsync::domain::{ConnectionStatus, RunKind, RunStatus, TenantId};
use crmsync::store::Credentials;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where the platform wants its users back.
const BACK: &str = "https://app.example.com/crm/done?tab=crm";

/// An api set up for OAuth over a fleet, with a clock the test moves.
struct OAuthApi {
    base: String,
    token: String,
    /// Seconds the api's clock is ahead of the real one.
    ahead: Arc<AtomicI64>,
    /// A client that shows redirects instead of following them.
    http: reqwest::Client,
    /// Where the CRM calls it back (`api.public_url`; its own address
    /// unless a test puts it behind another's).
    public: String,
}

impl OAuthApi {
    async fn start(fleet: &Fleet, configure: impl FnOnce(&mut crmsync::config::Settings)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut settings = fleet.settings.clone();
        settings.hubspot.client_id = Some("sandbox-client-id".into());
        settings.hubspot.authorize_url = format!("{}/oauth/authorize", fleet.sandbox.base);
        settings.api.public_url = Some(base.clone());
        configure(&mut settings);
        let public = settings.api.public_url.clone().unwrap_or_default();
        let ahead = Arc::new(AtomicI64::new(0));
        let offset = ahead.clone();
        let clock = crmsync::api::Clock::new(move || {
            Utc::now() + TimeDelta::seconds(offset.load(Ordering::SeqCst))
        });
        let api = crmsync::app::api(&settings, fleet.store.clone(), fleet.deps.queue.clone())
            .await
            .expect("api")
            .with_clock(clock);
        crmsync::http_server::spawn(
            listener,
            api.router(),
            crmsync::http_server::ServerLimits::api(&settings.api),
        );
        Self {
            base,
            public,
            token: fleet.store.issue_token(fleet.tenant).await.expect("token"),
            ahead,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    /// `GET /v1/oauth/{provider}/authorize` as `token`'s tenant.
    async fn authorize_as(
        &self,
        token: &str,
        provider: &str,
        redirect: &str,
    ) -> (StatusCode, Value) {
        let mut url =
            Url::parse(&format!("{}/v1/oauth/{provider}/authorize", self.base)).expect("url");
        url.query_pairs_mut().append_pair("redirectUri", redirect);
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("authorize");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The install URL for the fleet's tenant.
    async fn install_url(&self, redirect: &str) -> Url {
        let (status, body) = self.authorize_as(&self.token, "hubspot", redirect).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Url::parse(body["url"].as_str().expect("url")).expect("an absolute url")
    }

    /// The user consents on the (sandbox) CRM, for `portal` or the sandbox's
    /// own account; returns the callback URL the CRM redirects to.
    async fn consent(&self, install: &Url, portal: Option<u64>) -> Url {
        let mut url = install.clone();
        if let Some(portal) = portal {
            url.query_pairs_mut()
                .append_pair("portal_id", &portal.to_string());
        }
        let response = self.http.get(url).send().await.expect("consent");
        assert_eq!(response.status(), StatusCode::FOUND);
        let callback = Url::parse(location(&response).expect("location")).expect("callback url");
        assert!(
            callback
                .as_str()
                .starts_with(&format!("{}/oauth/hubspot/callback?", self.public)),
            "{callback}"
        );
        callback
    }

    /// The browser arrives at the callback; returns the status and where
    /// it is sent on (a redirect's query parameters), or the problem body.
    async fn arrive(&self, callback: &Url) -> (StatusCode, Option<Url>, Value) {
        let response = self
            .http
            .get(callback.clone())
            .send()
            .await
            .expect("callback");
        let status = response.status();
        let to = location(&response).map(|l| Url::parse(l).expect("redirect url"));
        (status, to, response.json().await.unwrap_or(Value::Null))
    }

    /// The whole flow for `portal`; returns where the user lands.
    async fn connect(&self, portal: Option<u64>) -> Url {
        let install = self.install_url(BACK).await;
        let callback = self.consent(&install, portal).await;
        let (status, to, body) = self.arrive(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        to.expect("a redirect")
    }
}

fn location(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
}

fn param(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Asserts the user landed on the platform's page with `error`.
fn assert_sent_back_with_error(to: &Url, error: &str) {
    assert!(to.as_str().starts_with(BACK), "{to}");
    assert_eq!(param(to, "error").as_deref(), Some(error), "{to}");
    assert_eq!(param(to, "connectionId"), None);
}

async fn connection_count(fleet: &Fleet, tenant: TenantId) -> usize {
    fleet
        .store
        .list_connections(tenant)
        .await
        .expect("connections")
        .len()
}

on_both_backends! {
    async fn connecting_creates_a_connection_that_syncs_and_reconnecting_reauthorises_it(backend) {
        let mut fleet = Fleet::start(backend, 6).await;
        fleet.start_workers();
        let api = OAuthApi::start(&fleet, |_| {}).await;

        // The install URL: the CRM's consent page, crmsync's callback, a state.
        let install = api.install_url(BACK).await;
        assert_eq!(param(&install, "client_id").as_deref(), Some("sandbox-client-id"));
        assert_eq!(
            param(&install, "redirect_uri"),
            Some(format!("{}/oauth/hubspot/callback", api.base))
        );
        assert!(param(&install, "state").is_some_and(|s| s.len() > 40));
        assert!(param(&install, "scope").is_some_and(|s| s.contains("crm.objects.contacts.write")));
        assert_eq!(param(&install, "code_challenge"), None, "HubSpot documents no PKCE");

        // A new account: a new, active connection with sealed OAuth tokens.
        let callback = api.consent(&install, Some(777)).await;
        let (status, to, body) = api.arrive(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let to = to.expect("redirect");
        assert!(to.as_str().starts_with(BACK), "the platform's query is kept: {to}");
        let id: crmsync::domain::ConnectionId = param(&to, "connectionId")
            .expect("connectionId")
            .parse()
            .expect("a connection id");
        let row = fleet.store.connection(fleet.tenant, id).await.expect("row");
        assert_eq!(row.external_account_id, "777");
        assert_eq!(row.status, ConnectionStatus::Active);
        assert!(matches!(
            fleet.store.credentials(&row).expect("credentials open"),
            Credentials::OAuth { expires_at, .. } if expires_at > Utc::now()
        ));
        // …whose first full sync runs (the new account is empty).
        wait_for("the new connection's full sync", || async {
            fleet
                .store
                .list_runs(fleet.tenant, Some(id), None, 10)
                .await
                .expect("runs")
                .iter()
                .any(|r| r.kind == RunKind::FullSync && r.status == RunStatus::Succeeded)
        })
        .await;

        // The same callback again: the state is used; nothing changes.
        let (status, to, _) = api.arrive(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_sent_back_with_error(&to.expect("redirect"), "invalid_state");
        assert_eq!(connection_count(&fleet, fleet.tenant).await, 2);

        // The fleet's own account, its token revoked: OAuth re-authorises
        // that connection in place (same id, active, now OAuth tokens)…
        fleet
            .store
            .set_connection_status(fleet.tenant, fleet.connection, ConnectionStatus::NeedsReauth, Some("test"))
            .await
            .expect("status");
        let to = api.connect(None).await;
        assert_eq!(param(&to, "connectionId"), Some(fleet.connection.to_string()));
        let row = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("row");
        assert_eq!(row.external_account_id, PORTAL.to_string());
        assert_eq!(row.status, ConnectionStatus::Active);
        assert!(matches!(
            fleet.store.credentials(&row).expect("credentials open"),
            Credentials::OAuth { .. }
        ));
        assert_eq!(connection_count(&fleet, fleet.tenant).await, 2);
        // …and it syncs with them.
        fleet.full_sync().await;
        assert_mirrors_sandbox(&fleet).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn expired_forged_altered_and_foreign_states_are_refused_and_create_nothing(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = OAuthApi::start(&fleet, |_| {}).await;
        let other = fleet.store.create_tenant("other").await.expect("tenant");
        let before = connection_count(&fleet, fleet.tenant).await;

        // Expired: consent given, but the browser comes back 10 min 1 s later.
        let callback = api.consent(&api.install_url(BACK).await, Some(801)).await;
        api.ahead.store(601, Ordering::SeqCst);
        let (status, to, _) = api.arrive(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_sent_back_with_error(&to.expect("redirect"), "invalid_state");
        // One issued at the same moved clock and back within 9 min 59 s works.
        let callback = api.consent(&api.install_url(BACK).await, Some(802)).await;
        api.ahead.store(601 + 599, Ordering::SeqCst);
        let (status, to, body) = api.arrive(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert!(param(&to.expect("redirect"), "connectionId").is_some());
        api.ahead.store(0, Ordering::SeqCst);
        assert_eq!(connection_count(&fleet, fleet.tenant).await, before + 1);

        // Another tenant's: the fleet tenant's state rewritten to name the
        // other tenant (bytes 17..33) fails its signature. No redirect: a
        // state crmsync did not sign names no trustworthy redirectUri.
        let callback = api.consent(&api.install_url(BACK).await, Some(803)).await;
        let state = param(&callback, "state").expect("state");
        let mut bytes = URL_SAFE_NO_PAD.decode(&state).expect("base64url");
        bytes[17..33].copy_from_slice(other.id.0.as_bytes());
        let forged = with_param(&callback, "state", &URL_SAFE_NO_PAD.encode(&bytes));
        let (status, to, body) = api.arrive(&forged).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(to.is_none());
        assert_eq!(body["errors"][0]["field"], "state", "{body}");
        // Altered: one character changed.
        let mut altered = state.clone().into_bytes();
        altered[state.len() / 2] = if altered[state.len() / 2] == b'A' { b'B' } else { b'A' };
        let altered = with_param(&callback, "state", &String::from_utf8(altered).expect("ascii"));
        let (status, to, _) = api.arrive(&altered).await;
        assert_eq!((status, to), (StatusCode::BAD_REQUEST, None));
        // Missing, and a made-up one.
        let (status, _, body) = api.arrive(&with_param(&callback, "state", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["field"], "state");
        let (status, _, _) = api.arrive(&with_param(&callback, "state", "bm90LWEtc3RhdGU")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // The untouched state still works once: the refusals used nothing.
        let (status, to, _) = api.arrive(&callback).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(param(&to.expect("redirect"), "connectionId").is_some());
        assert_eq!(connection_count(&fleet, other.id).await, 0);
        assert_eq!(connection_count(&fleet, fleet.tenant).await, before + 2);

        // The same state at another CRM's callback: no such CRM.
        let install = api.install_url(BACK).await;
        let state = param(&install, "state").expect("state");
        let response = api
            .http
            .get(format!("{}/oauth/salesforce/callback?code=x&state={state}", api.base))
            .send()
            .await
            .expect("callback");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        fleet.finish().await;
    }
}

/// `url` with `key` set to `value` (other parameters kept).
fn with_param(url: &Url, key: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(key, value);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_consent_reaches_the_platform_as_its_error() {
    let fleet = Fleet::start(crate::fleet::Backend::Sqlite, 0).await;
    let api = OAuthApi::start(&fleet, |_| {}).await;
    let install = api.install_url(BACK).await;
    let state = param(&install, "state").expect("state");
    // What HubSpot sends when the user declines.
    let mut declined = Url::parse(&format!("{}/oauth/hubspot/callback", api.base)).expect("url");
    declined
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "The user declined")
        .append_pair("state", &state);
    let (status, to, _) = api.arrive(&declined).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_sent_back_with_error(&to.expect("redirect"), "access_denied");
    // The state is used up: a code arriving with it afterwards is refused.
    let mut late = Url::parse(&format!("{}/oauth/hubspot/callback", api.base)).expect("url");
    late.query_pairs_mut()
        .append_pair("code", "code-anything")
        .append_pair("state", &state);
    let (_, to, _) = api.arrive(&late).await;
    assert_sent_back_with_error(&to.expect("redirect"), "invalid_state");
    assert_eq!(connection_count(&fleet, fleet.tenant).await, 1);
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_refuses_bad_redirects_unknown_crms_strangers_and_a_missing_public_url() {
    let fleet = Fleet::start(crate::fleet::Backend::Sqlite, 0).await;
    let api = OAuthApi::start(&fleet, |s| {
        s.api.oauth_redirect_allow = vec!["https://app.example.com/crm".into()];
    })
    .await;
    for bad in [
        "not a url",
        "/crm/done",
        "javascript:alert(1)",
        "https://evil.example.com/crm/done",
        "https://app.example.com/crmx",
        "https://app.example.com/crm/done#frag",
    ] {
        let (status, body) = api.authorize_as(&api.token, "hubspot", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errors"][0]["field"], "redirectUri", "{bad}: {body}");
    }
    let (status, body) = api.authorize_as(&api.token, "hubspot", BACK).await;
    assert_eq!(status, StatusCode::OK, "under the allow-list: {body}");
    let (status, body) = api.authorize_as(&api.token, "salesforce", BACK).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("hubspot")),
        "{body}"
    );
    let (status, _) = api.authorize_as("cst_nobody", "hubspot", BACK).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let unset = OAuthApi::start(&fleet, |s| s.api.public_url = None).await;
    let (status, body) = unset.authorize_as(&unset.token, "hubspot", BACK).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("CRMSYNC__API__PUBLIC_URL")),
        "{body}"
    );
    fleet.finish().await;
}

on_both_backends! {
    async fn a_state_is_used_once_across_api_processes_racing_for_it(backend) {
        let fleet = Fleet::start(backend, 0).await;
        // Two api processes behind one public URL (the CRM calls back
        // whichever the balancer picks; the code is bound to that URL).
        let second = OAuthApi::start(&fleet, |_| {}).await;
        let public = second.base.clone();
        let first = OAuthApi::start(&fleet, move |s| s.api.public_url = Some(public)).await;
        // (The tenant's token is the one issued last: the first's.)
        let callback = first.consent(&first.install_url(BACK).await, Some(901)).await;
        // The same callback, four times at each of two api processes at once.
        let mut at_first = callback.clone();
        at_first
            .set_port(Url::parse(&first.base).expect("url").port())
            .expect("port");
        let arrivals = (0..8).map(|i| {
            let (api, url) = if i % 2 == 0 {
                (&first, &at_first)
            } else {
                (&second, &callback)
            };
            api.arrive(url)
        });
        let landed: Vec<Url> = futures::future::join_all(arrivals)
            .await
            .into_iter()
            .map(|(status, to, body)| {
                assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
                to.expect("redirect")
            })
            .collect();
        let connected = landed.iter().filter(|to| param(to, "connectionId").is_some()).count();
        let refused = landed
            .iter()
            .filter(|to| param(to, "error").as_deref() == Some("invalid_state"))
            .count();
        assert_eq!((connected, refused), (1, 7), "{landed:?}");
        assert_eq!(connection_count(&fleet, fleet.tenant).await, 2);
        fleet.finish().await;
    }
}
