//! Job kinds, one file each, and what they share: the error that decides
//! retry versus give-up, the dependencies a handler gets, and the connection
//! session that keeps tokens fresh. Jobs carry ids, never record data.

mod change_times;
pub mod cleanup_logs;
mod crm;
pub mod delta_sync;
pub mod detect_conflicts;
pub mod full_sync;
pub mod gauges;
pub mod health;
pub mod health_check;
mod isolate;
pub mod periodic;
pub mod process_webhook;
pub mod push_changes;
pub mod replay;
pub mod retry_failed;
mod session;

pub use cleanup_logs::CleanupLogsJob;
pub use delta_sync::{DeltaOutcome, DeltaProgress, DeltaResume, DeltaSyncJob};
pub use detect_conflicts::{DetectConflictsJob, SweepCounts};
pub use full_sync::FullSyncJob;
pub use health_check::HealthCheckJob;
pub use periodic::PeriodicJob;
pub use process_webhook::ProcessWebhookJob;
pub use push_changes::PushChangesJob;
pub use retry_failed::RetryFailedJob;
pub use session::Session;

use crate::config::Settings;
use crate::providers::{ProviderError, Providers};
use crate::queue::{Queue, QueueError};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// The job kinds, by stem: the stem names the queue, the `--jobs` value and
/// the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// [`FullSyncJob`].
    FullSync,
    /// [`DeltaSyncJob`].
    DeltaSync,
    /// [`ProcessWebhookJob`].
    ProcessWebhook,
    /// [`PushChangesJob`].
    PushChanges,
    /// [`DetectConflictsJob`] (periodic, per connection).
    DetectConflicts,
    /// [`RetryFailedJob`] (periodic, fleet-wide).
    RetryFailed,
    /// [`CleanupLogsJob`] (periodic, fleet-wide).
    CleanupLogs,
    /// [`HealthCheckJob`] (periodic, per connection).
    HealthCheck,
}

impl JobKind {
    /// Every kind.
    pub const ALL: &'static [JobKind] = &[
        JobKind::FullSync,
        JobKind::DeltaSync,
        JobKind::ProcessWebhook,
        JobKind::PushChanges,
        JobKind::DetectConflicts,
        JobKind::RetryFailed,
        JobKind::CleanupLogs,
        JobKind::HealthCheck,
    ];

    /// The kinds `crmsync-scheduler` enqueues once per period.
    pub const PERIODIC: &'static [JobKind] = &[
        JobKind::DetectConflicts,
        JobKind::RetryFailed,
        JobKind::CleanupLogs,
        JobKind::HealthCheck,
    ];

    /// Every stem, comma-separated: what `--jobs` accepts.
    pub const STEMS: &'static str = "full_sync, delta_sync, process_webhook, push_changes, detect_conflicts, retry_failed, cleanup_logs, health_check";

    /// The stem.
    pub fn stem(self) -> &'static str {
        match self {
            JobKind::FullSync => "full_sync",
            JobKind::DeltaSync => "delta_sync",
            JobKind::ProcessWebhook => "process_webhook",
            JobKind::PushChanges => "push_changes",
            JobKind::DetectConflicts => "detect_conflicts",
            JobKind::RetryFailed => "retry_failed",
            JobKind::CleanupLogs => "cleanup_logs",
            JobKind::HealthCheck => "health_check",
        }
    }

    /// Jobs of this kind a worker runs at once unless told otherwise.
    /// Full-sync pages mostly wait on the CRM's answer (150–400 ms per list
    /// call) and the budget, so four run at once: one worker keeps a run's
    /// partitions in flight together. The rest run one at a time.
    pub fn default_concurrency(self) -> usize {
        match self {
            JobKind::FullSync => 4,
            _ => 1,
        }
    }

    /// Parses a stem, naming the known ones on error.
    pub fn from_stem(stem: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.stem() == stem)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|k| k.stem()).collect();
                format!("unknown job kind {stem:?}; known: {}", known.join(", "))
            })
    }
}

/// How a job run failed: decided once, by the `From` impls below.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying (after `retry_after` when the CRM said so).
    #[error("{message}")]
    Transient {
        /// Why.
        message: String,
        /// The CRM's requested delay.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help; the run is marked failed.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: the account's rate budget has no slot soon enough
    /// (or the CRM said to slow down). The job runs again after
    /// `retry_after` without using up an attempt, and no worker waits.
    #[error("{message}")]
    Deferred {
        /// Why.
        message: String,
        /// When to run again.
        retry_after: Duration,
    },
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            JobError::Transient {
                message: e.to_string(),
                retry_after: None,
            }
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<ProviderError> for JobError {
    fn from(e: ProviderError) -> Self {
        if let ProviderError::RateLimited { retry_after, .. } = &e {
            return JobError::Deferred {
                retry_after: *retry_after,
                message: e.to_string(),
            };
        }
        if e.is_retryable() {
            JobError::Transient {
                retry_after: e.retry_after(),
                message: e.to_string(),
            }
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<QueueError> for JobError {
    fn from(e: QueueError) -> Self {
        JobError::Transient {
            message: e.to_string(),
            retry_after: None,
        }
    }
}

/// What every handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Deps {
    /// State.
    pub store: Store,
    /// The CRM adapters.
    pub providers: Providers,
    /// Where follow-up jobs go.
    pub queue: Queue,
    /// Settings in effect.
    pub settings: Arc<Settings>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_kind_is_listed_and_its_stem_parses_back() {
        // Adding a variant fails to compile here until it is listed in ALL
        // (a worker started from ALL would otherwise never run it).
        let listed = |k: JobKind| match k {
            JobKind::FullSync
            | JobKind::DeltaSync
            | JobKind::ProcessWebhook
            | JobKind::PushChanges
            | JobKind::DetectConflicts
            | JobKind::RetryFailed
            | JobKind::CleanupLogs
            | JobKind::HealthCheck => JobKind::ALL.contains(&k),
        };
        for k in [
            JobKind::FullSync,
            JobKind::DeltaSync,
            JobKind::ProcessWebhook,
            JobKind::PushChanges,
            JobKind::DetectConflicts,
            JobKind::RetryFailed,
            JobKind::CleanupLogs,
            JobKind::HealthCheck,
        ] {
            assert!(listed(k), "{k:?} missing from JobKind::ALL");
            assert_eq!(JobKind::from_stem(k.stem()), Ok(k));
        }
        let stems: Vec<&str> = JobKind::ALL.iter().map(|k| k.stem()).collect();
        assert_eq!(JobKind::STEMS, stems.join(", "), "STEMS lists every kind");
        assert!(JobKind::PERIODIC.iter().all(|k| JobKind::ALL.contains(k)));
        assert!(JobKind::from_stem("nope").is_err_and(|e| e.contains("push_changes")));
    }
}
