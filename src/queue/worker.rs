//! Workers: one apalis worker per job kind with its own concurrency, a unique
//! name per process and restart (a Redis outage ends a worker; it comes back),
//! and the retry policy described in [`super`].

use super::{Queue, Storages};
use crate::domain::RunStatus;
use crate::jobs::{
    self, CleanupLogsJob, DeltaSyncJob, Deps, DetectConflictsJob, FullSyncJob, HealthCheckJob,
    JobError, JobKind, PeriodicJob, ProcessWebhookJob, PushChangesJob, RetryFailedJob,
};
use apalis::prelude::{
    AbortError, BackendExt, BoxDynError, Data, WorkerBuilder, WorkerBuilderExt, WorkerError,
};
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Which job kind a worker runs and how many at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The job kind.
    pub kind: JobKind,
    /// Jobs of this kind run at once in this process.
    pub concurrency: usize,
}

/// What a finished attempt leads to; decided purely from the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Success.
    Done,
    /// Re-enqueue with `attempt + 1` after the delay.
    Retry(Duration),
    /// Re-enqueue after the delay without using an attempt (rate budget).
    Defer(Duration),
    /// Final failure: record it and stop.
    GiveUp,
}

/// Decides retry or give-up: transient errors retry with exponential backoff
/// (1 s, 2 s, 4 s … capped at 5 min, ±20 % jitter) or the CRM's delay, until
/// `max_attempts`.
pub fn settle(
    result: &Result<(), JobError>,
    attempt: u32,
    max_attempts: u32,
    jitter_seed: u64,
) -> Settled {
    match result {
        Ok(()) => Settled::Done,
        Err(JobError::Permanent(_)) => Settled::GiveUp,
        Err(JobError::Deferred { retry_after, .. }) => {
            Settled::Defer((*retry_after).max(Duration::from_millis(100)))
        }
        Err(JobError::Transient { .. }) if attempt + 1 >= max_attempts => Settled::GiveUp,
        Err(JobError::Transient { retry_after, .. }) => {
            let backoff = Duration::from_secs(1u64 << attempt.min(8)).min(Duration::from_secs(300));
            let jitter = 0.8 + (jitter_seed % 401) as f64 / 1000.0;
            Settled::Retry(
                retry_after
                    .unwrap_or(backoff.mul_f64(jitter))
                    .max(Duration::from_secs(1)),
            )
        }
    }
}

/// Keeps a job that failed for good where operators see and replay it
/// (`GET /v1/dead-letters`). Best effort: the failure is logged either way.
async fn dead_letter<J: serde::Serialize>(
    deps: &Deps,
    kind: &'static str,
    (tenant, connection): (crate::domain::TenantId, crate::domain::ConnectionId),
    job: &J,
    error: &JobError,
    attempt: u32,
) {
    metrics::counter!("crmsync_dead_letters_total", "job" => kind).increment(1);
    let job = serde_json::to_value(job).unwrap_or(serde_json::Value::Null);
    if let Err(e) = deps
        .store
        .record_dead_letter(
            tenant,
            connection,
            kind,
            &job,
            &error.to_string(),
            attempt + 1,
        )
        .await
    {
        tracing::error!(job = kind, connection.id = %connection, error = %e, "dead letter not recorded");
    }
}

/// One span per job run (`job.name`, `connection.id`, `job.attempt`),
/// continuing the trace the job carried.
fn job_span(
    name: &'static str,
    connection: crate::domain::ConnectionId,
    attempt: u32,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!("job", job.name = name, connection.id = %connection, job.attempt = attempt);
    crate::telemetry::continue_trace(&span, traceparent);
    span
}

fn jitter_seed() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map(|_| u64::from_le_bytes(b))
        .unwrap_or(0)
}

async fn with_timeout<T>(
    deps: &Deps,
    work: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let limit = Duration::from_secs(deps.settings.worker.job_timeout_secs);
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(JobError::Transient {
            message: format!("job timed out after {limit:?}"),
            retry_after: None,
        })
    })
}

async fn full_sync_task(job: FullSyncJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let span = job_span("full_sync", job.connection, job.attempt, None);
    full_sync_attempt(job, deps).instrument(span).await
}

