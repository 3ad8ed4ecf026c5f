//! The HTTP server of `crmsync-api` and `crmsync-ingress` (and of `crmsync
//! dev` and the tests), because `axum::serve` bounds nothing a client can
//! hold: with it, 3,000 slow-drip connections stayed open indefinitely.
//!
//! Per server:
//! - a **header read timeout**: a connection whose request headers are not
//!   all in within it (and an idle kept-alive connection) is closed, with no
//!   response — hyper's `header_read_timeout`;
//! - a **body read timeout** from the end of the headers: a body still
//!   arriving after it ends the request with a problem+json 408 and closes
//!   the connection;
//! - a **connection cap**: a connection over it is answered a problem+json
//!   503 with `Retry-After: 1` and closed, so a flood neither queues in the
//!   kernel's backlog nor takes memory per connection;
//! - **problem+json** for the errors axum produces itself (404 no route, 405
//!   wrong method, 413 body over the route's limit, 408), where the app left
//!   them plain; an app's own JSON errors are left as they are.
//!
//! Handlers get the peer address as `axum::extract::ConnectInfo<SocketAddr>`
//! in the request extensions, as with `into_make_service_with_connect_info`.

use crate::config::{ApiSettings, IngressSettings};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// What one server lets a client hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time to send a request's headers; also the idle keep-alive limit.
    pub header_read_timeout: Duration,
    /// Time to send a request's body, from the end of its headers.
    pub body_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl ServerLimits {
    /// The api's `[api]` limits.
    pub fn api(settings: &ApiSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
            max_connections: settings.max_connections,
        }
    }

    /// Ingress's `[ingress]` limits.
    pub fn ingress(settings: &IngressSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
            max_connections: settings.max_connections,
        }
    }
}

/// An address or a CIDR block (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`):
/// how `api.trusted_proxies` names the proxies whose `X-Forwarded-For` is
/// believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `addr` is in the range (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(net)), 32, self.prefix)
                    == masked(u128::from(u32::from(a)), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-bit address.
fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    match bits - prefix.min(bits) {
        shift if u32::from(shift) >= 128 => 0,
        shift => value >> shift,
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let network = network.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix that is not 0 to {bits}"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// Refusals (over the connection cap) answered at once; beyond them a
/// connection is dropped unanswered, so refusing costs bounded work too.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// How long a refusal waits for its client to read the 503 and hang up.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long a failing `accept` (out of file descriptors, say) pauses the
/// loop, so it does not spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then
/// stops accepting and waits for the open connections' requests to end
/// (idle connections close at once; a slow one within the read timeouts).
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("crmsync_http_connections_refused_total").increment(1);
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let app = app.clone();
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            handle(app.clone(), remote, body_timeout, request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, peer = %remote, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// [`serve`] in a task until it is aborted: for `crmsync dev` and tests.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serve(listener, app, limits, std::future::pending()).await {
            tracing::error!(error = %e, "server stopped");
        }
    })
}

/// One request: the peer address in its extensions, its body under the
/// deadline, and the server's own errors as problem+json.
async fn handle(
    app: Router,
    remote: SocketAddr,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let expired = Arc::new(AtomicBool::new(false));
    let path = request.uri().path().to_string();
    let mut request = request.map(|body| {
        Body::new(Deadline {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(body_timeout)),
            expired: expired.clone(),
        })
    });
    request.extensions_mut().insert(ConnectInfo(remote));
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if expired.load(Ordering::Relaxed) {
        metrics::counter!("crmsync_http_body_timeouts_total").increment(1);
        let mut response = problem(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request body did not arrive within {} s",
                body_timeout.as_secs()
            ),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    Ok(as_problem(response, &path).await)
}

/// The longest plain-text error body kept as a problem's `detail`.
const MAX_PLAIN_DETAIL: usize = 4096;

/// Rewrites a plain (empty or text) 404, 405, 408 or 413 as problem+json,
/// keeping its headers (`Allow` on a 405) and its text as the detail.
async fn as_problem(response: Response<Body>, path: &str) -> Response<Body> {
    let status = response.status();
    let default = match status {
        StatusCode::NOT_FOUND => format!("no such endpoint: {path}"),
        StatusCode::METHOD_NOT_ALLOWED => format!("{path} does not take this method"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this endpoint accepts".to_string()
        }
        StatusCode::REQUEST_TIMEOUT => "the request took too long to arrive".to_string(),
        _ => return response,
    };
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_DETAIL)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    // axum's own 413 text names its buffering, not the client's mistake.
    let detail = if text.is_empty() || status == StatusCode::PAYLOAD_TOO_LARGE {
        default
    } else {
        text
    };
    let problem = problem(status, &detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in problem.headers() {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, problem.into_body())
}

/// The body of an RFC 9457 problem document: the one shape of every error
/// either server answers (the api adds `errors` to it).
pub(crate) fn problem_body(status: StatusCode, detail: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    })
}

/// An RFC 9457 problem document.
fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = problem_body(status, detail);
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// Answers a connection over the cap: 503, then waits briefly for the
/// client to hang up (closing with its request unread would reset the
/// connection and could lose the answer).
async fn refuse(mut stream: TcpStream) {
    let body = problem_body(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections; retry shortly",
    )
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// A request body that fails once its deadline passes, and says so.
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body read timeout")]
struct BodyTimeout;

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_their_addresses_and_refuse_bad_text() {
        let range = |t: &str| t.parse::<IpRange>().unwrap_or_else(|e| panic!("{e}"));
        let ip = |t: &str| t.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert!(range("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!range("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(
            range("10.0.0.0/8").contains(ip("::ffff:10.1.1.1")),
            "IPv4-mapped"
        );
        assert!(range("fd00::/8").contains(ip("fd12::1")));
        assert!(!range("fd00::/8").contains(ip("10.0.0.1")));
        assert!(range("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(range("::/0").contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "example.com",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn plain_server_errors_become_problems_and_json_ones_stay() {
        let plain = Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from("length limit exceeded"))
            .unwrap_or_default();
        let rewritten = as_problem(plain, "/x").await;
        assert_eq!(rewritten.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            rewritten.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/problem+json"))
        );
        let json = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap_or_default();
        let kept = as_problem(json, "/x").await;
        assert_eq!(
            kept.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        // A handler's own plain 404 keeps what it said.
        let said = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("lead 7 not found"))
            .unwrap_or_default();
        let body = as_problem(said, "/v1/leads/7").await.into_body();
        let body = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(problem["detail"], "lead 7 not found");
        assert_eq!(problem["status"], 404);
    }
}
