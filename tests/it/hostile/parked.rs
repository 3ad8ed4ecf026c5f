//! Hostile input: parked records, from refusal to replay. A replay runs the
//! job it queued on a real worker: a record still refused is parked again
//! on a dead letter of its own (the replayed one stays closed, `replayedBy:
//! operator`), and one fixed in the CRM meanwhile is applied. Webhook
//! reads, full-sync pages, records born bad in the CRM and multi-megabyte
//! values are isolated as a delta's page is, and the other tenants' work
//! goes on.

use super::neighbour::Neighbour;
use super::records::crm_edit;
use super::wire::{deliver, event};
use crate::conformance::crm::Crm;
use crate::fleet::{ApiClient, Fleet, on_both_backends, wait_for};
use crate::support::{PORTAL, SECRET};
use crmsync::domain::{CanonicalField, RunKind, RunStatus};
use crmsync::jobs::JobKind;
use crmsync::store::{DeadLetter, ReplayedBy};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Replays a dead letter through the api, which answers it replayed.
async fn replay(api: &ApiClient, dead: &DeadLetter) {
    let (status, body, _) = api
        .send(
            Method::POST,
            &format!("/v1/dead-letters/{}/replay", dead.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["replayedAt"].is_string(), "{body}");
    assert_eq!(body["replayedBy"], "operator", "{body}");
}

/// Whether two dead letters name the same parked record.
fn same_record(a: &DeadLetter, b: &DeadLetter) -> bool {
    (&a.job_kind, &a.crm_object, &a.crm_id, a.record_id)
        == (&b.job_kind, &b.crm_object, &b.crm_id, b.record_id)
}

/// Waits until the job a replay of `old` queued has parked its record
/// again, then asserts that it did so on a new open dead letter (its first
/// attempt) while `old` stays closed by the operator; returns the new one.
async fn parked_again(fleet: &Fleet, api: &ApiClient, old: &DeadLetter) -> DeadLetter {
    wait_for("the replayed job to park the record again", || async {
        fleet
            .parked()
            .await
            .iter()
            .any(|d| same_record(d, old) && d.id != old.id)
    })
    .await;
    let (_, closed, _) = api
        .send(Method::GET, "/v1/dead-letters?status=replayed", None)
        .await;
    let closed = closed["data"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["id"] == json!(old.id)).cloned())
        .unwrap_or_else(|| panic!("{} is not listed replayed: {closed}", old.id));
    assert_eq!(closed["replayedBy"], "operator", "{closed}");
    let mut open: Vec<DeadLetter> = fleet
        .parked()
        .await
        .into_iter()
        .filter(|d| same_record(d, old))
        .collect();
    assert_eq!(
        open.len(),
        1,
        "one open dead letter for the record: {open:?}"
    );
    assert_eq!(open[0].attempts, 1, "{open:?}");
    open.remove(0)
}

/// The one open parked dead letter.
async fn only_parked(fleet: &Fleet) -> DeadLetter {
    let mut parked = fleet.parked().await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    parked.remove(0)
}

on_both_backends! {
    async fn a_replayed_crm_record_is_read_again_by_a_worker_parked_anew_while_refused_and_applied_once_fixed_in_the_crm(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers_for(&[JobKind::FullSync, JobKind::ProcessWebhook]);
        fleet.full_sync().await;
        let api = fleet.start_api_client().await;
        let people = Crm::Hubspot.emails(&fleet).await;
        let (crm_id, email) = &people[0];
        crm_edit(&fleet, crm_id, json!({"firstname": "Bad\u{0}Name"})).await;
        fleet.delta_sync().await;
        let first = only_parked(&fleet).await;

        // Replayed while still broken: the worker's read refuses it again.
        replay(&api, &first).await;
        let second = parked_again(&fleet, &api, &first).await;
        assert!(second.error.contains("U+0000"), "{}", second.error);
        assert_eq!(api.connection_view(fleet.connection).await["parkedRecords"], 1);

        // Fixed in the CRM (no delta runs meanwhile), then replayed: applied.
        crm_edit(&fleet, crm_id, json!({"firstname": "Fixed"})).await;
        replay(&api, &second).await;
        wait_for("the replayed read to apply the fix", || async {
            fleet.lead(email).await.get(CanonicalField::FirstName) == Some("Fixed")
        })
        .await;
        assert!(fleet.parked().await.is_empty());
        assert_eq!(api.connection_view(fleet.connection).await["parkedRecords"], 0);
        fleet.finish().await;
    }
}

