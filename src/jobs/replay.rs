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
            replay(&deps.queue, &deps.store, &dead, ReplayedBy::RetryFailed).await?;
            if deps
                .store
                .mark_replayed(tenant, dead.id, ReplayedBy::RetryFailed)
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

/// Queues the dead letter's job again; by `RetryFailed`, with one more
/// re-drive on its chain.
pub async fn replay(
    queue: &Queue,
    store: &Store,
    dead: &DeadLetter,
    by: ReplayedBy,
) -> Result<(), JobError> {
    let redrives =
        u32::try_from(dead.redrives).unwrap_or(u32::MAX) + u32::from(by == ReplayedBy::RetryFailed);
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
                tenant: store_tenant(dead, &malformed)?,
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
            let tenant = store_tenant(dead, &malformed)?;
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

/// The tenant a parked record's dead letter belongs to (its job names it).
fn store_tenant(
    dead: &DeadLetter,
    malformed: &impl Fn(serde_json::Error) -> JobError,
) -> Result<TenantId, JobError> {
    serde_json::from_value(dead.job.get("tenant").cloned().unwrap_or_default()).map_err(malformed)
}
