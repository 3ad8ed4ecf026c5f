//! `detect_conflicts`: the periodic anti-entropy sweep of one connection,
//! one job per active connection per `sync.detect_conflicts_interval_secs`,
//! so one slow CRM does not hold up the others. Each run is recorded as a
//! `detect_conflicts` sync run with counts `checked`, `drifted`,
//! `repaired` and `conflicts`. The sweep itself is [`sweep`].

use super::periodic::{self, PeriodicJob};
use super::{Deps, JobError, JobKind};
use crate::domain::{ConnectionId, ConnectionStatus, RunKind, RunStatus, TenantId};
use crate::store::RunCounts;
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// Sweeps one connection for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectConflictsJob {
    /// Owner.
    pub tenant: TenantId,
    /// The connection swept.
    pub connection: ConnectionId,
    /// Start of the period (Unix seconds) it was scheduled for: its key.
    pub period_start: i64,
    /// Attempts made before this one.
    pub attempt: u32,
    /// Set for a deferral or a replay, so its key is new.
    #[serde(default)]
    pub rerun: Option<String>,
    /// Times `retry_failed` has re-driven this job's chain of failures.
    #[serde(default)]
    pub redrives: u32,
}

impl DetectConflictsJob {
    /// The scheduler's job for this connection and period.
    pub fn new(tenant: TenantId, connection: ConnectionId, period_start: i64) -> Self {
        Self {
            tenant,
            connection,
            period_start,
            attempt: 0,
            rerun: None,
            redrives: 0,
        }
    }
}

/// What one sweep found, reported as the run's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepCounts {
    /// Linked records compared on both sides.
    pub checked: i64,
    /// Records whose sides differed without a change in flight.
    pub drifted: i64,
    /// Drifted records brought back in line.
    pub repaired: i64,
    /// Drifted records held as conflicts for a decision.
    pub conflicts: i64,
}

impl SweepCounts {
    /// The counts by name, as the run shows them.
    pub fn counts(&self) -> RunCounts {
        [
            ("checked", self.checked),
            ("drifted", self.drifted),
            ("repaired", self.repaired),
            ("conflicts", self.conflicts),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The anti-entropy sweep (issue #12 part 4) lands here: compare the
/// connection's linked records on both sides, repair drift, hold what
/// cannot be repaired as conflicts. For now it checks nothing and
/// returns zero counts, so the job is scheduled, run and reported end to
/// end before the sweep exists.
pub async fn sweep(job: &DetectConflictsJob, deps: &Deps) -> Result<SweepCounts, JobError> {
    let _ = (job, deps);
    Ok(SweepCounts::default())
}

impl PeriodicJob for DetectConflictsJob {
    const KIND: JobKind = JobKind::DetectConflicts;

    fn idempotency_key(&self) -> String {
        periodic::key(
            Self::KIND,
            Some(self.connection),
            self.period_start,
            self.rerun.as_deref(),
            self.attempt,
        )
    }

    fn scope(&self) -> Option<(TenantId, ConnectionId)> {
        Some((self.tenant, self.connection))
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn retried(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }

    fn deferred(&self) -> Self {
        Self {
            rerun: Some(periodic::rerun_token("defer")),
            ..self.clone()
        }
    }

    async fn run(&self, deps: &Deps) -> Result<(), JobError> {
        run(self, deps).await
    }
}

/// Sweeps the connection if it is active and records the run: `succeeded`
/// with the sweep's counts, or `failed` with its error (each attempt is a
/// run, as for deltas; a deferral for the rate budget records none).
pub async fn run(job: &DetectConflictsJob, deps: &Deps) -> Result<(), JobError> {
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    if connection.status != ConnectionStatus::Active {
        return Ok(());
    }
    let started = Utc::now();
    let result = sweep(job, deps).await;
    let (status, error, counts) = match &result {
        Ok(found) => (RunStatus::Succeeded, None, found.counts()),
        Err(JobError::Deferred { .. }) => return result.map(|_| ()),
        Err(e) => (
            RunStatus::Failed,
            Some(e.to_string()),
            SweepCounts::default().counts(),
        ),
    };
    deps.store
        .record_periodic_run(
            job.tenant,
            job.connection,
            RunKind::DetectConflicts,
            started,
            status,
            error.as_deref(),
            &counts,
        )
        .await?;
    result.map(|_| ())
}
