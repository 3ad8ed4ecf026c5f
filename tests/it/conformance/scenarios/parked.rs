//! A record one side refuses is parked — a dead letter of its own with the
//! reason, counted on the connection and shown on its lead — while the
//! rest of its page or push, and every later one, goes through. Fixed, it
//! syncs and its parking ends. (The hostile-input suite runs these on
//! HubSpot with another tenant syncing beside them, `hostile::records`,
//! and replays parked records, `hostile::parked`.)

use crate::conformance::crm::Crm;
use crate::fleet::{Backend, Fleet};
use crmsync::domain::CanonicalField;
use crmsync::jobs::JobKind;
use reqwest::Method;
use serde_json::{Value, json};

/// CRM records holding values the platform cannot hold (a NUL, a job
/// title over its length limit, an escape character) are parked with a
/// reason naming field and character; the connection's other edits, then
/// and later, arrive.
pub async fn crm_records_the_platform_cannot_hold_are_parked_and_the_connections_other_edits_go_on(
    crm: Crm,
    backend: Backend,
) {
    crm_records_the_platform_cannot_hold_are_parked_while(crm, backend, async |_: &Fleet| {}).await;
}

/// The same, running `while_parked` (what else must go on) while the
/// records are parked.
pub async fn crm_records_the_platform_cannot_hold_are_parked_while(
    crm: Crm,
    backend: Backend,
    while_parked: impl AsyncFnOnce(&Fleet),
) {
    use CanonicalField::{FirstName, JobTitle, LastName};
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 6).await;
    fleet.start_workers_for(&[JobKind::FullSync]);
    fleet.full_sync().await;
    let api = fleet.start_api_client().await;
    let people = crm.emails(&fleet).await;
    let (nul, long, escape, good) = (&people[0], &people[1], &people[2], &people[3]);
    // A NUL (which a Postgres jsonb cannot hold), a job title over the
    // 500-character limit, an escape character — and one fine edit.
    crm.edit_fields(&fleet, &nul.0, &[(FirstName, "Bad\u{0}Name")])
        .await;
    crm.edit_fields(&fleet, &long.0, &[(JobTitle, &"x".repeat(600))])
        .await;
    crm.edit_fields(&fleet, &escape.0, &[(LastName, "Es\u{1b}[31mcape")])
        .await;
    crm.edit(&fleet, &good.0, "Fine").await;
    let run = fleet.delta_sync().await;
    assert_eq!(
        run.failed, 3,
        "the run counts the parked records failed: {run:?}"
    );
    assert_eq!(fleet.lead(&good.1).await.get(FirstName), Some("Fine"));

    let parked = fleet.parked().await;
    let reason = |id: &str| {
        parked
            .iter()
            .find(|d| d.crm_id.as_deref() == Some(id))
            .map(|d| d.error.clone())
            .unwrap_or_else(|| panic!("person {id} is not parked: {parked:?}"))
    };
    let names = |id: &str, field: &str, what: &str| {
        let reason = reason(id);
        reason.contains(field) && reason.contains(what)
    };
    assert!(names(&nul.0, "firstName", "U+0000"), "{parked:?}");
    assert!(names(&long.0, "jobTitle", "600"), "{parked:?}");
    assert!(names(&escape.0, "lastName", "U+001B"), "{parked:?}");
    assert_eq!(parked.len(), 3, "{parked:?}");
    // Its platform lead shows where its sync is held.
    let (nul_lead, _) = fleet.lead_by_email(&nul.1).await.expect("its lead");
    let (_, view, _) = api
        .send(Method::GET, &format!("/v1/leads/{nul_lead}"), None)
        .await;
    assert_eq!(view["parked"][0]["direction"], "pull", "{view}");
    let shown = view["parked"][0]["reason"].as_str();
    assert!(shown.is_some_and(|r| r.contains("U+0000")), "{view}");
    assert!(
        parked.iter().all(|d| {
            d.job_kind == "pull_record" && d.crm_object.as_deref() == Some("contacts")
        })
    );
    let view = api.connection_view(fleet.connection).await;
    assert_eq!(view["parkedRecords"], 3);
    while_parked(&fleet).await;
    // None of the refused values reached the platform.
    assert_ne!(
        fleet.lead(&nul.1).await.get(FirstName),
        Some("Bad\u{0}Name")
    );

    // The cursor moved past them: a later edit arrives; a parked record
    // read again (the delta's overlap window) stays one dead letter.
    crm.edit(&fleet, &people[4].0, "Later").await;
    fleet.delta_sync().await;
    assert_eq!(fleet.lead(&people[4].1).await.get(FirstName), Some("Later"));
    let again = fleet.parked().await;
    assert_eq!(again.len(), 3, "{again:?}");

    // The CRM user fixes one: its next read applies it and ends its parking.
    crm.edit(&fleet, &nul.0, "Fixed").await;
    fleet.delta_sync().await;
    assert_eq!(fleet.lead(&nul.1).await.get(FirstName), Some("Fixed"));
    let left = fleet.parked().await;
    assert_eq!(left.len(), 2, "{left:?}");
    let view = api.connection_view(fleet.connection).await;
    assert_eq!(view["parkedRecords"], 2);
    let fixed = fleet
        .store
        .list_dead_letters(fleet.tenant, true, None, None, 100)
        .await
        .expect("replayed");
    assert!(
        fixed
            .iter()
            .any(|d| d.crm_id.as_deref() == Some(nul.0.as_str())
                && d.replayed_by.as_deref() == Some("fixed")),
        "{fixed:?}"
    );

    // Replays: `hostile::parked`.
    fleet.finish().await;
}

