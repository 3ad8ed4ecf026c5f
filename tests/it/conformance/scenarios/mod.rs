//! The scenarios every provider must pass (issue #14). Each takes the CRM
//! under test and a backend and asserts what a user of crmsync sees: the
//! platform mirrors the CRM, each side's edits reach the other, and nothing
//! is written twice.

mod delta;
mod faults;
mod killed_push;
mod parked;
mod resume;

pub use delta::*;
pub use faults::*;
pub use killed_push::*;
pub use parked::*;
pub use resume::*;

use super::crm::Crm;
use crate::fleet::{Backend, Fleet, wait_for};
use crmsync::domain::{CanonicalField, CrmObject, RecordFields};
use crmsync::jobs::DetectConflictsJob;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Records of the full-sync scenario: 20,000 by default (the size);
/// `CRMSYNC_CONFORMANCE_RECORDS` shrinks it for quick runs.
fn full_sync_size() -> u64 {
    std::env::var("CRMSYNC_CONFORMANCE_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

/// The platform holds exactly the CRM's people: one linked lead each, with
/// its email, names and job title (each trimmed; empty is unset).
pub(crate) async fn assert_mirrors(crm: Crm, fleet: &Fleet) {
    let people = crm.people(fleet).await;
    let linked: BTreeSet<String> = fleet
        .store
        .live_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts)
        .await
        .expect("links")
        .into_iter()
        .collect();
    let ids: BTreeSet<String> = people.keys().cloned().collect();
    assert_eq!(linked.len(), ids.len(), "one link per CRM record");
    assert!(linked == ids, "the links are the CRM's ids");
    let leads = fleet.leads().await;
    assert_eq!(
        leads.len(),
        people.len(),
        "one lead per CRM record, no more"
    );
    let by_email: BTreeMap<&str, &RecordFields> = leads
        .iter()
        .map(|f| (f.normalized_email().unwrap_or_default(), f))
        .collect();
    for person in people.values() {
        let email = &person.email;
        let lead = by_email
            .get(email.as_str())
            .unwrap_or_else(|| panic!("no lead for {email}"));
        for (field, value) in [
            (CanonicalField::FirstName, &person.first_name),
            (CanonicalField::LastName, &person.last_name),
            (CanonicalField::JobTitle, &person.job_title),
        ] {
            let want = Some(value.trim()).filter(|v| !v.is_empty());
            assert_eq!(lead.get(field), want, "{email}: {field:?}");
        }
    }
}

/// Whether the connection has no platform change left to push (none
/// pending, none in flight).
pub(super) async fn nothing_to_push(fleet: &Fleet) -> bool {
    let (tenant, connection, object) = (fleet.tenant, fleet.connection, CrmObject::Contacts);
    let pushes = fleet.store.pending_pushes(tenant, connection, object, 1);
    let deletes = fleet.store.pending_deletes(tenant, connection, object, 1);
    pushes.await.expect("pending pushes").is_empty()
        && deletes.await.expect("pending deletes").is_empty()
}

async fn first_name(fleet: &Fleet, email: &str) -> Option<String> {
    fleet
        .lead_by_email(email)
        .await
        .and_then(|(_, f)| f.get(CanonicalField::FirstName).map(str::to_string))
}

/// Whether `id` is linked and not deleted in the CRM.
async fn linked(fleet: &Fleet, id: &str) -> bool {
    fleet
        .store
        .live_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts)
        .await
        .expect("links")
        .iter()
        .any(|l| l == id)
}

/// A full sync lands every record; a second writes nothing.
pub async fn full_sync_lands_every_record_and_a_second_writes_nothing(crm: Crm, backend: Backend) {
    let n = full_sync_size();
    let mut fleet = Fleet::start_crm(crm.provider(), backend, n).await;
    fleet.start_workers();
    let first = fleet.full_sync().await;
    assert_eq!(
        (first.processed, first.created, first.failed),
        (n as i64, n as i64, 0),
        "{first:?}"
    );
    assert_mirrors(crm, &fleet).await;
    let writes = crm.writes(&fleet).await;
    let second = fleet.full_sync().await;
    assert_eq!(
        (
            second.processed,
            second.created,
            second.updated,
            second.unchanged
        ),
        (n as i64, 0, 0, n as i64),
        "a second full sync must change nothing: {second:?}"
    );
    assert_mirrors(crm, &fleet).await;
    assert_eq!(
        crm.writes(&fleet).await,
        writes,
        "pulling writes nothing to the CRM"
    );
    fleet.finish().await;
}

/// A CRM user's create, edit, merge and delete reach the platform by
/// webhook alone: no delta runs.
pub async fn crm_changes_arrive_by_webhook_with_the_delta_off(crm: Crm, backend: Backend) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 20).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let _ingress = fleet.start_ingress(true).await;
    crm_changes_arrive(crm, &fleet, |_| async {}).await;
    let latest = fleet
        .store
        .latest_run(fleet.tenant, fleet.connection)
        .await
        .expect("run")
        .expect("a run");
    assert_ne!(
        latest.kind,
        crmsync::domain::RunKind::DeltaSync,
        "no delta was needed"
    );
    fleet.finish().await;
}

/// The same changes reach the platform with no webhook at all: by the
/// delta, and — for CRMs whose change feed shows no deletes (HubSpot's
/// search) — by the anti-entropy sweep, which finds records gone.
pub async fn crm_changes_arrive_by_delta_with_webhooks_off(crm: Crm, backend: Backend) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 20).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let deps = fleet.deps.clone();
    let job = DetectConflictsJob::new(fleet.tenant, fleet.connection, 0);
    crm_changes_arrive(crm, &fleet, |fleet: &Fleet| {
        let (fleet_deps, job) = (deps.clone(), job.clone());
        let delta = fleet.delta_sync();
        async move {
            delta.await;
            crmsync::jobs::detect_conflicts::sweep(&job, &fleet_deps)
                .await
                .expect("sweep");
        }
    })
    .await;
    fleet.finish().await;
}

