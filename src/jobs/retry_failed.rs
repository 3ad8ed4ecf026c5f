//! `retry_failed`: one fleet-wide job per `sync.retry_failed_interval_secs`
//! that queues open dead letters of active connections again (see
//! [`super::replay`] for the re-drive limit). It records a `retry_failed`
//! run, with count `redriven`, on each connection whose dead letters it
//! re-drove; a round that re-drives nothing leaves no run (an hourly row
//! per connection saying "nothing" would bury the sync runs).

use super::{Deps, JobError};
use crate::domain::{RunKind, RunStatus};
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// One fleet-wide re-drive round for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryFailedJob {
    /// Start of the period (Unix seconds) it was scheduled for: its key.
    pub period_start: i64,
    /// Attempts made before this one.
    pub attempt: u32,
    /// Set for a deferral, so its key is new.
    #[serde(default)]
    pub rerun: Option<String>,
}

impl RetryFailedJob {
    /// The scheduler's job for this period.
    pub fn new(period_start: i64) -> Self {
        Self {
            period_start,
            attempt: 0,
            rerun: None,
        }
    }
}

super::periodic::periodic_job!(RetryFailedJob, RetryFailed, fleet_wide, run);

/// Re-drives the fleet's open dead letters and records a run per connection
/// re-driven; returns how many dead letters went back to the queue. Safe to
/// run twice: a replayed dead letter is no longer open.
pub async fn run(deps: &Deps) -> Result<usize, JobError> {
    let started = Utc::now();
    let by_connection = super::replay::retry_failed_by_connection(deps).await?;
    let mut redriven = 0;
    for (tenant, connection, n) in by_connection {
        redriven += n;
        let counts = [("redriven".to_string(), i64::try_from(n).unwrap_or(i64::MAX))]
            .into_iter()
            .collect();
        deps.store
            .record_periodic_run(
                tenant,
                connection,
                RunKind::RetryFailed,
                started,
                RunStatus::Succeeded,
                None,
                &counts,
            )
            .await?;
    }
    if redriven > 0 {
        tracing::info!(redriven, "retry_failed queued dead letters again");
    }
    Ok(redriven)
}
