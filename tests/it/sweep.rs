//! The `detect_conflicts` anti-entropy sweep: it repairs what no webhook
//! and no delta can see (a value changed with no event and no move of the
//! modified time), tombstones links whose CRM record vanished silently,
//! resumes from its checkpoint, stays within its budget share and closes
//! `manual` conflicts whose sides came to agree.

use crate::fleet::{Fleet, on_both_backends, wait_for};
use crate::support::PORTAL;
use crmsync::domain::{CanonicalField, CrmObject, RecordFields, RecordId, RecordKind};
use crmsync::jobs::detect_conflicts::{sweep, sweep_until};
use crmsync::jobs::{DetectConflictsJob, JobKind, SweepCounts};
use crmsync::queue::{WorkerSpec, run_workers};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A fleet whose `contacts` are synced (full sync done), workers stopped.
async fn synced(backend: crate::fleet::Backend, contacts: u64) -> Fleet {
    let mut fleet = Fleet::start(backend, contacts).await;
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.stop_workers().await;
    fleet
}

/// CRM id → (platform record, its fields).
async fn linked(fleet: &Fleet) -> BTreeMap<String, (RecordId, RecordFields)> {
    let mut out = BTreeMap::new();
    for (id, fields) in fleet
        .store
        .records(fleet.tenant, RecordKind::Lead)
        .await
        .expect("records")
    {
        let view = fleet
            .store
            .record_view(fleet.tenant, RecordKind::Lead, id)
            .await
            .expect("view")
            .expect("lead");
        for link in view.links {
            out.insert(link.crm_id.clone(), (id, fields.clone()));
        }
    }
    out
}

async fn platform_first_name(fleet: &Fleet, record: RecordId) -> Option<String> {
    fleet
        .store
        .record_view(fleet.tenant, RecordKind::Lead, record)
        .await
        .expect("view")
        .expect("lead")
        .fields
        .get(CanonicalField::FirstName)
        .map(str::to_string)
}

async fn silent_update(fleet: &Fleet, crm_id: &str, properties: Value) {
    let reply = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/silent-update"),
            json!({"objectType": "contacts", "id": crm_id, "properties": properties}),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    assert_eq!(reply.body["changed"], 1, "{:?}", reply.body);
}

async fn crm_contact(fleet: &Fleet, crm_id: &str) -> Value {
    let reply = fleet
        .sandbox
        .get(&format!(
            "/crm/v3/objects/contacts/{crm_id}?properties=firstname,lastmodifieddate"
        ))
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    reply.body
}

fn job(fleet: &Fleet) -> DetectConflictsJob {
    DetectConflictsJob::new(fleet.tenant, fleet.connection, 0)
}

async fn list_calls(fleet: &Fleet) -> u64 {
    fleet.sandbox.counters().await["requests"]["GET /crm/v3/objects/{object_type}"]
        .as_u64()
        .unwrap_or(0)
}

/// The highest CRM id (the list pages by id: it is on the last page).
fn last_id(ids: impl Iterator<Item = String>) -> String {
    ids.max_by_key(|id| id.parse::<u64>().unwrap_or(0))
        .expect("a record")
}

