//! Hostile input: records. A CRM record the platform cannot hold, a
//! platform record the CRM refuses, a CRM record that breaks the platform's
//! one-email rule: each is parked with its reason (a dead letter of its
//! own, counted on the connection), and the rest of its page or push — and
//! every later one — goes through. Fixed, it syncs and the parking ends.

use super::neighbour::Neighbour;
use crate::fleet::{ApiClient, Fleet, on_both_backends};
use crate::support::PORTAL;
use crmsync::domain::{CanonicalField, RecordFields, TenantId};
use crmsync::jobs::{JobKind, PushChangesJob};
use crmsync::store::{DeadLetter, Store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// CRM users' edits, as HubSpot's UI would make them (not our app).
pub(super) async fn crm_edit(fleet: &Fleet, id: &str, properties: Value) {
    let id: u64 = id.parse().expect("numeric id");
    let reply = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
            json!({"ids": [id], "properties": properties}),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
}

/// The sandbox's contacts as (id, email), in id order.
pub(super) async fn contacts(fleet: &Fleet) -> Vec<(String, String)> {
    fleet
        .sandbox_contacts()
        .await
        .into_iter()
        .map(|(id, c)| {
            let email = c["email"].as_str().unwrap_or("").to_string();
            (id, email)
        })
        .collect()
}

pub(super) async fn open_parked(store: &Store, tenant: TenantId) -> Vec<DeadLetter> {
    store
        .list_dead_letters(tenant, false, None, None, 100)
        .await
        .expect("dead letters")
        .into_iter()
        .filter(|d| d.job_kind == "pull_record" || d.job_kind == "push_record")
        .collect()
}

pub(super) async fn lead(fleet: &Fleet, email: &str) -> RecordFields {
    fleet
        .leads()
        .await
        .into_iter()
        .find(|f| f.get(CanonicalField::Email) == Some(email))
        .unwrap_or_else(|| panic!("no platform lead {email}"))
}

pub(super) async fn connection_view(api: &ApiClient, fleet: &Fleet) -> Value {
    let (status, view, _) = api
        .send(
            Method::GET,
            &format!("/v1/connections/{}", fleet.connection),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view
}

on_both_backends! {
    async fn crm_records_the_platform_cannot_hold_are_parked_and_the_connections_other_edits_go_on(backend) {
        let mut fleet = Fleet::start(backend, 6).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let neighbour = Neighbour::start(&fleet).await;
        let api = fleet.start_api_client().await;
        let people = contacts(&fleet).await;
        let (nul, long, escape, good) = (&people[0], &people[1], &people[2], &people[3]);
        // A NUL (which a Postgres jsonb cannot hold), a job title over the
        // 500-character limit, an escape character — and one fine edit.
        crm_edit(&fleet, &nul.0, json!({"firstname": "Bad\u{0}Name"})).await;
        crm_edit(&fleet, &long.0, json!({"jobtitle": "x".repeat(600)})).await;
        crm_edit(&fleet, &escape.0, json!({"lastname": "Es\u{1b}[31mcape"})).await;
        crm_edit(&fleet, &good.0, json!({"firstname": "Fine"})).await;
        let run = fleet.delta_sync().await;
        assert_eq!(run.failed, 3, "the run counts the parked records failed: {run:?}");
        assert_eq!(lead(&fleet, &good.1).await.get(CanonicalField::FirstName), Some("Fine"));

        let parked = open_parked(&fleet.store, fleet.tenant).await;
        let reason = |id: &str| {
            parked
                .iter()
                .find(|d| d.crm_id.as_deref() == Some(id))
                .map(|d| d.error.clone())
                .unwrap_or_else(|| panic!("contact {id} is not parked: {parked:?}"))
        };
        assert!(reason(&nul.0).contains("firstName") && reason(&nul.0).contains("U+0000"), "{parked:?}");
        assert!(reason(&long.0).contains("jobTitle") && reason(&long.0).contains("600"), "{parked:?}");
        assert!(reason(&escape.0).contains("lastName") && reason(&escape.0).contains("U+001B"), "{parked:?}");
        assert_eq!(parked.len(), 3, "{parked:?}");
        // Its platform lead shows where its sync is held.
        let nul_lead = fleet.lead_by_email(&nul.1).await.expect("its lead");
        let (_, view, _) = api.send(Method::GET, &format!("/v1/leads/{}", nul_lead.0), None).await;
        assert_eq!(view["parked"][0]["direction"], "pull", "{view}");
        assert!(view["parked"][0]["reason"].as_str().is_some_and(|r| r.contains("U+0000")), "{view}");
        assert!(parked.iter().all(|d| d.job_kind == "pull_record" && d.crm_object.as_deref() == Some("contacts")));
        assert_eq!(connection_view(&api, &fleet).await["parkedRecords"], 3);
        neighbour.assert_works(&fleet).await;
        // None of the refused values reached the platform.
        assert_ne!(lead(&fleet, &nul.1).await.get(CanonicalField::FirstName), Some("Bad\u{0}Name"));

        // The cursor moved past them: a later edit arrives; a parked record
        // read again (the delta's overlap window) stays one dead letter.
        crm_edit(&fleet, &people[4].0, json!({"firstname": "Later"})).await;
        fleet.delta_sync().await;
        assert_eq!(lead(&fleet, &people[4].1).await.get(CanonicalField::FirstName), Some("Later"));
        let again = open_parked(&fleet.store, fleet.tenant).await;
        assert_eq!(again.len(), 3, "{again:?}");

        // The CRM user fixes one: its next read applies it and ends its parking.
        crm_edit(&fleet, &nul.0, json!({"firstname": "Fixed"})).await;
        fleet.delta_sync().await;
        assert_eq!(lead(&fleet, &nul.1).await.get(CanonicalField::FirstName), Some("Fixed"));
        let left = open_parked(&fleet.store, fleet.tenant).await;
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(connection_view(&api, &fleet).await["parkedRecords"], 2);
        let fixed = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 100).await.expect("replayed");
        assert!(
            fixed.iter().any(|d| d.crm_id.as_deref() == Some(nul.0.as_str()) && d.replayed_by.as_deref() == Some("fixed")),
            "{fixed:?}"
        );

        // Replays: `hostile::parked`.
        fleet.finish().await;
    }
}

/// Creates a lead through the api; returns its id.
pub(super) async fn create_lead(api: &ApiClient, email: &str, first: &str) -> String {
    let (status, body, _) = api
        .send(
            Method::POST,
            "/v1/leads",
            Some(json!({"email": email, "firstName": first})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_string()
}

pub(super) async fn push(fleet: &Fleet) -> usize {
    let job = PushChangesJob {
        tenant: fleet.tenant,
        connection: fleet.connection,
        trigger: uuid::Uuid::now_v7().to_string(),
        attempt: 0,
        redrives: 0,
    };
    crmsync::jobs::push_changes::run(&job, &fleet.deps)
        .await
        .expect("a push with a refused record still succeeds")
}

on_both_backends! {
    async fn a_platform_record_the_crm_refuses_is_parked_and_the_rest_of_its_push_and_later_pushes_go_through(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let neighbour = Neighbour::start(&fleet).await;
        let api = fleet.start_api_client().await;
        // `a@b` is an email by the HTML rule the api applies; HubSpot wants a
        // dot in the domain and refuses the whole batch that holds it.
        let mut good = Vec::new();
        for i in 0..5 {
            good.push(format!("good{i}@example.com"));
            create_lead(&api, &good[i], "Good").await;
        }
        let bad = create_lead(&api, "a@b", "Bad").await;
        assert_eq!(push(&fleet).await, 5, "the five the CRM accepts, in the same push");
        let in_crm = contacts(&fleet).await;
        for email in &good {
            assert!(in_crm.iter().any(|(_, e)| e == email), "{email} not in the CRM: {in_crm:?}");
        }
        let parked = open_parked(&fleet.store, fleet.tenant).await;
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].job_kind, "push_record");
        assert_eq!(parked[0].record_id.map(|r| r.to_string()), Some(bad.clone()));
        assert!(parked[0].error.contains("a@b"), "the CRM's reason: {}", parked[0].error);
        assert_eq!(connection_view(&api, &fleet).await["parkedRecords"], 1);
        let (_, view, _) = api.send(Method::GET, &format!("/v1/leads/{bad}"), None).await;
        assert_eq!(view["parked"][0]["direction"], "push", "{view}");
        assert_eq!(view["parked"][0]["deadLetterId"], parked[0].id.to_string(), "{view}");
        let status = fleet
            .command(env!("CARGO_BIN_EXE_crmsync"))
            .args(["status", "--json"])
            .output()
            .expect("crmsync status");
        let report: Value = serde_json::from_slice(&status.stdout).expect("status --json");
        assert_eq!(report[0]["parkedRecords"], 1, "{report}");

        // A later push of a valid lead is not held back by the parked one,
        // which is not retried (nothing else pending: nothing written).
        create_lead(&api, "later@example.com", "Later").await;
        assert_eq!(push(&fleet).await, 1);
        assert!(contacts(&fleet).await.iter().any(|(_, e)| e == "later@example.com"));
        assert_eq!(push(&fleet).await, 0, "the parked record is not retried on its own");
        let whole_jobs: Vec<_> = fleet.store.list_dead_letters(fleet.tenant, false, None, None, 100).await
            .expect("dead letters").into_iter().filter(|d| d.job_kind == "push_changes").collect();
        assert!(whole_jobs.is_empty(), "no push failed as a whole: {whole_jobs:?}");
        neighbour.assert_works(&fleet).await;

        // Replays: `hostile::parked`.
        // Fixed on the platform: pushed, and its parking ends.
        let (status, body, _) = api
            .send(Method::PATCH, &format!("/v1/leads/{bad}"), Some(json!({"email": "fixed@example.com"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(push(&fleet).await, 1);
        assert!(contacts(&fleet).await.iter().any(|(_, e)| e == "fixed@example.com"));
        assert!(open_parked(&fleet.store, fleet.tenant).await.is_empty());
        assert_eq!(connection_view(&api, &fleet).await["parkedRecords"], 0);
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_crm_record_breaking_the_one_email_rule_is_parked_and_the_rest_of_its_page_applies(backend) {
        let mut fleet = Fleet::start(backend, 4).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let neighbour = Neighbour::start(&fleet).await;
        let api = fleet.start_api_client().await;
        // A platform lead not pushed yet holds an email…
        create_lead(&api, "taken@example.com", "Platform").await;
        // …that a CRM user then gives a synced contact, beside a fine edit.
        let people = contacts(&fleet).await;
        crm_edit(&fleet, &people[0].0, json!({"email": "taken@example.com"})).await;
        crm_edit(&fleet, &people[1].0, json!({"firstname": "Fine"})).await;
        fleet.delta_sync().await;
        assert_eq!(lead(&fleet, &people[1].1).await.get(CanonicalField::FirstName), Some("Fine"));
        let parked = open_parked(&fleet.store, fleet.tenant).await;
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].crm_id.as_deref(), Some(people[0].0.as_str()));
        assert!(parked[0].error.contains("email"), "{}", parked[0].error);
        neighbour.assert_works(&fleet).await;
        // The platform's two records are as they were.
        assert_eq!(lead(&fleet, "taken@example.com").await.get(CanonicalField::FirstName), Some("Platform"));
        lead(&fleet, &people[0].1).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_crm_status_with_no_platform_meaning_is_left_out_not_parked_and_not_guessed(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let people = contacts(&fleet).await;
        // A valid HubSpot lead status the platform has no word for.
        crm_edit(&fleet, &people[0].0, json!({"hs_lead_status": "BAD_TIMING", "firstname": "Timing"})).await;
        fleet.delta_sync().await;
        let fields = lead(&fleet, &people[0].1).await;
        assert_eq!(fields.get(CanonicalField::FirstName), Some("Timing"), "the rest of the record applies");
        assert_ne!(fields.get(CanonicalField::Status), Some("BAD_TIMING"));
        assert!(
            fields.get(CanonicalField::Status).is_none_or(|s| crmsync::domain::validate::STATUSES.contains(&s)),
            "{fields:?}"
        );
        assert!(open_parked(&fleet.store, fleet.tenant).await.is_empty());
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_platform_edit_of_a_record_whose_crm_copy_is_parked_waits_and_goes_out_once_the_crm_copy_is_fixed(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let neighbour = Neighbour::start(&fleet).await;
        let api = fleet.start_api_client().await;
        let people = contacts(&fleet).await;
        let (crm_id, email) = &people[0];
        crm_edit(&fleet, crm_id, json!({"firstname": "Bad\u{0}Name"})).await;
        fleet.delta_sync().await;
        // The platform edits the company meanwhile: the push cannot merge
        // with a CRM copy the platform refuses, so it waits, parked too.
        let (record, _) = fleet.lead_by_email(email).await.expect("its lead");
        let (status, body, _) = api
            .send(Method::PATCH, &format!("/v1/leads/{record}"), Some(json!({"company": "Platform Co"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(push(&fleet).await, 0);
        let parked = open_parked(&fleet.store, fleet.tenant).await;
        assert!(
            parked.iter().any(|d| d.job_kind == "push_record" && d.error.contains("CRM record is parked")),
            "{parked:?}"
        );
        let company = |fleet_contacts: &std::collections::BTreeMap<String, Value>| {
            fleet_contacts[crm_id.as_str()]["company"].as_str().map(str::to_string)
        };
        assert_ne!(company(&fleet.sandbox_contacts().await).as_deref(), Some("Platform Co"));
        neighbour.assert_works(&fleet).await;

        // The CRM user fixes the name: the read applies it and queues the
        // platform's company again, the push writes it, both parkings end.
        crm_edit(&fleet, crm_id, json!({"firstname": "Fixed"})).await;
        fleet.delta_sync().await;
        assert_eq!(push(&fleet).await, 1);
        assert_eq!(company(&fleet.sandbox_contacts().await).as_deref(), Some("Platform Co"));
        assert_eq!(lead(&fleet, email).await.get(CanonicalField::FirstName), Some("Fixed"));
        assert!(open_parked(&fleet.store, fleet.tenant).await.is_empty());
        fleet.finish().await;
    }
}
