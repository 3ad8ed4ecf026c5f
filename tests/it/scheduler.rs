//! The scheduler: replicas ticking at the same moment claim each due
//! connection once between them, and the delta they enqueue runs.

use crate::fleet::{Fleet, on_both_backends};
use crate::support::{PORTAL, TOKEN};
use crmsync::domain::{CanonicalField, ConnectionId, RunKind, RunStatus, TenantId};
use crmsync::jobs::Deps;
use crmsync::store::Credentials;
use secrecy::SecretString;
use serde_json::json;
use std::time::{Duration, Instant};

/// A scheduler replica: its own store pool, queue handle and clients.
pub(crate) async fn replica(fleet: &Fleet) -> Deps {
    let store = crmsync::app::open_store(&fleet.settings, false)
        .await
        .expect("store");
    crmsync::app::deps(&fleet.settings, store)
        .await
        .expect("deps")
}

pub(crate) async fn close(deps: Deps) {
    deps.queue.close().await;
    deps.store.close().await;
}

/// `n` more tenants, each with a fresh connection (never scheduled, so due).
pub(crate) async fn more_connections(fleet: &Fleet, n: usize) -> Vec<(TenantId, ConnectionId)> {
    let mut out = Vec::new();
    for i in 0..n {
        let tenant = fleet
            .store
            .create_tenant(&format!("tenant-{i}"))
            .await
            .expect("tenant")
            .id;
        let credentials = Credentials::PrivateAppToken {
            token: SecretString::from(TOKEN),
        };
        let (connection, _) = crmsync::cli::connect_hubspot_token(
            &fleet.settings,
            &fleet.store,
            tenant,
            credentials,
            Some(PORTAL),
        )
        .await
        .expect("connect");
        out.push((tenant, connection));
    }
    out
}

