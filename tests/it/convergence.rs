//! Two-way convergence: 1,000 random edits interleaved on both sides end with
//! identical values on both sides, and crmsync writes to HubSpot only because
//! of platform edits — never because of its own echo.

use crate::fleet::{Fleet, on_both_backends};
use crate::support::{Lcg, PORTAL};
use crmsync::domain::{CanonicalField, RecordFields, RecordId, RecordKind};
use crmsync::jobs::{DeltaProgress, DeltaSyncJob, PushChangesJob};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FIELDS: [(CanonicalField, &str); 4] = [
    (CanonicalField::FirstName, "firstname"),
    (CanonicalField::LastName, "lastname"),
    (CanonicalField::Company, "company"),
    (CanonicalField::JobTitle, "jobtitle"),
];

async fn crm_writes(fleet: &Fleet) -> u64 {
    let counters = fleet.sandbox.counters().await;
    counters["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    k.contains("batch/update")
                        || k.contains("batch/upsert")
                        || k.starts_with("PATCH /crm")
                })
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

on_both_backends! {
    async fn a_thousand_interleaved_edits_on_both_sides_converge_without_echo_writes(backend) {
    let mut fleet = Fleet::start(backend, 40).await;
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.start_ingress(true).await;

    // record id ↔ CRM id
    let mut pairs: Vec<(RecordId, String)> = Vec::new();
    for (id, _) in fleet.store.records(fleet.tenant, RecordKind::Lead).await.expect("records") {
        let view = fleet.store.record_view(fleet.tenant, RecordKind::Lead, id).await.expect("view").expect("lead");
        pairs.push((id, view.links[0].crm_id.clone()));
    }
    let writes_before = crm_writes(&fleet).await;
    let mut rng = Lcg(7);
    let mut platform_edits = 0u64;
    for i in 0..1_000 {
        let (record, crm_id) = pairs[rng.next(pairs.len())].clone();
        let (field, property) = FIELDS[rng.next(FIELDS.len())];
        let value = format!("v{i}");
        if rng.next(2) == 0 {
            let view = fleet.store.record_view(fleet.tenant, RecordKind::Lead, record).await.expect("view").expect("lead");
            let fields: RecordFields = view.fields.with(field, &value);
            let queued = fleet.store.update_platform_record(fleet.tenant, RecordKind::Lead, record, &fields).await.expect("update");
            assert!(queued.is_some());
            platform_edits += 1;
            if i % 10 == 0 {
                let job = PushChangesJob { tenant: fleet.tenant, connection: fleet.connection, trigger: format!("edit-{i}"), attempt: 0, redrives: 0 };
                fleet.deps.queue.push_push_changes_after(&job, Duration::ZERO).await.expect("enqueue push");
            }
        } else {
            let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}");
            let reply = fleet.sandbox.control(reqwest::Method::PATCH, &path, Some(json!({"properties": {property: value}}))).await;
            assert!(reply.status.is_success(), "{:?}", reply.body);
        }
    }

    // Quiesce: push what is pending and read what changed until both sides agree.
    let started = Instant::now();
    loop {
        let push = PushChangesJob { tenant: fleet.tenant, connection: fleet.connection, trigger: uuid::Uuid::now_v7().to_string(), attempt: 0, redrives: 0 };
        match crmsync::jobs::push_changes::run(&push, &fleet.deps).await {
            // A worker's push of this connection is running: it pushes them.
            Ok(_) | Err(crmsync::jobs::JobError::Deferred { .. }) => {}
            Err(e) => panic!("push: {e}"),
        }
        let delta = DeltaSyncJob { tenant: fleet.tenant, connection: fleet.connection, object: None, trigger: uuid::Uuid::now_v7().to_string(), attempt: 0, resume: None, redrives: 0 };
        crmsync::jobs::delta_sync::run(&delta, &fleet.deps, &mut DeltaProgress::default()).await.expect("delta");
        let crm = fleet.sandbox_contacts().await;
        let mut differences = Vec::new();
        for (record, crm_id) in &pairs {
            let view = fleet.store.record_view(fleet.tenant, RecordKind::Lead, *record).await.expect("view").expect("lead");
            let props = &crm[crm_id];
            for (field, property) in FIELDS {
                let platform = view.fields.get(field).unwrap_or("");
                let hubspot = props[property].as_str().unwrap_or("").trim();
                if platform != hubspot {
                    differences.push(format!("{crm_id}.{property}: platform {platform:?} vs HubSpot {hubspot:?}"));
                }
            }
        }
        if differences.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still diverging: {:?}", &differences[..differences.len().min(5)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every write crmsync made answered a platform edit; an echo write would
    // push more records than the platform ever changed.
    let writes = crm_writes(&fleet).await - writes_before;
    assert!(writes <= platform_edits, "{writes} write requests for {platform_edits} platform edits");
    let by_record: BTreeMap<_, _> = pairs.iter().cloned().collect();
    assert_eq!(fleet.leads().await.len(), by_record.len(), "no record was duplicated");
    assert_eq!(fleet.sandbox_contacts().await.len(), by_record.len(), "no CRM record was duplicated");
    fleet.finish().await;
}
}
