//! HubSpot's Leads object chosen for platform leads: a platform lead is a
//! HubSpot lead (its stage is the status) and its primary contact (the
//! person), read together, written apart, both ways, without duplicates.

use crate::fleet::{Fleet, on_both_backends, wait_for};
use crate::support::PORTAL;
use crmsync::domain::{CanonicalField, CrmObject, RecordFields, RecordKind};
use crmsync::sandbox::hubspot::SandboxConfig;
use crmsync::store::ObjectMapping;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Maps the fleet's platform leads to HubSpot's Leads object.
async fn use_leads_object(fleet: &Fleet) {
    let row = fleet
        .store
        .connection(fleet.tenant, fleet.connection)
        .await
        .expect("connection");
    let mut settings = row.settings.clone();
    settings.objects = vec![ObjectMapping {
        crm_object: CrmObject::Leads,
        record_kind: RecordKind::Lead,
    }];
    fleet
        .store
        .update_connection(
            fleet.tenant,
            fleet.connection,
            &settings,
            row.delta_interval_secs,
        )
        .await
        .expect("map leads to the Leads object");
}

/// The sandbox's leads: id → properties.
async fn sandbox_leads(fleet: &Fleet) -> BTreeMap<String, Value> {
    let reply = fleet
        .sandbox
        .get("/crm/v3/objects/leads?limit=100&properties=hs_lead_name,hs_pipeline_stage,crmsync_record_id,crmsync_source_system")
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    reply.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_string(),
                r["properties"].clone(),
            )
        })
        .collect()
}

