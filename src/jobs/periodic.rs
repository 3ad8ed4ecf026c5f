//! What the periodic jobs (`detect_conflicts`, `health_check`,
//! `retry_failed`, `cleanup_logs`) share: the period a job belongs to, the
//! idempotency key derived from it, and the trait through which the worker
//! runs, retries and dead-letters them all alike.

use super::{Deps, JobError, JobKind};
use crate::domain::{ConnectionId, TenantId};
use chrono::{DateTime, Utc};

/// The start (Unix seconds) of the period of `interval_secs` that `now`
/// falls in: `floor(now / interval) × interval`. Every scheduler replica
/// computes the same value at any moment of the period, which is what makes
/// the job's key — and so its enqueueing — once per period fleet-wide; a
/// scheduler back after several missed periods computes only the current
/// one, so it catches up once. Periods are aligned to the Unix epoch (a
/// daily job's period starts at 00:00 UTC). An interval of 0 is treated as
/// 1 (the configuration refuses 0 anyway), and the arithmetic cannot
/// overflow: the result lies between 0 and `now`.
pub fn period_start(now: DateTime<Utc>, interval_secs: u64) -> i64 {
    let now = now.timestamp().max(0);
    let interval = i64::try_from(interval_secs.max(1)).unwrap_or(i64::MAX);
    now - now.rem_euclid(interval)
}

/// The idempotency key of a periodic job: `stem[:connection]:period_start`
/// for the scheduler's enqueue (so replicas enqueue it once), then
/// `:rerun` for a deferral or a replay and `:attempt-N` for a retry, so
/// those are new jobs and never dropped as duplicates of the first.
pub fn key(
    kind: JobKind,
    connection: Option<ConnectionId>,
    period_start: i64,
    rerun: Option<&str>,
    attempt: u32,
) -> String {
    let mut key = kind.stem().to_string();
    if let Some(connection) = connection {
        key.push_str(&format!(":{connection}"));
    }
    key.push_str(&format!(":{period_start}"));
    if let Some(rerun) = rerun {
        key.push_str(&format!(":{rerun}"));
    }
    if attempt > 0 {
        key.push_str(&format!(":attempt-{attempt}"));
    }
    key
}

/// A fresh rerun token: a deferral or a replay is a new job of its period.
pub fn rerun_token(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::now_v7().simple())
}

/// A periodic job as the worker sees it: its queue, its key, whom it
/// concerns (dead letters need a connection), and how it runs again.
pub trait PeriodicJob:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + Unpin + 'static
{
    /// The job kind (its queue, `--jobs` stem and metric label).
    const KIND: JobKind;

    /// Makes enqueueing the same job twice a no-op (see [`key`]).
    fn idempotency_key(&self) -> String;

    /// The connection a per-connection job is for; `None` for a
    /// fleet-wide job, whose final failure is counted and logged but has
    /// no connection to keep a dead letter under (the next period runs it
    /// again).
    fn scope(&self) -> Option<(TenantId, ConnectionId)>;

    /// Attempts made before this one.
    fn attempt(&self) -> u32;

    /// The same job for its next attempt.
    fn retried(&self) -> Self;

    /// The same job run again later without using up an attempt (the rate
    /// budget said wait), under a new key.
    fn deferred(&self) -> Self;

    /// Runs the job once; idempotent, so a retry or a second delivery does
    /// no harm.
    fn run(&self, deps: &Deps) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// Implements [`PeriodicJob`] for a job with the fields every periodic job
/// has (`period_start`, `attempt`, `rerun`; a per-connection one also
/// `tenant` and `connection`): one definition of the key, retry and
/// deferral for every kind. `per_connection` jobs run as `run(job, deps)`;
/// `fleet_wide` ones as `run(deps)`, whatever they count.
macro_rules! periodic_job {
    ($job:ident, $kind:ident, per_connection, $run:path) => {
        impl $crate::jobs::periodic::PeriodicJob for $job {
            const KIND: $crate::jobs::JobKind = $crate::jobs::JobKind::$kind;

            fn idempotency_key(&self) -> String {
                $crate::jobs::periodic::key(
                    Self::KIND,
                    Some(self.connection),
                    self.period_start,
                    self.rerun.as_deref(),
                    self.attempt,
                )
            }

            fn scope(&self) -> Option<($crate::domain::TenantId, $crate::domain::ConnectionId)> {
                Some((self.tenant, self.connection))
            }

            async fn run(&self, deps: &$crate::jobs::Deps) -> Result<(), $crate::jobs::JobError> {
                $run(self, deps).await
            }

            $crate::jobs::periodic::periodic_job!(@attempts);
        }
    };
    ($job:ident, $kind:ident, fleet_wide, $run:path) => {
        impl $crate::jobs::periodic::PeriodicJob for $job {
            const KIND: $crate::jobs::JobKind = $crate::jobs::JobKind::$kind;

            fn idempotency_key(&self) -> String {
                $crate::jobs::periodic::key(
                    Self::KIND,
                    None,
                    self.period_start,
                    self.rerun.as_deref(),
                    self.attempt,
                )
            }

            fn scope(&self) -> Option<($crate::domain::TenantId, $crate::domain::ConnectionId)> {
                None
            }

            async fn run(&self, deps: &$crate::jobs::Deps) -> Result<(), $crate::jobs::JobError> {
                $run(deps).await.map(|_| ())
            }

            $crate::jobs::periodic::periodic_job!(@attempts);
        }
    };
    (@attempts) => {
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
                rerun: Some($crate::jobs::periodic::rerun_token("defer")),
                ..self.clone()
            }
        }
    };
}
pub(crate) use periodic_job;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    #[test]
    fn a_period_starts_at_a_multiple_of_its_interval_from_the_epoch() {
        let at = |s| Utc.timestamp_opt(s, 0).single().unwrap_or_default();
        assert_eq!(period_start(at(7_199), 3600), 3600);
        assert_eq!(period_start(at(7_200), 3600), 7200);
        assert_eq!(period_start(at(86_399), 86_400), 0);
        assert_eq!(period_start(at(5), 0), 5, "0 is treated as 1");
        assert_eq!(period_start(at(5), u64::MAX), 0, "no overflow");
    }

    #[test]
    fn the_first_attempt_keys_on_the_period_alone() {
        let c = ConnectionId(uuid::Uuid::nil());
        assert_eq!(
            key(JobKind::RetryFailed, None, 3600, None, 0),
            "retry_failed:3600"
        );
        assert_eq!(
            key(JobKind::HealthCheck, Some(c), 300, None, 0),
            format!("health_check:{c}:300")
        );
        assert_eq!(
            key(JobKind::CleanupLogs, None, 0, Some("defer-1"), 2),
            "cleanup_logs:0:defer-1:attempt-2"
        );
    }

    proptest! {
        #[test]
        fn every_moment_of_a_period_keys_the_same_and_the_next_period_differs(
            now in 0i64..4_000_000_000, interval in 1u64..=604_800
        ) {
            let at = |s| Utc.timestamp_opt(s, 0).single().unwrap_or_default();
            let start = period_start(at(now), interval);
            let step = i64::try_from(interval).unwrap_or(i64::MAX);
            prop_assert!(start <= now && now < start + step);
            prop_assert_eq!(period_start(at(start), interval), start);
            prop_assert_eq!(period_start(at(start + step - 1), interval), start);
            prop_assert_eq!(period_start(at(start + step), interval), start + step);
        }
    }
}
