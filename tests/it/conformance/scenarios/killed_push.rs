//! A push worker killed (SIGKILL) after the CRM carried out its write and
//! before the answer reached it: the write is in the CRM, crmsync's booking
//! of it is not. The retried push must find it — no second record on
//! either side, no conflict with crmsync's own write, no newer platform
//! edit lost to it (the interleaving that once lost an edit under
//! `crm_wins` and raised a conflict with ourselves under `manual`).

use super::{assert_mirrors, nothing_to_push};
use crate::conformance::crm::Crm;
use crate::fleet::{ApiClient, Backend, Fleet, Killed, wait_for};
use crmsync::jobs::JobKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::future::Future;

/// A fleet of 3 people, fully synced, no workers running, and an api
/// client.
async fn synced(crm: Crm, backend: Backend) -> (Fleet, ApiClient) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 3).await;
    fleet.start_workers_for(&[JobKind::FullSync]);
    fleet.full_sync().await;
    fleet.stop_workers().await;
    let api = fleet.start_api_client().await;
    (fleet, api)
}

/// Makes `change` on the platform; a push worker process carries it to
/// the CRM and is killed once the CRM has carried the write out, before
/// its answer arrives. No push worker runs afterwards.
async fn killed_after_the_crm_write<T>(
    crm: Crm,
    fleet: &Fleet,
    change: impl Future<Output = T>,
) -> T {
    crm.hold_next_write(fleet).await;
    let changed = change.await;
    let worker = Killed(fleet.spawn_worker_process_for("push_changes"));
    wait_for("the CRM to carry out the push's write", || async {
        crm.held(fleet).await == 1
    })
    .await;
    drop(worker); // SIGKILL, mid-write.
    crm.release(fleet).await;
    changed
}

/// A push worker retries what the killed one left, to the end.
async fn retried(fleet: &mut Fleet) {
    fleet.start_workers_for(&[JobKind::PushChanges]);
    fleet.enqueue_push().await;
    let fleet_ref = &*fleet;
    wait_for("the retried push", || nothing_to_push(fleet_ref)).await;
    fleet.stop_workers().await;
}

