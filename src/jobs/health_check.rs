//! `health_check`: one connection's health check as a queued job, one per
//! active connection per `sync.health_check_interval_secs`, so a slow CRM
//! holds up only its own check. The check itself is [`super::health`].

use super::{Deps, JobError};
use crate::domain::{ConnectionId, RunKind, RunStatus, TenantId};
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// Checks one connection's token and CRM for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckJob {
    /// Owner.
    pub tenant: TenantId,
    /// The connection checked.
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

impl HealthCheckJob {
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

super::periodic::periodic_job!(HealthCheckJob, HealthCheck, per_connection, run);

/// Checks the connection (if it is still active) and records the check
/// both as health history and as a `health_check` run: `succeeded` with
/// counts `ok` = 1 and `latencyMs`, or `failed` with the check's error and
/// `ok` = 0. A CRM that refuses or fails the check is the check's answer,
/// not the job's failure: the job fails (and retries) only when crmsync
/// itself cannot read or record.
pub async fn run(job: &HealthCheckJob, deps: &Deps) -> Result<(), JobError> {
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let started = Utc::now();
    let Some(check) = super::health::check(deps, connection).await? else {
        return Ok(());
    };
    let counts = [
        ("ok".to_string(), i64::from(check.ok)),
        ("latencyMs".to_string(), check.latency_ms),
    ]
    .into_iter()
    .collect();
    let status = if check.ok {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    deps.store
        .record_periodic_run(
            job.tenant,
            job.connection,
            RunKind::HealthCheck,
            started,
            status,
            check.error.as_deref(),
            &counts,
        )
        .await?;
    Ok(())
}
