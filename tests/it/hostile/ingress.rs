//! Hostile input: ingress. A forged delivery listing thousands of accounts,
//! a signature made for another URL, slow-drip and connection-hoarding
//! clients, and the server's own errors: each refused cheaply and clearly,
//! and after each, a genuine delivery is still accepted and processed.
//! Ingress runs on Redis under the fleet's namespace, as in production, on
//! the shared server (`crmsync::http_server`) with short timeouts.

use super::wire::{
    GUARD, assert_capped_at_two, deliver, drip_body, drip_headers, event, exchange,
    exchange_once_free, post, read_answer, v3_headers,
};
use crate::fleet::{Backend, Fleet, wait_for};
use crate::support::{PORTAL, SECRET};
use crmsync::config::Settings;
use crmsync::domain::CanonicalField;
use crmsync::http_server::{ServerLimits, spawn};
use crmsync::ingress::{Ingress, MAX_ACCOUNTS_PER_DELIVERY};
use crmsync::jobs::JobKind;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Ingress in front of a fleet (Postgres, Redis, a sandbox with one contact
/// and a webhook worker), so a case can show that a genuine delivery is
/// still accepted and processed after its hostile client.
struct Served {
    addr: SocketAddr,
    ingress: Ingress,
    settings: Settings,
    fleet: Fleet,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    fn url(&self) -> String {
        format!("http://{}/webhooks/hubspot", self.addr)
    }

    /// A CRM user's edit, delivered signed by the app as HubSpot would:
    /// accepted (204), and its job brings the edit to the platform.
    async fn assert_genuine_delivery_processed(&self) {
        let contacts = self.fleet.sandbox_contacts().await;
        let id = contacts.keys().next().expect("a contact").clone();
        let first = format!("Genuine{}", &uuid::Uuid::now_v7().simple().to_string()[..8]);
        let edit = self
            .fleet
            .sandbox
            .control(
                reqwest::Method::PATCH,
                &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}"),
                Some(json!({"properties": {"firstname": first}})),
            )
            .await;
        assert!(edit.status.is_success(), "{:?}", edit.body);
        let contact: u64 = id.parse().expect("numeric id");
        let event_id = uuid::Uuid::new_v4().as_u64_pair().1;
        let answer = deliver(self.addr, SECRET, &[event(PORTAL, contact, event_id)]).await;
        assert_eq!(answer.status, 204, "a genuine delivery: {}", answer.body);
        wait_for("the genuine delivery to be processed", || async {
            self.fleet
                .leads()
                .await
                .iter()
                .any(|f| f.get(CanonicalField::FirstName) == Some(first.as_str()))
        })
        .await;
    }

    async fn finish(self) {
        self.server.abort();
        self.fleet.finish().await;
    }
}

/// Serves ingress for `settings` on a free loopback port, as
/// `crmsync-ingress` does.
async fn serve(
    settings: &Settings,
    queue: crmsync::queue::Queue,
) -> (SocketAddr, Ingress, tokio::task::JoinHandle<()>) {
    let ingress = crmsync::app::ingress(settings, queue)
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
    (addr, ingress, server)
}

