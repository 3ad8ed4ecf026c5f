//! The sandbox's per-call latency knob: every API call waits at least the
//! latency (a real CRM's answer time); the sandbox's own control routes
//! never do, so a test's set-up and assertions stay fast.

use std::time::{Duration, Instant};

use crmsync::sandbox::hubspot::SandboxConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{APP_ID, DEV_KEY, PORTAL, TestSandbox};

async fn timed<F: std::future::Future<Output = StatusCode>>(call: F) -> (StatusCode, Duration) {
    let started = Instant::now();
    let status = call.await;
    (status, started.elapsed())
}

#[tokio::test]
async fn start_up_latency_with_jitter_slows_every_api_call_but_no_control_call() {
    let sb = TestSandbox::with(SandboxConfig {
        latency_ms: 1000,
        latency_jitter_ms: 200,
        ..SandboxConfig::for_tests()
    })
    .await;
    for _ in 0..3 {
        let (status, took) = timed(async { sb.get("/crm/v3/objects/contacts").await.status }).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            took >= Duration::from_millis(1000),
            "an API call took {took:?}"
        );
    }
    let (_, took) = timed(async {
        sb.send(
            Method::GET,
            &format!("/webhooks/v3/{APP_ID}/settings?hapikey={DEV_KEY}"),
            None,
            None,
        )
        .await
        .status
    })
    .await;
    assert!(
        took >= Duration::from_millis(1000),
        "webhook management took {took:?}"
    );

    for path in [
        "/_sandbox/health".to_string(),
        "/_sandbox/faults".to_string(),
        format!("/_sandbox/accounts/{PORTAL}/counters"),
    ] {
        let (status, took) =
            timed(async { sb.control(Method::GET, &path, None).await.status }).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(took < Duration::from_millis(1000), "{path} took {took:?}");
    }
}

#[tokio::test]
async fn latency_set_through_the_control_api_applies_to_the_next_calls_and_reads_back() {
    let sb = TestSandbox::start().await;
    let set = sb
        .put_control(
            "/_sandbox/faults",
            json!({"latencyMs": 400, "latencyJitterMs": 100}),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK);
    let read = sb.control(Method::GET, "/_sandbox/faults", None).await;
    assert_eq!(read.body["latencyMs"], 400);
    assert_eq!(read.body["latencyJitterMs"], 100);

    let (status, took) = timed(async {
        sb.post("/crm/v3/objects/contacts/search", json!({"limit": 1}))
            .await
            .status
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(took >= Duration::from_millis(400), "search took {took:?}");

    let (_, took) = timed(async {
        sb.control(Method::GET, "/_sandbox/health", None)
            .await
            .status
    })
    .await;
    assert!(took < Duration::from_millis(400), "health took {took:?}");

    sb.put_control("/_sandbox/faults", json!({})).await;
    let (_, took) = timed(async { sb.get("/crm/v3/objects/contacts").await.status }).await;
    assert!(
        took < Duration::from_millis(400),
        "latency stayed after reset: {took:?}"
    );
}