async fn full_sync_attempt(job: FullSyncJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let result = with_timeout(&deps, jobs::full_sync::run(&job, &deps)).await;
    let settled = settle(
        &result,
        job.attempt,
        deps.settings.worker.max_attempts,
        jitter_seed(),
    );
    crate::telemetry::record_job("full_sync", settled, started.elapsed());
    match (settled, result) {
        (Settled::Done, _) | (_, Ok(())) => Ok(()),
        (Settled::Retry(delay), Err(e)) => {
            tracing::warn!(job = "full_sync", run.id = %job.run, page = job.page, attempt = job.attempt, error = %e, ?delay, "retrying");
            let again = FullSyncJob {
                attempt: job.attempt + 1,
                ..job.clone()
            };
            deps.queue.push_full_sync_after(&again, delay).await?;
            Ok(())
        }
        (Settled::Defer(delay), Err(e)) => {
            tracing::info!(job = "full_sync", run.id = %job.run, page = job.page, error = %e, ?delay, "deferred");
            let again = FullSyncJob {
                deferrals: job.deferrals + 1,
                ..job.clone()
            };
            deps.queue.push_full_sync_after(&again, delay).await?;
            Ok(())
        }
        (Settled::GiveUp, Err(e)) => {
            tracing::error!(job = "full_sync", run.id = %job.run, page = job.page, error = %e, "giving up");
            jobs::full_sync::give_up(&job, &deps, &e).await?;
            dead_letter(
                &deps,
                "full_sync",
                (job.tenant, job.connection),
                &job,
                &e,
                job.attempt,
            )
            .await;
            Err(AbortError::new(e).into())
        }
    }
}

async fn delta_sync_task(job: DeltaSyncJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let span = job_span("delta_sync", job.connection, job.attempt, None);
    delta_sync_attempt(job, deps).instrument(span).await
}

async fn delta_sync_attempt(job: DeltaSyncJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let mut progress = jobs::DeltaProgress::default();
    let attempt = with_timeout(&deps, jobs::delta_sync::run(&job, &deps, &mut progress)).await;
    if let Some(run) = progress.open_run.take() {
        // The job timeout dropped the attempt mid-run: close its run.
        deps.store
            .finish_run(
                job.tenant,
                run,
                RunStatus::Failed,
                Some("cut off at the job timeout"),
            )
            .await?;
    }
    let result = match attempt {
        Ok(jobs::DeltaOutcome {
            resume: Some(resume),
            ..
        }) => deps
            .queue
            .push_delta_sync(&job.follow_up(resume))
            .await
            .map_err(JobError::from),
        Ok(_) => {
            // Caught up: push whatever the outbox still holds (a push job
            // that gave up, or one that was never enqueued).
            deps.queue
                .request_push(job.tenant, job.connection, "sweep")
                .await
                .map_err(JobError::from)
        }
        Err(e) => Err(e),
    };
    let settled = settle(
        &result,
        job.attempt,
        deps.settings.worker.max_attempts,
        jitter_seed(),
    );
    crate::telemetry::record_job("delta_sync", settled, started.elapsed());
    match (settled, result) {
        (Settled::Done, _) | (_, Ok(())) => Ok(()),
        (Settled::Retry(delay), Err(e)) => {
            tracing::warn!(job = "delta_sync", connection.id = %job.connection, attempt = job.attempt, error = %e, ?delay, "retrying");
            // Resume where this attempt stopped, not at the start of the
            // window. An attempt that applied pages made progress: its
            // follow-up starts a fresh count, so a flaky CRM slows a long
            // window down but cannot exhaust its attempts.
            let again = match progress.resume.clone() {
                Some(resume) if progress.pages_applied > 0 => job.follow_up(resume),
                resume => DeltaSyncJob {
                    attempt: job.attempt + 1,
                    resume: resume.or(job.resume.clone()),
                    ..job.clone()
                },
            };
            let delay = if again.attempt == 0 {
                Duration::from_secs(1)
            } else {
                delay
            };
            deps.queue.push_delta_sync_after(&again, delay).await?;
            Ok(())
        }
        (Settled::Defer(delay), Err(e)) => {
            tracing::info!(job = "delta_sync", connection.id = %job.connection, error = %e, ?delay, "deferred");
            let again = match progress.resume.clone() {
                Some(resume) => job.follow_up(resume),
                None => DeltaSyncJob {
                    trigger: format!("{}+{}", job.trigger, uuid::Uuid::now_v7()),
                    ..job.clone()
                },
            };
            deps.queue.push_delta_sync_after(&again, delay).await?;
            Ok(())
        }
        (Settled::GiveUp, Err(e)) => {
            tracing::error!(job = "delta_sync", connection.id = %job.connection, error = %e, "giving up");
            dead_letter(
                &deps,
                "delta_sync",
                (job.tenant, job.connection),
                &job,
                &e,
                job.attempt,
            )
            .await;
            Err(AbortError::new(e).into())
        }
    }
}

