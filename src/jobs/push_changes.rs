//! `PushChanges`: drains a connection's outbox to the CRM in batches of up to
//! 100 (`SYNC_ALGORITHMS.md` §4).
//!
//! - Records born on the platform are written by upsert on
//!   `crmsync_record_id`, so repeating a batch after a crash finds the record
//!   instead of creating a second one.
//! - Records already linked are read first (one batch read per 100; the
//!   few that both sides changed are read again with property history, for
//!   per-field times and our own late writes) and merged three-way against
//!   the link's base, exactly like a pull: a CRM
//!   edit made since the last sync is taken, a conflict follows the
//!   connection's strategy (`manual` holds it and writes neither side), and
//!   only the properties that change are patched — a push never overwrites
//!   a CRM edit it has not merged.
//! - Platform deletes archive the CRM record (batch archive) and tombstone
//!   the link.
//!
//! Each link then stores the new base and the fingerprint of what the CRM now
//! holds, which is how the webhook or delta that brings our own write back is
//! recognised and skipped.

use super::{Deps, JobError, Session};
use crate::domain::{
    CanonicalField, ConnectionId, CrmId, CrmObject, RecordFields, RecordId, RecordKind, RunKind,
    RunStatus, TenantId,
};
use crate::providers::{Update, Upserted};
use crate::store::{PageWrite, PushTarget, PushedRecord, RefusedPush, RefusedRecord};
use crate::sync::ConflictStrategy;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    /// Times `RetryFailed` re-drove this job's chain of failures (carried by
    /// retries and follow-ups; at most `sync.retry_failed_max_redrives`).
    #[serde(default)]
    pub redrives: u32,
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

/// How long a push job waits before trying again while another push of the
/// same connection runs (that one drains the outbox meanwhile).
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Pushes until the outbox is empty (or half the job timeout has passed;
/// the rest stays pending for the next push). Returns records written.
///
/// One push per connection at a time, fleet-wide (a lease): two at once
/// would read and write the same records, and one's read taken before the
/// other's write but applied after its booking would look like a CRM edit
/// undoing it. A job that finds the lease held is deferred (no attempt
/// used): the running push takes its rows.
pub async fn run(job: &PushChangesJob, deps: &Deps) -> Result<usize, JobError> {
    let timeout = std::time::Duration::from_secs(deps.settings.worker.job_timeout_secs);
    let Some(lease) = deps
        .queue
        .try_lease(&format!("push:{}", job.connection), timeout + BUSY_RETRY)
        .await?
    else {
        return Err(JobError::Deferred {
            message: format!("connection {} is being pushed already", job.connection),
            retry_after: BUSY_RETRY,
        });
    };
    // Before the first read of the outbox (`queue::push_request`): a row
    // committed from here on requests a job of its own.
    if let Err(e) = deps.queue.push_job_started(job.connection).await {
        deps.queue.release(lease).await;
        return Err(e.into());
    }
    let deadline = std::time::Instant::now() + timeout / 2;
    let pushed = push_all(job, deps, deadline).await;
    deps.queue.release(lease).await;
    // Cut off at the deadline with rows perhaps left: a successor takes them.
    if pushed.is_ok() && std::time::Instant::now() >= deadline {
        deps.queue
            .request_push(job.tenant, job.connection, "rest")
            .await?;
    }
    pushed
}

async fn push_all(
    job: &PushChangesJob,
    deps: &Deps,
    deadline: std::time::Instant,
) -> Result<usize, JobError> {
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let objects = connection.settings.objects.clone();
    let strategy = connection.settings.strategy;
    let provider = connection.provider;
    let mut push = Push {
        job,
        deps,
        session: Session::open(deps, connection).await?,
        strategy,
        provider,
        ensured: BTreeSet::new(),
    };
    let mut written = 0;
    for mapping_ in objects {
        let (object, kind) = (mapping_.crm_object, mapping_.record_kind);
        written += push.deletes(object, deadline).await?;
        if deps
            .store
            .pending_pushes(job.tenant, job.connection, object, 1)
            .await?
            .is_empty()
        {
            continue;
        }
        let run = deps
            .store
            .start_run(job.tenant, job.connection, object, RunKind::PushChanges)
            .await?;
        let outcome = push.upserts(object, kind, run.id, deadline).await;
        let (status, error) = match &outcome {
            Ok(_) => (RunStatus::Succeeded, None),
            Err(e) => (RunStatus::Failed, Some(e.to_string())),
        };
        deps.store
            .finish_run(job.tenant, run.id, status, error.as_deref())
            .await?;
        written += outcome?;
    }
    Ok(written)
}

/// One push job's state: the CRM session and which objects have crmsync's
/// properties ensured.
struct Push<'a> {
    job: &'a PushChangesJob,
    deps: &'a Deps,
    session: Session,
    strategy: ConflictStrategy,
    provider: crate::domain::ProviderKind,
    ensured: BTreeSet<CrmObject>,
}

