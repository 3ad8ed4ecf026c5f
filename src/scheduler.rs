//! The scheduler: every tick, enqueue a `DeltaSync` for each active connection
//! whose interval has come round. The database arbitrates: claiming a due
//! connection moves its next due time in the same statement, so several
//! scheduler replicas enqueue each tick once (and the job's idempotency key,
//! derived from the due time, drops a duplicate push as well). It also
//! re-publishes the webhook routes to Redis every minute, refreshes the
//! fleet gauges (queue depth, conflicts open, sync lag) every 15 s, checks every
//! connection's health every 5 minutes (one replica), and once a day
//! (one replica, under a fleet lease) deletes sync history past its
//! retention. Every `sync.retry_failed_interval_secs` (hourly; one replica,
//! under a lease) `RetryFailed` queues open dead letters again.

use crate::jobs::{DeltaSyncJob, Deps, JobError};
use chrono::Utc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the scheduler looks for due work.
pub const TICK: Duration = Duration::from_secs(1);

/// Ticks between re-publications of the webhook routes to Redis.
const ROUTES_EVERY_TICKS: u64 = 60;
/// Ticks between refreshes of the fleet gauges (queue depth, conflicts
/// open, sync lag).
const GAUGES_EVERY_TICKS: u64 = 15;
/// Ticks between health checks of every connection (5 minutes).
const HEALTH_EVERY_TICKS: u64 = 300;
/// One round of health checks per this long, fleet-wide.
const HEALTH_LEASE: Duration = Duration::from_secs(290);

/// Ticks between tries at the daily history cleanup's lease.
const CLEANUP_EVERY_TICKS: u64 = 600;
/// One cleanup per this long, fleet-wide.
const CLEANUP_LEASE: Duration = Duration::from_secs(23 * 3600);
/// Rows deleted per transaction.
const CLEANUP_BATCH: i64 = 1000;

/// Deletes every tenant's sync history older than the retention; returns
/// what went.
pub async fn clean_up_history(deps: &Deps) -> Result<crate::store::Purged, JobError> {
    let days = i64::from(deps.settings.sync.history_retention_days);
    let before = Utc::now() - chrono::Duration::days(days);
    let mut purged = crate::store::Purged::default();
    for tenant in deps.store.connected_tenants().await? {
        purged.add(
            deps.store
                .purge_history(tenant, before, CLEANUP_BATCH)
                .await?,
        );
    }
    Ok(purged)
}

/// Checks every connection's health unless another replica did in this
/// round (the lease is held for the round).
async fn health_checks(deps: &Deps) -> Result<(), JobError> {
    if deps
        .queue
        .try_lease("health-checks", HEALTH_LEASE)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let checked = crate::jobs::health::check_all(deps).await?;
    tracing::debug!(checked, "health checks done");
    Ok(())
}

/// Re-drives dead letters unless another replica did this round.
async fn retry_failed_round(deps: &Deps, every: Duration) -> Result<(), JobError> {
    let hold = every.saturating_sub(TICK * 5).max(TICK);
    if deps.queue.try_lease("retry-failed", hold).await?.is_none() {
        return Ok(());
    }
    let redriven = crate::jobs::replay::retry_failed(deps).await?;
    if redriven > 0 {
        tracing::info!(redriven, "RetryFailed queued dead letters again");
    }
    Ok(())
}

/// Runs the cleanup if no replica did today (the lease is held for a day).
async fn daily_cleanup(deps: &Deps) -> Result<(), JobError> {
    let Some(lease) = deps
        .queue
        .try_lease("cleanup-history", CLEANUP_LEASE)
        .await?
    else {
        return Ok(());
    };
    let retention = Duration::from_secs(deps.settings.queue.finished_job_retention_hours * 3600);
    let jobs = deps.queue.purge_finished(retention).await;
    match (clean_up_history(deps).await, jobs) {
        (Ok(purged), Ok(jobs)) => {
            tracing::info!(
                ?purged,
                finished_jobs = jobs,
                "deleted sync history and finished jobs past their retention"
            );
            Ok(())
        }
        // Give the day's lease back so that the next try runs it.
        (Err(e), _) => {
            deps.queue.release(lease).await;
            Err(e)
        }
        (_, Err(e)) => {
            deps.queue.release(lease).await;
            Err(e.into())
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
/// (a missed tick is caught up by the next: due times only move when claimed).
pub async fn run(deps: Deps, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut redis = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
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
        if ticks.is_multiple_of(HEALTH_EVERY_TICKS) {
            let deps = deps.clone();
            tokio::spawn(async move {
                if let Err(e) = health_checks(&deps).await {
                    tracing::warn!(error = %e, "health checks failed; retrying in 5 minutes");
                }
            });
        }
        let retry_every = Duration::from_secs(deps.settings.sync.retry_failed_interval_secs.max(1));
        if ticks.is_multiple_of(retry_every.as_secs()) {
            let deps = deps.clone();
            tokio::spawn(async move {
                if let Err(e) = retry_failed_round(&deps, retry_every).await {
                    tracing::warn!(error = %e, "RetryFailed failed; retrying next round");
                }
            });
        }
        if ticks.is_multiple_of(CLEANUP_EVERY_TICKS) {
            // Off the tick loop: a long cleanup never delays a due delta.
            let deps = deps.clone();
            tokio::spawn(async move {
                if let Err(e) = daily_cleanup(&deps).await {
                    tracing::warn!(error = %e, "history cleanup failed; retrying later");
                }
            });
        }
        ticks += 1;
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
