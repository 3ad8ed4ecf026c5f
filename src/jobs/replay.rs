//! Replaying a dead letter: its job queued again as a fresh first attempt
//! (a new idempotency key, `attempt` 0). A full-sync page is not replayed on
//! its failed run: the connection's full sync starts again (or joins the one
//! running), which is idempotent and resumes nothing stale.
//!
//! The `retry_failed` job (hourly by default, see
//! [`super::retry_failed`]) replays open dead letters of active connections
//! by itself; the job it queues counts one more re-drive, so a chain of
//! failures is re-driven at most `sync.retry_failed_max_redrives` times and
//! then waits for an operator.

use super::periodic;
use super::{
    DeltaSyncJob, Deps, DetectConflictsJob, HealthCheckJob, JobError, ProcessWebhookJob,
    PushChangesJob,
};
use crate::domain::{ConnectionId, ConnectionStatus, TenantId};
use crate::queue::Queue;
use crate::store::{DeadLetter, ReplayedBy, Store};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::time::Duration;

/// Dead letters re-driven per tenant per round (the rest wait a round).
const REDRIVE_BATCH: i64 = 500;

/// One `RetryFailed` round: re-drives every tenant's open dead letters of
/// active connections that have re-drives left. Returns how many.
pub async fn retry_failed(deps: &Deps) -> Result<usize, JobError> {
    Ok(retry_failed_by_connection(deps)
        .await?
        .iter()
        .map(|(_, _, n)| n)
        .sum())
}

/// One `RetryFailed` round, reporting how many dead letters it re-drove per
/// connection (only connections with at least one).
pub async fn retry_failed_by_connection(
    deps: &Deps,
) -> Result<Vec<(TenantId, ConnectionId, usize)>, JobError> {
    let max = deps.settings.sync.retry_failed_max_redrives;
    let mut by_connection: std::collections::BTreeMap<(TenantId, ConnectionId), usize> =
        Default::default();
    for tenant in deps.store.connected_tenants().await? {
        let active: std::collections::BTreeSet<_> = deps
            .store
            .list_connections(tenant)
            .await?
            .into_iter()
            .filter(|c| c.status == ConnectionStatus::Active)
            .map(|c| c.id)
            .collect();
        for dead in deps
            .store
            .redrivable_dead_letters(tenant, max, REDRIVE_BATCH)
            .await?
        {
            // A paused or unauthorised connection would only fail again.
            if !active.contains(&dead.connection_id) {
                continue;
            }
            if replay(
                &deps.queue,
                &deps.store,
                (tenant, &dead),
                ReplayedBy::RetryFailed,
            )
            .await?
            .is_some()
            {
                *by_connection
                    .entry((tenant, dead.connection_id))
                    .or_default() += 1;
            }
        }
    }
    let redriven: usize = by_connection.values().sum();
    if redriven > 0 {
        metrics::counter!("crmsync_dead_letters_redriven_total").increment(redriven as u64);
    }
    Ok(by_connection
        .into_iter()
        .map(|((tenant, connection), n)| (tenant, connection, n))
        .collect())
}

/// Replays one open dead letter: marks it replayed, then queues its job
/// again. Returns when it was marked, or `None` when it was not open any
/// more (replayed or fixed meanwhile: nothing is queued).
///
/// The order matters for a parked record: the job it queues may refuse the
/// record again at once, and parking it again updates the record's *open*
/// dead letter. Marked first, this one is closed by then, so the new
/// refusal gets a dead letter of its own; queued first, a worker could
/// update this one between the queueing and the marking, which then closed
/// it — leaving the record's outbox rows parked with no open dead letter.
/// When the queueing fails, the dead letter is opened again.
pub async fn replay(
    queue: &Queue,
    store: &Store,
    (tenant, dead): (TenantId, &DeadLetter),
    by: ReplayedBy,
) -> Result<Option<DateTime<Utc>>, JobError> {
    replay_observed(queue, store, (tenant, dead), by, || async {}).await
}

/// [`replay`], calling `queued` once the job is queued and before it
/// returns: where a test runs the queued job, as the fastest worker would,
/// to show that a refusal on replay lands on a dead letter of its own.
pub async fn replay_observed<F, Fut>(
    queue: &Queue,
    store: &Store,
    (tenant, dead): (TenantId, &DeadLetter),
    by: ReplayedBy,
    queued: F,
) -> Result<Option<DateTime<Utc>>, JobError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(at) = store.mark_replayed(tenant, dead.id, by).await? else {
        return Ok(None);
    };
    if let Err(e) = enqueue(queue, store, (tenant, dead), by).await {
        if let Err(reopen) = store.reopen_dead_letter(tenant, dead.id, by).await {
            tracing::error!(dead_letter.id = %dead.id, error = %reopen, "a dead letter whose replay was not queued stays marked replayed");
        }
        return Err(e);
    }
    queued().await;
    Ok(Some(at))
}