/// Ingress on Redis under the fleet's namespace, as in production, with the
/// app secret and an encryption key (so private-app secrets would be tried
/// too), settings tuned by `tune`; the fleet's routes published.
async fn ingress(tune: impl FnOnce(&mut Settings)) -> Served {
    let mut fleet = Fleet::start(Backend::Postgres, 1).await;
    fleet.start_workers_for(&[JobKind::ProcessWebhook]);
    let mut settings = fleet.settings.clone();
    tune(&mut settings);
    crmsync::app::publish_routes(&settings, &fleet.store)
        .await
        .expect("publish routes");
    let (addr, ingress, server) = serve(&settings, fleet.deps.queue.clone()).await;
    Served {
        addr,
        ingress,
        settings,
        fleet,
        server,
    }
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
        .map(|n| event(2_000_000 + n, n, n))
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
        .map(|n| event(3_000_000 + n, n, n))
        .collect();
    let body = serde_json::to_vec(&events).expect("json");
    let answer = exchange(served.addr, &post(&host, &[], &body)).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer.is_problem());
    assert_eq!(served.ingress.route_lookups(), 1);
    served.assert_genuine_delivery_processed().await;
    served.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_url_is_the_bound_address_on_loopback_never_the_host_header() {
    let served = ingress(|_| {}).await;
    let body = serde_json::to_vec(&json!([event(4_000_000, 1, 1)])).expect("json");
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
    served.assert_genuine_delivery_processed().await;
    served.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_public_url_only_signatures_for_it_verify() {
    let public = "https://hooks.example.com";
    let served = ingress(|s| s.ingress.public_url = Some(format!("{public}/"))).await;
    let body = serde_json::to_vec(&json!([event(5_000_000, 1, 1)])).expect("json");
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
    served.finish().await;
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
        std::thread::sleep(std::time::Duration::from_millis(20));
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
    // 60 header bytes, one every 100 ms: 6 s, far past the 1 s timeout.
    let head = format!(
        "POST /webhooks/hubspot HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n",
        "a".repeat(30)
    );
    drip_headers(served.addr, &head).await;
    served.assert_genuine_delivery_processed().await;
    served.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_body_gets_a_408_and_is_disconnected() {
    let served = ingress(|s| s.ingress.body_read_timeout_secs = 1).await;
    let answer = drip_body(
        served.addr,
        "POST /webhooks/hubspot HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[",
    )
    .await;
    assert_eq!(answer.status, 408, "{}\n{}", answer.head, answer.body);
    assert!(answer.is_problem(), "{}\n{}", answer.head, answer.body);
    served.assert_genuine_delivery_processed().await;
    served.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_503_and_a_freed_slot_is_served_again() {
    let served = ingress(|s| s.ingress.max_connections = 2).await;
    let _holding = assert_capped_at_two(served.addr).await;
    served.assert_genuine_delivery_processed().await;
    served.finish().await;
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
    served.finish().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_cuts_off_slow_clients_and_caps_its_connections() {
    // Production's limits are finite and small: a scrape takes milliseconds.
    let shipped = crmsync::telemetry::LIMITS;
    assert!(
        shipped.header_read_timeout.as_secs() <= 10 && shipped.body_read_timeout.as_secs() <= 10
    );
    assert!(shipped.max_connections <= 64);
    let limits = ServerLimits {
        header_read_timeout: std::time::Duration::from_secs(1),
        body_read_timeout: std::time::Duration::from_secs(1),
        max_connections: 2,
    };
    let addr = crmsync::telemetry::serve_with("127.0.0.1:0", "test", limits)
        .await
        .expect("metrics endpoint");
    drip_headers(
        addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    )
    .await;
    let _holding = assert_capped_at_two(addr).await;
    // The health check's connection frees its slot a moment after it closes.
    let metrics = exchange_once_free(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(metrics.status, 200, "{}", metrics.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_redis_is_a_problem_that_does_not_leak_the_redis_error() {
    let mut redis = crate::services::PrivateRedis::start();
    let mut settings = Settings::defaults().expect("defaults");
    settings.redis.url = Some(redis.url());
    settings.queue.backend = Some(crmsync::config::QueueBackend::Redis);
    settings.queue.namespace = format!("it-ready-{}", uuid::Uuid::now_v7().simple());
    settings.hubspot.client_secret = Some(secrecy::SecretString::from(SECRET));
    let queue = crmsync::queue::Queue::connect(&settings, std::path::Path::new("."))
        .await
        .expect("queue");
    let (addr, _, _server) = serve(&settings, queue).await;
    let ready = b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    assert_eq!(exchange(addr, ready).await.status, 200);

    redis.kill();
    let answer = exchange(addr, ready).await;
    assert_eq!(answer.status, 503, "{}\n{}", answer.head, answer.body);
    assert!(answer.is_problem(), "{}\n{}", answer.head, answer.body);
    let detail = answer.body.to_ascii_lowercase();
    for leak in ["refused", "os error", "redis://", &redis.port.to_string()] {
        assert!(
            !detail.contains(leak),
            "the answer names {leak:?}: {}",
            answer.body
        );
    }
}
