//! Webhooks end to end: what ingress refuses (forged, stale, malformed,
//! oversized, replayed) and how deliveries are read back in batches. (A
//! CRM user's changes arriving by webhook alone is a conformance scenario:
//! `conformance::scenarios`.)

use crate::fleet::{Backend, Fleet, wait_for};
use crate::support::{PORTAL, SECRET};
use crmsync::domain::{CanonicalField, CrmObject};
use crmsync::providers::hubspot::webhook::sign_v3;
use serde_json::{Value, json};

fn signed(body: &[u8], url: &str, at_ms: i64) -> Vec<(&'static str, String)> {
    let ts = at_ms.to_string();
    vec![
        (
            "x-hubspot-signature-v3",
            sign_v3(SECRET.as_bytes(), "POST", url, body, &ts),
        ),
        ("x-hubspot-request-timestamp", ts),
        ("content-type", "application/json".into()),
    ]
}

async fn post(url: &str, body: &[u8], headers: Vec<(&'static str, String)>) -> reqwest::StatusCode {
    let mut request = reqwest::Client::new().post(url).body(body.to_vec());
    for (k, v) in headers {
        request = request.header(k, v);
    }
    request.send().await.expect("send").status()
}

fn counter(name: &str, outcome: &str) -> u64 {
    let text = crmsync::telemetry::metrics()
        .map(|h| h.render())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("outcome=\"{outcome}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_malformed_oversized_and_replayed_webhooks_enqueue_nothing() {
    let mut fleet = Fleet::start(Backend::Postgres, 3).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let base = fleet.start_ingress(false).await;
    let url = format!("{base}/webhooks/hubspot");
    let ids = fleet
        .store
        .linked_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts)
        .await
        .expect("ids");
    let now = chrono::Utc::now().timestamp_millis();
    let event = |event_id: u64, portal: u64| -> Value {
        json!({"eventId": event_id, "subscriptionId": 1, "portalId": portal, "appId": 54321, "occurredAt": now,
               "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": ids[0].parse::<u64>().unwrap_or(0),
               "propertyName": "firstname", "propertyValue": "X", "changeSource": "CRM_UI"})
    };
    let body = serde_json::to_vec(&json!([event(1, PORTAL), event(2, PORTAL)])).expect("json");

    // Forged: signed with another secret.
    let ts = now.to_string();
    let forged = vec![
        (
            "x-hubspot-signature-v3",
            sign_v3(b"not-the-secret", "POST", &url, &body, &ts),
        ),
        ("x-hubspot-request-timestamp", ts.clone()),
    ];
    assert_eq!(
        post(&url, &body, forged).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    // Unsigned.
    assert_eq!(
        post(&url, &body, vec![]).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    // Stale: correctly signed ten minutes ago.
    assert_eq!(
        post(&url, &body, signed(&body, &url, now - 600_000)).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    // Malformed: correctly signed, not an event array.
    let garbage = b"{\"oops\": true}";
    assert_eq!(
        post(&url, garbage, signed(garbage, &url, now)).await,
        reqwest::StatusCode::BAD_REQUEST
    );
    // Oversized.
    let huge = vec![b' '; fleet.settings.ingress.max_body_bytes + 1];
    assert_eq!(
        post(&url, &huge, signed(&huge, &url, now)).await,
        reqwest::StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        counter("crmsync_webhook_events_total", "accepted"),
        0,
        "nothing was accepted so far"
    );

    // Genuine: accepted, and the same delivery again is recognised.
    assert_eq!(
        post(&url, &body, signed(&body, &url, now)).await,
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(counter("crmsync_webhook_events_total", "accepted"), 2);
    assert_eq!(
        post(
            &url,
            &body,
            signed(&body, &url, chrono::Utc::now().timestamp_millis())
        )
        .await,
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(
        counter("crmsync_webhook_events_total", "duplicate"),
        2,
        "a replay enqueues nothing"
    );
    assert_eq!(counter("crmsync_webhook_events_total", "accepted"), 2);
    // Seen events are remembered for at least 76 hours (HubSpot retries for
    // 24), in a hash per hour of occurrence.
    let mut redis = redis::Client::open(crate::fleet::redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let ns = &fleet.settings.queue.namespace;
    let seen = |at_ms: i64| format!("{ns}:webhook-seen:{}", at_ms.div_euclid(3_600_000));
    let ttl: i64 = redis::cmd("TTL")
        .arg(seen(now))
        .query_async(&mut redis)
        .await
        .expect("ttl");
    assert!(
        (76 * 3600..=79 * 3600).contains(&ttl),
        "dedupe keys kept {ttl} s"
    );
    // An event older than that is taken, and leaves no key without a TTL.
    let old_at = now - 80 * 3_600_000;
    let mut old_event = event(3, PORTAL);
    old_event["occurredAt"] = json!(old_at);
    let old_body = serde_json::to_vec(&json!([old_event])).expect("json");
    assert_eq!(
        post(&url, &old_body, signed(&old_body, &url, now)).await,
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(counter("crmsync_webhook_events_total", "accepted"), 3);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(seen(old_at))
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert_eq!(exists, 0, "an expired hour's bucket is not kept");

    // An account nobody connected: 2xx (HubSpot must not retry), counted.
    let stranger = serde_json::to_vec(&json!([event(9, 999_999)])).expect("json");
    assert_eq!(
        post(&url, &stranger, signed(&stranger, &url, now)).await,
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(
        counter("crmsync_webhook_events_total", "unknown_account"),
        1
    );
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_many_deliveries_are_read_back_in_one_batch_call() {
    let mut fleet = Fleet::start(Backend::Postgres, 40).await;
    let before = counter("crmsync_webhook_requests_total", "accepted"); // installs the recorder
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.start_ingress(true).await;
    let ids = fleet
        .store
        .linked_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts)
        .await
        .expect("ids");
    fleet.stop_workers().await;
    let reads_before = reads(&fleet).await;
    // 30 users edit 30 contacts one after another: many deliveries.
    for (n, id) in ids.iter().take(30).enumerate() {
        let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}");
        let edited = fleet
            .sandbox
            .control(
                reqwest::Method::PATCH,
                &path,
                Some(json!({"properties": {"jobtitle": format!("Edit {n}")}})),
            )
            .await;
        assert!(edited.status.is_success(), "{:?}", edited.body);
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
    wait_for("every delivery", || async {
        counter("crmsync_webhook_events_total", "accepted") >= 30
    })
    .await;
    let deliveries = counter("crmsync_webhook_requests_total", "accepted") - before;
    assert!(
        deliveries >= 3,
        "the edits arrived in several deliveries ({deliveries})"
    );
    fleet.start_workers();
    wait_for("all 30 edits on the platform", || async {
        fleet
            .leads()
            .await
            .iter()
            .filter(|f| {
                f.get(CanonicalField::JobTitle)
                    .is_some_and(|t| t.starts_with("Edit "))
            })
            .count()
            == 30
    })
    .await;
    let calls = reads(&fleet).await - reads_before;
    assert!(
        calls < deliveries && calls <= 2,
        "{calls} batch reads for {deliveries} deliveries"
    );
    // The first delivery enqueued a job; the others found it waiting. The
    // job counts itself after it applied the edits, so wait for that.
    wait_for("the webhook job to finish", || async {
        job_runs("process_webhook") >= 1
    })
    .await;
    assert_eq!(
        job_runs("process_webhook"),
        1,
        "one job for {deliveries} deliveries"
    );
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_changes_than_one_batch_read_are_all_read_by_successor_jobs() {
    let mut fleet = Fleet::start(Backend::Postgres, 250).await;
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.start_ingress(true).await;
    fleet.stop_workers().await;
    let reads_before = reads(&fleet).await;
    // 230 records change while no worker runs: more than one batch read
    // (100) can take, all behind the one job the first delivery enqueued.
    let edited = fleet
        .sandbox
        .control(
            reqwest::Method::POST,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
            Some(json!({"limit": 230, "properties": {"jobtitle": "Bulk"}})),
        )
        .await;
    assert!(edited.status.is_success(), "{:?}", edited.body);
    wait_for("every event", || async {
        counter("crmsync_webhook_events_total", "accepted") >= 230
    })
    .await;
    fleet.start_workers();
    wait_for("all 230 edits on the platform", || async {
        fleet
            .leads()
            .await
            .iter()
            .filter(|f| f.get(CanonicalField::JobTitle) == Some("Bulk"))
            .count()
            == 230
    })
    .await;
    // With history (`newest_wins`) HubSpot reads 50 ids per call, and a
    // job claims what one call reads: 50, 50, 50, 50, 30.
    wait_for("the last webhook job to finish", || async {
        job_runs("process_webhook") >= 5
    })
    .await;
    assert_eq!(job_runs("process_webhook"), 5, "a job and four successors");
    let calls = reads(&fleet).await - reads_before;
    assert_eq!(calls, 5, "230 records in five batch reads");
    fleet.finish().await;
}

/// `ProcessWebhook`-style jobs run in this process, any outcome.
fn job_runs(job: &str) -> u64 {
    let text = crmsync::telemetry::metrics()
        .map(|h| h.render())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("crmsync_jobs_total") && l.contains(&format!("job=\"{job}\"")))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Batch reads the sandbox has served.
async fn reads(fleet: &Fleet) -> u64 {
    fleet.sandbox.counters().await["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.contains("batch/read"))
                .filter_map(|(_, v)| v.as_u64())
                .sum::<u64>()
        })
        .unwrap_or(0)
}