async fn process_webhook_task(job: ProcessWebhookJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let span = job_span(
        "process_webhook",
        job.connection,
        job.attempt,
        job.traceparent.as_deref(),
    );
    process_webhook_attempt(job, deps).instrument(span).await
}

async fn process_webhook_attempt(
    job: ProcessWebhookJob,
    deps: Data<Deps>,
) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let result = with_timeout(&deps, jobs::process_webhook::run(&job, &deps)).await;
    let settled = settle(
        &result,
        job.attempt,
        deps.settings.worker.max_attempts,
        jitter_seed(),
    );
    crate::telemetry::record_job("process_webhook", settled, started.elapsed());
    match (settled, result) {
        (Settled::Done, _) | (_, Ok(())) => Ok(()),
        (Settled::Retry(delay), Err(e)) => {
            tracing::warn!(job = "process_webhook", connection.id = %job.connection, attempt = job.attempt, error = %e, ?delay, "retrying");
            let again = ProcessWebhookJob {
                attempt: job.attempt + 1,
                ..job.clone()
            };
            deps.queue.push_process_webhook_after(&again, delay).await?;
            Ok(())
        }
        (Settled::Defer(delay), Err(e)) => {
            tracing::info!(job = "process_webhook", connection.id = %job.connection, error = %e, ?delay, "deferred");
            let again = ProcessWebhookJob {
                delivery: format!("{}+{}", job.delivery, uuid::Uuid::now_v7()),
                ..job.clone()
            };
            deps.queue.push_process_webhook_after(&again, delay).await?;
            Ok(())
        }
        (Settled::GiveUp, Err(e)) => {
            // The next delta sync brings whatever this delivery said.
            tracing::error!(job = "process_webhook", connection.id = %job.connection, error = %e, "giving up; the next delta covers it");
            dead_letter(
                &deps,
                "process_webhook",
                (job.tenant, job.connection),
                &job,
                &e,
                job.attempt,
            )
            .await;
            Err(AbortError::new(e).into())
        }
    }
}

async fn push_changes_task(job: PushChangesJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let span = job_span("push_changes", job.connection, job.attempt, None);
    push_changes_attempt(job, deps).instrument(span).await
}

async fn push_changes_attempt(job: PushChangesJob, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let result = with_timeout(&deps, jobs::push_changes::run(&job, &deps))
        .await
        .map(|_| ());
    let settled = settle(
        &result,
        job.attempt,
        deps.settings.worker.max_attempts,
        jitter_seed(),
    );
    crate::telemetry::record_job("push_changes", settled, started.elapsed());
    match (settled, result) {
        (Settled::Done, _) | (_, Ok(())) => Ok(()),
        (Settled::Retry(delay), Err(e)) => {
            tracing::warn!(job = "push_changes", connection.id = %job.connection, attempt = job.attempt, error = %e, ?delay, "retrying");
            let again = PushChangesJob {
                attempt: job.attempt + 1,
                ..job.clone()
            };
            deps.queue.push_push_changes_after(&again, delay).await?;
            Ok(())
        }
        (Settled::Defer(delay), Err(e)) => {
            tracing::info!(job = "push_changes", connection.id = %job.connection, error = %e, ?delay, "deferred");
            let again = PushChangesJob {
                trigger: format!("{}+{}", job.trigger, uuid::Uuid::now_v7()),
                ..job.clone()
            };
            deps.queue.push_push_changes_after(&again, delay).await?;
            Ok(())
        }
        (Settled::GiveUp, Err(e)) => {
            // The rows stay pending: the next delta sync pushes them again.
            tracing::error!(job = "push_changes", connection.id = %job.connection, error = %e, "giving up; the outbox keeps the changes");
            dead_letter(
                &deps,
                "push_changes",
                (job.tenant, job.connection),
                &job,
                &e,
                job.attempt,
            )
            .await;
            Err(AbortError::new(e).into())
        }
    }
}

async fn periodic_task<J: PeriodicJob>(job: J, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let stem = J::KIND.stem();
    let span = match job.scope() {
        Some((_, connection)) => job_span(stem, connection, job.attempt(), None),
        None => tracing::info_span!("job", job.name = stem, job.attempt = job.attempt()),
    };
    periodic_attempt(job, deps).instrument(span).await
}