/// Create, edit, merge, delete in the CRM, each awaited on the platform;
/// `nudge` runs whatever pull the scenario relies on (nothing for webhooks).
async fn crm_changes_arrive<'a, F, Fut>(crm: Crm, fleet: &'a Fleet, nudge: F)
where
    F: Fn(&'a Fleet) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let grace = crm.create(fleet, "grace@example.com", "Grace").await;
    wait_for("the created person", || async {
        nudge(fleet).await;
        first_name(fleet, "grace@example.com").await.as_deref() == Some("Grace")
    })
    .await;
    crm.edit(fleet, &grace, "Grace B.").await;
    wait_for("the edit", || async {
        nudge(fleet).await;
        first_name(fleet, "grace@example.com").await.as_deref() == Some("Grace B.")
    })
    .await;
    // Merged: the loser's link goes; the survivor stays linked.
    let ada = crm.create(fleet, "ada@example.com", "Ada").await;
    wait_for("the second person", || async {
        nudge(fleet).await;
        linked(fleet, &ada).await
    })
    .await;
    let survivor = crm.merge(fleet, &ada, &grace).await;
    wait_for("the merge", || async {
        nudge(fleet).await;
        !linked(fleet, &ada).await && linked(fleet, &survivor).await
    })
    .await;
    // Deleted: the link goes; the platform keeps its lead (the default
    // delete policy).
    crm.delete(fleet, &survivor).await;
    wait_for("the deletion", || async {
        nudge(fleet).await;
        !linked(fleet, &survivor).await
    })
    .await;
    assert!(fleet.lead_by_email("grace@example.com").await.is_some());
}

/// Platform creates, edits and deletes reach the CRM once each, and two
/// more cycles of pulling and pushing write nothing: no echo.
pub async fn platform_changes_reach_the_crm_without_echo_writes(crm: Crm, backend: Backend) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 3).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let _ingress = fleet.start_ingress(true).await;
    let api = fleet.start_api_client().await;
    let id = api.create_lead("hopper@example.com", "Grace").await;
    let in_crm = |first: &'static str| {
        let fleet = &fleet;
        async move {
            crm.people(fleet)
                .await
                .values()
                .any(|p| p.email == "hopper@example.com" && p.first_name == first)
        }
    };
    wait_for("the create in the CRM", || in_crm("Grace")).await;
    api.edit_lead(&id, json!({"firstName": "Amazing Grace"}))
        .await;
    wait_for("the edit in the CRM", || in_crm("Amazing Grace")).await;
    assert_mirrors(crm, &fleet).await;
    // Two cycles: the echoes of our writes come back and are skipped.
    let writes = crm.writes(&fleet).await;
    for _ in 0..2 {
        fleet.delta_sync().await;
        fleet.enqueue_push().await;
        fleet.full_sync().await;
    }
    assert_eq!(crm.writes(&fleet).await, writes, "echo writes");
    let (status, _, _) = api
        .send(Method::DELETE, &format!("/v1/leads/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    wait_for("the delete in the CRM", || async {
        !crm.people(&fleet)
            .await
            .values()
            .any(|p| p.email == "hopper@example.com")
    })
    .await;
    assert_eq!(
        crm.people(&fleet).await.len(),
        3,
        "exactly one record was created and deleted: no duplicate"
    );
    fleet.finish().await;
}

/// The connection's status and the token it would send now.
async fn status_and_token(fleet: &Fleet) -> (crmsync::domain::ConnectionStatus, Option<String>) {
    use secrecy::ExposeSecret;
    let row = fleet
        .store
        .connection(fleet.tenant, fleet.connection)
        .await
        .expect("connection");
    let credentials = fleet.store.credentials(&row).expect("credentials open");
    let token = credentials.bearer().map(|t| t.expose_secret().to_string());
    (row.status, token)
}

/// An access token the CRM expired early is refreshed once and kept; a
/// revoked grant fails the next run and marks the connection
/// `needs_reauth`.
pub async fn an_expired_token_is_refreshed_and_a_revoked_one_marks_needs_reauth(
    crm: Crm,
    backend: Backend,
) {
    use crmsync::domain::{ConnectionStatus, RunStatus};
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 250).await;
    let (access, refresh) = crm.connect_with_oauth(&mut fleet).await;
    fleet.start_workers();
    crm.expire(&fleet, &access).await;
    assert!(!crm.takes(&fleet, &access).await);
    let run = fleet.full_sync().await;
    assert_eq!((run.processed, run.created), (250, 250), "{run:?}");
    let (status, fresh) = status_and_token(&fleet).await;
    assert_eq!(status, ConnectionStatus::Active);
    let fresh = fresh.expect("a token");
    assert_ne!(fresh, access, "the refreshed token is stored");
    assert!(crm.takes(&fleet, &fresh).await, "the stored token works");
    // One refresh served every page; a second sync needs none.
    fleet.full_sync().await;
    assert_eq!(
        status_and_token(&fleet).await.1.as_deref(),
        Some(fresh.as_str())
    );
    assert_mirrors(crm, &fleet).await;

    crm.revoke(&fleet, &refresh).await;
    crm.expire(&fleet, &fresh).await;
    let run = fleet.start_full_sync().await;
    let failed = fleet
        .wait_run(run.id, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.contains("re-authorisation"), "{error}");
    let (status, _) = status_and_token(&fleet).await;
    assert_eq!(status, ConnectionStatus::NeedsReauth);
    fleet.finish().await;
}
