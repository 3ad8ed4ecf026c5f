//! `cleanup_logs`: one fleet-wide job per `sync.cleanup_interval_secs`
//! (daily by default) that deletes sync history past
//! `sync.history_retention_days` (see [`crate::store::Purged`] for what
//! goes) and finished queue jobs past `queue.finished_job_retention_hours`.
//! It works connection by connection and records a `cleanup_logs` run on
//! each (counts `syncRuns`, `fieldChanges`, `outbox`, `conflicts`,
//! `deadLetters`, `healthChecks`), so each tenant sees what left its
//! history. Deletes commit in small batches: a job cut off at the job
//! timeout keeps what it did, and its retry goes on from there.

use super::{Deps, JobError};
use crate::domain::{RunKind, RunStatus};
use crate::store::Purged;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Rows deleted per transaction.
const CLEANUP_BATCH: i64 = 1000;

/// One fleet-wide cleanup for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupLogsJob {
    /// Start of the period (Unix seconds) it was scheduled for: its key.
    pub period_start: i64,
    /// Attempts made before this one.
    pub attempt: u32,
    /// Set for a deferral, so its key is new.
    #[serde(default)]
    pub rerun: Option<String>,
}

impl CleanupLogsJob {
    /// The scheduler's job for this period.
    pub fn new(period_start: i64) -> Self {
        Self {
            period_start,
            attempt: 0,
            rerun: None,
        }
    }
}

super::periodic::periodic_job!(CleanupLogsJob, CleanupLogs, fleet_wide, run);

/// What one cleanup deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// History rows, summed over the fleet.
    pub history: Purged,
    /// Finished queue jobs.
    pub finished_jobs: u64,
}

/// Deletes every connection's history older than the retention, recording
/// a run per connection, then finished queue jobs; returns what went.
pub async fn run(deps: &Deps) -> Result<Cleaned, JobError> {
    let history = clean_up_history(deps).await?;
    // The embedded queue keeps a period's idempotency key in its finished
    // job's row: purging it within its period would let the scheduler
    // enqueue that period again. Keep finished jobs one longest period.
    let longest = deps
        .settings
        .periodic_intervals()
        .iter()
        .map(|(_, secs)| *secs)
        .max()
        .unwrap_or(0);
    let hours = deps.settings.queue.finished_job_retention_hours;
    let retention = Duration::from_secs(hours.saturating_mul(3600).max(longest));
    let finished_jobs = deps.queue.purge_finished(retention).await?;
    tracing::info!(
        ?history,
        finished_jobs,
        "deleted sync history and finished jobs past their retention"
    );
    Ok(Cleaned {
        history,
        finished_jobs,
    })
}

/// Deletes every tenant's sync history older than the retention, connection
/// by connection (each with its `cleanup_logs` run), then whatever deleted
/// connections left; returns the fleet's total.
pub async fn clean_up_history(deps: &Deps) -> Result<Purged, JobError> {
    let days = i64::from(deps.settings.sync.history_retention_days);
    let before = Utc::now() - chrono::Duration::days(days);
    let mut total = Purged::default();
    for tenant in deps.store.connected_tenants().await? {
        for connection in deps.store.list_connections(tenant).await? {
            let started = Utc::now();
            let purged = deps
                .store
                .purge_connection_history(tenant, connection.id, before, CLEANUP_BATCH)
                .await?;
            deps.store
                .record_periodic_run(
                    tenant,
                    connection.id,
                    RunKind::CleanupLogs,
                    started,
                    RunStatus::Succeeded,
                    None,
                    &purged.counts(),
                )
                .await?;
            total.add(purged);
        }
        // Deleted connections get no run (no one lists them), but their
        // history ages out too.
        total.add(
            deps.store
                .purge_history(tenant, before, CLEANUP_BATCH)
                .await?,
        );
    }
    Ok(total)
}
