//! The sandbox's rate limits: the rolling 10-second window per app, the daily
//! budget, HubSpot's headers and 429 body, readable counters.

use crmsync::sandbox::hubspot::SandboxConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{PORTAL, TestSandbox};

#[tokio::test]
async fn the_ten_second_window_counts_down_in_headers_and_then_answers_429() {
    let sb = TestSandbox::with(SandboxConfig {
        per_ten_seconds: 10,
        ..SandboxConfig::for_tests()
    })
    .await;
    for expected_remaining in (0..10).rev() {
        let r = sb.get("/crm/v3/objects/contacts").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-hubspot-ratelimit-max"], "10");
        assert_eq!(
            r.headers["x-hubspot-ratelimit-interval-milliseconds"],
            "10000"
        );
        assert_eq!(
            r.headers["x-hubspot-ratelimit-remaining"],
            expected_remaining.to_string().as_str()
        );
        assert!(
            r.headers
                .contains_key("x-hubspot-ratelimit-daily-remaining"),
            "private apps see the daily budget"
        );
    }
    let limited = sb.get("/crm/v3/objects/contacts").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(limited.body["errorType"], "RATE_LIMIT");
    assert_eq!(
        limited.body["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    assert_eq!(limited.headers["x-hubspot-ratelimit-remaining"], "0");
    let counters = sb.counters().await;
    assert_eq!(counters["rateLimited"]["TEN_SECONDLY_ROLLING"], 1);
    assert_eq!(
        counters["requests"]["GET /crm/v3/objects/{object_type}"],
        11
    );
    assert_eq!(
        counters["dailyUsed"], 10,
        "a refused request does not spend the budget"
    );
}

#[tokio::test]
async fn the_daily_budget_answers_429_daily_once_spent() {
    let sb = TestSandbox::with(SandboxConfig {
        daily_limit: 3,
        ..SandboxConfig::for_tests()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            sb.get("/crm/v3/objects/contacts").await.status,
            StatusCode::OK
        );
    }
    let r = sb.get("/crm/v3/objects/contacts").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["policyName"], "DAILY");
    let usage = sb
        .put_control(
            &format!("/_sandbox/accounts/{PORTAL}/limits"),
            json!({"perTenSeconds": 100, "daily": 10, "searchPerSecond": 5}),
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK);
    let daily = sb
        .get("/account-info/v3/api-usage/daily/private-apps")
        .await;
    assert_eq!(daily.body["results"][0]["usageLimit"], 10);
}

#[tokio::test]
async fn budgets_are_per_account() {
    let sb = TestSandbox::with(SandboxConfig {
        per_ten_seconds: 2,
        ..SandboxConfig::for_tests()
    })
    .await;
    let other = sb
        .post_control("/_sandbox/accounts", json!({"portalId": 7}))
        .await
        .body["privateAppToken"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..2 {
        sb.get("/crm/v3/objects/contacts").await;
    }
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let theirs = sb
        .send(
            reqwest::Method::GET,
            "/crm/v3/objects/contacts",
            None,
            Some(&other),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::OK);
}
