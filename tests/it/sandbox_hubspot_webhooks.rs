//! The sandbox's webhooks: the management API, delivery in signed batches of
//! at most 100, attribution, retries signed afresh, concurrency, merge
//! events and the delivery fault knobs.

use std::time::Duration;

use crmsync::sandbox::hubspot::SandboxConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{
    APP_ID, DEV_KEY, PORTAL, Receiver, SECRET, TestSandbox, expected_v1, expected_v3,
};

async fn subscribe(sb: &TestSandbox, target: &str, max_concurrent: u64, subscriptions: &[Value]) {
    let key = format!("hapikey={DEV_KEY}");
    let settings = sb.control(Method::PUT, &format!("/webhooks/v3/{APP_ID}/settings?{key}"), Some(json!({"targetUrl": target, "throttling": {"maxConcurrentRequests": max_concurrent, "period": "SECONDLY"}}))).await;
    assert_eq!(settings.status, StatusCode::OK, "{:?}", settings.body);
    for sub in subscriptions {
        let r = sb
            .control(
                Method::POST,
                &format!("/webhooks/v3/{APP_ID}/subscriptions?{key}"),
                Some(sub.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
}

fn creation() -> Value {
    json!({"eventType": "contact.creation", "active": true})
}

#[tokio::test]
async fn the_management_api_needs_the_developer_key_and_manages_settings_and_subscriptions() {
    let sb = TestSandbox::start().await;
    let no_key = sb
        .control(
            Method::GET,
            &format!("/webhooks/v3/{APP_ID}/subscriptions"),
            None,
        )
        .await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
    let wrong = sb
        .control(
            Method::GET,
            &format!("/webhooks/v3/{APP_ID}/subscriptions?hapikey=nope"),
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let key = format!("hapikey={DEV_KEY}");
    let too_few = sb.control(Method::PUT, &format!("/webhooks/v3/{APP_ID}/settings?{key}"), Some(json!({"targetUrl": "http://127.0.0.1:1/x", "throttling": {"maxConcurrentRequests": 5}}))).await;
    assert_eq!(too_few.status, StatusCode::BAD_REQUEST);
    subscribe(&sb, "http://127.0.0.1:1/x", 10, &[]).await;
    let settings = sb
        .control(
            Method::GET,
            &format!("/webhooks/v3/{APP_ID}/settings?{key}"),
            None,
        )
        .await;
    assert_eq!(settings.body["targetUrl"], "http://127.0.0.1:1/x");
    assert_eq!(settings.body["throttling"]["maxConcurrentRequests"], 10);

    let created = sb
        .control(
            Method::POST,
            &format!("/webhooks/v3/{APP_ID}/subscriptions?{key}"),
            Some(json!({"eventType": "contact.propertyChange", "propertyName": "email"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.body["active"], false,
        "new subscriptions start paused"
    );
    let id = created.body["id"].as_str().unwrap().to_string();
    let no_property = sb
        .control(
            Method::POST,
            &format!("/webhooks/v3/{APP_ID}/subscriptions?{key}"),
            Some(json!({"eventType": "contact.propertyChange"})),
        )
        .await;
    assert_eq!(no_property.status, StatusCode::BAD_REQUEST);
    let bad_type = sb
        .control(
            Method::POST,
            &format!("/webhooks/v3/{APP_ID}/subscriptions?{key}"),
            Some(json!({"eventType": "contact.explode"})),
        )
        .await;
    assert_eq!(bad_type.status, StatusCode::BAD_REQUEST);
    let patched = sb
        .control(
            Method::PATCH,
            &format!("/webhooks/v3/{APP_ID}/subscriptions/{id}?{key}"),
            Some(json!({"active": true})),
        )
        .await;
    assert_eq!(patched.body["active"], true);
    let batch = sb.control(Method::POST, &format!("/webhooks/v3/{APP_ID}/subscriptions/batch/update?{key}"), Some(json!({"inputs": [{"id": id.parse::<u64>().unwrap(), "active": false}, {"id": 4567, "active": true}]}))).await;
    assert_eq!(batch.status, StatusCode::MULTI_STATUS);
    assert_eq!(
        batch.body["errors"][0]["category"],
        "SUBSCRIPTION_ID_NOT_FOUND"
    );
    let list = sb
        .control(
            Method::GET,
            &format!("/webhooks/v3/{APP_ID}/subscriptions?{key}"),
            None,
        )
        .await;
    assert_eq!(list.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(
        sb.control(
            Method::DELETE,
            &format!("/webhooks/v3/{APP_ID}/subscriptions/{id}?{key}"),
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sb.control(
            Method::GET,
            &format!("/webhooks/v3/{APP_ID}/subscriptions/{id}?{key}"),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn every_change_arrives_in_signed_batches_of_at_most_100_events() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    subscribe(&sb, &receiver.url, 10, &[creation()]).await;
    for chunk in 0..3 {
        let inputs: Vec<_> = (0..100)
            .map(|i| json!({"properties": {"email": format!("w{chunk}-{i}@example.com")}}))
            .collect();
        assert_eq!(
            sb.post(
                "/crm/v3/objects/contacts/batch/create",
                json!({"inputs": inputs})
            )
            .await
            .status,
            StatusCode::CREATED
        );
    }
    let got = receiver.drain(Duration::from_millis(500)).await;
    let mut objects = std::collections::HashSet::new();
    for request in &got {
        let events = request.events();
        assert!(
            !events.is_empty() && events.len() <= 100,
            "batch of {}",
            events.len()
        );
        assert_eq!(request.headers["x-hubspot-signature-version"], "v1");
        assert_eq!(
            request.headers["x-hubspot-signature"].to_str().unwrap(),
            expected_v1(SECRET, &request.body)
        );
        let ts = request.headers["x-hubspot-request-timestamp"]
            .to_str()
            .unwrap();
        assert_eq!(
            request.headers["x-hubspot-signature-v3"].to_str().unwrap(),
            expected_v3(SECRET, &receiver.url, &request.body, ts)
        );
        for e in events {
            assert_eq!(e["subscriptionType"], "contact.creation");
            assert_eq!(e["portalId"], PORTAL);
            assert_eq!(e["appId"], APP_ID);
            assert_eq!(e["attemptNumber"], 0);
            assert_eq!(e["changeSource"], "INTEGRATION");
            assert_eq!(e["sourceId"], APP_ID.to_string());
            assert!(
                e["occurredAt"].as_i64().unwrap() > 1_700_000_000_000,
                "epoch milliseconds"
            );
            assert!(e["eventId"].is_number() && e["subscriptionId"].is_number());
            objects.insert(e["objectId"].as_u64().unwrap());
        }
    }
    assert_eq!(objects.len(), 300, "every creation delivered");
    let counters = sb.counters().await;
    assert_eq!(counters["webhooks"]["deliveredEvents"], 300);
}

#[tokio::test]
async fn a_users_edit_is_attributed_to_the_user_with_the_new_value() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    let id = sb.create_contact("u@example.com").await;
    subscribe(&sb, &receiver.url, 10, &[json!({"eventType": "contact.propertyChange", "propertyName": "firstname", "active": true})]).await;
    sb.control(
        Method::PATCH,
        &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}?userId=882761034"),
        Some(
            json!({"properties": {"firstname": "Zoë", "lastname": "ignored by the subscription"}}),
        ),
    )
    .await;
    let events = receiver.next(Duration::from_secs(5)).await.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subscriptionType"], "contact.propertyChange");
    assert_eq!(events[0]["propertyName"], "firstname");
    assert_eq!(events[0]["propertyValue"], "Zoë");
    assert_eq!(events[0]["changeSource"], "CRM_UI");
    assert_eq!(events[0]["sourceId"], "userId:882761034");
    assert_eq!(events[0]["objectId"].to_string(), id);
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_each_signed_afresh() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    receiver
        .fail_first
        .store(2, std::sync::atomic::Ordering::SeqCst);
    subscribe(&sb, &receiver.url, 10, &[creation()]).await;
    sb.create_contact("r@example.com").await;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        attempts.push(receiver.next(Duration::from_secs(5)).await);
    }
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|r| r.events()[0]["attemptNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![0, 1, 2]);
    let stamps: Vec<&str> = attempts
        .iter()
        .map(|r| r.headers["x-hubspot-request-timestamp"].to_str().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "each attempt has its own timestamp"
    );
    for r in &attempts {
        let ts = r.headers["x-hubspot-request-timestamp"].to_str().unwrap();
        assert_eq!(
            r.headers["x-hubspot-signature-v3"].to_str().unwrap(),
            expected_v3(SECRET, &receiver.url, &r.body, ts)
        );
    }
    assert!(
        receiver.drain(Duration::from_millis(300)).await.is_empty(),
        "no retry after a 2xx"
    );
    let counters = sb.counters().await;
    assert_eq!(counters["webhooks"]["failedAttempts"], 2);
    assert_eq!(counters["webhooks"]["deliveredBatches"], 1);
}

#[tokio::test]
async fn a_receiver_that_never_recovers_gets_the_first_attempt_and_ten_retries() {
    let sb = TestSandbox::with(SandboxConfig {
        webhook_retry_base_ms: 5,
        webhook_retry_max_ms: 20,
        ..SandboxConfig::for_tests()
    })
    .await;
    let mut receiver = Receiver::start().await;
    receiver
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    subscribe(&sb, &receiver.url, 10, &[creation()]).await;
    sb.create_contact("never@example.com").await;
    let got = receiver.drain(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 11);
    assert_eq!(sb.counters().await["webhooks"]["abandonedBatches"], 1);
}

#[tokio::test]
async fn deliveries_respect_max_concurrent_requests() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    receiver
        .delay_ms
        .store(200, std::sync::atomic::Ordering::SeqCst);
    subscribe(&sb, &receiver.url, 6, &[creation()]).await;
    // Separate requests in quick succession make many small batches.
    for i in 0..40 {
        sb.create_contact(&format!("c{i}@example.com")).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = receiver.drain(Duration::from_millis(800)).await;
    assert!(
        got.len() > 6,
        "enough batches to test concurrency: {}",
        got.len()
    );
    let max = receiver
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=6).contains(&max), "max in flight {max}");
}

#[tokio::test]
async fn a_merge_event_names_the_survivor_and_the_merged_ids() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    let a = sb.create_contact("m1@example.com").await;
    let b = sb.create_contact("m2@example.com").await;
    subscribe(
        &sb,
        &receiver.url,
        10,
        &[
            json!({"eventType": "contact.merge", "active": true}),
            json!({"eventType": "contact.deletion", "active": true}),
            json!({"eventType": "contact.restore", "active": true}),
        ],
    )
    .await;
    sb.control(
        Method::POST,
        &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/merge"),
        Some(json!({"primaryObjectId": a, "objectIdToMerge": b})),
    )
    .await;
    let e = &receiver.next(Duration::from_secs(5)).await.events()[0];
    assert_eq!(e["subscriptionType"], "contact.merge");
    assert_eq!(e["primaryObjectId"].to_string(), a);
    assert_eq!(e["newObjectId"].to_string(), a);
    assert!(
        e["mergedObjectIds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_u64().map(|n| n.to_string()) == Some(b.clone()))
    );
    assert!(e["numberOfPropertiesMoved"].is_number());
    assert_eq!(e["changeSource"], "CRM_UI");

    sb.delete(&format!("/crm/v3/objects/contacts/{a}")).await;
    assert_eq!(
        receiver.next(Duration::from_secs(5)).await.events()[0]["subscriptionType"],
        "contact.deletion"
    );
    sb.control(
        Method::POST,
        &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{a}/restore"),
        None,
    )
    .await;
    assert_eq!(
        receiver.next(Duration::from_secs(5)).await.events()[0]["subscriptionType"],
        "contact.restore"
    );
}

#[tokio::test]
async fn leads_raise_object_events_with_their_type_id() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    subscribe(
        &sb,
        &receiver.url,
        10,
        &[json!({"eventType": "object.creation", "objectTypeId": "0-136", "active": true})],
    )
    .await;
    let person = sb.create_contact("not-a-lead@example.com").await;
    sb.create_lead("L", &person).await;
    let events = receiver.next(Duration::from_secs(5)).await.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subscriptionType"], "object.creation");
    assert_eq!(events[0]["objectTypeId"], "0-136");
}

#[tokio::test]
async fn the_webhook_target_flag_subscribes_to_every_contact_and_lead_event() {
    let mut receiver = Receiver::start().await;
    let sb = TestSandbox::with(SandboxConfig {
        webhook_target: Some(receiver.url.clone()),
        ..SandboxConfig::for_tests()
    })
    .await;
    sb.create_contact("flag@example.com").await;
    let events: Vec<Value> = receiver
        .drain(Duration::from_millis(300))
        .await
        .iter()
        .flat_map(|r| r.events())
        .collect();
    let types: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e["subscriptionType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("contact.creation") && types.contains("contact.propertyChange"),
        "{types:?}"
    );
}

#[tokio::test]
async fn fault_knobs_drop_and_duplicate_webhook_batches() {
    let sb = TestSandbox::start().await;
    let mut receiver = Receiver::start().await;
    subscribe(&sb, &receiver.url, 10, &[creation()]).await;
    sb.put_control("/_sandbox/faults", json!({"webhookDropRate": 1.0}))
        .await;
    sb.create_contact("dropped@example.com").await;
    assert!(receiver.drain(Duration::from_millis(300)).await.is_empty());
    assert_eq!(sb.counters().await["webhooks"]["droppedBatches"], 1);

    sb.put_control("/_sandbox/faults", json!({"webhookDuplicateRate": 1.0}))
        .await;
    sb.create_contact("twice@example.com").await;
    let got = receiver.drain(Duration::from_millis(300)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].events()[0]["eventId"], got[1].events()[0]["eventId"]);

    sb.put_control("/_sandbox/faults", json!({"webhookReorderRate": 1.0}))
        .await;
    let inputs: Vec<_> = (0..20)
        .map(|i| json!({"properties": {"email": format!("ro{i}@example.com")}}))
        .collect();
    sb.post(
        "/crm/v3/objects/contacts/batch/create",
        json!({"inputs": inputs}),
    )
    .await;
    let events: Vec<u64> = receiver
        .drain(Duration::from_millis(800))
        .await
        .iter()
        .flat_map(|r| r.events())
        .map(|e| e["objectId"].as_u64().unwrap())
        .collect();
    assert_eq!(events.len(), 20);
    assert!(events.windows(2).any(|w| w[0] > w[1]), "shuffled");
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_counts_as_a_failure_and_is_retried() {
    let sb = TestSandbox::with(SandboxConfig {
        webhook_timeout_ms: 100,
        webhook_max_retries: 2,
        webhook_retry_base_ms: 5,
        ..SandboxConfig::for_tests()
    })
    .await;
    let mut receiver = Receiver::start().await;
    receiver
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    subscribe(&sb, &receiver.url, 10, &[creation()]).await;
    sb.create_contact("slow@example.com").await;
    let got = receiver.drain(Duration::from_millis(800)).await;
    assert_eq!(got.len(), 3, "the first attempt and two retries");
    let counters = sb.counters().await;
    assert_eq!(counters["webhooks"]["failedAttempts"], 3);
    assert_eq!(counters["webhooks"]["abandonedBatches"], 1);
}