/// The contact ids of `lead` in the sandbox.
async fn contacts_of(fleet: &Fleet, lead: &str) -> Vec<String> {
    let reply = fleet
        .sandbox
        .post(
            "/crm/v4/associations/leads/contacts/batch/read",
            json!({"inputs": [{"id": lead}]}),
        )
        .await;
    reply.body["results"][0]["to"]
        .as_array()
        .map(|to| {
            to.iter()
                .filter_map(|t| t["toObjectId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Requests the sandbox served whose route contains `fragment`.
async fn requests(fleet: &Fleet, fragment: &str) -> u64 {
    fleet.sandbox.counters().await["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.contains(fragment))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// The platform lead with `email`, if any.
async fn platform_lead(fleet: &Fleet, email: &str) -> Option<RecordFields> {
    fleet
        .leads()
        .await
        .into_iter()
        .find(|f| f.get(CanonicalField::Email) == Some(email))
}

on_both_backends! {
    async fn hubspot_leads_are_read_with_their_contacts_person_and_follow_both_sides_edits(backend) {
        let mut fleet = Fleet::with_sandbox(
            backend,
            SandboxConfig { seed_contacts: 0, seed_leads: 6, ..SandboxConfig::for_tests() },
        )
        .await;
        use_leads_object(&fleet).await;
        fleet.start_workers();
        fleet.full_sync().await;

        // Every lead arrives with its contact's person and its stage.
        let contacts = fleet.sandbox_contacts().await;
        let leads = fleet.leads().await;
        assert_eq!(leads.len(), 6, "one platform lead per HubSpot lead");
        let mut platform_emails: Vec<_> = leads.iter().filter_map(|f| f.get(CanonicalField::Email)).map(str::to_string).collect();
        let mut crm_emails: Vec<_> = contacts.values().filter_map(|p| p["email"].as_str()).map(str::to_lowercase).collect();
        platform_emails.sort();
        crm_emails.sort();
        assert_eq!(platform_emails, crm_emails, "the person is the lead's contact");
        assert!(leads.iter().all(|f| f.get(CanonicalField::Status) == Some("new")), "new-stage-id is new: {leads:?}");

        fleet.start_ingress(true).await;
        // A CRM user edits a lead's contact: the lead changes on the platform
        // through the webhook path, no delta needed.
        let (contact_id, person) = contacts.iter().next().expect("a contact");
        let email = person["email"].as_str().expect("email").to_lowercase();
        let edited = fleet.sandbox.control(
            reqwest::Method::PATCH,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{contact_id}"),
            Some(json!({"properties": {"jobtitle": "Chief Lead Officer"}})),
        ).await;
        assert!(edited.status.is_success(), "{:?}", edited.body);
        wait_for("the contact's edit on the platform lead", || async {
            platform_lead(&fleet, &email).await.and_then(|f| f.get(CanonicalField::JobTitle).map(str::to_string)).as_deref() == Some("Chief Lead Officer")
        }).await;

        // A CRM user moves a lead along its pipeline: the status follows.
        let lead_id = sandbox_leads(&fleet).await.into_keys().find(|_| true).expect("a lead");
        let lead_contact = contacts_of(&fleet, &lead_id).await.into_iter().next().expect("its contact");
        let lead_email = contacts[&lead_contact]["email"].as_str().expect("email").to_lowercase();
        let moved = fleet.sandbox.control(
            reqwest::Method::PATCH,
            &format!("/_sandbox/accounts/{PORTAL}/objects/leads/{lead_id}"),
            Some(json!({"properties": {"hs_pipeline_stage": "qualified-stage-id"}})),
        ).await;
        assert!(moved.status.is_success(), "{:?}", moved.body);
        wait_for("the stage as the platform status", || async {
            platform_lead(&fleet, &lead_email).await.and_then(|f| f.get(CanonicalField::Status).map(str::to_string)).as_deref() == Some("qualified")
        }).await;

        // A platform lead becomes a contact and a lead associated with it.
        let fields = RecordFields::new()
            .with(CanonicalField::Email, "ada@example.com")
            .with(CanonicalField::FirstName, "Ada")
            .with(CanonicalField::LastName, "Lovelace")
            .with(CanonicalField::Status, "contacted");
        let (record, queued) = fleet.store.create_platform_record(fleet.tenant, RecordKind::Lead, &fields).await.expect("create");
        assert_eq!(queued, vec![fleet.connection]);
        fleet.enqueue_push().await;
        let ours = record.to_string();
        wait_for("the platform lead in HubSpot", || async {
            sandbox_leads(&fleet).await.values().any(|p| p["crmsync_record_id"].as_str() == Some(ours.as_str()))
        }).await;
        let crm_leads = sandbox_leads(&fleet).await;
        let (new_lead, props) = crm_leads.iter().find(|(_, p)| p["crmsync_record_id"].as_str() == Some(ours.as_str())).expect("our lead");
        assert_eq!(props["hs_lead_name"], "Ada Lovelace");
        assert_eq!(props["hs_pipeline_stage"], "attempting-stage-id");
        assert_eq!(props["crmsync_source_system"], "platform");
        let new_contacts = contacts_of(&fleet, new_lead).await;
        assert_eq!(new_contacts.len(), 1, "associated with one contact");
        let person = &fleet.sandbox_contacts().await[&new_contacts[0]];
        assert_eq!(person["email"], "ada@example.com");
        assert_eq!(person["lastname"], "Lovelace");

        // A platform edit lands on both: the person on the contact, the
        // status on the lead's stage. Nothing is created twice.
        let updated = fields.clone().with(CanonicalField::JobTitle, "Analyst").with(CanonicalField::Status, "qualified");
        fleet.store.update_platform_record(fleet.tenant, RecordKind::Lead, record, &updated).await.expect("update");
        fleet.enqueue_push().await;
        wait_for("the platform edit in HubSpot", || async {
            let stage = sandbox_leads(&fleet).await.get(new_lead).map(|p| p["hs_pipeline_stage"].clone());
            let title = fleet.sandbox_contacts().await.get(&new_contacts[0]).map(|p| p["jobtitle"].clone());
            stage == Some(json!("qualified-stage-id")) && title == Some(json!("Analyst"))
        }).await;
        // Let echoes come back and settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sandbox_leads(&fleet).await.len(), 7, "one lead more, not two");
        assert_eq!(fleet.sandbox_contacts().await.len(), 7, "one contact more, not two");
        // (Contacts are upserted; only leads are created.)
        assert_eq!(requests(&fleet, "/batch/create").await, 1, "created once");
        let platform = platform_lead(&fleet, "ada@example.com").await.expect("ours");
        assert_eq!(platform.get(CanonicalField::JobTitle), Some("Analyst"));
        assert_eq!(platform.get(CanonicalField::Status), Some("qualified"), "our echo did not undo it");
        assert_eq!(fleet.leads().await.len(), 7);
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_retried_lead_push_finds_the_contact_and_lead_it_made(backend) {
        let fleet = Fleet::with_sandbox(
            backend,
            SandboxConfig { seed_contacts: 1, seed_leads: 0, ..SandboxConfig::for_tests() },
        )
        .await;
        let token = secrecy::SecretString::from(crate::support::TOKEN);
        let portal = PORTAL.to_string();
        let hubspot = &fleet.deps.providers.hubspot;
        hubspot.ensure_properties(&portal, &token, CrmObject::Leads).await.expect("properties");
        let existing_email = fleet.sandbox_contacts().await.values().next().expect("seeded")["email"].as_str().expect("email").to_lowercase();
        // One person HubSpot already knows (by email), one without an email.
        let known = RecordFields::new().with(CanonicalField::Email, &existing_email).with(CanonicalField::Status, "new");
        let anonymous = RecordFields::new().with(CanonicalField::FirstName, "Nomail");
        let inputs: Vec<(String, serde_json::Map<String, Value>)> = [("rec-known", &known), ("rec-anonymous", &anonymous)]
            .into_iter()
            .map(|(id, f)| (id.to_string(), crmsync::providers::hubspot::mapping::to_properties(CrmObject::Leads, f)))
            .collect();
        let first = hubspot.batch_upsert(&portal, &token, CrmObject::Leads, &inputs).await.expect("first push");
        // The batch again, as after a crash before the push was booked (or
        // from a push that ran alongside), with the status changed since.
        let mut retried = inputs.clone();
        retried[0].1 = crmsync::providers::hubspot::mapping::to_properties(CrmObject::Leads, &known.clone().with(CanonicalField::Status, "qualified"));
        let again = hubspot.batch_upsert(&portal, &token, CrmObject::Leads, &retried).await.expect("retried push");
        let sorted = |mut v: Vec<crmsync::providers::hubspot::Upserted>| { v.sort(); v };
        assert_eq!(sorted(first.clone()), sorted(again), "the retry finds the same leads");
        assert_eq!(first.len(), 2);
        let crm_leads = sandbox_leads(&fleet).await;
        assert_eq!(crm_leads.len(), 2, "no second lead");
        let known_lead = crm_leads.values().find(|p| p["crmsync_record_id"] == "rec-known").expect("known lead");
        assert_eq!(known_lead["hs_pipeline_stage"], "qualified-stage-id", "the found lead is updated, as by an upsert");
        let contacts = fleet.sandbox_contacts().await;
        assert_eq!(contacts.len(), 2, "the known person's contact is reused; one new for the other");
        assert!(first.iter().all(|u| u.person.is_some()), "each lead's contact is known: {first:?}");
        let by_id: BTreeMap<_, _> = first.into_iter().map(|u| (u.ours, u.crm_id)).collect();
        let known_contact = contacts_of(&fleet, by_id["rec-known"].as_str()).await;
        assert_eq!(contacts[&known_contact[0]]["email"].as_str().map(str::to_lowercase).as_deref(), Some(existing_email.as_str()));
        let anonymous_contact = contacts_of(&fleet, by_id["rec-anonymous"].as_str()).await;
        assert_eq!(contacts[&anonymous_contact[0]]["firstname"], "Nomail");
        // Read back together, each lead is the person that was pushed.
        let ids: Vec<_> = by_id.values().cloned().collect();
        let read = hubspot.batch_read(&portal, &token, CrmObject::Leads, &ids, true, None).await.expect("read");
        let anonymous_read = read.iter().find(|r| r.crm_id == by_id["rec-anonymous"]).expect("read back");
        assert_eq!(anonymous_read.fields, crmsync::providers::hubspot::mapping::round_trip(CrmObject::Leads, &anonymous));
        fleet.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_whose_contact_is_gone_is_left_out_not_wiped() {
    let fleet = Fleet::with_sandbox(
        crate::fleet::Backend::Sqlite,
        SandboxConfig {
            seed_contacts: 0,
            seed_leads: 0,
            ..SandboxConfig::for_tests()
        },
    )
    .await;
    let token = secrecy::SecretString::from(crate::support::TOKEN);
    let portal = PORTAL.to_string();
    let contact = fleet.sandbox.create_contact("grace@example.com").await;
    let lead = fleet.sandbox.create_lead("Grace", &contact).await;
    let read = |lead: String| {
        let token = token.clone();
        let portal = portal.clone();
        let hubspot = fleet.deps.providers.hubspot.clone();
        async move {
            hubspot
                .batch_read(
                    &portal,
                    &token,
                    CrmObject::Leads,
                    &[crmsync::domain::CrmId(lead)],
                    false,
                    None,
                )
                .await
                .expect("read")
        }
    };
    let before = read(lead.clone()).await;
    assert_eq!(
        before[0].fields.get(CanonicalField::Email),
        Some("grace@example.com")
    );
    let gone = fleet
        .sandbox
        .control(
            reqwest::Method::DELETE,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{contact}"),
            None,
        )
        .await;
    assert!(gone.status.is_success(), "{:?}", gone.body);
    assert!(
        read(lead).await.is_empty(),
        "no person to read: left out rather than read as an empty person"
    );
    fleet.finish().await;
}

on_both_backends! {
    async fn a_delta_brings_a_contact_edit_to_its_lead_without_webhooks(backend) {
        let mut fleet = Fleet::with_sandbox(
            backend,
            SandboxConfig { seed_contacts: 0, seed_leads: 3, ..SandboxConfig::for_tests() },
        )
        .await;
        use_leads_object(&fleet).await;
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.stop_workers().await;
        // No ingress: webhooks are lost. A CRM user edits one lead's contact
        // (the lead itself is untouched) and moves another lead's stage.
        let leads = sandbox_leads(&fleet).await;
        let mut ids = leads.keys();
        let (edited_lead, moved_lead) = (ids.next().expect("lead"), ids.next().expect("lead"));
        let contact = contacts_of(&fleet, edited_lead).await.into_iter().next().expect("contact");
        let contacts = fleet.sandbox_contacts().await;
        let email = |id: &str| contacts[id]["email"].as_str().expect("email").to_lowercase();
        let edited_email = email(&contact);
        let moved_email = email(&contacts_of(&fleet, moved_lead).await[0]);
        let reply = fleet.sandbox.control(
            reqwest::Method::PATCH,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{contact}"),
            Some(json!({"properties": {"company": "Analytical Engines"}})),
        ).await;
        assert!(reply.status.is_success(), "{:?}", reply.body);
        let reply = fleet.sandbox.control(
            reqwest::Method::PATCH,
            &format!("/_sandbox/accounts/{PORTAL}/objects/leads/{moved_lead}"),
            Some(json!({"properties": {"hs_pipeline_stage": "unqualified-stage-id"}})),
        ).await;
        assert!(reply.status.is_success(), "{:?}", reply.body);
        let job = crmsync::jobs::DeltaSyncJob {
            tenant: fleet.tenant,
            connection: fleet.connection,
            object: None,
            trigger: "test".into(),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
        let outcome = crmsync::jobs::delta_sync::run(&job, &fleet.deps, &mut crmsync::jobs::DeltaProgress::default())
            .await
            .expect("delta");
        assert!(outcome.caught_up());
        let edited = platform_lead(&fleet, &edited_email).await.expect("edited lead");
        assert_eq!(edited.get(CanonicalField::Company), Some("Analytical Engines"), "the contact's edit reached its lead");
        let moved = platform_lead(&fleet, &moved_email).await.expect("moved lead");
        assert_eq!(moved.get(CanonicalField::Status), Some("unqualified"), "the lead's own change came through the leads feed");
        assert_eq!(fleet.leads().await.len(), 3, "no lead made twice");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_privacy_deletion_of_a_leads_contact_erases_the_platform_lead(backend) {
        let mut fleet = Fleet::with_sandbox(
            backend,
            SandboxConfig { seed_contacts: 0, seed_leads: 2, ..SandboxConfig::for_tests() },
        )
        .await;
        use_leads_object(&fleet).await;
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.start_ingress(true).await;
        // One lead read from HubSpot, one pushed from the platform: both
        // links know their person.
        let fields = RecordFields::new()
            .with(CanonicalField::Email, "erase.me@example.com")
            .with(CanonicalField::FirstName, "Erase");
        fleet.store.create_platform_record(fleet.tenant, RecordKind::Lead, &fields).await.expect("create");
        fleet.enqueue_push().await;
        wait_for("the pushed lead in HubSpot", || async { sandbox_leads(&fleet).await.len() == 3 }).await;
        let contacts = fleet.sandbox_contacts().await;
        let pulled_lead = sandbox_leads(&fleet).await.into_iter()
            .find(|(_, p)| p["crmsync_record_id"].is_null())
            .map(|(id, _)| id)
            .expect("a lead from HubSpot");
        let pulled_contact = contacts_of(&fleet, &pulled_lead).await.remove(0);
        let pulled_email = contacts[&pulled_contact]["email"].as_str().expect("email").to_lowercase();
        let pushed_contact = contacts.iter()
            .find(|(_, p)| p["email"] == "erase.me@example.com")
            .map(|(id, _)| id.clone())
            .expect("the pushed lead's contact");
        let before = fleet.leads().await.len();
        for contact in [&pulled_contact, &pushed_contact] {
            let erased = fleet.sandbox.post(
                "/crm/v3/objects/contacts/gdpr-delete",
                json!({"objectId": contact}),
            ).await;
            assert!(erased.status.is_success(), "{:?}", erased.body);
        }
        wait_for("both platform leads erased", || async {
            platform_lead(&fleet, &pulled_email).await.is_none()
                && platform_lead(&fleet, "erase.me@example.com").await.is_none()
        }).await;
        assert_eq!(fleet.leads().await.len(), before - 2, "the other lead is untouched");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn with_contacts_mapped_too_a_contact_edit_reaches_the_platform_contact_and_its_lead(backend) {
        let mut fleet = Fleet::with_sandbox(
            backend,
            SandboxConfig { seed_contacts: 0, seed_leads: 3, ..SandboxConfig::for_tests() },
        )
        .await;
        let row = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("connection");
        let mut settings = row.settings.clone();
        settings.objects = vec![
            ObjectMapping { crm_object: CrmObject::Leads, record_kind: RecordKind::Lead },
            ObjectMapping { crm_object: CrmObject::Contacts, record_kind: RecordKind::Contact },
        ];
        fleet.store.update_connection(fleet.tenant, fleet.connection, &settings, row.delta_interval_secs).await.expect("map both");
        fleet.start_workers();
        let runs = crmsync::cli::start_full_sync(&fleet.deps, fleet.tenant, fleet.connection).await.expect("full sync");
        assert_eq!(runs.len(), 2, "one full sync per mapped object");
        for run in runs {
            let row = fleet.wait_run(run.id, Duration::from_secs(60)).await;
            assert_eq!(row.status, crmsync::domain::RunStatus::Succeeded, "{row:?}");
        }
        let platform_contacts = || async {
            fleet.store.records(fleet.tenant, RecordKind::Contact).await.expect("contacts").into_iter().map(|(_, f)| f).collect::<Vec<_>>()
        };
        assert_eq!(platform_contacts().await.len(), 3);
        assert_eq!(fleet.leads().await.len(), 3);
        fleet.start_ingress(true).await;
        let (contact, person) = fleet.sandbox_contacts().await.into_iter().next().expect("a contact");
        let email = person["email"].as_str().expect("email").to_lowercase();
        let reply = fleet.sandbox.control(
            reqwest::Method::PATCH,
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{contact}"),
            Some(json!({"properties": {"phone": "+44 20 7946 0000"}})),
        ).await;
        assert!(reply.status.is_success(), "{:?}", reply.body);
        wait_for("the edit on the platform contact and the platform lead", || async {
            let on_contact = platform_contacts().await.iter().any(|f| f.get(CanonicalField::Email) == Some(email.as_str()) && f.get(CanonicalField::Phone) == Some("+44 20 7946 0000"));
            let on_lead = platform_lead(&fleet, &email).await.is_some_and(|f| f.get(CanonicalField::Phone) == Some("+44 20 7946 0000"));
            on_contact && on_lead
        }).await;
        fleet.finish().await;
    }
}
