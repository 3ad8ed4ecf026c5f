//! The interleaving that lost a platform edit under `crm_wins` (and raised a
//! conflict with ourselves under `manual`), forced step by step:
//!
//! 1. a push wrote the platform's company to HubSpot and was killed before
//!    its booking (the link's base still holds the older company);
//! 2. the retried push reads the record — and the sandbox holds that read's
//!    answer until the test lets it go;
//! 3. meanwhile the platform's user edits the company again;
//! 4. the read comes back. It shows our own unbooked write, which differs
//!    from the base and from the platform's new value: only the property
//!    history says it is ours, so it must not be decided without it.
//!
//! Before the fix the push decided it from the state it had looked at
//! before the lock (not contested), and `crm_wins` took our old write over
//! the newer edit. Now the decision is made under the record's lock, and a
//! state read without history that needs it is read again with it.

use crate::fleet::{ApiClient, Backend, Fleet, on_both_backends, wait_for};
use crate::support::PORTAL;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The route whose answer the sandbox holds: the push's read-before-write.
const BATCH_READ: &str = "POST /crm/v3/objects/{object_type}/batch/read";

async fn platform_company(api: &ApiClient, lead: &str) -> Value {
    let (status, body, _) = api
        .send(Method::GET, &format!("/v1/leads/{lead}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["company"].clone()
}

async fn crm_company(fleet: &Fleet, crm_id: &str) -> Value {
    let reply = fleet
        .sandbox
        .get(&format!(
            "/crm/v3/objects/contacts/{crm_id}?properties=company"
        ))
        .await;
    reply.body["properties"]["company"].clone()
}

async fn set_company(api: &ApiClient, lead: &str, company: &str) {
    let (status, body, _) = api
        .send(
            Method::PATCH,
            &format!("/v1/leads/{lead}"),
            Some(json!({"company": company})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn killed_push_then_edit_during_the_retry(backend: Backend, strategy: &str) {
    let mut fleet = Fleet::start(backend, 3).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let api = fleet.start_api_client().await;
    let (status, body, _) = api
        .send(
            Method::PATCH,
            &format!("/v1/connections/{}", fleet.connection),
            Some(json!({"strategy": strategy})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list, _) = api.send(Method::GET, "/v1/leads?limit=1", None).await;
    let lead = list["data"][0]["id"].as_str().expect("a lead").to_string();
    let crm_id = list["data"][0]["links"][0]["crmId"]
        .as_str()
        .expect("a link")
        .to_string();
    fleet.stop_workers().await;

    // 1. The platform edits the company; its push marks the link, writes
    //    to HubSpot as our app, and dies before booking (no worker runs:
    //    the test does exactly what that push did, and no more).
    set_company(&api, &lead, "Written by the killed push").await;
    fleet
        .store
        .mark_pushing(
            fleet.tenant,
            fleet.connection,
            crmsync::domain::CrmObject::Contacts,
            &[crmsync::domain::CrmId(crm_id.clone())],
            chrono::Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .expect("mark");
    let written = fleet
        .sandbox
        .post(
            "/crm/v3/objects/contacts/batch/update",
            json!({"inputs": [{"id": crm_id, "properties": {"company": "Written by the killed push"}}]}),
        )
        .await;
    assert!(written.status.is_success(), "{:?}", written.body);

    // 2. The retried push reads the record; its answer is held.
    let armed = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/holds"),
            json!({"route": BATCH_READ, "count": 1}),
        )
        .await;
    assert_eq!(armed.status, StatusCode::NO_CONTENT, "{:?}", armed.body);
    fleet.start_workers_for(&[crmsync::jobs::JobKind::PushChanges]);
    fleet.enqueue_push().await;
    wait_for("the push's read to be held", || async {
        let holds = fleet
            .sandbox
            .control(
                Method::GET,
                &format!("/_sandbox/accounts/{PORTAL}/holds"),
                None,
            )
            .await;
        holds.body["waiting"] == 1
    })
    .await;

    // 3. Meanwhile the platform's user edits the company again.
    set_company(&api, &lead, "The newer platform edit").await;

    // 4. The read comes back.
    let released = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/holds/release"),
            json!({}),
        )
        .await;
    assert_eq!(released.status, StatusCode::NO_CONTENT);
    wait_for("both sides to hold the newer platform edit", || async {
        crm_company(&fleet, &crm_id).await == "The newer platform edit"
    })
    .await;
    assert_eq!(
        platform_company(&api, &lead).await,
        "The newer platform edit",
        "{strategy}: our own older write must not replace the platform's newer edit"
    );
    let (_, conflicts, _) = api
        .send(Method::GET, "/v1/conflicts?status=open", None)
        .await;
    assert_eq!(
        conflicts["data"].as_array().map(Vec::len),
        Some(0),
        "{strategy}: a conflict crmsync raised with itself: {conflicts}"
    );
    fleet.finish().await;
}

on_both_backends! {
    async fn crm_wins_keeps_a_platform_edit_made_while_a_killed_push_is_retried(backend) {
        killed_push_then_edit_during_the_retry(backend, "crm_wins").await;
    }
}

on_both_backends! {
    async fn manual_raises_no_conflict_with_a_killed_push_of_its_own(backend) {
        killed_push_then_edit_during_the_retry(backend, "manual").await;
    }
}
