//! The sandbox's search: filters, sorting, paging, the 10,000 cap, index lag
//! and the search-only rate limit.

use std::collections::HashSet;
use std::time::Duration;

use crmsync::sandbox::hubspot::SandboxConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{PORTAL, TestSandbox};

fn since(ms: i64, after: &str, limit: u32) -> Value {
    json!({
        "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": ms.to_string()}]}],
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        "properties": ["email", "lastmodifieddate"],
        "limit": limit,
        "after": after,
    })
}

#[tokio::test]
async fn search_pages_ascending_by_modified_date_to_the_end() {
    let sb = TestSandbox::start().await;
    sb.seed(450, 0).await;
    let (mut seen, mut after, mut last) = (HashSet::new(), "0".to_string(), String::new());
    loop {
        let page = sb
            .post("/crm/v3/objects/contacts/search", since(0, &after, 200))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        assert_eq!(page.body["total"], 450);
        for r in page.body["results"].as_array().unwrap() {
            let modified = r["properties"]["lastmodifieddate"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(modified >= last, "ascending");
            last = modified;
            assert!(seen.insert(r["id"].as_str().unwrap().to_string()));
        }
        match page.body["paging"]["next"]["after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 450);
}

#[tokio::test]
async fn every_documented_operator_filters_as_described() {
    let sb = TestSandbox::start().await;
    for (email, first, title) in [
        ("a@alpha.example", "Ann", Some("CTO")),
        ("b@beta.example", "Bob", None),
        ("c@alpha.example", "Cy", Some("VP Sales")),
    ] {
        let mut props = json!({"email": email, "firstname": first});
        if let Some(t) = title {
            props["jobtitle"] = json!(t);
        }
        assert_eq!(
            sb.post("/crm/v3/objects/contacts", json!({"properties": props}))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    async fn total(sb: &TestSandbox, filter: Value) -> u64 {
        let body =
            json!({"filterGroups": [{"filters": [filter]}], "properties": ["email"], "limit": 10});
        sb.post("/crm/v3/objects/contacts/search", body).await.body["total"]
            .as_u64()
            .unwrap()
    }
    let count = |filter: Value| total(&sb, filter);
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "EQ", "value": "ann"})).await,
        1,
        "EQ ignores case"
    );
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "NEQ", "value": "Ann"})).await,
        2
    );
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "IN", "values": ["ann", "bob"]}))
            .await,
        2
    );
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "NOT_IN", "values": ["ann"]})).await,
        2
    );
    assert_eq!(
        count(json!({"propertyName": "jobtitle", "operator": "HAS_PROPERTY"})).await,
        2
    );
    assert_eq!(
        count(json!({"propertyName": "jobtitle", "operator": "NOT_HAS_PROPERTY"})).await,
        1
    );
    assert_eq!(count(json!({"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*@alpha.example"})).await, 2);
    assert_eq!(
        count(json!({"propertyName": "email", "operator": "NOT_CONTAINS_TOKEN", "value": "alpha"}))
            .await,
        1
    );
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "LT", "value": "Bob"})).await,
        1
    );
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "LTE", "value": "Bob"})).await,
        2
    );
    assert_eq!(
        count(json!({"propertyName": "firstname", "operator": "GT", "value": "Bob"})).await,
        1
    );
    assert_eq!(count(json!({"propertyName": "hs_object_id", "operator": "BETWEEN", "value": "0", "highValue": "99999999999"})).await, 3);
    // Groups are ORed, filters in a group ANDed.
    let body = json!({"filterGroups": [
        {"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "Ann"}, {"propertyName": "jobtitle", "operator": "EQ", "value": "CTO"}]},
        {"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "Bob"}]}
    ]});
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", body).await.body["total"],
        2
    );
    let text = sb
        .post("/crm/v3/objects/contacts/search", json!({"query": "beta"}))
        .await;
    assert_eq!(text.body["total"], 1);
}

