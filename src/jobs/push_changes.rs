//! `PushChanges`: drains a connection's outbox to the CRM in batches of up to
//! 100 (`SYNC_ALGORITHMS.md` §4). Records born on the platform are written by
//! upsert on `crmsync_record_id`, so repeating a batch after a crash finds the
//! record instead of creating a second one; records already linked are
//! patched by CRM id. Each link then stores the pushed values as its base and
//! their fingerprint, which is how the webhook or delta that brings our own
//! write back is recognised and skipped.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmId, TenantId};
use crate::providers::hubspot::mapping;
use crate::store::PushedRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// HubSpot's batch endpoints take at most 100 records.
const BATCH: i64 = 100;

/// Push a connection's pending platform changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushChangesJob {
    /// Owner.
    pub tenant: TenantId,
    /// Connection.
    pub connection: ConnectionId,
    /// What asked for it (a write's id, a sweep): the idempotency key.
    pub trigger: String,
    /// Retry number.
    #[serde(default)]
    pub attempt: u32,
}

impl PushChangesJob {
    /// The key that makes enqueueing the same trigger twice a no-op.
    pub fn idempotency_key(&self) -> String {
        format!(
            "push_changes:{}:{}:{}",
            self.connection, self.trigger, self.attempt
        )
    }
}

/// Pushes until the outbox is empty (or half the job timeout has passed;
/// the rest stays pending for the next push). Returns records pushed.
pub async fn run(job: &PushChangesJob, deps: &Deps) -> Result<usize, JobError> {
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(deps.settings.worker.job_timeout_secs) / 2;
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let objects = connection.settings.objects.clone();
    let mut session = Session::open(deps, connection).await?;
    let account = session.account().to_string();
    let mut pushed_total = 0;
    for mapping_ in objects {
        let object = mapping_.crm_object;
        let mut ensured = false;
        loop {
            let pending = deps
                .store
                .pending_pushes(job.tenant, job.connection, object, BATCH)
                .await?;
            if pending.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            if !ensured {
                crate::with_auth!(session, deps, |token| deps
                    .hubspot
                    .ensure_properties(&account, token, object))?;
                ensured = true;
            }
            // One entry per record (its latest values), with every outbox row
            // it completes.
            let mut by_record: BTreeMap<_, (Vec<uuid::Uuid>, _, Option<CrmId>, i64)> =
                BTreeMap::new();
            for p in pending {
                let entry = by_record
                    .entry(p.record)
                    .or_insert_with(|| (Vec::new(), p.fields.clone(), p.crm_id.clone(), p.version));
                entry.0.push(p.outbox_id);
            }
            let mut upserts = Vec::new();
            let mut updates = Vec::new();
            for (record, (_, fields, crm_id, _)) in &by_record {
                let mut properties = mapping::to_properties(fields);
                match crm_id {
                    Some(id) => updates.push((id.clone(), properties)),
                    None => {
                        properties
                            .insert(mapping::SOURCE_SYSTEM_PROPERTY.into(), "platform".into());
                        upserts.push((record.to_string(), properties));
                    }
                }
            }
            let mut crm_ids: BTreeMap<String, CrmId> = BTreeMap::new();
            if !upserts.is_empty() {
                let written = crate::with_auth!(session, deps, |token| deps
                    .hubspot
                    .batch_upsert(&account, token, object, &upserts))?;
                crm_ids.extend(written);
            }
            if !updates.is_empty() {
                crate::with_auth!(session, deps, |token| deps
                    .hubspot
                    .batch_update(&account, token, object, &updates))?;
            }
            let pushed: Vec<PushedRecord> = by_record
                .into_iter()
                .filter_map(|(record, (outbox_ids, fields, crm_id, version))| {
                    let crm_id = crm_id.or_else(|| crm_ids.get(&record.to_string()).cloned())?;
                    Some(PushedRecord {
                        outbox_ids,
                        record,
                        crm_id,
                        pushed: mapping::round_trip(&fields),
                        version,
                    })
                })
                .collect();
            if pushed.is_empty() {
                return Err(JobError::Transient {
                    message: "the CRM returned no ids for the pushed records".into(),
                    retry_after: None,
                });
            }
            pushed_total += pushed.len();
            deps.store
                .complete_pushes(job.tenant, job.connection, object, &pushed)
                .await?;
            metrics::counter!("crmsync_pushed_records_total", "provider" => "hubspot")
                .increment(pushed.len() as u64);
        }
    }
    Ok(pushed_total)
}
