//! The job queue: apalis with the Redis backend (production) or the SQLite
//! backend (embedded), behind [`Queue`], so job code never knows which.
//!
//! Retries are ours, not apalis's: its Redis backend ignores `max_attempts`
//! and its SQLite backend retries at once with no backoff, so a handler that
//! fails transiently re-enqueues a copy of its job with `attempt + 1` after an
//! exponential, jittered delay (or the CRM's `Retry-After`) and acknowledges
//! the original. Every push carries an idempotency key derived from the job,
//! so pushing the same job twice enqueues it once.

mod lease;
pub(crate) mod pending;
mod purge;
mod push_request;
mod worker;

pub use lease::Lease;
pub use pending::Claim;
pub use push_request::PUSH_WAITING_TTL;

pub use worker::{Settled, WorkerSpec, run_workers, settle};

use crate::config::{QueueBackend, Settings};
use crate::jobs::{DeltaSyncJob, FullSyncJob, JobKind, ProcessWebhookJob, PushChangesJob};
use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use std::path::Path;
use std::time::Duration;

/// How long Redis remembers an idempotency key (apalis deletes it at once
/// unless a TTL is set). A periodic job's key must outlive its period, so
/// the configuration bounds periods by this (`config::MAX_PERIOD_SECS`).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Queue failures: all transient from a job's point of view.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached.
    #[error("queue (redis) unavailable: {0}")]
    Redis(String),
    /// The SQLite queue file could not be opened or written.
    #[error("queue (sqlite) unavailable: {0}")]
    Sqlite(String),
    /// A push failed.
    #[error("could not enqueue {job}: {message}")]
    Push {
        /// The job stem.
        job: &'static str,
        /// Why.
        message: String,
    },
}

/// A storage per job kind on one backend.
#[derive(Clone)]
enum Storages {
    Redis {
        conn: apalis_redis::ConnectionManager,
    },
    Sqlite {
        pool: sqlx::SqlitePool,
    },
}

/// The queue handle: cheap to clone, shared by producers and workers.
#[derive(Clone)]
pub struct Queue {
    storages: Storages,
    settings: QueueTuning,
    /// The embedded mode's leases (name → holder's token, expiry).
    local_leases: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    >,
    /// The embedded mode's push-waiting marks (key → expiry).
    local_marks:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.storages {
            Storages::Redis { .. } => "redis",
            Storages::Sqlite { .. } => "sqlite",
        };
        write!(f, "Queue({backend}, {})", self.settings.namespace)
    }
}

#[derive(Clone, Debug)]
struct QueueTuning {
    namespace: String,
    poll_interval: Duration,
    heartbeat: Duration,
    missed_heartbeats: u32,
    max_attempts: u32,
}

impl Queue {
    /// Connects to the configured backend; `store_dir` anchors a relative
    /// SQLite queue path next to the store.
    pub async fn connect(settings: &Settings, store_dir: &Path) -> Result<Self, QueueError> {
        let tuning = QueueTuning {
            namespace: settings.queue.namespace.clone(),
            poll_interval: Duration::from_millis(settings.queue.poll_interval_ms),
            heartbeat: Duration::from_secs(settings.queue.heartbeat_secs),
            missed_heartbeats: settings.queue.missed_heartbeats,
            max_attempts: settings.worker.max_attempts,
        };
        let storages = match settings.queue_backend() {
            QueueBackend::Redis => {
                let url = settings.redis.url.as_deref().unwrap_or_default();
                let conn = apalis_redis::connect(url)
                    .await
                    .map_err(|e| QueueError::Redis(e.to_string()))?;
                Storages::Redis { conn }
            }
            QueueBackend::Sqlite => {
                let path = store_dir.join(&settings.queue.sqlite_path);
                let url = format!("sqlite://{}", path.display());
                // One connection: every worker's poll is a write to this
                // file, and SQLite has one writer anyway. With several
                // connections the losers wait in SQLite's busy handler, which
                // sleeps in steps of up to 100 ms; one connection queues them
                // in the pool instead, in order, with no sleep. (What kept
                // pushes waiting most was the poll rate: see `queue.
                // poll_interval_ms` in the README.)
                let pool = crate::store::open_sqlite(&url, 1)
                    .await
                    .map_err(|e| QueueError::Sqlite(e.to_string()))?;
                SqliteStorage::migrations()
                    .run(&pool)
                    .await
                    .map_err(|e| QueueError::Sqlite(e.to_string()))?;
                Storages::Sqlite { pool }
            }
        };
        Ok(Self {
            storages,
            settings: tuning,
            local_leases: Default::default(),
            local_marks: Default::default(),
        })
    }

    /// Enqueues a full-sync page (once per idempotency key).
    pub async fn push_full_sync(&self, job: &FullSyncJob) -> Result<(), QueueError> {
        self.push_full_sync_after(job, Duration::ZERO).await
    }