/// One attempt of a periodic job, settled like every other kind: retried
/// with backoff, deferred for the rate budget, and given up into a dead
/// letter (per-connection kinds) or a counted, logged failure (fleet-wide
/// kinds, which have no connection to file one under; the next period
/// runs them again).
async fn periodic_attempt<J: PeriodicJob>(job: J, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let stem = J::KIND.stem();
    let started = Instant::now();
    let result = with_timeout(&deps, job.run(&deps)).await;
    let settled = settle(
        &result,
        job.attempt(),
        deps.settings.worker.max_attempts,
        jitter_seed(),
    );
    crate::telemetry::record_job(stem, settled, started.elapsed());
    match (settled, result) {
        (Settled::Done, _) | (_, Ok(())) => Ok(()),
        (Settled::Retry(delay), Err(e)) => {
            tracing::warn!(job = stem, attempt = job.attempt(), error = %e, ?delay, "retrying");
            deps.queue
                .push_periodic_after(&job.retried(), delay)
                .await?;
            Ok(())
        }
        (Settled::Defer(delay), Err(e)) => {
            tracing::info!(job = stem, error = %e, ?delay, "deferred");
            deps.queue
                .push_periodic_after(&job.deferred(), delay)
                .await?;
            Ok(())
        }
        (Settled::GiveUp, Err(e)) => {
            tracing::error!(job = stem, error = %e, "giving up");
            match job.scope() {
                Some(scope) => dead_letter(&deps, stem, scope, &job, &e, job.attempt()).await,
                None => metrics::counter!("crmsync_dead_letters_total", "job" => stem).increment(1),
            }
            Err(AbortError::new(e).into())
        }
    }
}

fn worker_name(kind: JobKind) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{}@{host}-{}-{}",
        kind.stem(),
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Runs the workers in `specs` until `shutdown` turns true; in-flight jobs
/// then finish (or are handed back to the queue) before this returns.
pub async fn run_workers(
    queue: &Queue,
    deps: Deps,
    specs: &[WorkerSpec],
    shutdown: watch::Receiver<bool>,
) {
    let mut handles = Vec::new();
    for spec in specs {
        let (queue, deps, shutdown, spec) = (queue.clone(), deps.clone(), shutdown.clone(), *spec);
        handles.push(tokio::spawn(async move {
            supervise(queue, deps, spec, shutdown).await
        }));
    }
    for handle in handles {
        if let Err(e) = handle.await {
            tracing::error!(error = %e, "worker task panicked");
        }
    }
}