/// The outbox rows, latest values and link of one record in a batch.
struct Pending {
    outbox_ids: Vec<uuid::Uuid>,
    fields: RecordFields,
    crm_id: Option<CrmId>,
    base: Option<RecordFields>,
    version: i64,
}

impl Push<'_> {
    /// Outbox rows per batch: what one of the CRM's batch writes takes.
    fn batch_size(&self) -> i64 {
        i64::try_from(self.session.provider().capabilities().batch_size).unwrap_or(100)
    }

    /// Archives the CRM records of platform deletes.
    async fn deletes(
        &mut self,
        object: CrmObject,
        deadline: std::time::Instant,
    ) -> Result<usize, JobError> {
        let (job, deps) = (self.job, self.deps);
        let batch = self.batch_size();
        let mut archived = 0;
        loop {
            let pending = deps
                .store
                .pending_deletes(job.tenant, job.connection, object, batch)
                .await?;
            if pending.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(archived);
            }
            let ids: Vec<CrmId> = pending.iter().filter_map(|d| d.crm_id.clone()).collect();
            if !ids.is_empty() {
                self.session.archive(deps, object, &ids).await?;
            }
            deps.store
                .complete_deletes(job.tenant, job.connection, object, &pending)
                .await?;
            archived += pending.len();
        }
    }

    /// Writes pending record changes, batch by batch.
    async fn upserts(
        &mut self,
        object: CrmObject,
        kind: RecordKind,
        run: crate::domain::RunId,
        deadline: std::time::Instant,
    ) -> Result<usize, JobError> {
        let (job, deps) = (self.job, self.deps);
        let batch = self.batch_size();
        let mut written = 0;
        loop {
            let pending = deps
                .store
                .pending_pushes(job.tenant, job.connection, object, batch)
                .await?;
            if pending.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(written);
            }
            if self.ensured.insert(object) {
                self.session.ensure_fields(deps, object).await?;
            }
            // Linked records are read first. Wait for that read's budget
            // slot, then take what is pending *now*: changes made while the
            // budget paced us ride in this cycle instead of waiting a whole
            // cycle (at 200 changes/s that is ~90 ms of every change's wait).
            let (pending, reserved) = if pending.iter().any(|p| p.crm_id.is_some()) {
                let reserved = self.session.reserve_read().await?;
                let fresh = deps
                    .store
                    .pending_pushes(job.tenant, job.connection, object, batch)
                    .await?;
                (fresh, Some(reserved))
            } else {
                (pending, None)
            };
            // One entry per record (its latest values), with every outbox row
            // it completes.
            let mut by_record: BTreeMap<RecordId, Pending> = BTreeMap::new();
            for p in pending {
                by_record
                    .entry(p.record)
                    .or_insert_with(|| Pending {
                        outbox_ids: Vec::new(),
                        fields: p.fields.clone(),
                        crm_id: p.crm_id.clone(),
                        base: p.base.clone(),
                        version: p.version,
                    })
                    .outbox_ids
                    .push(p.outbox_id);
            }
            let (targets, unreadable) = self
                .merge_linked(object, kind, run, &by_record, reserved)
                .await?;
            let (pushed, mut refused) = self.write(object, &by_record, &targets).await?;
            // A record whose CRM copy the platform refused (parked by the
            // read) cannot be merged: its push waits too. The read that
            // brings the fixed copy queues the push again.
            for parked in unreadable {
                if let Some((record, p)) = by_record
                    .iter()
                    .find(|(_, p)| p.crm_id.as_ref() == Some(&parked.crm_id))
                {
                    refused.push(RefusedPush {
                        record: *record,
                        outbox_ids: p.outbox_ids.clone(),
                        reason: format!("its CRM record is parked: {}", parked.reason),
                    });
                }
            }
            if !refused.is_empty() {
                metrics::counter!("crmsync_parked_records_total", "provider" => self.provider.as_str(), "direction" => "push")
                    .increment(refused.len() as u64);
                tracing::warn!(
                    connection.id = %job.connection,
                    %object,
                    parked = refused.len(),
                    "platform records parked: the CRM refused them"
                );
                deps.store
                    .park_pushes((job.tenant, job.connection), object, &refused)
                    .await?;
            }
            // Rows with nothing to write: the CRM agrees already, the record
            // is gone there, or its difference is held in a conflict.
            let done: BTreeSet<RecordId> = pushed
                .iter()
                .map(|p| p.record)
                .chain(refused.iter().map(|r| r.record))
                .collect();
            let settled: Vec<uuid::Uuid> = by_record
                .iter()
                .filter(|(record, _)| !done.contains(record))
                .flat_map(|(_, p)| p.outbox_ids.iter().copied())
                .collect();
            deps.store.complete_outbox(job.tenant, &settled).await?;
            let settled_records: Vec<RecordId> = by_record
                .keys()
                .filter(|record| !done.contains(record))
                .copied()
                .collect();
            deps.store
                .settle_parked_pushes((job.tenant, job.connection), &settled_records)
                .await?;
            written += pushed.len();
            deps.store
                .complete_pushes(job.tenant, job.connection, object, &pushed)
                .await?;
            metrics::counter!("crmsync_pushed_records_total", "provider" => self.provider.as_str())
                .increment(pushed.len() as u64);
        }
    }

    /// Reads the linked records' CRM state and merges it with the platform's
    /// (taking CRM edits, holding `manual` conflicts): what each needs written.
    async fn merge_linked(
        &mut self,
        object: CrmObject,
        kind: RecordKind,
        run: crate::domain::RunId,
        by_record: &BTreeMap<RecordId, Pending>,
        reserved: Option<crate::providers::ReservedRead>,
    ) -> Result<(Vec<PushTarget>, Vec<RefusedRecord>), JobError> {
        let (job, deps) = (self.job, self.deps);
        let linked: Vec<CrmId> = by_record
            .values()
            .filter_map(|p| p.crm_id.clone())
            .collect();
        if linked.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut current = self
            .session
            .read(deps, object, &linked, false, reserved)
            .await?;
        // Where both sides changed a field differently, the merge needs
        // property history (`change_times`): those few are read again (50
        // per call), the rest cost one call per 100.
        let pending: BTreeMap<&CrmId, &Pending> = by_record
            .values()
            .filter_map(|p| p.crm_id.as_ref().map(|id| (id, p)))
            .collect();
        let empty = RecordFields::new();
        let contested: Vec<CrmId> = current
            .iter()
            .filter(|r| {
                pending.get(&r.crm_id).is_some_and(|p| {
                    crate::sync::needs_change_times(
                        p.base.as_ref().unwrap_or(&empty),
                        &p.fields,
                        &r.fields,
                    )
                })
            })
            .map(|r| r.crm_id.clone())
            .collect();
        current = super::change_times::reread_with_history(
            &mut self.session,
            deps,
            object,
            current,
            &contested,
        )
        .await?;
        let found: BTreeSet<&CrmId> = current.iter().map(|r| &r.crm_id).collect();
        let gone: Vec<CrmId> = linked
            .iter()
            .filter(|id| !found.contains(id))
            .cloned()
            .collect();
        deps.store
            .tombstone_links(job.tenant, job.connection, object, &gone)
            .await?;
        let write = PageWrite {
            tenant: job.tenant,
            connection: job.connection,
            provider: self.provider,
            object,
            kind,
            strategy: self.strategy,
            items: current,
            run,
            full_sync_page: None,
            queue_pushes: false,
            refused: Vec::new(),
            cursor: None,
        };
        let outcome = super::change_times::apply_checked(&mut self.session, deps, write).await?;
        crate::telemetry::record_page("push_changes", outcome.as_ref().map(|o| o.counts));
        Ok(outcome.map(|o| (o.targets, o.parked)).unwrap_or_default())
    }

    /// Patches linked records to their targets and upserts unlinked ones;
    /// returns what each write left in the CRM, and the records the CRM
    /// refused (`jobs::isolate`: the rest of their batch is written).
    async fn write(
        &mut self,
        object: CrmObject,
        by_record: &BTreeMap<RecordId, Pending>,
        targets: &[PushTarget],
    ) -> Result<(Vec<PushedRecord>, Vec<RefusedPush>), JobError> {
        let deps = self.deps;
        let provider = self.session.provider().clone();
        let mut pushed = Vec::new();
        let mut refused = Vec::new();
        let mut updated_at = BTreeMap::new();
        let mut refused_updates = BTreeSet::new();
        let updates: Vec<Update> = targets
            .iter()
            .map(|t| Update {
                crm_id: t.crm_id.clone(),
                person: t.person_crm_id.clone(),
                properties: provider.values_to_patch(object, &t.current, &t.target),
            })
            .filter(|u| !u.properties.is_empty())
            .collect();
        if !updates.is_empty() {
            // Our write's echo may outrun the booking below: mark the links
            // as being written first (booking sets the real time).
            let ids: Vec<CrmId> = updates.iter().map(|u| u.crm_id.clone()).collect();
            deps.store
                .mark_pushing(
                    self.job.tenant,
                    self.job.connection,
                    object,
                    &ids,
                    chrono::Utc::now() + chrono::Duration::seconds(60),
                )
                .await?;
            let isolated = super::isolate::isolating(
                &mut self.session,
                deps,
                updates,
                |provider, account, token, batch| async move {
                    provider.update(&account, &token, object, &batch).await
                },
            )
            .await?;
            updated_at = isolated.written.into_iter().collect();
            for (update, reason) in isolated.refused {
                if let Some(t) = targets.iter().find(|t| t.crm_id == update.crm_id)
                    && let Some(pending) = by_record.get(&t.record)
                {
                    refused_updates.insert(t.record);
                    refused.push(RefusedPush {
                        record: t.record,
                        outbox_ids: pending.outbox_ids.clone(),
                        reason: format!("the CRM refused the update: {reason}"),
                    });
                }
            }
        }
        for t in targets {
            let Some(pending) = by_record.get(&t.record) else {
                continue;
            };
            if refused_updates.contains(&t.record) {
                continue;
            }
            pushed.push(PushedRecord {
                outbox_ids: pending.outbox_ids.clone(),
                record: t.record,
                crm_id: t.crm_id.clone(),
                pushed: provider.round_trip(object, &t.target),
                base: base_after_push(&provider.round_trip(object, &t.target), t),
                written: written_fields(t),
                crm_modified_at: updated_at.get(&t.crm_id).copied(),
                version: t.version,
                person_crm_id: None,
            });
        }
        let upserts: Vec<(String, serde_json::Map<String, serde_json::Value>)> = by_record
            .iter()
            .filter(|(_, p)| p.crm_id.is_none())
            .map(|(record, p)| {
                (
                    record.to_string(),
                    provider.values_to_create(object, &p.fields),
                )
            })
            .collect();
        if upserts.is_empty() {
            return Ok((pushed, refused));
        }
        let upserting = upserts.len();
        let isolated = super::isolate::isolating(
            &mut self.session,
            deps,
            upserts,
            |provider, account, token, batch| async move {
                provider.upsert(&account, &token, object, &batch).await
            },
        )
        .await?;
        for ((ours, _), reason) in &isolated.refused {
            let Some((record, p)) = by_record.iter().find(|(r, _)| r.to_string() == *ours) else {
                continue;
            };
            refused.push(RefusedPush {
                record: *record,
                outbox_ids: p.outbox_ids.clone(),
                reason: format!("the CRM refused the record: {reason}"),
            });
        }
        let crm_ids: BTreeMap<String, Upserted> = isolated
            .written
            .into_iter()
            .map(|u| (u.ours.clone(), u))
            .collect();
        let before = pushed.len();
        for (record, p) in by_record.iter().filter(|(_, p)| p.crm_id.is_none()) {
            let Some(upserted) = crm_ids.get(&record.to_string()) else {
                continue;
            };
            let written = provider.round_trip(object, &p.fields);
            pushed.push(PushedRecord {
                outbox_ids: p.outbox_ids.clone(),
                record: *record,
                crm_id: upserted.crm_id.clone(),
                base: written.clone(),
                pushed: written,
                written: CanonicalField::ALL.to_vec(),
                crm_modified_at: upserted.updated_at,
                version: p.version,
                person_crm_id: upserted.person.clone(),
            });
        }
        if pushed.len() == before && isolated.refused.len() < upserting {
            return Err(JobError::Transient {
                message: "the CRM returned no ids for the upserted records".into(),
                retry_after: None,
            });
        }
        Ok((pushed, refused))
    }
}

