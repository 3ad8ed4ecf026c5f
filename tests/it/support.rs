//! Shared test harness: a sandbox on `127.0.0.1:0`, a JSON client, and a
//! webhook receiver that records what it gets and answers as told.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use crmsync::sandbox::hubspot::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub const TOKEN: &str = "pat-na1-00000000-0000-4000-8000-000000000000";
pub const PORTAL: u64 = 62515;
pub const APP_ID: u64 = 54321;
pub const SECRET: &str = "sandbox-client-secret";
pub const DEV_KEY: &str = "sandbox-developer-key";

pub struct TestSandbox {
    pub base: String,
    #[allow(dead_code)]
    pub sandbox: Sandbox,
    pub http: reqwest::Client,
    pub token: String,
    _server: tokio::task::JoinHandle<()>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestSandbox {
    /// Tokens from the sandbox's OAuth flow for app `client_id`: a code
    /// (the user's consent), then the `authorization_code` grant; answers
    /// the access token, the refresh token and the access token's lifetime.
    pub async fn oauth_tokens(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> (String, String, u64) {
        let redirect = "https://platform.example/oauth/callback";
        let code = self
            .post_control("/_sandbox/oauth/codes", json!({"redirectUri": redirect}))
            .await;
        assert!(code.status.is_success(), "{:?}", code.body);
        let code = code.body["code"].as_str().expect("code").to_string();
        let body = self
            .token_endpoint(
                "/oauth/v3/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                    ("redirect_uri", redirect),
                    ("code", &code),
                ],
            )
            .await;
        let text = |k: &str| {
            body[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k}"))
                .to_string()
        };
        (
            text("access_token"),
            text("refresh_token"),
            body["expires_in"].as_u64().expect("expires_in"),
        )
    }

    /// A form POST to the sandbox's OAuth endpoint at `path`; it must succeed.
    pub async fn token_endpoint(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .expect("token endpoint");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// HubSpot expires `access_token` now (before its stated lifetime).
    pub async fn expire_token(&self, access_token: &str) {
        let reply = self
            .post_control(
                "/_sandbox/oauth/expire",
                json!({"accessToken": access_token}),
            )
            .await;
        assert!(reply.status.is_success(), "{:?}", reply.body);
    }

    pub async fn start() -> Self {
        Self::with(SandboxConfig::for_tests()).await
    }

    pub async fn with(config: SandboxConfig) -> Self {
        let sandbox = Sandbox::new(config).expect("valid config");
        let (addr, server) = sandbox
            .clone()
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        Self {
            base: format!("http://{addr}"),
            sandbox,
            http: reqwest::Client::new(),
            token: TOKEN.into(),
            _server: server,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The status of listing contacts with `token`: does this token work?
    pub async fn status_with(&self, token: &str) -> StatusCode {
        self.send(
            reqwest::Method::GET,
            "/crm/v3/objects/contacts",
            None,
            Some(token),
        )
        .await
        .status
    }
    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None, Some(&self.token))
            .await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body), Some(&self.token))
            .await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(body), Some(&self.token))
            .await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None, Some(&self.token))
            .await
    }
    /// A control-API call (no auth).
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        self.send(method, path, body, None).await
    }
    pub async fn put_control(&self, path: &str, body: Value) -> Reply {
        self.control(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn post_control(&self, path: &str, body: Value) -> Reply {
        self.control(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn counters(&self) -> Value {
        self.control(
            reqwest::Method::GET,
            &format!("/_sandbox/accounts/{PORTAL}/counters"),
            None,
        )
        .await
        .body
    }
    pub async fn seed(&self, contacts: u64, leads: u64) {
        let r = self
            .post_control(
                &format!("/_sandbox/accounts/{PORTAL}/seed"),
                serde_json::json!({"contacts": contacts, "leads": leads}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    pub async fn create_contact(&self, email: &str) -> String {
        let r = self
            .post(
                "/crm/v3/objects/contacts",
                serde_json::json!({"properties": {"email": email, "firstname": "Test"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["id"].as_str().expect("id").to_string()
    }

    /// Creates a lead named `name` with `contact` as its primary contact
    /// (HubSpot requires one).
    pub async fn create_lead(&self, name: &str, contact: &str) -> String {
        let r = self
            .post(
                "/crm/v3/objects/leads",
                serde_json::json!({"properties": {"hs_lead_name": name}, "associations": primary_contact(contact)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["id"].as_str().expect("id").to_string()
    }
}

/// The inline `associations` of a lead create naming its primary contact.
pub fn primary_contact(contact: &str) -> serde_json::Value {
    serde_json::json!([{"to": {"id": contact}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 578}]}])
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn events(&self) -> Vec<Value> {
        serde_json::from_slice::<Vec<Value>>(&self.body).expect("a JSON array")
    }
}

/// A webhook target on loopback.
pub struct Receiver {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    /// Requests to fail (500) before answering 204.
    pub fail_first: Arc<AtomicUsize>,
    /// Status once failures are used up.
    pub status: Arc<AtomicU16>,
    /// Delay before answering, ms.
    pub delay_ms: Arc<AtomicUsize>,
    /// Highest number of requests in flight at once.
    pub max_in_flight: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let fail_first = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(204));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (f, s, d, inf, max) = (
            fail_first.clone(),
            status.clone(),
            delay_ms.clone(),
            in_flight,
            max_in_flight.clone(),
        );
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (tx, f, s, d, inf, max) = (
                    tx.clone(),
                    f.clone(),
                    s.clone(),
                    d.clone(),
                    inf.clone(),
                    max.clone(),
                );
                async move {
                    let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    // Recorded on arrival: a sender that times out drops this future mid-delay.
                    let _ = tx.send(Received { headers, body });
                    let delay = d.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
                    }
                    inf.fetch_sub(1, Ordering::SeqCst);
                    let failing = f
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::from_u16(s.load(Ordering::SeqCst))
                            .unwrap_or(StatusCode::NO_CONTENT)
                    }
                }
            }),
        );
        let (addr, server) = serve_on_loopback(app).await;
        Self {
            url: format!("http://{addr}/hook"),
            rx,
            fail_first,
            status,
            delay_ms,
            max_in_flight,
            _server: server,
        }
    }

    /// The next request, or panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Received {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .expect("a webhook in time")
            .expect("receiver open")
    }

    /// Requests received until `quiet` passes with nothing new.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(Some(r)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            out.push(r);
        }
        out
    }
}

/// Independent v1 check: lowercase hex SHA-256 of secret + body.
pub fn expected_v1(secret: &str, body: &[u8]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update([secret.as_bytes(), body].concat());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Independent v3 check: base64 HMAC-SHA256 over method + uri + body + timestamp.
pub fn expected_v3(secret: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(
        &[
            b"POST".as_slice(),
            uri.as_bytes(),
            body,
            timestamp.as_bytes(),
        ]
        .concat(),
    );
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A small deterministic generator: a failing run fails the same way again.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number below `n`.
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// Serves `app` on a free loopback port until the handle is aborted.
pub async fn serve_on_loopback(
    app: axum::Router,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, server)
}
