//! The periodic jobs: the scheduler enqueues each once per period
//! fleet-wide (by a key derived from the period), workers run them like any
//! job, and their runs show in `GET /v1/sync-runs`.

use crate::fleet::{Fleet, on_both_backends, wait_for};
use crate::scheduler::{close, more_connections, replica};
use chrono::{DateTime, Utc};
use crmsync::domain::ConnectionStatus;
use crmsync::jobs::{DetectConflictsJob, JobKind, RetryFailedJob};
use crmsync::queue::{WorkerSpec, run_workers};
use crmsync::scheduler::Periodic;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Jobs waiting in each periodic queue.
async fn depths(fleet: &Fleet) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for kind in JobKind::PERIODIC {
        out.insert(
            kind.stem(),
            fleet.deps.queue.depth(*kind).await.expect("depth"),
        );
    }
    out
}

fn expected(per_connection: u64, fleet_wide: u64) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("cleanup_logs", fleet_wide),
        ("detect_conflicts", per_connection),
        ("health_check", per_connection),
        ("retry_failed", fleet_wide),
    ])
}

/// A moment well inside a daily period (so every interval's period is the
/// same for a few seconds after it).
fn mid_day() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    let start = now - now.rem_euclid(86_400);
    DateTime::from_timestamp(start + 3_600 + 10, 0).expect("a time")
}

