//! The HubSpot adapter's boundary over real HTTP: what crmsync makes of the
//! sandbox's answers, and of answers the sandbox never gives (garbage bodies,
//! cut connections), served by a throwaway axum app.

use crate::support::{PORTAL, TOKEN, TestSandbox};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use crmsync::config::Settings;
use crmsync::domain::{CrmId, CrmObject};
use crmsync::providers::ProviderError;
use crmsync::providers::hubspot::{ChangeQuery, HubspotClient};
use crmsync::ratelimit::{Budgets, Waits};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

fn client(base: &str) -> HubspotClient {
    let mut settings = Settings::defaults().expect("defaults").hubspot;
    settings.api_base_url = base.to_string();
    settings.requests_per_10s = 1_000_000;
    settings.search_requests_per_second = 1_000_000;
    settings.request_timeout_secs = 1;
    HubspotClient::new(settings, Arc::new(Budgets::local(Waits::default()))).expect("client")
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

#[tokio::test]
async fn list_pages_through_every_contact_and_maps_them() {
    let sandbox = TestSandbox::start().await;
    sandbox.seed(250, 0).await;
    let hubspot = client(&sandbox.base);
    let token = SecretString::from(TOKEN);
    let mut after = None;
    let mut ids = Vec::new();
    loop {
        let page = hubspot
            .list_page(
                &PORTAL.to_string(),
                &token,
                CrmObject::Contacts,
                after.as_deref(),
                100,
            )
            .await
            .expect("page");
        assert!(
            page.records
                .iter()
                .all(|r| r.fields.normalized_email().is_some())
        );
        ids.extend(page.records.into_iter().map(|r| r.crm_id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(ids.len(), 250);
    let portal = hubspot.portal_id(&token).await.expect("portal");
    assert_eq!(portal, PORTAL);
}

#[tokio::test]
async fn a_search_by_instant_returns_only_that_timestamp_above_the_id() {
    let sandbox = TestSandbox::start().await;
    sandbox.seed(30, 0).await;
    let reply = sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
            serde_json::json!({"limit": 30, "properties": {"jobtitle": "Same"}}),
        )
        .await;
    let stamp = &reply.body["timestamp"];
    let text = stamp.as_i64().map_or_else(
        || stamp.as_str().unwrap_or_default().to_string(),
        |ms| ms.to_string(),
    );
    let at = crmsync::providers::hubspot::mapping::parse_time(&text)
        .expect("timestamp of the bulk edit");
    let hubspot = client(&sandbox.base);
    let token = SecretString::from(TOKEN);
    let all = hubspot
        .search_changes(
            &PORTAL.to_string(),
            &token,
            CrmObject::Contacts,
            &ChangeQuery::Instant {
                at,
                after_id: CrmId("0".into()),
            },
            None,
            200,
        )
        .await
        .expect("search");
    assert_eq!(all.records.len(), 30);
    assert!(
        all.records.windows(2).all(|w| w[0].crm_id < w[1].crm_id),
        "sorted by id"
    );
    let tenth = all.records[9].crm_id.clone();
    let rest = hubspot
        .search_changes(
            &PORTAL.to_string(),
            &token,
            CrmObject::Contacts,
            &ChangeQuery::Instant {
                at,
                after_id: tenth,
            },
            None,
            200,
        )
        .await
        .expect("search");
    assert_eq!(rest.records.len(), 20);
}

#[tokio::test]
async fn a_garbage_body_is_a_retryable_unavailable_error() {
    let app = axum::Router::new().route(
        "/crm/v3/objects/contacts",
        axum::routing::get(|| async { "<html>oops" }),
    );
    let hubspot = client(&serve(app).await);
    let err = hubspot
        .list_page(
            "1",
            &SecretString::from("t"),
            CrmObject::Contacts,
            None,
            100,
        )
        .await
        .expect_err("garbage must not parse");
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_hanging_crm_times_out_as_a_retryable_error() {
    let app = axum::Router::new().route(
        "/crm/v3/objects/contacts",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "{}"
        }),
    );
    let hubspot = client(&serve(app).await);
    let err = hubspot
        .list_page(
            "1",
            &SecretString::from("t"),
            CrmObject::Contacts,
            None,
            100,
        )
        .await
        .expect_err("must time out");
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_429_without_retry_after_waits_for_the_rate_limit_interval() {
    let app = axum::Router::new().route(
        "/crm/v3/objects/contacts",
        axum::routing::get(|| async {
            let mut headers = HeaderMap::new();
            headers.insert("x-hubspot-ratelimit-interval-milliseconds", HeaderValue::from_static("10000"));
            headers.insert("x-hubspot-ratelimit-remaining", HeaderValue::from_static("0"));
            let body = serde_json::json!({"status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING", "message": "You have reached your ten_secondly_rolling limit."});
            (StatusCode::TOO_MANY_REQUESTS, headers, axum::Json(body)).into_response()
        }),
    );
    let _ = crmsync::telemetry::metrics(); // installs the recorder
    let hubspot = client(&serve(app).await);
    let err = hubspot
        .list_page(
            "1",
            &SecretString::from("t"),
            CrmObject::Contacts,
            None,
            100,
        )
        .await
        .expect_err("429");
    match err {
        ProviderError::RateLimited {
            retry_after,
            policy,
        } => {
            assert_eq!(retry_after, Duration::from_secs(10));
            assert_eq!(policy, "TEN_SECONDLY_ROLLING");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Counted by status class for operators (429s apart).
    let metrics = crmsync::telemetry::metrics()
        .map(|h| h.render())
        .unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("crmsync_crm_requests_total")
                && l.contains("status=\"429\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Budget use and cool-downs add up per provider across accounts.
    for name in [
        "crmsync_budget_requests_total",
        "crmsync_budget_cooldowns_total",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)
                && l.contains("provider=\"hubspot\"")
                && l.contains("budget=\"burst\"")),
            "{name}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_refused_token_is_unauthorized_and_not_retried() {
    let sandbox = TestSandbox::start().await;
    let hubspot = client(&sandbox.base);
    let err = hubspot
        .list_page(
            &PORTAL.to_string(),
            &SecretString::from("pat-na1-wrong"),
            CrmObject::Contacts,
            None,
            10,
        )
        .await
        .expect_err("401");
    assert!(matches!(err, ProviderError::Unauthorized(_)), "{err:?}");
    assert!(!err.is_retryable());
}