/// The link's base after a push: the fields written take what was written
/// (`written`: the target as the CRM reads it back); the others keep the
/// merge's base — what the CRM held, or, for a field held in a `manual`
/// conflict, the base it had (so the conflict is still seen as one until an
/// operator resolves it).
fn base_after_push(written: &RecordFields, t: &PushTarget) -> RecordFields {
    let mut base = t.base.clone();
    for field in written_fields(t) {
        base.set(field, written.get(field).unwrap_or(""));
    }
    base
}

/// The fields a push to `t` writes: those whose target differs from what
/// the CRM holds.
fn written_fields(t: &PushTarget) -> Vec<CanonicalField> {
    CanonicalField::ALL
        .into_iter()
        .filter(|field| t.target.get(*field) != t.current.get(*field))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(company: &str, title: &str) -> RecordFields {
        RecordFields::new()
            .with(CanonicalField::Email, "a@x.io")
            .with(CanonicalField::Company, company)
            .with(CanonicalField::JobTitle, title)
    }

    fn target(current: RecordFields, target: RecordFields, base: RecordFields) -> PushTarget {
        PushTarget {
            record: RecordId::new(),
            crm_id: CrmId("1".into()),
            current,
            target,
            base,
            version: 1,
            person_crm_id: None,
        }
    }

    #[test]
    fn a_pushed_field_becomes_the_base_and_a_held_conflict_keeps_its_own() {
        // The merge's base is what the CRM held; the push writes the
        // platform's company: from now on that is what both sides share, so
        // a later platform edit of it is a platform change, not a conflict.
        let t = target(
            fields("Old", "CTO"),
            fields("New", "CTO"),
            fields("Old", "CTO"),
        );
        let pushed = base_after_push(&t.target, &t);
        assert_eq!(pushed, fields("New", "CTO"));
        // A field held in a `manual` conflict is not written and keeps the
        // base it had.
        let t = target(
            fields("Crm", "CTO"),
            fields("Crm", "CTO"),
            fields("Base", "CTO"),
        );
        let held = base_after_push(&t.target, &t);
        assert_eq!(held.get(CanonicalField::Company), Some("Base"));
    }

    #[test]
    fn booking_keeps_the_base_a_pull_moved_while_the_push_was_in_flight() {
        // The push writes the company; meanwhile a pull took the CRM's new
        // job title and moved the link's base to it.
        let t = target(
            fields("Old", "CTO"),
            fields("New", "CTO"),
            fields("Old", "CTO"),
        );
        let booked = PushedRecord {
            outbox_ids: Vec::new(),
            record: t.record,
            crm_id: t.crm_id.clone(),
            pushed: t.target.clone(),
            base: base_after_push(&t.target, &t),
            written: written_fields(&t),
            crm_modified_at: None,
            version: 1,
            person_crm_id: None,
        };
        assert_eq!(booked.written, vec![CanonicalField::Company]);
        let moved_by_a_pull = fields("Old", "CEO");
        assert_eq!(
            booked.base_over(Some(&moved_by_a_pull)),
            fields("New", "CEO"),
            "the written company, the pull's job title"
        );
        assert_eq!(booked.base_over(None), fields("New", "CTO"), "a new link");
    }
}
