//! Garbage bodies from a CRM: a proxy in front of any CRM's API that
//! answers a share of the calls the CRM carried out with an HTML page
//! instead of its JSON — what an overloaded edge in front of a real CRM
//! sends now and then. It garbles after the CRM did the work, so a write
//! whose answer it garbles did happen: a retry must not write it twice.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What a garbled call gets: a 200 whose body is not the CRM's JSON.
const GARBAGE: &str = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>";

/// Headers a proxy must not copy from one hop to the next.
const HOP_BY_HOP: [header::HeaderName; 4] = [
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

struct Shared {
    upstream: String,
    http: reqwest::Client,
    /// Garble one successful answer in this many (0: none).
    every: AtomicU32,
    /// Successful answers since the rate was set.
    successes: AtomicU64,
    garbled: AtomicU64,
}

/// The proxy, serving on loopback until dropped.
pub struct Garbler {
    /// Its base URL: where crmsync's settings point for the CRM's API.
    pub base: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Garbler {
    /// A proxy to `upstream` (a base URL), garbling nothing yet.
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            every: AtomicU32::new(0),
            successes: AtomicU64::new(0),
            garbled: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let (addr, server) = crate::support::serve_on_loopback(app).await;
        Self {
            base: format!("http://{addr}"),
            shared,
            server,
        }
    }

    /// Garbles this share (in `[0, 1]`) of the successful answers from now
    /// on: the first, then one in `1 / rate` — counted, not drawn, so a run
    /// with any successful answer garbles at least one (a test asserting
    /// garbage was seen never fails by chance).
    pub fn set_rate(&self, rate: f64) {
        let every = if rate > 0.0 {
            (1.0 / rate.clamp(1e-6, 1.0)).round() as u32
        } else {
            0
        };
        self.shared.successes.store(0, Ordering::SeqCst);
        self.shared.every.store(every, Ordering::SeqCst);
    }

    /// Answers garbled so far.
    pub fn garbled(&self) -> u64 {
        self.shared.garbled.load(Ordering::SeqCst)
    }
}

impl Drop for Garbler {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Forwards one call and garbles its answer when its turn comes. A client
/// giving up on a hanging call drops this, and with it the upstream call.
async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers;
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let answer = shared
        .http
        .request(parts.method, format!("{}{path}", shared.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut headers: HeaderMap = answer.headers().clone();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let Ok(bytes) = answer.bytes().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let every = u64::from(shared.every.load(Ordering::SeqCst));
    if status.is_success()
        && every > 0
        && shared.successes.fetch_add(1, Ordering::SeqCst) % every == 0
    {
        shared.garbled.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            GARBAGE,
        )
            .into_response();
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