/// A platform lead the CRM refuses (an email the CRM rejects) is parked
/// with the CRM's reason; the rest of its push and later pushes go
/// through; fixed, it is pushed.
pub async fn a_platform_record_the_crm_refuses_is_parked_and_the_rest_of_its_push_and_later_pushes_go_through(
    crm: Crm,
    backend: Backend,
) {
    a_platform_record_the_crm_refuses_is_parked_while(crm, backend, async |_: &Fleet| {}).await;
}

/// The same, running `while_parked` (what else must go on) while the
/// record is parked.
pub async fn a_platform_record_the_crm_refuses_is_parked_while(
    crm: Crm,
    backend: Backend,
    while_parked: impl AsyncFnOnce(&Fleet),
) {
    let fleet = Fleet::start_crm(crm.provider(), backend, 0).await;
    let api = fleet.start_api_client().await;
    let in_crm = |email: String| {
        let fleet = &fleet;
        async move { crm.emails(fleet).await.iter().any(|(_, e)| *e == email) }
    };
    let good: Vec<String> = (0..5).map(|i| format!("good{i}@example.com")).collect();
    for email in &good {
        api.create_lead(email, "Good").await;
    }
    let refused = crm.refused_email();
    let bad = api.create_lead(refused, "Bad").await;
    assert_eq!(
        fleet.push_now().await,
        5,
        "the five the CRM accepts, in the same push"
    );
    for email in &good {
        assert!(in_crm(email.clone()).await, "{email} not in the CRM");
    }
    let parked = fleet.parked().await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].job_kind, "push_record");
    assert_eq!(
        parked[0].record_id.map(|r| r.to_string()),
        Some(bad.clone())
    );
    assert!(
        parked[0].error.contains(refused),
        "the CRM's reason: {}",
        parked[0].error
    );
    let view = api.connection_view(fleet.connection).await;
    assert_eq!(view["parkedRecords"], 1);
    let (_, view, _) = api
        .send(Method::GET, &format!("/v1/leads/{bad}"), None)
        .await;
    assert_eq!(view["parked"][0]["direction"], "push", "{view}");
    assert_eq!(
        view["parked"][0]["deadLetterId"],
        parked[0].id.to_string(),
        "{view}"
    );
    let status = fleet
        .command(env!("CARGO_BIN_EXE_crmsync"))
        .args(["status", "--json"])
        .output()
        .expect("crmsync status");
    let report: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(report[0]["parkedRecords"], 1, "{report}");

    // A later push of a valid lead is not held back by the parked one,
    // which is not retried (nothing else pending: nothing written).
    api.create_lead("later@example.com", "Later").await;
    assert_eq!(fleet.push_now().await, 1);
    assert!(in_crm("later@example.com".into()).await);
    assert_eq!(
        fleet.push_now().await,
        0,
        "the parked record is not retried on its own"
    );
    let whole_jobs: Vec<_> = fleet
        .store
        .list_dead_letters(fleet.tenant, false, None, None, 100)
        .await
        .expect("dead letters")
        .into_iter()
        .filter(|d| d.job_kind == "push_changes")
        .collect();
    assert!(
        whole_jobs.is_empty(),
        "no push failed as a whole: {whole_jobs:?}"
    );

    while_parked(&fleet).await;

    // Replays: `hostile::parked`.
    // Fixed on the platform: pushed, and its parking ends.
    api.edit_lead(&bad, json!({"email": "fixed@example.com"}))
        .await;
    assert_eq!(fleet.push_now().await, 1);
    assert!(in_crm("fixed@example.com".into()).await);
    assert!(fleet.parked().await.is_empty());
    let view = api.connection_view(fleet.connection).await;
    assert_eq!(view["parkedRecords"], 0);
    fleet.finish().await;
}