on_both_backends! {
    async fn a_silently_changed_record_is_repaired_by_the_sweep_and_not_by_a_delta(backend) {
        crmsync::telemetry::metrics(); // installs the recorder
        let fleet = synced(backend, 5).await;
        // Subscribed: any event would be generated (and queued, unprocessed).
        fleet.start_ingress(true).await;
        let links = linked(&fleet).await;
        let (crm_id, (record, fields)) = links.iter().next().map(|(k, v)| (k.clone(), v.clone())).expect("a link");
        let before = crm_contact(&fleet, &crm_id).await;
        let events = fleet.sandbox.counters().await["webhooks"]["events"].as_u64().unwrap_or(0);
        silent_update(&fleet, &crm_id, json!({"firstname": "Silently"})).await;
        let after = crm_contact(&fleet, &crm_id).await;
        assert_eq!(after["properties"]["firstname"], "Silently");
        assert_eq!(after["updatedAt"], before["updatedAt"], "the modified time did not move");
        assert_eq!(after["properties"]["lastmodifieddate"], before["properties"]["lastmodifieddate"]);
        assert_eq!(fleet.sandbox.counters().await["webhooks"]["events"].as_u64().unwrap_or(0), events, "no webhook");
        // The delta does not see it: the platform keeps the old value.
        fleet.delta_sync().await;
        let old = fields.get(CanonicalField::FirstName).map(str::to_string);
        assert_ne!(old.as_deref(), Some("Silently"));
        assert_eq!(platform_first_name(&fleet, record).await, old, "a delta repaired it");
        // The sweep does.
        let found = sweep(&job(&fleet), &fleet.deps).await.expect("sweep");
        assert_eq!(found, SweepCounts { checked: 5, drifted: 1, repaired: 1, conflicts: 0 });
        assert_eq!(platform_first_name(&fleet, record).await.as_deref(), Some("Silently"));
        // Nothing is left to repair.
        let again = sweep(&job(&fleet), &fleet.deps).await.expect("sweep");
        assert_eq!(again, SweepCounts { checked: 5, ..SweepCounts::default() });
        let rendered = crmsync::telemetry::metrics().map(|h| h.render()).unwrap_or_default();
        assert!(rendered.contains("crmsync_drift_repaired_total{provider=\"hubspot\",object=\"contacts\"}"), "{rendered}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_link_whose_crm_record_vanished_silently_is_tombstoned_after_a_complete_pass(backend) {
        let fleet = synced(backend, 5).await;
        let links = linked(&fleet).await;
        let gone = links.keys().next().cloned().expect("a link");
        // Deleted in the CRM; no ingress runs, so its webhook never arrives.
        let deleted = fleet.sandbox.control(reqwest::Method::DELETE, &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{gone}"), None).await;
        assert!(deleted.status.is_success(), "{:?}", deleted.body);
        let found = sweep(&job(&fleet), &fleet.deps).await.expect("sweep");
        assert_eq!(found.checked, 4);
        for (crm_id, (record, _)) in &links {
            let view = fleet.store.record_view(fleet.tenant, RecordKind::Lead, *record).await.expect("view").expect("lead");
            let link = view.links.iter().find(|l| &l.crm_id == crm_id).expect("link");
            assert_eq!(link.crm_deleted_at.is_some(), crm_id == &gone, "{crm_id}: {link:?}");
        }
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_sweep_cut_short_resumes_from_its_checkpoint_in_a_follow_up(backend) {
        let mut fleet = synced(backend, 5).await;
        let links = linked(&fleet).await;
        let last = last_id(links.keys().cloned());
        let first = links.keys().cloned().min_by_key(|id| id.parse::<u64>().unwrap_or(0)).expect("a link");
        let (record, fields) = links[&last].clone();
        silent_update(&fleet, &last, json!({"firstname": "Lastpage"})).await;
        // And one deleted silently: only a complete pass may tombstone it.
        let deleted = fleet.sandbox.control(reqwest::Method::DELETE, &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{first}"), None).await;
        assert!(deleted.status.is_success(), "{:?}", deleted.body);
        // Pages of 2, and a deadline already past: one page per job.
        let mut settings = fleet.settings.clone();
        settings.sync.full_page_size = 2;
        let deps = crmsync::app::deps(&settings, fleet.store.clone()).await.expect("deps");
        let lists = list_calls(&fleet).await;
        let found = sweep_until(&job(&fleet), &deps, Instant::now()).await.expect("sweep");
        assert_eq!(found.checked, 2, "one page: {found:?}");
        assert_eq!(list_calls(&fleet).await, lists + 1);
        assert_eq!(platform_first_name(&fleet, record).await, fields.get(CanonicalField::FirstName).map(str::to_string));
        let tombstoned = |fleet: &Fleet| {
            let record = links[&first].0;
            let first = first.clone();
            let store = fleet.store.clone();
            let tenant = fleet.tenant;
            async move {
                let view = store.record_view(tenant, RecordKind::Lead, record).await.expect("view").expect("lead");
                view.links.iter().any(|l| l.crm_id == first && l.crm_deleted_at.is_some())
            }
        };
        assert!(!tombstoned(&fleet).await, "not before the pass is complete");
        assert_eq!(fleet.deps.queue.depth(JobKind::DetectConflicts).await.expect("depth"), 1, "a follow-up");
        // The follow-up (run by a worker) continues after page 1.
        fleet.start_workers_for(&[JobKind::DetectConflicts]);
        wait_for("the last page repaired", || async {
            platform_first_name(&fleet, record).await.as_deref() == Some("Lastpage")
        })
        .await;
        wait_for("the vanished record's link tombstoned", || tombstoned(&fleet)).await;
        // Page 1 was not read again: 4 live records, 2 per page, all read
        // in two calls from the checkpoint (one by each job).
        assert_eq!(list_calls(&fleet).await, lists + 2);
        fleet.stop_workers().await;
        deps.queue.close().await;
        fleet.finish().await;
    }
}

/// The sandbox account limited to 50 requests per 10 s, and workers' deps
/// paced to it (pages of 5, so a sweep takes many requests).
async fn on_a_small_budget(fleet: &Fleet) -> (u32, crmsync::config::Settings, crmsync::jobs::Deps) {
    let limit = 50u32;
    let limits = fleet
        .sandbox
        .put_control(
            &format!("/_sandbox/accounts/{PORTAL}/limits"),
            json!({"perTenSeconds": limit, "daily": 250000, "searchPerSecond": 5}),
        )
        .await;
    assert!(limits.status.is_success(), "{:?}", limits.body);
    let mut settings = fleet.settings.clone();
    settings.hubspot.requests_per_10s = limit;
    settings.sync.full_page_size = 5;
    let deps = crmsync::app::deps(&settings, fleet.store.clone())
        .await
        .expect("deps");
    (limit, settings, deps)
}

on_both_backends! {
    async fn the_sweep_keeps_to_its_budget_share_while_a_webhook_burst_is_served(backend) {
        let fleet = synced(backend, 60).await;
        // Workers of this account's real budget: the sweep's and the
        // webhook jobs' requests share it.
        let (limit, settings, deps) = on_a_small_budget(&fleet).await;
        let share = settings.sync.detect_conflicts_budget_share;
        assert!((share - 0.2).abs() < 1e-9, "the default share");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let webhooks = {
            let deps = deps.clone();
            let specs = [WorkerSpec { kind: JobKind::ProcessWebhook, concurrency: 2 }];
            tokio::spawn(async move { run_workers(&deps.queue, deps.clone(), &specs, stopped).await })
        };
        fleet.start_ingress(true).await;
        let crm_ids: Vec<String> = linked(&fleet).await.keys().cloned().collect();
        let lists = list_calls(&fleet).await;
        let reads = |c: &Value| c["requests"]["POST /crm/v3/objects/{object_type}/batch/read"].as_u64().unwrap_or(0);
        let reads_before = reads(&fleet.sandbox.counters().await);
        // The burst: users edit contacts for the whole window, each edit a
        // webhook whose job reads the record back.
        let window = Duration::from_secs(6);
        let burst = {
            let sandbox = fleet.sandbox.base.clone();
            let crm_ids = crm_ids.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let ends = Instant::now() + window;
                let mut edits = Vec::new();
                let mut i = 0usize;
                while Instant::now() < ends {
                    let crm_id = &crm_ids[i % crm_ids.len()];
                    let value = format!("Burst{i}");
                    let reply = http
                        .patch(format!("{sandbox}/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}"))
                        .json(&json!({"properties": {"jobtitle": value}}))
                        .send()
                        .await
                        .expect("edit");
                    assert!(reply.status().is_success(), "{}", reply.status());
                    edits.push((crm_id.clone(), value));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                edits
            })
        };
        let started = Instant::now();
        // The sweep runs until the window ends, or until it finds no free
        // slot within the longest wait: then it yields to the webhooks
        // (the worker would defer it; its checkpoint keeps its progress).
        let outcome = sweep_until(&job(&fleet), &deps, started + window).await;
        let elapsed = started.elapsed();
        let sweeps = list_calls(&fleet).await - lists;
        match &outcome {
            Ok(found) => assert_eq!(found.checked, 5 * i64::try_from(sweeps).unwrap_or(0), "{found:?}"),
            Err(crmsync::jobs::JobError::Deferred { .. }) => {}
            Err(e) => panic!("sweep: {e}"),
        }
        let edits = burst.await.expect("burst");
        assert!(edits.len() >= 15, "a burst: {} edits", edits.len());
        assert!(sweeps >= 1, "the sweep started");
        // At most `share` of the account's rate over the window (+1: the
        // first call goes at once) — while the budget had room for more.
        let allowed = share * f64::from(limit) * elapsed.as_secs_f64() / 10.0 + 1.0;
        assert!((sweeps as f64) <= allowed, "{sweeps} sweep calls in {elapsed:?}, allowed {allowed:.1}");
        // The burst was served: its reads went out, and the last edit of
        // each contact reaches the platform.
        assert!(reads(&fleet.sandbox.counters().await) > reads_before, "webhook reads were served");
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for (crm_id, value) in edits {
            last.insert(crm_id, value);
        }
        wait_for("every contact's last webhook edit on the platform", || async {
            let links = linked(&fleet).await;
            last.iter().all(|(crm_id, value)| {
                links.get(crm_id).and_then(|(_, f)| f.get(CanonicalField::JobTitle)) == Some(value.as_str())
            })
        })
        .await;
        assert_eq!(fleet.sandbox.counters().await["totalRateLimited"], 0);
        let _ = stop.send(true);
        let _ = webhooks.await;
        deps.queue.close().await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_manual_conflict_whose_sides_came_to_agree_is_closed_by_the_sweep(backend) {
        let fleet = synced(backend, 3).await;
        let row = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("connection");
        let mut settings = row.settings.clone();
        settings.strategy = crmsync::sync::ConflictStrategy::Manual;
        fleet.store.update_connection(fleet.tenant, fleet.connection, &settings, row.delta_interval_secs).await.expect("manual");
        let links = linked(&fleet).await;
        let (crm_id, (record, fields)) = links.iter().next().map(|(k, v)| (k.clone(), v.clone())).expect("a link");
        // Both sides change firstname: the delta holds a conflict.
        fleet.store.update_platform_record(fleet.tenant, RecordKind::Lead, record, &fields.clone().with(CanonicalField::FirstName, "Platform")).await.expect("edit");
        let edited = fleet.sandbox.control(reqwest::Method::PATCH, &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}"), Some(json!({"properties": {"firstname": "Crm"}}))).await;
        assert!(edited.status.is_success(), "{:?}", edited.body);
        fleet.delta_sync().await;
        let open = |fleet: &Fleet| {
            let store = fleet.store.clone();
            let (tenant, connection) = (fleet.tenant, fleet.connection);
            async move { store.list_conflicts(tenant, "open", Some(connection), None, 10).await.expect("conflicts").len() }
        };
        assert_eq!(open(&fleet).await, 1, "held");
        // The platform comes to agree with the CRM (no push runs): the
        // sides agree, but the CRM state is one the merge has seen.
        fleet.store.update_platform_record(fleet.tenant, RecordKind::Lead, record, &fields.clone().with(CanonicalField::FirstName, "Crm")).await.expect("edit");
        fleet.delta_sync().await;
        assert_eq!(open(&fleet).await, 1, "a delta re-reading the same CRM state leaves it open");
        sweep(&job(&fleet), &fleet.deps).await.expect("sweep");
        assert_eq!(open(&fleet).await, 0, "closed by the sweep");
        let settled = fleet.store.list_conflicts(fleet.tenant, "resolved", Some(fleet.connection), None, 10).await.expect("conflicts");
        assert_eq!(settled[0].resolution.as_deref(), Some("settled"));
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_crm_record_carrying_our_key_that_no_link_knows_is_linked_and_counted(backend) {
        let fleet = synced(backend, 2).await;
        // Our push landed but its booking was lost: a CRM record holds our
        // record id and no link knows it.
        let property = fleet.sandbox.post(
            "/crm/v3/properties/contacts",
            json!({"name": "crmsync_record_id", "label": "crmsync record id", "type": "string", "fieldType": "text", "groupName": "contactinformation", "hasUniqueValue": true}),
        ).await;
        assert!(property.status.is_success() || property.status == reqwest::StatusCode::CONFLICT, "{:?}", property.body);
        let fields = RecordFields::new()
            .with(CanonicalField::Email, "ours@example.com")
            .with(CanonicalField::FirstName, "Ours");
        let (record, _) = fleet.store.create_platform_record(fleet.tenant, RecordKind::Lead, &fields).await.expect("create");
        let created = fleet.sandbox.post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts"),
            json!({"properties": {"email": "ours@example.com", "firstname": "Ours", "crmsync_record_id": record.0.to_string()}}),
        ).await;
        assert!(created.status.is_success(), "{:?}", created.body);
        let crm_id = created.body["id"].as_str().expect("id").to_string();
        assert!(!linked(&fleet).await.contains_key(&crm_id));
        let found = sweep(&job(&fleet), &fleet.deps).await.expect("sweep");
        assert_eq!((found.checked, found.drifted, found.repaired), (3, 1, 1), "{found:?}");
        let links = linked(&fleet).await;
        assert_eq!(links.get(&crm_id).map(|(r, _)| *r), Some(record), "linked to our record");
        assert_eq!(fleet.store.records(fleet.tenant, RecordKind::Lead).await.expect("records").len(), 3, "no duplicate");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn the_sweep_uses_no_more_than_its_share_of_an_idle_budget(backend) {
        // Background priority alone would take every free slot: with
        // nothing else running, only the sweep's own pace holds it back.
        let fleet = synced(backend, 60).await;
        let (limit, settings, deps) = on_a_small_budget(&fleet).await;
        let share = settings.sync.detect_conflicts_budget_share;
        let lists = list_calls(&fleet).await;
        let started = Instant::now();
        let found = sweep_until(&job(&fleet), &deps, started + Duration::from_secs(4)).await.expect("sweep");
        let elapsed = started.elapsed();
        let sweeps = list_calls(&fleet).await - lists;
        assert_eq!(found.checked, 5 * i64::try_from(sweeps).unwrap_or(0), "{found:?}");
        assert!(sweeps >= 3, "the sweep progressed: {sweeps} calls");
        let allowed = share * f64::from(limit) * elapsed.as_secs_f64() / 10.0 + 1.0;
        assert!((sweeps as f64) <= allowed, "{sweeps} sweep calls in {elapsed:?}, allowed {allowed:.1}");
        assert_eq!(deps.queue.depth(JobKind::DetectConflicts).await.expect("depth"), 1, "the rest follows");
        deps.queue.close().await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_leads_sweep_repairs_a_silent_contact_change_and_keeps_a_lead_whose_contact_is_gone(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        let row = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("connection");
        let mut settings = row.settings.clone();
        settings.objects = vec![crmsync::store::ObjectMapping { crm_object: CrmObject::Leads, record_kind: RecordKind::Lead }];
        fleet.store.update_connection(fleet.tenant, fleet.connection, &settings, row.delta_interval_secs).await.expect("leads");
        let ada = fleet.sandbox.create_contact("ada@example.com").await;
        let bob = fleet.sandbox.create_contact("bob@example.com").await;
        let ada_lead = fleet.sandbox.create_lead("Ada", &ada).await;
        let bob_lead = fleet.sandbox.create_lead("Bob", &bob).await;
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.stop_workers().await;
        let links = linked(&fleet).await;
        let (ada_record, _) = links[&ada_lead].clone();
        let (bob_record, _) = links[&bob_lead].clone();
        // Ada's person changes silently; Bob's contact is deleted, which
        // leaves his lead (still listed) without a live contact.
        silent_update(&fleet, &ada, json!({"firstname": "Adeline"})).await;
        let deleted = fleet.sandbox.control(reqwest::Method::DELETE, &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{bob}"), None).await;
        assert!(deleted.status.is_success(), "{:?}", deleted.body);
        let found = sweep(&job(&fleet), &fleet.deps).await.expect("sweep");
        assert_eq!((found.checked, found.drifted, found.repaired), (2, 1, 1), "{found:?}");
        assert_eq!(platform_first_name(&fleet, ada_record).await.as_deref(), Some("Adeline"));
        let view = fleet.store.record_view(fleet.tenant, RecordKind::Lead, bob_record).await.expect("view").expect("lead");
        assert!(view.links.iter().all(|l| l.crm_deleted_at.is_none()), "a listed lead is not gone: {:?}", view.links);
        fleet.finish().await;
    }
}
