//! Hostile input: ingress. A forged delivery listing thousands of accounts,
//! a signature made for another URL, slow-drip and connection-hoarding
//! clients, and the server's own errors: each refused cheaply and clearly.
//! Ingress runs on Redis under a namespace of its own, as in production, on
//! the shared server (`crmsync::http_server`) with short timeouts.

use crate::fleet::redis_url;
use crate::support::SECRET;
use crmsync::config::{QueueBackend, Settings};
use crmsync::http_server::{ServerLimits, spawn};
use crmsync::ingress::{Ingress, MAX_ACCOUNTS_PER_DELIVERY};
use crmsync::providers::hubspot::webhook::sign_v3;
use crmsync::secrets::EncryptionKey;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any one step may take before the test fails (a hang guard, not
/// a measurement).
const GUARD: Duration = Duration::from_secs(4);

struct Served {
    addr: SocketAddr,
    ingress: Ingress,
    settings: Settings,
    _server: tokio::task::JoinHandle<()>,
}

impl Served {
    fn url(&self) -> String {
        format!("http://{}/webhooks/hubspot", self.addr)
    }
}

/// Ingress with the app secret and an encryption key (so private-app
/// secrets would be tried too), settings tuned by `tune`.
async fn ingress(tune: impl FnOnce(&mut Settings)) -> Served {
    let mut settings = Settings::defaults().expect("defaults");
    settings.redis.url = Some(redis_url());
    settings.queue.backend = Some(QueueBackend::Redis);
    settings.queue.namespace = format!("it-hostile-{}", uuid::Uuid::now_v7().simple());
    settings.hubspot.client_secret = Some(SecretString::from(SECRET));
    settings.secrets.encryption_key = Some(EncryptionKey::generate().expect("key"));
    tune(&mut settings);
    let queue = crmsync::queue::Queue::connect(&settings, std::path::Path::new("."))
        .await
        .expect("queue");
    let ingress = crmsync::app::ingress(&settings, queue)
        .await
        .expect("ingress");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = ingress
        .clone()
        .router(settings.ingress.max_body_bytes, addr)
        .expect("router");
    let server = spawn(listener, router, ServerLimits::ingress(&settings.ingress));
    Served {
        addr,
        ingress,
        settings,
        _server: server,
    }
}

fn event(portal: u64, n: u64) -> Value {
    json!({"eventId": n, "subscriptionId": 1, "portalId": portal, "appId": 54321,
           "occurredAt": chrono::Utc::now().timestamp_millis(), "subscriptionType": "contact.propertyChange",
           "attemptNumber": 0, "objectId": n, "propertyName": "firstname", "propertyValue": "X", "changeSource": "CRM_UI"})
}

fn v3_headers(secret: &str, url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = chrono::Utc::now().timestamp_millis().to_string();
    vec![
        (
            "x-hubspot-signature-v3",
            sign_v3(secret.as_bytes(), "POST", url, body, &ts),
        ),
        ("x-hubspot-request-timestamp", ts),
    ]
}

/// An answer read off the wire.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn is_problem(&self) -> bool {
        self.head
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json")
            && serde_json::from_str::<Value>(&self.body)
                .is_ok_and(|v| v["status"].as_u64() == Some(u64::from(self.status)))
    }
}

/// Sends raw bytes on a fresh connection and reads the answer until the
/// server closes it (every request here asks it to).
async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes in time")
        .ok();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A POST to the webhook path with a chosen `Host`.