#[tokio::test]
async fn malformed_searches_get_400s() {
    let sb = TestSandbox::start().await;
    let bad_operator = sb.post("/crm/v3/objects/contacts/search", json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "LIKE", "value": "x"}]}]})).await;
    assert_eq!(bad_operator.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_operator.body["message"]
            .as_str()
            .unwrap()
            .contains("LIKE")
    );
    let between = sb.post("/crm/v3/objects/contacts/search", json!({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "BETWEEN", "value": "1"}]}]})).await;
    assert!(
        between.body["message"]
            .as_str()
            .unwrap()
            .contains("highValue")
    );
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", json!({"limit": 201}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let two_sorts = sb
        .post(
            "/crm/v3/objects/contacts/search",
            json!({"sorts": ["email", "firstname"]}),
        )
        .await;
    assert_eq!(two_sorts.status, StatusCode::BAD_REQUEST);
    let groups: Vec<Value> = (0..6)
        .map(|_| json!({"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}))
        .collect();
    assert_eq!(
        sb.post(
            "/crm/v3/objects/contacts/search",
            json!({"filterGroups": groups})
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn paging_stops_at_the_10000_result_cap_with_a_400() {
    let sb = TestSandbox::start().await;
    sb.seed(10_050, 0).await;
    let mut after = "0".to_string();
    let mut fetched = 0;
    let final_reply = loop {
        let page = sb
            .post("/crm/v3/objects/contacts/search", since(0, &after, 200))
            .await;
        if page.status != StatusCode::OK {
            break page;
        }
        assert_eq!(page.body["total"], 10_050, "total reports every match");
        fetched += page.body["results"].as_array().unwrap().len();
        after = page.body["paging"]["next"]["after"]
            .as_str()
            .expect("more pages")
            .to_string();
    };
    assert_eq!(fetched, 10_000);
    assert_eq!(after, "10000");
    assert_eq!(final_reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(final_reply.body["category"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn search_sees_a_change_only_after_the_index_lag_while_reads_see_it_at_once() {
    let sb = TestSandbox::with(SandboxConfig {
        index_lag_ms: 400,
        ..SandboxConfig::for_tests()
    })
    .await;
    let id = sb.create_contact("lag@example.com").await;
    let by_email = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "lag@example.com"}]}]});
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", by_email.clone())
            .await
            .body["total"],
        0
    );
    assert_eq!(
        sb.get(&format!("/crm/v3/objects/contacts/{id}"))
            .await
            .status,
        StatusCode::OK
    );
    let batch = sb
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": id}], "properties": []}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", by_email.clone())
            .await
            .body["total"],
        1
    );

    // An edit is also invisible to search until indexed: the old value still matches.
    sb.patch(
        &format!("/crm/v3/objects/contacts/{id}"),
        json!({"properties": {"firstname": "Late"}}),
    )
    .await;
    let by_name = json!({"filterGroups": [{"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "Late"}]}]});
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", by_name.clone())
            .await
            .body["total"],
        0
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", by_name)
            .await
            .body["total"],
        1
    );
    // Lag is adjustable at run time.
    let put = sb
        .put_control(
            "/_sandbox/settings",
            json!({"indexLagMs": 0, "tokenTtlSecs": 1800}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
}

#[tokio::test]
async fn archived_records_leave_search_results() {
    let sb = TestSandbox::start().await;
    let id = sb.create_contact("arch@example.com").await;
    sb.delete(&format!("/crm/v3/objects/contacts/{id}")).await;
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", json!({}))
            .await
            .body["total"],
        0
    );
}

#[tokio::test]
async fn search_is_limited_to_five_requests_per_second_per_account() {
    let sb = TestSandbox::with(SandboxConfig {
        search_limit_per_sec: 5,
        ..SandboxConfig::for_tests()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(sb.post("/crm/v3/objects/contacts/search", json!({})).await);
    }
    assert!(statuses[..5].iter().all(|r| r.status == StatusCode::OK));
    let limited = &statuses[5];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["errorType"], "RATE_LIMIT");
    assert!(
        limited
            .headers
            .get("x-hubspot-ratelimit-remaining")
            .is_none(),
        "search answers carry no rate-limit headers"
    );
    // A normal request is not affected by the search budget.
    assert_eq!(
        sb.get("/crm/v3/objects/contacts").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        sb.post("/crm/v3/objects/contacts/search", json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let counters = sb.counters().await;
    assert_eq!(counters["rateLimited"]["SECONDLY"], 1);
    let _ = PORTAL;
}

#[tokio::test]
async fn records_sharing_one_timestamp_are_ordered_by_id() {
    let sb = TestSandbox::start().await;
    sb.seed(30, 0).await;
    let bulk = sb
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
            json!({"properties": {"jobtitle": "Imported"}}),
        )
        .await;
    assert_eq!(bulk.body["updated"], 30);
    let ts = bulk.body["timestamp"].as_i64().unwrap();
    let page = sb.post("/crm/v3/objects/contacts/search", json!({
        "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "EQ", "value": ts.to_string()}]}],
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}], "limit": 100})).await;
    assert_eq!(page.body["total"], 30);
    let ids: Vec<u64> = page.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn a_bulk_update_skips_records_it_cannot_apply_and_says_how_many() {
    let sb = TestSandbox::start().await;
    sb.seed(3, 0).await;
    // All three cannot hold one email: the first takes it, the other two are skipped.
    let bulk = sb
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
            json!({"properties": {"email": "same@example.com"}}),
        )
        .await;
    assert_eq!(bulk.status, StatusCode::OK);
    assert_eq!(bulk.body["updated"], 1);
    assert_eq!(bulk.body["skipped"], 2);
}