async fn supervise(
    queue: Queue,
    deps: Deps,
    spec: WorkerSpec,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let name = worker_name(spec.kind);
        tracing::info!(worker = %name, concurrency = spec.concurrency, "worker starting");
        let result = run_one(&queue, deps.clone(), spec, name.clone(), shutdown.clone()).await;
        if *shutdown.borrow() {
            tracing::info!(worker = %name, "worker stopped");
            return;
        }
        if let Err(e) = result {
            tracing::error!(worker = %name, error = %e, "worker stopped on a backend error; restarting in 1 s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn stop_signal(mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Builds and runs one apalis worker; the storage type differs per backend
/// and job kind, the chain does not (a macro, since apalis's generic bounds
/// for a shared function are long and brittle).
macro_rules! run_worker {
    ($storage:expr, $handler:expr, $name:expr, $deps:expr, $poll:expr, $concurrency:expr, $signal:expr) => {
        WorkerBuilder::new($name)
            .backend($storage.poll_with_interval($poll))
            .data($deps)
            .concurrency($concurrency)
            .build($handler)
            .run_until($signal)
            .await
    };
}

/// How often workers of the periodic kinds look for a job.
const PERIODIC_POLL: Duration = Duration::from_millis(500);

async fn run_one(
    queue: &Queue,
    deps: Deps,
    spec: WorkerSpec,
    name: String,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    // The periodic kinds run a few times an hour: polling them as often as
    // the sync kinds would only add queue writes (on SQLite, lock waits
    // that delay the kinds whose latency users see).
    let poll = if JobKind::PERIODIC.contains(&spec.kind) {
        queue.settings.poll_interval.max(PERIODIC_POLL)
    } else {
        queue.settings.poll_interval
    };
    let n = spec.concurrency;
    let tuning = &queue.settings;
    let signal = stop_signal(shutdown);
    match (&queue.storages, spec.kind) {
        (Storages::Redis { conn, .. }, JobKind::FullSync) => {
            let storage: RedisStorage<FullSyncJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            run_worker!(storage, full_sync_task, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn, .. }, JobKind::DeltaSync) => {
            let storage: RedisStorage<DeltaSyncJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            run_worker!(storage, delta_sync_task, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool, .. }, JobKind::FullSync) => {
            let storage: SqliteStorage<FullSyncJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            run_worker!(storage, full_sync_task, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn }, JobKind::ProcessWebhook) => {
            let storage: RedisStorage<ProcessWebhookJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            run_worker!(storage, process_webhook_task, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool }, JobKind::ProcessWebhook) => {
            let storage: SqliteStorage<ProcessWebhookJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            run_worker!(storage, process_webhook_task, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn }, JobKind::PushChanges) => {
            let storage: RedisStorage<PushChangesJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            run_worker!(storage, push_changes_task, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool }, JobKind::PushChanges) => {
            let storage: SqliteStorage<PushChangesJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            run_worker!(storage, push_changes_task, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool, .. }, JobKind::DeltaSync) => {
            let storage: SqliteStorage<DeltaSyncJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            run_worker!(storage, delta_sync_task, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn }, JobKind::DetectConflicts) => {
            let storage: RedisStorage<DetectConflictsJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            let handler = periodic_task::<DetectConflictsJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool }, JobKind::DetectConflicts) => {
            let storage: SqliteStorage<DetectConflictsJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            let handler = periodic_task::<DetectConflictsJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn }, JobKind::RetryFailed) => {
            let storage: RedisStorage<RetryFailedJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            let handler = periodic_task::<RetryFailedJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool }, JobKind::RetryFailed) => {
            let storage: SqliteStorage<RetryFailedJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            let handler = periodic_task::<RetryFailedJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn }, JobKind::CleanupLogs) => {
            let storage: RedisStorage<CleanupLogsJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            let handler = periodic_task::<CleanupLogsJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool }, JobKind::CleanupLogs) => {
            let storage: SqliteStorage<CleanupLogsJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            let handler = periodic_task::<CleanupLogsJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Redis { conn }, JobKind::HealthCheck) => {
            let storage: RedisStorage<HealthCheckJob> =
                RedisStorage::new(conn.clone()).with_config(tuning.redis_config(spec.kind, n));
            let handler = periodic_task::<HealthCheckJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
        (Storages::Sqlite { pool }, JobKind::HealthCheck) => {
            let storage: SqliteStorage<HealthCheckJob> =
                SqliteStorage::new(pool).with_config(tuning.sqlite_config(spec.kind, n));
            let handler = periodic_task::<HealthCheckJob>;
            run_worker!(storage, handler, name, deps, poll, n, signal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn transient(retry_after: Option<Duration>) -> Result<(), JobError> {
        Err(JobError::Transient {
            message: "x".into(),
            retry_after,
        })
    }

    proptest! {
        #[test]
        fn transient_failures_back_off_within_bounds_until_the_cap(attempt in 0u32..7, seed: u64) {
            match settle(&transient(None), attempt, 8, seed) {
                Settled::Retry(d) => {
                    let nominal = Duration::from_secs(1u64 << attempt).as_secs_f64();
                    prop_assert!(d.as_secs_f64() >= (nominal * 0.8).max(1.0) - 1e-9);
                    prop_assert!(d.as_secs_f64() <= nominal * 1.2 + 1e-9);
                }
                other => prop_assert!(false, "expected a retry, got {:?}", other),
            }
            prop_assert_eq!(settle(&transient(None), 7, 8, seed), Settled::GiveUp);
        }
    }

    #[test]
    fn the_crms_retry_after_wins_and_permanent_errors_stop_at_once() {
        assert_eq!(
            settle(&transient(Some(Duration::from_secs(10))), 0, 8, 0),
            Settled::Retry(Duration::from_secs(10))
        );
        assert_eq!(
            settle(&Err(JobError::Permanent("no".into())), 0, 8, 0),
            Settled::GiveUp
        );
        assert_eq!(settle(&Ok(()), 5, 8, 0), Settled::Done);
    }

    #[test]
    fn waiting_for_the_rate_budget_never_uses_up_attempts() {
        let deferred = Err(JobError::from(
            crate::providers::ProviderError::RateLimited {
                retry_after: Duration::from_secs(7),
                policy: "CRMSYNC_BUDGET".into(),
            },
        ));
        // Even at the last attempt: a deferral is not a failure.
        assert_eq!(
            settle(&deferred, 7, 8, 0),
            Settled::Defer(Duration::from_secs(7))
        );
    }
}