fn post(host: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /webhooks/hubspot HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_delivery_listing_fifty_thousand_accounts_is_refused_before_any_lookup() {
    let served = ingress(|_| {}).await;
    // ~1 MiB: 50,000 events, each for another account.
    let events: Vec<Value> = (0..50_000u64).map(|n| json!({"portalId": n + 1})).collect();
    let body = serde_json::to_vec(&events).expect("json");
    assert!(body.len() <= served.settings.ingress.max_body_bytes);
    let host = served.addr.to_string();
    for headers in [vec![], v3_headers("not-the-secret", &served.url(), &body)] {
        let answer = exchange(served.addr, &post(&host, &headers, &body)).await;
        assert_eq!(answer.status, 400, "{}", answer.head);
        assert!(answer.is_problem(), "{}\n{}", answer.head, answer.body);
        assert!(
            answer
                .body
                .contains(&format!("at most {MAX_ACCOUNTS_PER_DELIVERY} accounts")),
            "{}",
            answer.body
        );
    }
    assert_eq!(
        served.ingress.route_lookups(),
        0,
        "refused before any route lookup"
    );

    // Even signed by the app, a delivery naming more accounts than HubSpot
    // ever sends is refused before routing.
    let events: Vec<Value> = (0..=MAX_ACCOUNTS_PER_DELIVERY as u64)
        .map(|n| event(2_000_000 + n, n))
        .collect();
    let body = serde_json::to_vec(&events).expect("json");
    let answer = exchange(
        served.addr,
        &post(&host, &v3_headers(SECRET, &served.url(), &body), &body),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(served.ingress.route_lookups(), 0);

    // At the cap, an unsigned delivery is a 401 for one round trip of
    // lookups (to count it against the accounts it names), not one each.
    let events: Vec<Value> = (0..MAX_ACCOUNTS_PER_DELIVERY as u64)
        .map(|n| event(3_000_000 + n, n))
        .collect();
    let body = serde_json::to_vec(&events).expect("json");
    let answer = exchange(served.addr, &post(&host, &[], &body)).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer.is_problem());
    assert_eq!(served.ingress.route_lookups(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_url_is_the_bound_address_on_loopback_never_the_host_header() {
    let served = ingress(|_| {}).await;
    let body = serde_json::to_vec(&json!([event(4_000_000, 1)])).expect("json");
    // Signed for another URL of the same app, with a Host that matches it.
    let elsewhere = "http://hooks.elsewhere.example/webhooks/hubspot";
    let answer = exchange(
        served.addr,
        &post(
            "hooks.elsewhere.example",
            &v3_headers(SECRET, elsewhere, &body),
            &body,
        ),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer.is_problem());
    // Signed for the URL ingress is bound to: accepted, whatever the Host.
    let answer = exchange(
        served.addr,
        &post(
            "hooks.elsewhere.example",
            &v3_headers(SECRET, &served.url(), &body),
            &body,
        ),
    )
    .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_public_url_only_signatures_for_it_verify() {
    let public = "https://hooks.example.com";
    let served = ingress(|s| s.ingress.public_url = Some(format!("{public}/"))).await;
    let body = serde_json::to_vec(&json!([event(5_000_000, 1)])).expect("json");
    let public_url = format!("{public}/webhooks/hubspot");
    // Behind a TLS proxy: HubSpot signed the public https URL; the Host ingress
    // sees is its own.
    let answer = exchange(
        served.addr,
        &post(
            &served.addr.to_string(),
            &v3_headers(SECRET, &public_url, &body),
            &body,
        ),
    )
    .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    // A signature for the address ingress listens on, or for whatever Host
    // the client names, is one for another URL.
    for (host, url) in [
        (served.addr.to_string(), served.url()),
        (
            "hooks.evil.example".to_string(),
            "https://hooks.evil.example/webhooks/hubspot".to_string(),
        ),
    ] {
        let answer = exchange(
            served.addr,
            &post(&host, &v3_headers(SECRET, &url, &body), &body),
        )
        .await;
        assert_eq!(answer.status, 401, "{url}: {}", answer.body);
    }
}

#[test]
fn ingress_refuses_to_start_on_a_non_loopback_address_without_a_public_url() {
    let dir = std::env::temp_dir().join(format!("crmsync-it-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crmsync-ingress"))
        .current_dir(&dir)
        .env_clear()
        .env("CRMSYNC__INGRESS__LISTEN", "0.0.0.0:0")
        .env("CRMSYNC__HUBSPOT__CLIENT_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn crmsync-ingress");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > GUARD {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("crmsync-ingress started on 0.0.0.0 without a public URL");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success());
    assert!(
        stderr.contains("CRMSYNC__INGRESS__PUBLIC_URL") && stderr.contains("loopback"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_headers_is_cut_off_at_the_header_timeout() {
    let served = ingress(|s| s.ingress.header_read_timeout_secs = 1).await;
    let stream = TcpStream::connect(served.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    // 60 header bytes, one every 100 ms: 6 s, far past the 1 s timeout.
    let drip = tokio::spawn(async move {
        let request = format!(
            "POST /webhooks/hubspot HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n",
            "a".repeat(30)
        );
        for byte in request.bytes() {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(GUARD, read.read_to_end(&mut answer)).await;
    drip.abort();
    assert!(
        ended.is_ok(),
        "the connection was still open after {GUARD:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 2"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_body_gets_a_408_and_is_disconnected() {
    let served = ingress(|s| s.ingress.body_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(served.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /webhooks/hubspot HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[",
        )
        .await
        .expect("headers");
    let (mut read, mut write) = stream.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..60 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut raw = Vec::new();
    let ended = tokio::time::timeout(GUARD, read.read_to_end(&mut raw)).await;
    drip.abort();
    assert!(
        ended.is_ok(),
        "the connection was still open after {GUARD:?}"
    );
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let answer = Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    };
    assert_eq!(answer.status, 408, "{text}");
    assert!(answer.is_problem(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_503_and_a_freed_slot_is_served_again() {
    let served = ingress(|s| s.ingress.max_connections = 2).await;
    // Two clients hold the two slots without sending anything.
    let first = TcpStream::connect(served.addr).await.expect("connect");
    let _second = TcpStream::connect(served.addr).await.expect("connect");
    let mut third = TcpStream::connect(served.addr).await.expect("connect");
    let answer = read_answer(&mut third).await;
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert!(answer.is_problem(), "{}\n{}", answer.head, answer.body);
    assert!(answer.head.to_ascii_lowercase().contains("retry-after: 1"));
    // One leaves: its slot is served again.
    drop(first);
    let health = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let started = std::time::Instant::now();
    loop {
        let answer = exchange(served.addr, health).await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.head);
        assert!(started.elapsed() < GUARD, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_413_404_and_405_are_problem_json() {
    let served = ingress(|s| s.ingress.max_body_bytes = 1024).await;
    let host = served.addr.to_string();
    let big = vec![b' '; 10 * 1024];
    let too_large = exchange(served.addr, &post(&host, &[], &big)).await;
    assert_eq!(too_large.status, 413, "{}", too_large.head);
    assert!(
        too_large.is_problem(),
        "{}\n{}",
        too_large.head,
        too_large.body
    );
    let not_found = exchange(
        served.addr,
        b"GET /nowhere HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(not_found.status, 404, "{}", not_found.head);
    assert!(
        not_found.is_problem(),
        "{}\n{}",
        not_found.head,
        not_found.body
    );
    let wrong_method = exchange(
        served.addr,
        b"GET /webhooks/hubspot HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.head);
    assert!(
        wrong_method.is_problem(),
        "{}\n{}",
        wrong_method.head,
        wrong_method.body
    );
    assert!(
        wrong_method
            .head
            .to_ascii_lowercase()
            .contains("allow: post"),
        "{}",
        wrong_method.head
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_get_the_peer_address_as_connect_info() {
    use axum::extract::ConnectInfo;
    let app = axum::Router::new().route(
        "/peer",
        axum::routing::get(
            |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let settings = Settings::defaults().expect("defaults");
    let _server = spawn(listener, app, ServerLimits::api(&settings.api));
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let local = stream.local_addr().expect("local");
    stream
        .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.body, local.to_string());
}
