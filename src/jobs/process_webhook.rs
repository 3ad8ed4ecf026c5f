//! `ProcessWebhook`: what a batch of webhook events says per record —
//! changed, deleted, erased, merged — applied to the platform. Changed records
//! are fetched in batches of up to 100 (their current state, never an event's
//! value, so reordering and duplicates cannot regress a field) and applied
//! through the same idempotent page write as a sync.
//!
//! The job carries CRM ids only: no customer data sits in the queue.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmId, CrmObject, RunKind, RunStatus, TenantId};
use crate::store::PageWrite;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The coalesced meaning of one webhook delivery for one connection and object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessWebhookJob {
    /// Owner.
    pub tenant: TenantId,
    /// Connection the events were routed to.
    pub connection: ConnectionId,
    /// CRM object the events are about.
    pub object: CrmObject,
    /// Records to fetch and apply.
    pub changed: Vec<CrmId>,
    /// Records deleted in the CRM: their links become tombstones.
    pub deleted: Vec<CrmId>,
    /// Records erased for privacy: the platform record's personal fields go.
    pub erased: Vec<CrmId>,
    /// (merged-away id, surviving id).
    pub merged: Vec<(CrmId, CrmId)>,
    /// Records only our own app changed, with the latest such change's time
    /// (epoch ms): fetched only when that write is not booked on the link.
    #[serde(default)]
    pub echoed: Vec<(CrmId, i64)>,
    /// Identifies the delivery (the idempotency key).
    pub delivery: String,
    /// Retry number.
    #[serde(default)]
    pub attempt: u32,
    /// Times `RetryFailed` re-drove this job's chain of failures (carried by
    /// retries and follow-ups; at most `sync.retry_failed_max_redrives`).
    #[serde(default)]
    pub redrives: u32,
    /// The W3C trace context of the ingress request that queued it, so the
    /// job's span continues that trace (when spans are exported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl ProcessWebhookJob {
    /// A job that only reads records waiting in the set (`queue::pending`).
    pub fn waiting_records(tenant: TenantId, connection: ConnectionId, object: CrmObject) -> Self {
        Self {
            tenant,
            connection,
            object,
            changed: Vec::new(),
            deleted: Vec::new(),
            erased: Vec::new(),
            merged: Vec::new(),
            echoed: Vec::new(),
            delivery: String::new(),
            attempt: 0,
            redrives: 0,
            traceparent: None,
        }
    }

    /// The key that makes enqueueing the same delivery twice a no-op.
    pub fn idempotency_key(&self) -> String {
        format!(
            "process_webhook:{}:{}:{}",
            self.connection, self.delivery, self.attempt
        )
    }
}

