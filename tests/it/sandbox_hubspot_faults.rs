//! The sandbox's API fault knobs and its robustness against garbage.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestSandbox;

#[tokio::test]
async fn an_error_rate_of_one_answers_every_api_call_with_503_until_reset() {
    let sb = TestSandbox::start().await;
    assert_eq!(
        sb.put_control("/_sandbox/faults", json!({"errorRate": 1.0}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(sb.counters().await["faultsInjected"], 1);
    sb.put_control("/_sandbox/faults", json!({})).await;
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.status,
        StatusCode::OK
    );
    assert_eq!(
        sb.put_control("/_sandbox/faults", json!({"errorRate": 2.0}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn forced_429s_latency_and_timeouts_are_injected() {
    let sb = TestSandbox::start().await;
    sb.put_control("/_sandbox/faults", json!({"rateLimitRate": 1.0}))
        .await;
    let limited = sb.get("/crm/v3/objects/contacts").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["policyName"], "TEN_SECONDLY_ROLLING");

    sb.put_control("/_sandbox/faults", json!({"latencyMs": 150}))
        .await;
    let started = Instant::now();
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.status,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    sb.put_control("/_sandbox/faults", json!({"timeoutRate": 1.0}))
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .get(format!("{}/crm/v3/objects/contacts", sb.base))
        .bearer_auth(&sb.token)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
}

#[tokio::test]
async fn reset_restores_the_start_up_state() {
    let sb = TestSandbox::start().await;
    sb.create_contact("x@example.com").await;
    sb.put_control("/_sandbox/faults", json!({"errorRate": 1.0}))
        .await;
    assert_eq!(
        sb.control(Method::POST, "/_sandbox/reset", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let list = sb.get("/crm/v3/objects/contacts").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["results"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn garbage_on_every_endpoint_gets_a_4xx_and_the_sandbox_keeps_serving() {
    let sb = TestSandbox::start().await;
    let garbage: [&[u8]; 5] = [
        b"",
        b"\xff\xfe\x00",
        b"[1,2,3]",
        b"{\"inputs\": \"no\"}",
        b"{\"properties\": [1]}",
    ];
    let paths = [
        "/crm/v3/objects/contacts",
        "/crm/v3/objects/contacts/search",
        "/crm/v3/objects/contacts/batch/read",
        "/crm/v3/objects/contacts/batch/create",
        "/crm/v3/objects/contacts/batch/update",
        "/crm/v3/objects/contacts/batch/upsert",
        "/crm/v3/objects/contacts/batch/archive",
        "/crm/v3/objects/contacts/merge",
        "/crm/v3/objects/contacts/gdpr-delete",
        "/crm/v3/properties/contacts",
        "/oauth/v1/token",
        "/oauth/v3/token/introspect",
        "/_sandbox/accounts",
        "/_sandbox/accounts/62515/seed",
        "/_sandbox/faults",
    ];
    for path in paths {
        for (i, body) in garbage.iter().enumerate() {
            let r = sb
                .http
                .post(format!("{}{path}", sb.base))
                .bearer_auth(&sb.token)
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            // Not JSON, or the wrong JSON type, is always refused; a JSON object with
            // fields an endpoint ignores may be accepted (search ignores `inputs`).
            // An empty body creates an account with defaults, by design.
            let must_refuse = (i < 3 || path != "/crm/v3/objects/contacts/search")
                && !(i == 0 && path == "/_sandbox/accounts");
            assert!(!r.status().is_server_error(), "{path} → {}", r.status());
            assert!(
                !must_refuse || r.status().is_client_error(),
                "{path} {:?} → {}",
                String::from_utf8_lossy(body),
                r.status()
            );
        }
    }
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.status,
        StatusCode::OK
    );
}