on_both_backends! {
    async fn two_scheduler_replicas_ticking_at_once_enqueue_each_due_connection_once(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let others = more_connections(&fleet, 11).await;
        let due = others.len() + 1;
        let (one, two) = (replica(&fleet).await, replica(&fleet).await);
        let (first, second) = tokio::join!(
            crmsync::scheduler::tick(&one),
            crmsync::scheduler::tick(&two)
        );
        let (first, second) = (first.expect("tick"), second.expect("tick"));
        assert_eq!(
            first + second,
            due,
            "each due connection claimed once in total (replicas claimed {first} and {second})"
        );
        // Claimed connections are not due again until their interval passes.
        let (again_one, again_two) = tokio::join!(
            crmsync::scheduler::tick(&one),
            crmsync::scheduler::tick(&two)
        );
        assert_eq!(
            (again_one.expect("tick"), again_two.expect("tick")),
            (0, 0),
            "an immediate second tick enqueues nothing"
        );
        close(one).await;
        close(two).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn the_delta_a_scheduler_tick_enqueues_runs_and_brings_a_crm_edit(backend) {
        let mut fleet = Fleet::start(backend, 30).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let contacts = fleet.sandbox_contacts().await;
        let id = contacts.keys().next().expect("a contact").clone();
        let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}");
        let edit = fleet
            .sandbox
            .control(reqwest::Method::PATCH, &path, Some(json!({"properties": {"firstname": "Scheduled"}})))
            .await;
        assert!(edit.status.is_success(), "{:?}", edit.body);

        let scheduler = replica(&fleet).await;
        let ticked_at = chrono::Utc::now();
        assert_eq!(crmsync::scheduler::tick(&scheduler).await.expect("tick"), 1);
        let started = Instant::now();
        let run = loop {
            let latest = fleet
                .store
                .latest_run(fleet.tenant, fleet.connection)
                .await
                .expect("latest run");
            if let Some(run) = latest.filter(|r| {
                r.kind == RunKind::DeltaSync && r.started_at >= ticked_at && r.status != RunStatus::Running
            }) {
                break run;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no delta run ended within 10 s of the tick"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        assert_eq!((run.created, run.updated), (0, 1), "{run:?}");
        let renamed = fleet
            .leads()
            .await
            .iter()
            .filter(|f| f.get(CanonicalField::FirstName) == Some("Scheduled"))
            .count();
        assert_eq!(renamed, 1, "the CRM edit reached the platform");
        assert_eq!(crmsync::scheduler::tick(&scheduler).await.expect("tick"), 0);
        close(scheduler).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn the_history_cleanup_keeps_each_latest_run_and_all_open_work(backend) {
        let mut fleet = Fleet::start(backend, 5).await;
        fleet.start_workers();
        for _ in 0..3 {
            fleet.full_sync().await;
        }
        fleet.delta_sync().await;
        fleet.delta_sync().await;
        fleet.stop_workers().await;
        // Open work: a platform change not pushed yet.
        let fields = crmsync::domain::RecordFields::new().with(CanonicalField::Email, "pending@example.com");
        fleet.store.create_platform_record(fleet.tenant, crmsync::domain::RecordKind::Lead, &fields).await.expect("create");
        let runs = |fleet: &Fleet| {
            let (store, tenant) = (fleet.store.clone(), fleet.tenant);
            async move { store.list_runs(tenant, None, None, 100).await.expect("runs") }
        };
        assert_eq!(runs(&fleet).await.len(), 5);
        // Everything finished counts as past a retention ending tomorrow; a
        // batch of 2 makes the cleanup take several transactions.
        let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
        let purged = fleet.store.purge_history(fleet.tenant, tomorrow, 2).await.expect("purge");
        assert_eq!(purged.sync_runs, 3, "{purged:?}");
        let left = runs(&fleet).await;
        let kinds: Vec<RunKind> = left.iter().map(|r| r.kind).collect();
        assert_eq!(left.len(), 2, "the latest full sync and the latest delta stay: {left:?}");
        assert!(kinds.contains(&RunKind::FullSync) && kinds.contains(&RunKind::DeltaSync));
        assert_eq!(fleet.leads().await.len(), 6, "records are never touched");
        let pending = fleet.store.pending_pushes(fleet.tenant, fleet.connection, crmsync::domain::CrmObject::Contacts, 10).await.expect("outbox");
        assert_eq!(pending.len(), 1, "unpushed changes are never touched");
        // The cleanup_logs job's entry point does the same for every connection.
        let purged = crmsync::jobs::cleanup_logs::clean_up_history(&fleet.deps).await.expect("cleanup");
        assert_eq!(purged.sync_runs, 0, "nothing older than 30 days: {purged:?}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_running_scheduler_re_drives_open_dead_letters(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        // The scheduler only enqueues retry_failed; a worker runs it.
        fleet.start_workers_for(&[crmsync::jobs::JobKind::RetryFailed]);
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
        let id = fleet
            .store
            .record_dead_letter(fleet.tenant, fleet.connection, "delta_sync", &job, "HubSpot answered 503", 8)
            .await
            .expect("dead letter");
        let deps = replica(&fleet).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(crmsync::scheduler::run(deps.clone(), stopped));
        let started = Instant::now();
        let replayed = loop {
            let replayed = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 10).await.expect("list");
            if !replayed.is_empty() {
                break replayed;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "the scheduler re-drove nothing");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let _ = stop.send(true);
        let _ = scheduler.await;
        close(deps).await;
        assert_eq!(replayed[0].id, id);
        assert_eq!(replayed[0].replayed_by.as_deref(), Some("retry_failed"));
        // The job records its run after the re-drive it counts.
        let started = Instant::now();
        let run = loop {
            let runs = fleet.store.list_runs(fleet.tenant, Some(fleet.connection), None, 10).await.expect("runs");
            if let Some(run) = runs.into_iter().find(|r| r.kind == RunKind::RetryFailed) {
                break run;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "no retry_failed run");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(run.counts.as_ref().and_then(|c| c.get("redriven")), Some(&1), "{run:?}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn the_fleet_gauges_count_jobs_waiting_and_the_sync_lag(backend) {
        let mut fleet = Fleet::start(backend, 2).await;
        crmsync::telemetry::metrics(); // installs the recorder
        let depth = |g: &crmsync::jobs::gauges::FleetGauges, job: &str| {
            g.queue_depth.iter().find(|(k, _)| *k == job).map(|(_, n)| *n)
        };
        let idle = crmsync::jobs::gauges::refresh(&fleet.deps).await.expect("gauges");
        assert!(idle.queue_depth.iter().all(|(_, n)| *n == 0), "{idle:?}");
        assert_eq!(idle.max_sync_lag_seconds, 0, "no cursor yet: no lag");

        // Two pushes queued now and one retry scheduled for later: all wait.
        fleet.enqueue_push().await;
        fleet.enqueue_push().await;
        let later = crmsync::jobs::PushChangesJob {
            tenant: fleet.tenant,
            connection: fleet.connection,
            trigger: "retry-later".into(),
            attempt: 1,
            redrives: 0,
        };
        fleet.deps.queue.push_push_changes_after(&later, Duration::from_secs(3600)).await.expect("enqueue");
        let busy = crmsync::jobs::gauges::refresh(&fleet.deps).await.expect("gauges");
        assert_eq!(depth(&busy, "push_changes"), Some(3), "{busy:?}");
        assert_eq!(depth(&busy, "delta_sync"), Some(0), "{busy:?}");

        // A delta sets the cursor: the lag is the real delay, seconds.
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.delta_sync().await;
        let synced = crmsync::jobs::gauges::refresh(&fleet.deps).await.expect("gauges");
        assert!((0..60).contains(&synced.max_sync_lag_seconds), "{synced:?}");
        let rendered = crmsync::telemetry::metrics().map(|h| h.render()).unwrap_or_default();
        assert!(rendered.contains("crmsync_queue_depth{job=\"push_changes\"}"), "{rendered}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn finished_jobs_leave_the_queue_after_their_retention_and_waiting_ones_stay(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.stop_workers().await;
        let later = crmsync::jobs::PushChangesJob {
            tenant: fleet.tenant,
            connection: fleet.connection,
            trigger: "waiting".into(),
            attempt: 0,
            redrives: 0,
        };
        fleet.deps.queue.push_push_changes_after(&later, Duration::from_secs(3600)).await.expect("enqueue");
        // Everything finished within the retention: nothing goes.
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(fleet.deps.queue.purge_finished(day).await.expect("purge"), 0);
        // With no retention the finished full-sync pages go, the waiting push stays.
        let purged = fleet.deps.queue.purge_finished(Duration::ZERO).await.expect("purge");
        assert!(purged >= 1, "the full sync's finished page jobs are purged");
        assert_eq!(fleet.deps.queue.purge_finished(Duration::ZERO).await.expect("purge"), 0);
        let gauges = crmsync::jobs::gauges::refresh(&fleet.deps).await.expect("gauges");
        let waiting = gauges.queue_depth.iter().find(|(k, _)| *k == "push_changes").map(|(_, n)| *n);
        assert_eq!(waiting, Some(1), "{gauges:?}");
        fleet.finish().await;
    }
}
