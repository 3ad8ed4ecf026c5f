//! The scheduler: every tick, enqueue a `DeltaSync` for each active connection
//! whose interval has come round. The database arbitrates: claiming a due
//! connection moves its next due time in the same statement, so several
//! scheduler replicas enqueue each tick once (and the job's idempotency key,
//! derived from the due time, drops a duplicate push as well). It also
//! enqueues the periodic jobs — `detect_conflicts` and `health_check` per
//! active connection, `retry_failed` and `cleanup_logs` fleet-wide — once
//! per period by a key derived from the period (see [`Periodic`]); workers
//! run them. Its own cheap work stays in process: re-publishing the webhook
//! routes to Redis every minute and refreshing the fleet gauges (queue
//! depth, conflicts open, sync lag) every 15 s.

use crate::domain::ConnectionStatus;
use crate::jobs::periodic::period_start;
use crate::jobs::{
    CleanupLogsJob, DeltaSyncJob, Deps, DetectConflictsJob, HealthCheckJob, JobError, JobKind,
    RetryFailedJob,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// How often the scheduler looks for due work.
pub const TICK: Duration = Duration::from_secs(1);

/// Ticks between re-publications of the webhook routes to Redis.
const ROUTES_EVERY_TICKS: u64 = 60;
/// Ticks between refreshes of the fleet gauges (queue depth, conflicts
/// open, sync lag).
const GAUGES_EVERY_TICKS: u64 = 15;

/// Which period of each periodic kind this replica has enqueued. Every
/// replica enqueues the current period's jobs when it first sees the
/// period (at start, and when a new one begins); their idempotency keys
/// (`retry_failed:{period_start}`, `health_check:{connection}:{period_start}`,
/// …) make the queue keep one per period fleet-wide. A period missed while
/// no scheduler ran is never enqueued: the first tick after enqueues the
/// current one, so missed work is caught up once. A failed enqueue is tried
/// again next tick (the jobs that did land are dropped as duplicates).
#[derive(Debug, Default)]
pub struct Periodic {
    enqueued: HashMap<JobKind, i64>,
}

impl Periodic {
    /// Enqueues the periodic jobs whose current period (at `now`) this
    /// replica has not enqueued yet; returns how many pushes it made
    /// (duplicates the queue dropped included).
    pub async fn tick(&mut self, deps: &Deps, now: DateTime<Utc>) -> Result<usize, JobError> {
        let mut pushed = 0;
        let mut first_error = None;
        for (kind, interval) in intervals(deps) {
            let start = period_start(now, interval);
            if self.enqueued.get(&kind) == Some(&start) {
                continue;
            }
            match enqueue_period(deps, kind, start).await {
                Ok(n) => {
                    self.enqueued.insert(kind, start);
                    pushed += n;
                    if n > 0 {
                        metrics::counter!("crmsync_scheduled_jobs_total", "job" => kind.stem())
                            .increment(n as u64);
                    }
                }
                // The other kinds still get their turn this tick.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(pushed),
        }
    }
}

/// Each periodic kind with its interval in seconds (validated at start-up:
/// 1 ..= 7 days).
fn intervals(deps: &Deps) -> [(JobKind, u64); 4] {
    let sync = &deps.settings.sync;
    [
        (JobKind::RetryFailed, sync.retry_failed_interval_secs),
        (JobKind::CleanupLogs, sync.cleanup_interval_secs),
        (JobKind::HealthCheck, sync.health_check_interval_secs),
        (
            JobKind::DetectConflicts,
            sync.detect_conflicts_interval_secs,
        ),
    ]
}

/// Enqueues one period's jobs of `kind`: one fleet-wide job, or one per
/// active connection. Returns how many were pushed.
pub async fn enqueue_period(
    deps: &Deps,
    kind: JobKind,
    period_start: i64,
) -> Result<usize, JobError> {
    let queue = &deps.queue;
    let at_once = Duration::ZERO;
    match kind {
        JobKind::RetryFailed => {
            queue
                .push_periodic_after(&RetryFailedJob::new(period_start), at_once)
                .await?;
            Ok(1)
        }
        JobKind::CleanupLogs => {
            queue
                .push_periodic_after(&CleanupLogsJob::new(period_start), at_once)
                .await?;
            Ok(1)
        }
        JobKind::HealthCheck | JobKind::DetectConflicts => {
            let mut pushed = 0;
            for tenant in deps.store.connected_tenants().await? {
                for connection in deps.store.list_connections(tenant).await? {
                    if connection.status != ConnectionStatus::Active {
                        continue;
                    }
                    if kind == JobKind::HealthCheck {
                        let job = HealthCheckJob::new(tenant, connection.id, period_start);
                        queue.push_periodic_after(&job, at_once).await?;
                    } else {
                        let job = DetectConflictsJob::new(tenant, connection.id, period_start);
                        queue.push_periodic_after(&job, at_once).await?;
                    }
                    pushed += 1;
                }
            }
            Ok(pushed)
        }
        JobKind::FullSync | JobKind::DeltaSync | JobKind::ProcessWebhook | JobKind::PushChanges => {
            Err(JobError::Permanent(format!(
                "{} is not a periodic job",
                kind.stem()
            )))
        }
    }
}

/// One tick: claims due connections and enqueues their deltas. Returns how
/// many were enqueued.
pub async fn tick(deps: &Deps) -> Result<usize, JobError> {
    let now = Utc::now();
    let due = deps.store.claim_due_deltas(now).await?;
    for (tenant, connection) in &due {
        let job = DeltaSyncJob {
            tenant: *tenant,
            connection: *connection,
            object: None,
            trigger: format!("tick-{}", now.timestamp()),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
        deps.queue.push_delta_sync(&job).await?;
    }
    if !due.is_empty() {
        metrics::counter!("crmsync_scheduled_jobs_total", "job" => "delta_sync")
            .increment(due.len() as u64);
    }
    Ok(due.len())
}

/// Ticks until `shutdown` turns true; errors are logged and the loop goes on
/// (a missed tick is caught up by the next: due times only move when
/// claimed, and a period's jobs are enqueued until they land).
pub async fn run(deps: Deps, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut redis = None;
    // Off the tick loop: enqueueing a period's per-connection jobs of a
    // large fleet takes a while, and must never delay a due delta.
    let periodic = tokio::spawn(run_periodic(deps.clone(), shutdown.clone()));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        if let Err(e) = tick(&deps).await {
            tracing::warn!(error = %e, "scheduler tick failed; retrying next tick");
        }
        // Redis may lose the webhook routes: re-publish them every minute,
        // over one connection kept for the scheduler's life (it reconnects).
        if ticks.is_multiple_of(ROUTES_EVERY_TICKS)
            && let Err(e) = publish_routes(&deps, &mut redis).await
        {
            tracing::warn!(error = %e, "publishing webhook routes failed; retrying next minute");
        }
        if ticks.is_multiple_of(GAUGES_EVERY_TICKS) {
            let deps = deps.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::jobs::gauges::refresh(&deps).await {
                    tracing::warn!(error = %e, "refreshing the fleet gauges failed");
                }
            });
        }
        ticks += 1;
    }
    if let Err(e) = periodic.await {
        tracing::error!(error = %e, "the periodic-job scheduler panicked");
    }
}

/// Enqueues the periodic jobs every tick until `shutdown` turns true.
async fn run_periodic(deps: Deps, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut periodic = Periodic::default();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = periodic.tick(&deps, Utc::now()).await {
            tracing::warn!(error = %e, "enqueueing periodic jobs failed; retrying next tick");
        }
    }
}

/// Publishes the routes when the deployment has Redis, connecting on first
/// use and keeping the connection.
async fn publish_routes(
    deps: &Deps,
    redis: &mut Option<redis::aio::ConnectionManager>,
) -> Result<(), String> {
    if redis.is_none() {
        *redis = crate::app::redis(&deps.settings)
            .await
            .map_err(|e| format!("{e:#}"))?;
    }
    match redis {
        Some(conn) => {
            crate::ingress::routes::publish(&deps.store, conn, &deps.settings.queue.namespace)
                .await
                .map(|_| ())
        }
        None => Ok(()),
    }
}