/// HubSpot's Lead Status options, as the sandbox starts with them.
const LEAD_STATUSES: &[&str] = &[
    "NEW",
    "OPEN",
    "IN_PROGRESS",
    "OPEN_DEAL",
    "UNQUALIFIED",
    "ATTEMPTED_TO_CONTACT",
    "CONNECTED",
    "BAD_TIMING",
];

/// Sets the options of the CRM's Lead Status, as an admin does in its
/// settings.
async fn lead_status_options(fleet: &Fleet, values: &[&str]) {
    let options: Vec<Value> = values
        .iter()
        .map(|v| json!({"label": v, "value": v}))
        .collect();
    let reply = fleet
        .sandbox
        .patch(
            "/crm/v3/properties/contacts/hs_lead_status",
            json!({"options": options}),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
}

/// A CRM contact's properties by email, if it exists.
async fn crm_contact(fleet: &Fleet, email: &str) -> Option<Value> {
    let reply = fleet
        .sandbox
        .get(&format!(
            "/crm/v3/objects/contacts/{email}?idProperty=email&properties=email,hs_lead_status"
        ))
        .await;
    reply
        .status
        .is_success()
        .then(|| reply.body["properties"].clone())
}

on_both_backends! {
    async fn a_replayed_push_goes_through_a_worker_parked_anew_while_refused_and_written_once_fixed_in_the_crm(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        fleet.start_workers_for(&[JobKind::PushChanges]);
        let api = fleet.start_api_client().await;
        // An admin took "Unqualified" out of the CRM's Lead Status: HubSpot
        // refuses the value (400 INVALID_OPTION) for the whole batch.
        let without: Vec<&str> = LEAD_STATUSES.iter().copied().filter(|v| *v != "UNQUALIFIED").collect();
        lead_status_options(&fleet, &without).await;
        for (email, status) in [("good@example.com", "new"), ("held@example.com", "unqualified")] {
            let (code, body, _) = api
                .send(Method::POST, "/v1/leads", Some(json!({"email": email, "status": status})))
                .await;
            assert_eq!(code, StatusCode::CREATED, "{body}");
        }
        wait_for("the workers to push the one and park the other", || async {
            crm_contact(&fleet, "good@example.com").await.is_some()
                && !fleet.parked().await.is_empty()
        })
        .await;
        let first = only_parked(&fleet).await;
        assert_eq!(first.job_kind, "push_record");
        assert!(first.error.contains("UNQUALIFIED"), "the CRM's reason: {}", first.error);
        let status = fleet
            .command(env!("CARGO_BIN_EXE_crmsync"))
            .arg("status")
            .output()
            .expect("crmsync status");
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success() && text.contains("parked 1"), "{text}");

        // Replayed unfixed: the worker's push is refused again.
        replay(&api, &first).await;
        let second = parked_again(&fleet, &api, &first).await;
        assert!(crm_contact(&fleet, "held@example.com").await.is_none());

        // The admin puts the option back; replayed, the push writes it.
        lead_status_options(&fleet, LEAD_STATUSES).await;
        replay(&api, &second).await;
        wait_for("the replayed push to write the lead", || async {
            crm_contact(&fleet, "held@example.com")
                .await
                .is_some_and(|c| c["hs_lead_status"] == "UNQUALIFIED")
        })
        .await;
        wait_for("its parking to end", || async {
            fleet.parked().await.is_empty()
        })
        .await;
        assert_eq!(api.connection_view(fleet.connection).await["parkedRecords"], 0);
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_push_refused_again_the_moment_its_replay_is_queued_parks_on_a_new_open_dead_letter(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        // `a@b`: valid by the HTML rule, refused by HubSpot.
        let record = api.create_lead("a@b", "Bad").await;
        assert_eq!(fleet.push_now().await, 0);
        let first = only_parked(&fleet).await;

        // The fastest worker there could be: the push the replay queued
        // runs, and is refused, before the replay returns.
        let replayed = crmsync::jobs::replay::replay_observed(
            &fleet.deps.queue,
            &fleet.store,
            (fleet.tenant, &first),
            ReplayedBy::Operator,
            || async {
                assert_eq!(fleet.push_now().await, 0, "refused again");
            },
        )
        .await
        .expect("replay");
        assert!(replayed.is_some());
        let open = fleet.parked().await;
        assert_eq!(open.len(), 1, "the record's refusal is on an open dead letter: {open:?}");
        assert_ne!(open[0].id, first.id);
        assert_eq!(open[0].record_id.map(|r| r.to_string()), Some(record.clone()));
        let closed = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 10).await.expect("replayed");
        assert!(
            closed.iter().any(|d| d.id == first.id && d.replayed_by.as_deref() == Some("operator")),
            "{closed:?}"
        );
        // A letter no longer open is not replayed twice.
        let again = crmsync::jobs::replay::replay(&fleet.deps.queue, &fleet.store, (fleet.tenant, &first), ReplayedBy::Operator)
            .await
            .expect("replay");
        assert!(again.is_none());

        // Its outbox rows wait with it: the platform's fix ends both.
        let (status, body, _) = api
            .send(Method::PATCH, &format!("/v1/leads/{record}"), Some(json!({"email": "fixed@example.com"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(fleet.push_now().await, 1);
        assert!(fleet.parked().await.is_empty());
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn one_signed_delivery_changing_a_good_and_a_bad_contact_applies_the_good_one_and_parks_the_bad(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers_for(&[JobKind::FullSync, JobKind::ProcessWebhook]);
        fleet.full_sync().await;
        let base = fleet.start_ingress(false).await;
        let addr = base.trim_start_matches("http://").parse().expect("ingress address");
        let people = Crm::Hubspot.emails(&fleet).await;
        let (bad, good) = (&people[0], &people[1]);
        crm_edit(&fleet, &bad.0, json!({"firstname": "Bad\u{0}Name"})).await;
        crm_edit(&fleet, &good.0, json!({"firstname": "Delivered"})).await;
        let id = |c: &(String, String)| c.0.parse::<u64>().expect("numeric id");
        let answer = deliver(addr, SECRET, &[event(PORTAL, id(bad), 1), event(PORTAL, id(good), 2)]).await;
        assert_eq!(answer.status, 204, "{}", answer.body);

        wait_for("the delivery's job to end", || async {
            fleet.store.latest_run(fleet.tenant, fleet.connection).await.expect("run")
                .is_some_and(|r| r.kind == RunKind::ProcessWebhook && r.status != RunStatus::Running)
        })
        .await;
        let run = fleet.store.latest_run(fleet.tenant, fleet.connection).await.expect("run").expect("a run");
        assert_eq!(run.status, RunStatus::Succeeded, "the job succeeded: {run:?}");
        assert_eq!((run.updated, run.failed), (1, 1), "{run:?}");
        assert_eq!(fleet.lead(&good.1).await.get(CanonicalField::FirstName), Some("Delivered"));
        let parked = only_parked(&fleet).await;
        assert_eq!(parked.crm_id.as_deref(), Some(bad.0.as_str()));
        assert!(parked.error.contains("firstName"), "{}", parked.error);
        let all = fleet.store.list_dead_letters(fleet.tenant, false, None, None, 100).await.expect("dead letters");
        assert!(all.iter().all(|d| d.job_kind == "pull_record"), "no job failed: {all:?}");
        assert_eq!(fleet.deps.queue.depth(JobKind::ProcessWebhook).await.expect("depth"), 0, "nothing to retry");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_full_sync_page_holding_a_bad_record_commits_the_rest_and_parks_it(backend) {
        let mut fleet = Fleet::start(backend, 5).await;
        let neighbour = Neighbour::start(&fleet).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        let people = Crm::Hubspot.emails(&fleet).await;
        let bad = &people[2];
        crm_edit(&fleet, &bad.0, json!({"jobtitle": "Head\u{1b}[31m"})).await;
        let run = fleet.full_sync().await;
        assert_eq!((run.created, run.failed), (4, 1), "{run:?}");
        let parked = only_parked(&fleet).await;
        assert_eq!(parked.crm_id.as_deref(), Some(bad.0.as_str()));
        assert!(parked.error.contains("jobTitle") && parked.error.contains("U+001B"), "{}", parked.error);
        assert_eq!(fleet.leads().await.len(), 4);
        neighbour.assert_works(&fleet).await;

        // The cursor is set: a later edit arrives by delta, and so does the fix.
        crm_edit(&fleet, &people[0].0, json!({"firstname": "Later"})).await;
        crm_edit(&fleet, &bad.0, json!({"jobtitle": "Head"})).await;
        fleet.delta_sync().await;
        assert_eq!(fleet.lead(&people[0].1).await.get(CanonicalField::FirstName), Some("Later"));
        assert_eq!(fleet.lead(&bad.1).await.get(CanonicalField::JobTitle), Some("Head"));
        assert!(fleet.parked().await.is_empty());
        fleet.finish().await;
    }
}

/// A CRM user creates a contact; returns its id.
async fn crm_create(fleet: &Fleet, properties: Value) -> String {
    let reply = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts"),
            json!({"properties": properties}),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    reply.body["id"].as_str().expect("id").to_string()
}

on_both_backends! {
    async fn a_new_crm_contact_born_bad_is_parked_without_a_platform_record_and_the_cursor_moves_on(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let api = fleet.start_api_client().await;
        let born_bad = crm_create(&fleet, json!({"email": "born@example.com", "firstname": "Bad\u{0}Name"})).await;
        crm_create(&fleet, json!({"email": "born-good@example.com", "firstname": "Good"})).await;
        let run = fleet.delta_sync().await;
        assert_eq!((run.created, run.failed), (1, 1), "{run:?}");
        let parked = only_parked(&fleet).await;
        assert_eq!(parked.crm_id.as_deref(), Some(born_bad.as_str()));
        assert_eq!(parked.record_id, None, "no platform record was made for it");
        assert!(fleet.lead_by_email("born@example.com").await.is_none());
        assert_eq!(fleet.lead("born-good@example.com").await.get(CanonicalField::FirstName), Some("Good"));
        assert_eq!(api.connection_view(fleet.connection).await["parkedRecords"], 1);

        // The cursor moved past it: a later edit arrives; the fix creates it.
        let people = Crm::Hubspot.emails(&fleet).await;
        crm_edit(&fleet, &people[0].0, json!({"firstname": "Later"})).await;
        fleet.delta_sync().await;
        assert_eq!(fleet.lead(&people[0].1).await.get(CanonicalField::FirstName), Some("Later"));
        crm_edit(&fleet, &born_bad, json!({"firstname": "Born"})).await;
        fleet.delta_sync().await;
        assert_eq!(fleet.lead("born@example.com").await.get(CanonicalField::FirstName), Some("Born"));
        assert!(fleet.parked().await.is_empty());
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_multi_megabyte_value_from_the_crm_is_parked_and_the_page_and_the_cursor_move_on(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let neighbour = Neighbour::start(&fleet).await;
        let people = Crm::Hubspot.emails(&fleet).await;
        // 10 MB pasted into a job title, beside a fine edit in the same page.
        crm_edit(&fleet, &people[0].0, json!({"jobtitle": "x".repeat(10_000_000)})).await;
        crm_edit(&fleet, &people[1].0, json!({"firstname": "Fine"})).await;
        let run = fleet.delta_sync().await;
        assert_eq!((run.updated, run.failed), (1, 1), "{run:?}");
        assert_eq!(fleet.lead(&people[1].1).await.get(CanonicalField::FirstName), Some("Fine"));
        let parked = only_parked(&fleet).await;
        assert_eq!(parked.crm_id.as_deref(), Some(people[0].0.as_str()));
        assert!(parked.error.contains("jobTitle") && parked.error.contains("10000000 characters"), "{}", parked.error);
        assert!(parked.error.len() < 1_000, "the reason does not carry the value");
        assert_ne!(fleet.lead(&people[0].1).await.get(CanonicalField::JobTitle).map(str::len), Some(10_000_000));
        neighbour.assert_works(&fleet).await;

        crm_edit(&fleet, &people[2].0, json!({"firstname": "Later"})).await;
        fleet.delta_sync().await;
        assert_eq!(fleet.lead(&people[2].1).await.get(CanonicalField::FirstName), Some("Later"));
        assert_eq!(fleet.parked().await.len(), 1, "read again, still one dead letter");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn the_hourly_retry_leaves_parked_records_alone_and_retries_failed_jobs(backend) {
        let mut fleet = Fleet::start(backend, 1).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let people = Crm::Hubspot.emails(&fleet).await;
        crm_edit(&fleet, &people[0].0, json!({"firstname": "Bad\u{0}Name"})).await;
        fleet.delta_sync().await;
        let parked = only_parked(&fleet).await;
        let job = serde_json::to_value(crmsync::jobs::DeltaSyncJob {
            tenant: fleet.tenant,
            connection: fleet.connection,
            object: None,
            trigger: "failed".into(),
            attempt: 0,
            resume: None,
            redrives: 0,
        })
        .expect("job");
        let failed = fleet.store
            .record_dead_letter(fleet.tenant, fleet.connection, "delta_sync", &job, "HubSpot was down", 8)
            .await
            .expect("a failed job");
        assert_eq!(crmsync::jobs::replay::retry_failed(&fleet.deps).await.expect("round"), 1, "only the failed job");
        let open = fleet.store.list_dead_letters(fleet.tenant, false, None, None, 100).await.expect("open");
        assert_eq!(open.iter().map(|d| d.id).collect::<Vec<_>>(), vec![parked.id], "the parked record waits for a fix: {open:?}");
        let replayed = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 100).await.expect("replayed");
        assert!(replayed.iter().any(|d| d.id == failed && d.replayed_by.as_deref() == Some("retry_failed")), "{replayed:?}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn deleting_a_platform_record_whose_push_is_parked_ends_its_parking(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let api = fleet.start_api_client().await;
        let record = api.create_lead("a@b", "Bad").await;
        assert_eq!(fleet.push_now().await, 0);
        let parked = only_parked(&fleet).await;
        assert_eq!(api.connection_view(fleet.connection).await["parkedRecords"], 1);
        let (status, body, _) = api.send(Method::DELETE, &format!("/v1/leads/{record}"), None).await;
        assert!(status.is_success(), "{status}: {body}");
        assert!(fleet.parked().await.is_empty());
        assert_eq!(api.connection_view(fleet.connection).await["parkedRecords"], 0);
        let ended = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 10).await.expect("replayed");
        assert!(ended.iter().any(|d| d.id == parked.id && d.replayed_by.as_deref() == Some("fixed")), "{ended:?}");
        // Nothing of it is pushed, and no push fails for it.
        assert_eq!(fleet.push_now().await, 0);
        assert!(fleet.store.list_dead_letters(fleet.tenant, false, None, None, 10).await.expect("open").is_empty());
        assert!(!fleet.sandbox_contacts().await.values().any(|c| c["email"] == "a@b"));
        fleet.finish().await;
    }
}