    /// Enqueues a full-sync page to run after `delay`.
    pub async fn push_full_sync_after(
        &self,
        job: &FullSyncJob,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.push(JobKind::FullSync, job.clone(), job.idempotency_key(), delay)
            .await
    }

    /// Enqueues a delta sync (once per idempotency key).
    pub async fn push_delta_sync(&self, job: &DeltaSyncJob) -> Result<(), QueueError> {
        self.push_delta_sync_after(job, Duration::ZERO).await
    }

    /// Enqueues a delta sync to run after `delay`.
    pub async fn push_delta_sync_after(
        &self,
        job: &DeltaSyncJob,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.push(
            JobKind::DeltaSync,
            job.clone(),
            job.idempotency_key(),
            delay,
        )
        .await
    }

    /// Enqueues webhook processing to run after `delay` (once per key).
    pub async fn push_process_webhook_after(
        &self,
        job: &ProcessWebhookJob,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.push(
            JobKind::ProcessWebhook,
            job.clone(),
            job.idempotency_key(),
            delay,
        )
        .await
    }

    /// Enqueues a push of a connection's outbox to run after `delay`.
    pub async fn push_push_changes_after(
        &self,
        job: &PushChangesJob,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.push(
            JobKind::PushChanges,
            job.clone(),
            job.idempotency_key(),
            delay,
        )
        .await
    }

    /// Enqueues a periodic job to run after `delay`, once per idempotency
    /// key: the scheduler's replicas push the same period's job and only
    /// the first push lands.
    pub async fn push_periodic_after<J: crate::jobs::PeriodicJob>(
        &self,
        job: &J,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.push(J::KIND, job.clone(), job.idempotency_key(), delay)
            .await
    }

    /// Pushes through a storage made for the job's queue (cheap: it shares
    /// the connection or pool), so no storage per kind needs keeping.
    async fn push<J>(
        &self,
        kind: JobKind,
        job: J,
        key: String,
        delay: Duration,
    ) -> Result<(), QueueError>
    where
        J: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        let task = self.task(job, key, delay);
        let result = match &self.storages {
            Storages::Redis { conn } => RedisStorage::<J>::new(conn.clone())
                .with_config(self.settings.redis_config(kind, 1))
                .push_task(task)
                .await
                .map_err(|e| e.to_string()),
            Storages::Sqlite { pool } => SqliteStorage::<J>::new(pool)
                .with_config(self.settings.sqlite_config(kind, 1))
                .push_task(task)
                .await
                .map_err(|e| e.to_string()),
        };
        result.map_err(|message| QueueError::Push {
            job: kind.stem(),
            message,
        })
    }

    fn task<J>(&self, job: J, key: String, delay: Duration) -> apalis::prelude::Task<J> {
        let mut builder = TaskBuilder::new(job)
            .idempotency_key(key)
            .max_attempts(usize::try_from(self.settings.max_attempts).unwrap_or(usize::MAX));
        if !delay.is_zero() {
            builder = builder.run_after(delay);
        }
        builder.build()
    }

    /// Jobs of `kind` waiting to run: queued now or scheduled for later
    /// (retries, deferrals), not counting those running.
    pub async fn depth(&self, kind: JobKind) -> Result<u64, QueueError> {
        match &self.storages {
            Storages::Redis { conn } => {
                let config = self.settings.redis_config(kind, 1);
                let mut conn = conn.clone();
                let (queued, scheduled): (u64, u64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(config.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(config.scheduled_jobs_set())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| QueueError::Redis(e.to_string()))?;
                Ok(queued + scheduled)
            }
            Storages::Sqlite { pool } => {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND status IN ('Pending', 'Queued')",
                )
                .bind(self.settings.queue_name(kind))
                .fetch_one(pool)
                .await
                .map_err(|e| QueueError::Sqlite(e.to_string()))?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
        }
    }

    /// Closes the SQLite queue pool (Redis needs nothing).
    pub async fn close(&self) {
        if let Storages::Sqlite { pool, .. } = &self.storages {
            pool.close().await;
        }
    }
}

impl QueueTuning {
    fn queue_name(&self, kind: JobKind) -> String {
        format!("{}:{}", self.namespace, kind.stem())
    }

    fn redis_config(&self, kind: JobKind, batch: usize) -> apalis_redis::Config {
        apalis_redis::Config::default()
            .queue(self.queue_name(kind))
            .batch_size(batch.max(1))
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(self.missed_heartbeats as usize)
            .idempotency_ttl(Some(IDEMPOTENCY_TTL))
    }

    fn sqlite_config(&self, kind: JobKind, batch: usize) -> apalis_sqlite::Config {
        apalis_sqlite::Config::default()
            .queue(self.queue_name(kind))
            .batch_size(batch.max(1))
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(self.missed_heartbeats as usize)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_periodic_jobs_key_outlives_the_longest_period() {
        assert!(super::IDEMPOTENCY_TTL.as_secs() >= crate::config::MAX_PERIOD_SECS);
    }
}
