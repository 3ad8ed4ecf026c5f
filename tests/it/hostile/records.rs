//! Hostile input: records. A CRM record the platform cannot hold, a
//! platform record the CRM refuses, a CRM record that breaks the platform's
//! one-email rule: each is parked with its reason (a dead letter of its
//! own, counted on the connection), and the rest of its page or push — and
//! every later one — goes through. Fixed, it syncs and the parking ends.
//! The first two are conformance scenarios every CRM passes; here they run
//! on HubSpot with another tenant syncing beside them.

use super::neighbour::Neighbour;
use crate::conformance::crm::Crm;
use crate::conformance::scenarios;
use crate::fleet::{Fleet, on_both_backends};
use crate::support::PORTAL;
use crmsync::domain::CanonicalField;
use crmsync::jobs::JobKind;
use serde_json::{Value, json};

/// CRM users' edits of raw HubSpot properties, as HubSpot's UI would make
/// them (not our app).
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

/// Another tenant, started beside the case, still syncs both ways while
/// the case's records are parked.
async fn neighbour_works(fleet: &Fleet) {
    Neighbour::start(fleet).await.assert_works(fleet).await;
}

on_both_backends! {
    async fn crm_records_the_platform_cannot_hold_are_parked_and_the_connections_other_edits_go_on(backend) {
        scenarios::crm_records_the_platform_cannot_hold_are_parked_while(Crm::Hubspot, backend, neighbour_works).await;
    }
}

on_both_backends! {
    async fn a_platform_record_the_crm_refuses_is_parked_and_the_rest_of_its_push_and_later_pushes_go_through(backend) {
        scenarios::a_platform_record_the_crm_refuses_is_parked_while(Crm::Hubspot, backend, neighbour_works).await;
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
        api.create_lead("taken@example.com", "Platform").await;
        // …that a CRM user then gives a synced contact, beside a fine edit.
        let people = Crm::Hubspot.emails(&fleet).await;
        crm_edit(&fleet, &people[0].0, json!({"email": "taken@example.com"})).await;
        crm_edit(&fleet, &people[1].0, json!({"firstname": "Fine"})).await;
        fleet.delta_sync().await;
        assert_eq!(fleet.lead(&people[1].1).await.get(CanonicalField::FirstName), Some("Fine"));
        let parked = fleet.parked().await;
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].crm_id.as_deref(), Some(people[0].0.as_str()));
        assert!(parked[0].error.contains("email"), "{}", parked[0].error);
        neighbour.assert_works(&fleet).await;
        // The platform's two records are as they were.
        assert_eq!(fleet.lead("taken@example.com").await.get(CanonicalField::FirstName), Some("Platform"));
        fleet.lead(&people[0].1).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_crm_status_with_no_platform_meaning_is_left_out_not_parked_and_not_guessed(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        fleet.start_workers_for(&[JobKind::FullSync]);
        fleet.full_sync().await;
        let people = Crm::Hubspot.emails(&fleet).await;
        // A valid HubSpot lead status the platform has no word for.
        crm_edit(&fleet, &people[0].0, json!({"hs_lead_status": "BAD_TIMING", "firstname": "Timing"})).await;
        fleet.delta_sync().await;
        let fields = fleet.lead(&people[0].1).await;
        assert_eq!(fields.get(CanonicalField::FirstName), Some("Timing"), "the rest of the record applies");
        assert_ne!(fields.get(CanonicalField::Status), Some("BAD_TIMING"));
        assert!(
            fields.get(CanonicalField::Status).is_none_or(|s| crmsync::domain::validate::STATUSES.contains(&s)),
            "{fields:?}"
        );
        assert!(fleet.parked().await.is_empty());
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
        let people = Crm::Hubspot.emails(&fleet).await;
        let (crm_id, email) = &people[0];
        crm_edit(&fleet, crm_id, json!({"firstname": "Bad\u{0}Name"})).await;
        fleet.delta_sync().await;
        // The platform edits the company meanwhile: the push cannot merge
        // with a CRM copy the platform refuses, so it waits, parked too.
        let (record, _) = fleet.lead_by_email(email).await.expect("its lead");
        api.edit_lead(&record.to_string(), json!({"company": "Platform Co"})).await;
        assert_eq!(fleet.push_now().await, 0);
        let parked = fleet.parked().await;
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
        assert_eq!(fleet.push_now().await, 1);
        assert_eq!(company(&fleet.sandbox_contacts().await).as_deref(), Some("Platform Co"));
        assert_eq!(fleet.lead(email).await.get(CanonicalField::FirstName), Some("Fixed"));
        assert!(fleet.parked().await.is_empty());
        fleet.finish().await;
    }
}