/// Applies the job; records its counts in a `process_webhook` run.
pub async fn run(job: &ProcessWebhookJob, deps: &Deps) -> Result<(), JobError> {
    // From now on a delivery enqueues a job of its own; what arrived before
    // is waiting in the set when this job claims (see `queue::pending`).
    deps.queue
        .webhook_job_started(job.connection, job.object)
        .await?;
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let direct = connection.settings.kind_of(job.object);
    let capabilities = deps.providers.get(connection.provider).capabilities();
    // A lead whose person lives on another object (HubSpot's on its
    // contact): where leads are synced, a person's change is a change of
    // its leads.
    let leads_object = capabilities.leads_with_person_on(job.object);
    let via_contacts =
        leads_object.and_then(|leads| Some((leads, connection.settings.kind_of(leads)?)));
    if direct.is_none() && via_contacts.is_none() {
        // Events for an object this connection does not sync: nothing to do.
        return Ok(());
    }
    let strategy = connection.settings.strategy;
    // Per-field change times decide `newest_wins`: every record is read
    // with history. Other strategies need history only where both sides
    // changed (to tell our own late writes from CRM edits): those few are
    // read again (`change_times`).
    let with_history = strategy == crate::sync::ConflictStrategy::NewestWins;
    let provider = connection.provider;
    let mut session = Session::open(deps, connection).await?;
    let store = &deps.store;
    let direct_events: &[(CrmId, CrmId)] = if direct.is_some() { &job.merged } else { &[] };
    for (from, to) in direct_events {
        store
            .remap_link(job.tenant, job.connection, job.object, from, to)
            .await?;
    }
    if let Some((leads, _)) = via_contacts {
        // A person erased for privacy was the person of its leads.
        store
            .erase_records_of_persons(job.tenant, job.connection, leads, &job.erased)
            .await?;
    }
    if direct.is_some() {
        store
            .erase_linked_records(job.tenant, job.connection, job.object, &job.erased)
            .await?;
        store
            .tombstone_links(job.tenant, job.connection, job.object, &job.deleted)
            .await?;
    }
    // Our own writes come back: only those whose push is not booked yet
    // (the echo outran the booking, or another tenant wrote) need a read.
    // (A lead's contact is written by our push of the lead only: its echo
    // is skipped by the change source alone.)
    let unbooked = if direct.is_some() {
        store
            .unbooked_writes(job.tenant, job.connection, job.object, &job.echoed)
            .await?
    } else {
        Vec::new()
    };
    crate::telemetry::record_echoes(provider, job.echoed.len() - unbooked.len());
    // Our own changed records still waiting, and others' waiting with them:
    // one read serves many deliveries (see `queue::pending`). Nothing of ours
    // waits any more: another job read it after our events — done, no call.
    // A claim is what one call reads: a job reads its claim in one call at
    // its budget slot and releases it well before the next slot, so jobs
    // waiting for later slots do not claim (and read) the same records.
    let cap = if with_history {
        capabilities.history_batch_size
    } else {
        capabilities.batch_size
    };
    let waiting = deps
        .queue
        .claim_pending(job.connection, job.object, &job.changed, cap)
        .await?;
    if waiting.ids.is_empty() && unbooked.is_empty() {
        return Ok(());
    }
    // Wait for the budget first, then claim what is waiting *now*: changes
    // that arrived meanwhile ride along instead of costing a call each.
    let mut reserved = Some(session.reserve_read().await?);
    let mut claim = deps
        .queue
        .claim_pending(job.connection, job.object, &job.changed, cap)
        .await?;
    for id in unbooked {
        if !claim.ids.contains(&id) {
            claim.ids.push(id);
        }
    }
    if claim.ids.is_empty() {
        return Ok(());
    }
    let run = store
        .start_run(
            job.tenant,
            job.connection,
            job.object,
            RunKind::ProcessWebhook,
        )
        .await?;
    let mut pushes = 0;
    let outcome = async {
        if let Some((leads, kind)) = via_contacts {
            let changed: Vec<CrmId> = claim
                .ids
                .iter()
                .filter(|id| job.changed.contains(id) || !job.echoed.iter().any(|(e, _)| e == *id))
                .cloned()
                .collect();
            // The read's slot pays for the first call, unless the contacts
            // themselves are read below.
            let reserved = if direct.is_none() {
                reserved.take()
            } else {
                None
            };
            pushes += leads_of_changed_contacts(
                job,
                deps,
                &mut session,
                LeadsWrite {
                    object: leads,
                    kind,
                    run: run.id,
                    with_history,
                    strategy,
                },
                &changed,
                reserved,
            )
            .await?;
        }
        let Some(kind) = direct else {
            return Ok(());
        };
        for ids in claim.ids.chunks(capabilities.batch_size) {
            let records = session
                .read(deps, job.object, ids, with_history, reserved.take())
                .await?;
            let records = if with_history {
                records
            } else {
                super::change_times::with_change_times(
                    &mut session,
                    deps,
                    (job.tenant, job.connection),
                    job.object,
                    records,
                )
                .await?
            };
            // Ids the CRM no longer returns were deleted since the event.
            let found: BTreeSet<&CrmId> = records.iter().map(|r| &r.crm_id).collect();
            let gone: Vec<CrmId> = ids
                .iter()
                .filter(|id| !found.contains(id))
                .cloned()
                .collect();
            store
                .tombstone_links(job.tenant, job.connection, job.object, &gone)
                .await?;
            let write = PageWrite {
                tenant: job.tenant,
                connection: job.connection,
                provider,
                object: job.object,
                kind,
                strategy,
                items: records,
                run: run.id,
                full_sync_page: None,
                queue_pushes: true,
                refused: Vec::new(),
                cursor: None,
            };
            let applied = super::change_times::apply_checked(&mut session, deps, write).await?;
            pushes += applied.as_ref().map_or(0, |o| o.pushes);
            crate::telemetry::record_page("process_webhook", applied.map(|o| o.counts));
        }
        Ok::<(), JobError>(())
    }
    .await;
    // Pulls that kept platform values queued them: push them now.
    if outcome.is_ok() && pushes > 0 {
        deps.queue
            .request_push(job.tenant, job.connection, "webhook")
            .await?;
    }
    match &outcome {
        Ok(()) => {
            let still_waiting = deps
                .queue
                .release_pending(job.connection, job.object, &claim)
                .await?;
            store
                .finish_run(job.tenant, run.id, RunStatus::Succeeded, None)
                .await?;
            // More than a batch was waiting: a successor reads the rest,
            // unless a delivery since this job started enqueued one.
            if still_waiting > 0
                && deps
                    .queue
                    .mark_webhook_job_waiting(job.connection, job.object)
                    .await?
            {
                let next = ProcessWebhookJob {
                    delivery: format!("more-{}", run.id),
                    ..ProcessWebhookJob::waiting_records(job.tenant, job.connection, job.object)
                };
                deps.queue
                    .push_process_webhook_after(&next, std::time::Duration::ZERO)
                    .await?;
            }
        }
        Err(e) => {
            store
                .finish_run(job.tenant, run.id, RunStatus::Failed, Some(&e.to_string()))
                .await?
        }
    }
    outcome
}

/// How the leads a contact change touches are written.
struct LeadsWrite {
    /// The leads object.
    object: CrmObject,
    kind: crate::domain::RecordKind,
    run: crate::domain::RunId,
    with_history: bool,
    strategy: crate::sync::ConflictStrategy,
}

/// Reads the leads of changed contacts (each with its primary contact) and
/// applies them like any lead change. Returns pushes queued.
async fn leads_of_changed_contacts(
    job: &ProcessWebhookJob,
    deps: &Deps,
    session: &mut Session,
    write: LeadsWrite,
    contacts: &[CrmId],
    reserved: Option<crate::providers::ReservedRead>,
) -> Result<i64, JobError> {
    if contacts.is_empty() {
        return Ok(0);
    }
    let records = session
        .read_leads_of_persons(deps, contacts, write.with_history, reserved)
        .await?;
    let records = if write.with_history {
        records
    } else {
        super::change_times::with_change_times(
            session,
            deps,
            (job.tenant, job.connection),
            write.object,
            records,
        )
        .await?
    };
    let page = PageWrite {
        tenant: job.tenant,
        connection: job.connection,
        provider: session.connection.provider,
        object: write.object,
        kind: write.kind,
        strategy: write.strategy,
        items: records,
        run: write.run,
        full_sync_page: None,
        queue_pushes: true,
        refused: Vec::new(),
        cursor: None,
    };
    let applied = super::change_times::apply_checked(session, deps, page).await?;
    let pushes = applied.as_ref().map_or(0, |o| o.pushes);
    crate::telemetry::record_page("process_webhook", applied.map(|o| o.counts));
    Ok(pushes)
}