on_both_backends! {
    async fn two_scheduler_replicas_enqueue_each_periodic_job_once_per_period(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let others = more_connections(&fleet, 2).await;
        // A paused connection is neither checked nor swept.
        let (paused_tenant, paused) = others[1];
        fleet.store.set_connection_status(paused_tenant, paused, ConnectionStatus::Paused, None).await.expect("pause");
        let (one, two) = (replica(&fleet).await, replica(&fleet).await);
        let now = mid_day();
        let (mut a, mut b) = (Periodic::default(), Periodic::default());
        let (first, second) = tokio::join!(a.tick(&one, now), b.tick(&two, now));
        // Each replica pushed every job (2 active connections × 2 + 2); the
        // queue kept one of each.
        assert_eq!((first.expect("tick"), second.expect("tick")), (6, 6));
        assert_eq!(depths(&fleet).await, expected(2, 1));
        // Later ticks of the same period: a replica that remembers pushes
        // nothing; restarted replicas push again, and the keys drop it all.
        let later = now + chrono::Duration::seconds(5);
        assert_eq!(a.tick(&one, later).await.expect("tick"), 0);
        let (mut c, mut d) = (Periodic::default(), Periodic::default());
        let (third, fourth) = tokio::join!(c.tick(&one, later), d.tick(&two, later));
        assert_eq!((third.expect("tick"), fourth.expect("tick")), (6, 6));
        assert_eq!(depths(&fleet).await, expected(2, 1), "one job per period fleet-wide");
        // The next health-check period (300 s) brings only health checks.
        let next = now + chrono::Duration::seconds(300);
        assert_eq!(a.tick(&one, next).await.expect("tick"), 2);
        let mut counts = expected(2, 1);
        counts.insert("health_check", 4);
        assert_eq!(depths(&fleet).await, counts);
        close(one).await;
        close(two).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_period_missed_while_no_scheduler_ran_is_caught_up_once(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let scheduler = replica(&fleet).await;
        let now = mid_day();
        Periodic::default().tick(&scheduler, now).await.expect("tick");
        assert_eq!(depths(&fleet).await, expected(1, 1));
        // The scheduler is down for 5 hours (5 retry_failed and
        // detect_conflicts periods, 60 health-check periods), then ticks
        // every second again.
        let back = now + chrono::Duration::hours(5);
        let mut restarted = Periodic::default();
        for second in 0..5 {
            restarted.tick(&scheduler, back + chrono::Duration::seconds(second)).await.expect("tick");
        }
        let mut caught_up = expected(2, 2);
        caught_up.insert("cleanup_logs", 1); // still the same day
        assert_eq!(depths(&fleet).await, caught_up, "each missed kind caught up once, not per missed period or tick");
        close(scheduler).await;
        fleet.finish().await;
    }
}

/// The tenant's open dead letters as the api lists them.
async fn dead(api: &crate::fleet::ApiClient) -> Vec<Value> {
    let (_, page, _) = api.send(Method::GET, "/v1/dead-letters", None).await;
    page["data"].as_array().cloned().unwrap_or_default()
}

/// The connection's runs as the api lists them.
async fn runs(
    api: &crate::fleet::ApiClient,
    connection: crmsync::domain::ConnectionId,
) -> Vec<Value> {
    let (_, page, _) = api
        .send(
            Method::GET,
            &format!("/v1/sync-runs?connectionId={connection}&limit=50"),
            None,
        )
        .await;
    page["data"].as_array().cloned().unwrap_or_default()
}

on_both_backends! {
    async fn a_worker_runs_each_periodic_kind_and_its_run_shows_in_the_sync_runs(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        crmsync::telemetry::metrics(); // installs the recorder
        // Something for retry_failed to re-drive.
        let job = crmsync::jobs::DeltaSyncJob {
            tenant: fleet.tenant,
            connection: fleet.connection,
            object: None,
            trigger: "failed-earlier".into(),
            attempt: 7,
            resume: None,
            redrives: 0,
        };
        let job = serde_json::to_value(&job).expect("json");
        fleet.store.record_dead_letter(fleet.tenant, fleet.connection, "delta_sync", &job, "HubSpot answered 503", 8).await.expect("dead letter");
        let api = fleet.start_api_client().await;
        fleet.start_workers_for(JobKind::PERIODIC);
        let scheduler = replica(&fleet).await;
        assert_eq!(Periodic::default().tick(&scheduler, Utc::now()).await.expect("tick"), 4);
        let connection = fleet.connection;
        wait_for("a finished run of every periodic kind", || async {
            let runs = runs(&api, connection).await;
            JobKind::PERIODIC.iter().all(|k| runs.iter().any(|r| r["kind"] == k.stem() && !r["finishedAt"].is_null()))
        })
        .await;
        let runs = runs(&api, connection).await;
        let of = |kind: &str| runs.iter().find(|r| r["kind"] == kind).cloned().expect("a run");
        let sweep = of("detect_conflicts");
        assert_eq!(sweep["status"], "succeeded", "{sweep}");
        assert!(sweep["object"].is_null(), "a periodic run is about the connection: {sweep}");
        assert_eq!(sweep["counts"], serde_json::json!({"checked": 0, "conflicts": 0, "drifted": 0, "repaired": 0}));
        let health = of("health_check");
        assert_eq!((&health["status"], &health["counts"]["ok"]), (&Value::from("succeeded"), &Value::from(1)), "{health}");
        let retried = of("retry_failed");
        assert_eq!(retried["counts"]["redriven"], 1, "{retried}");
        let cleaned = of("cleanup_logs");
        assert_eq!(cleaned["counts"]["syncRuns"], 0, "nothing is 30 days old: {cleaned}");
        // A sync run is still what `crmsync status` calls the last run.
        assert!(fleet.store.latest_run(fleet.tenant, connection).await.expect("latest").is_none());
        // A job counts once its handler returns, just after its run is written.
        wait_for("every periodic kind counted as done", || async {
            let rendered = crmsync::telemetry::metrics().map(|h| h.render()).unwrap_or_default();
            JobKind::PERIODIC.iter().all(|k| {
                rendered.contains(&format!("crmsync_jobs_total{{job=\"{}\",outcome=\"done\"}}", k.stem()))
            })
        })
        .await;
        close(scheduler).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_periodic_job_that_fails_for_good_is_dead_lettered_and_replayable(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        // A sweep of a connection the tenant does not own cannot succeed.
        let (_, foreign) = more_connections(&fleet, 1).await[0];
        let job = DetectConflictsJob::new(fleet.tenant, foreign, 0);
        fleet.deps.queue.push_periodic_after(&job, Duration::ZERO).await.expect("enqueue");
        fleet.start_workers_for(&[JobKind::DetectConflicts]);
        let api = fleet.start_api_client().await;
        wait_for("the sweep's dead letter", || async { !dead(&api).await.is_empty() }).await;
        let letters = dead(&api).await;
        assert_eq!(letters[0]["jobKind"], "detect_conflicts", "{letters:?}");
        assert_eq!(letters[0]["job"]["period_start"], 0, "{letters:?}");
        let id = letters[0]["id"].as_str().expect("id").to_string();
        let (status, body, _) = api.send(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None).await;
        assert!(status.is_success(), "{status}: {body}");
        // The replay is a new job (a new key): it runs, fails again and
        // leaves a second dead letter.
        wait_for("the replayed sweep's dead letter", || async {
            dead(&api).await.iter().any(|d| d["id"] != id.as_str() && d["jobKind"] == "detect_conflicts")
        })
        .await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_fleet_wide_job_retries_with_backoff_then_gives_up(backend) {
        let fleet = Fleet::start(backend, 0).await;
        crmsync::telemetry::metrics(); // installs the recorder
        // A worker whose store is closed: every attempt fails transiently.
        let mut settings = fleet.settings.clone();
        settings.worker.max_attempts = 2;
        let store = crmsync::app::open_store(&settings, false).await.expect("store");
        let deps = crmsync::app::deps(&settings, store.clone()).await.expect("deps");
        store.close().await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let specs = [WorkerSpec { kind: JobKind::RetryFailed, concurrency: 1 }];
        let worker = {
            let deps = deps.clone();
            tokio::spawn(async move { run_workers(&deps.queue, deps.clone(), &specs, stopped).await })
        };
        fleet.deps.queue.push_periodic_after(&RetryFailedJob::new(0), Duration::ZERO).await.expect("enqueue");
        let metric = |line: &'static str| async move {
            crmsync::telemetry::metrics().map(|h| h.render()).unwrap_or_default().contains(line)
        };
        wait_for("a retry", || metric("crmsync_jobs_total{job=\"retry_failed\",outcome=\"retry\"}")).await;
        wait_for("the give-up", || metric("crmsync_jobs_total{job=\"retry_failed\",outcome=\"failed\"}")).await;
        assert!(metric("crmsync_dead_letters_total{job=\"retry_failed\"}").await);
        let _ = stop.send(true);
        let _ = worker.await;
        deps.queue.close().await;
        fleet.finish().await;
    }
}