/// Open conflicts the api lists.
async fn open_conflicts(api: &ApiClient) -> Value {
    let (status, conflicts, _) = api
        .send(Method::GET, "/v1/conflicts?status=open", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{conflicts}");
    conflicts["data"].clone()
}

/// The CRM's people with `email`: (id, first name).
async fn crm_people_with(crm: Crm, fleet: &Fleet, email: &str) -> Vec<(String, String)> {
    crm.people(fleet)
        .await
        .into_iter()
        .filter(|(_, p)| p.email == email)
        .map(|(id, p)| (id, p.first_name))
        .collect()
}

/// A platform create, edit and delete, each killed between its CRM write
/// and its booking (and the create's record pulled back before the
/// retry), each reach the CRM exactly once; nothing is written again.
pub async fn platform_changes_killed_between_the_crm_write_and_its_booking_reach_the_crm_once(
    crm: Crm,
    backend: Backend,
) {
    let (mut fleet, api) = synced(crm, backend).await;
    let email = "hopper@example.com";
    let lead = killed_after_the_crm_write(crm, &fleet, api.create_lead(email, "Grace")).await;
    let created = crm_people_with(crm, &fleet, email).await;
    assert_eq!(created.len(), 1, "the killed push created it: {created:?}");
    // A pull reads the unbooked record before the retry: crmsync's own
    // create, so it links the lead instead of adding a second one.
    fleet.delta_sync().await;
    retried(&mut fleet).await;
    assert_eq!(
        crm_people_with(crm, &fleet, email).await,
        created,
        "one CRM record: the retry found the killed push's"
    );
    assert_mirrors(crm, &fleet).await;

    let edit = api.edit_lead(&lead, json!({"firstName": "Amazing Grace"}));
    killed_after_the_crm_write(crm, &fleet, edit).await;
    fleet.delta_sync().await;
    retried(&mut fleet).await;
    let edited = crm_people_with(crm, &fleet, email).await;
    assert_eq!(edited, vec![(created[0].0.clone(), "Amazing Grace".into())]);
    assert_eq!(
        open_conflicts(&api).await.as_array().map(Vec::len),
        Some(0),
        "a conflict crmsync raised with its own write"
    );
    assert_mirrors(crm, &fleet).await;

    let writes = crm.writes(&fleet).await;
    let delete = async {
        let path = format!("/v1/leads/{lead}");
        let (status, body, _) = api.send(Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    };
    killed_after_the_crm_write(crm, &fleet, delete).await;
    retried(&mut fleet).await;
    assert!(crm_people_with(crm, &fleet, email).await.is_empty());
    assert_eq!(
        crm.people(&fleet).await.len(),
        3,
        "{:?}",
        crm.people(&fleet).await
    );
    // The delete and its retry; then pulling and pushing write nothing.
    let after_delete = crm.writes(&fleet).await;
    assert!(after_delete > writes, "the delete was written");
    fleet.delta_sync().await;
    fleet.push_now().await;
    assert_eq!(crm.writes(&fleet).await, after_delete, "echo writes");
    fleet.finish().await;
}

/// 1. A push writes the platform's company and is killed before booking
///    it; 2. the retried push reads the record, and the CRM holds that
///    read's answer; 3. meanwhile the platform's user edits the company
///    again; 4. the read comes back showing crmsync's own unbooked write,
///    which differs from the base and from the newer edit. Under
///    `strategy` the newer edit must win on both sides with no conflict.
async fn a_platform_edit_made_while_a_killed_push_is_retried_wins(
    crm: Crm,
    backend: Backend,
    strategy: &str,
) {
    let (mut fleet, api) = synced(crm, backend).await;
    let path = format!("/v1/connections/{}", fleet.connection);
    let (status, body, _) = api
        .send(Method::PATCH, &path, Some(json!({"strategy": strategy})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list, _) = api.send(Method::GET, "/v1/leads?limit=1", None).await;
    let lead = list["data"][0]["id"].as_str().expect("a lead").to_string();
    let crm_id = list["data"][0]["links"][0]["crmId"]
        .as_str()
        .expect("a link")
        .to_string();

    let killed = json!({"company": "Written by the killed push"});
    killed_after_the_crm_write(crm, &fleet, api.edit_lead(&lead, killed)).await;

    crm.hold_next_read(&fleet).await;
    fleet.start_workers_for(&[JobKind::PushChanges]);
    fleet.enqueue_push().await;
    wait_for("the retried push's read to be held", || async {
        crm.held(&fleet).await == 1
    })
    .await;

    let newer = "The newer platform edit";
    api.edit_lead(&lead, json!({"company": newer})).await;

    crm.release(&fleet).await;
    wait_for("the CRM to hold the newer platform edit", || async {
        crm.people(&fleet)
            .await
            .get(&crm_id)
            .is_some_and(|p| p.company == newer)
    })
    .await;
    let (status, view, _) = api
        .send(Method::GET, &format!("/v1/leads/{lead}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        view["company"], newer,
        "{strategy}: crmsync's own older write must not replace the platform's newer edit"
    );
    let conflicts = open_conflicts(&api).await;
    assert_eq!(
        conflicts.as_array().map(Vec::len),
        Some(0),
        "{strategy}: a conflict crmsync raised with itself: {conflicts}"
    );
    fleet.finish().await;
}

/// Under `crm_wins`, crmsync's own unbooked write is not a CRM edit.
pub async fn crm_wins_keeps_a_platform_edit_made_while_a_killed_push_is_retried(
    crm: Crm,
    backend: Backend,
) {
    a_platform_edit_made_while_a_killed_push_is_retried_wins(crm, backend, "crm_wins").await;
}

/// Under `manual`, crmsync's own unbooked write raises no conflict.
pub async fn manual_raises_no_conflict_with_a_killed_push_of_its_own(crm: Crm, backend: Backend) {
    a_platform_edit_made_while_a_killed_push_is_retried_wins(crm, backend, "manual").await;
}