/// Queues the dead letter's job again; by `RetryFailed`, with one more
/// re-drive on its chain.
async fn enqueue(
    queue: &Queue,
    store: &Store,
    (tenant, dead): (TenantId, &DeadLetter),
    by: ReplayedBy,
) -> Result<(), JobError> {
    let redrives = u32::try_from(dead.redrives)
        .unwrap_or(u32::MAX)
        .saturating_add(u32::from(by == ReplayedBy::RetryFailed));
    let again = format!("replay-{}", uuid::Uuid::now_v7());
    let malformed = |e: serde_json::Error| {
        JobError::Permanent(format!(
            "dead letter {} holds no {} job: {e}",
            dead.id, dead.job_kind
        ))
    };
    match dead.job_kind.as_str() {
        "full_sync" => {
            let job: super::FullSyncJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            super::full_sync::start_redriven(store, queue, job.tenant, job.connection, redrives)
                .await?;
        }
        "delta_sync" => {
            let job: DeltaSyncJob = serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = DeltaSyncJob {
                trigger: format!("{}+{again}", job.trigger),
                attempt: 0,
                redrives,
                ..job
            };
            queue.push_delta_sync(&job).await?;
        }
        "process_webhook" => {
            let job: ProcessWebhookJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = ProcessWebhookJob {
                delivery: format!("{}+{again}", job.delivery),
                attempt: 0,
                redrives,
                ..job
            };
            queue
                .push_process_webhook_after(&job, Duration::ZERO)
                .await?;
        }
        "push_changes" => {
            let job: PushChangesJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = PushChangesJob {
                trigger: format!("{}+{again}", job.trigger),
                attempt: 0,
                redrives,
                ..job
            };
            queue.push_push_changes_after(&job, Duration::ZERO).await?;
        }
        "health_check" => {
            let job: HealthCheckJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = HealthCheckJob {
                rerun: Some(periodic::rerun_token("replay")),
                attempt: 0,
                redrives,
                ..job
            };
            queue.push_periodic_after(&job, Duration::ZERO).await?;
        }
        "detect_conflicts" => {
            let job: DetectConflictsJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = DetectConflictsJob {
                rerun: Some(periodic::rerun_token("replay")),
                attempt: 0,
                redrives,
                ..job
            };
            queue.push_periodic_after(&job, Duration::ZERO).await?;
        }
        // A parked CRM record: read it again (through the webhook path,
        // which reads by id); still refused, it is parked again.
        crate::store::PULL_RECORD => {
            let (Some(object), Some(crm_id)) = (
                dead.crm_object.as_deref().and_then(|o| o.parse().ok()),
                dead.crm_id.clone(),
            ) else {
                return Err(JobError::Permanent(format!(
                    "dead letter {} names no CRM record",
                    dead.id
                )));
            };
            let changed = vec![crate::domain::CrmId(crm_id)];
            queue
                .mark_pending(dead.connection_id, object, &changed)
                .await?;
            let job = ProcessWebhookJob {
                tenant,
                connection: dead.connection_id,
                object,
                changed,
                deleted: Vec::new(),
                erased: Vec::new(),
                merged: Vec::new(),
                echoed: Vec::new(),
                delivery: again,
                attempt: 0,
                redrives,
                traceparent: None,
            };
            queue
                .push_process_webhook_after(&job, Duration::ZERO)
                .await?;
        }
        // A parked platform record: back in the outbox, pushed now.
        crate::store::PUSH_RECORD => {
            let Some(record) = dead.record_id else {
                return Err(JobError::Permanent(format!(
                    "dead letter {} names no platform record",
                    dead.id
                )));
            };
            store
                .unpark_pushes((tenant, dead.connection_id), record)
                .await?;
            queue
                .request_push(tenant, dead.connection_id, "replay")
                .await?;
        }
        other => {
            return Err(JobError::Permanent(format!(
                "dead letter {} is of an unknown job kind {other}",
                dead.id
            )));
        }
    }
    Ok(())
}
