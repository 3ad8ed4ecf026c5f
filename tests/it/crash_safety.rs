//! Crash safety: SIGTERM drains a worker's job in flight and hands back
//! what it had not started; a Redis or Postgres restart (on servers of the
//! test's own) needs no operator; Redis losing everything loses no change.

use crate::fleet::{Backend, Fleet, Services, wait_for};
use crate::services::{PrivatePostgres, PrivateRedis};
use crate::support::PORTAL;
use crmsync::domain::{CanonicalField, CrmObject, RecordKind, RunStatus};
use crmsync::jobs::{DeltaSyncJob, JobKind};
use crmsync::sandbox::hubspot::SandboxConfig;
use serde_json::json;
use std::time::{Duration, Instant};

/// Edits one sandbox contact's job title, as a CRM user would.
async fn crm_edit(fleet: &Fleet, crm_id: &str, title: &str) {
    let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}");
    let reply = fleet
        .sandbox
        .control(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"properties": {"jobtitle": title}})),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
}

/// A platform lead's job title (by its CRM id).
async fn platform_title(fleet: &Fleet, crm_id: &str) -> Option<String> {
    for (id, _) in fleet
        .store
        .records(fleet.tenant, RecordKind::Lead)
        .await
        .ok()?
    {
        let view = fleet
            .store
            .record_view(fleet.tenant, RecordKind::Lead, id)
            .await
            .ok()??;
        if view.links.iter().any(|l| l.crm_id == crm_id) {
            return view
                .fields
                .get(CanonicalField::JobTitle)
                .map(str::to_string);
        }
    }
    None
}

/// The first linked contact: (platform record, CRM id).
async fn first_link(fleet: &Fleet) -> (crmsync::domain::RecordId, String) {
    let (id, _) = fleet
        .store
        .records(fleet.tenant, RecordKind::Lead)
        .await
        .expect("records")
        .into_iter()
        .next()
        .expect("a lead");
    let view = fleet
        .store
        .record_view(fleet.tenant, RecordKind::Lead, id)
        .await
        .expect("view")
        .expect("lead");
    (id, view.links[0].crm_id.clone())
}

/// A fleet of 20 contacts on `services`, fully synced, workers running;
/// with its first linked contact.
async fn synced_fleet(services: Services) -> (Fleet, crmsync::domain::RecordId, String) {
    let config = SandboxConfig {
        seed_contacts: 20,
        ..SandboxConfig::for_tests()
    };
    let mut fleet = Fleet::on_services(Backend::Postgres, config, services).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let (record, crm_id) = first_link(&fleet).await;
    (fleet, record, crm_id)
}

/// What the scheduler enqueues when a connection's delta is due.
async fn enqueue_delta(fleet: &Fleet) {
    let job = DeltaSyncJob {
        tenant: fleet.tenant,
        connection: fleet.connection,
        object: Some(CrmObject::Contacts),
        trigger: format!("tick-{}", uuid::Uuid::now_v7()),
        attempt: 0,
        resume: None,
        redrives: 0,
    };
    fleet
        .deps
        .queue
        .push_delta_sync(&job)
        .await
        .expect("enqueue delta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_page_in_flight_and_hands_back_the_rest_at_once() {
    // 30 pages of 200 at ≥ 150 ms each: SIGTERM lands while pages are in flight.
    let config = SandboxConfig {
        seed_contacts: 6_000,
        latency_ms: 150,
        ..SandboxConfig::for_tests()
    };
    let mut fleet = Fleet::with_sandbox(Backend::Postgres, config).await;
    // An orphan window far longer than the test waits: a job the drained
    // worker had left in flight would stall the run for 40 s.
    fleet.settings.queue.missed_heartbeats = 40;
    let run = fleet.start_full_sync().await;
    let mut first = fleet.spawn_worker_process();
    wait_for("the first worker's pages", || async {
        fleet
            .store
            .run(fleet.tenant, run.id)
            .await
            .expect("run")
            .pages_done
            >= 3
    })
    .await;
    let before = fleet
        .store
        .run(fleet.tenant, run.id)
        .await
        .expect("run")
        .pages_done;
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = first.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            signalled.elapsed()
                < Duration::from_secs(fleet.settings.worker.shutdown_grace_secs + 5),
            "the worker did not stop within its grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "a drained worker exits cleanly: {exit:?}");
    let after = fleet.store.run(fleet.tenant, run.id).await.expect("run");
    // In flight at the signal: up to the worker's full-sync concurrency
    // (its partitions page side by side), plus one committed between the
    // count above and the signal.
    let in_flight = JobKind::FullSync.default_concurrency() as i64;
    assert!(
        after.pages_done > before && after.pages_done <= before + in_flight + 1,
        "the pages in flight finished and no new one started: {before} → {after:?}"
    );
    assert_eq!(after.status, RunStatus::Running);

    // The next page was handed back, not orphaned: another worker takes it
    // at once, long before the 40 s orphan window.
    let mut second = fleet.spawn_worker_process();
    let resumed = Instant::now();
    wait_for("a second worker to go on", || async {
        fleet
            .store
            .run(fleet.tenant, run.id)
            .await
            .expect("run")
            .pages_done
            > after.pages_done
    })
    .await;
    assert!(
        resumed.elapsed() < Duration::from_secs(20),
        "the run waited {:?} for a job the drained worker held",
        resumed.elapsed()
    );
    let done = fleet.wait_run(run.id, Duration::from_secs(120)).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!((done.processed, done.created), (6_000, 6_000), "{done:?}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_carry_on_after_redis_restarts_and_lose_nothing_when_it_comes_back_empty() {
    let mut redis = PrivateRedis::start();
    let services = Services {
        redis_url: redis.url(),
        ..Services::shared()
    };
    let (mut fleet, record, crm_id) = synced_fleet(services).await;

    // 1. Redis dies and comes back empty under running workers: they
    //    reconnect by themselves and run the next job.
    redis.restart_empty();
    crm_edit(&fleet, &crm_id, "after the restart").await;
    // The first pushes may fail while the workers reconnect; a scheduler
    // tick retries each second.
    let started = Instant::now();
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(2), enqueue_delta(&fleet)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if platform_title(&fleet, &crm_id).await.as_deref() == Some("after the restart") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "workers did not recover from the Redis restart"
        );
    }

    // 2. A platform change whose push job Redis lost is still pushed: the
    //    outbox row waits in the database and the next delta sweeps it.
    fleet.stop_workers().await;
    let view = fleet
        .store
        .record_view(fleet.tenant, RecordKind::Lead, record)
        .await
        .expect("view")
        .expect("lead");
    let fields = view
        .fields
        .with(CanonicalField::Company, "Pushed After Loss");
    fleet
        .store
        .update_platform_record(fleet.tenant, RecordKind::Lead, record, &fields)
        .await
        .expect("update")
        .expect("queued for the connection");
    fleet.enqueue_push().await;
    redis.restart_empty();

    // 3. The webhook routes Redis lost are published again by the scheduler
    //    and a CRM webhook reaches the platform through ingress.
    fleet.start_workers();
    fleet.start_ingress(true).await;
    redis.restart_empty();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(crmsync::scheduler::run(fleet.deps.clone(), stopped));
    let routes_key = format!("{}:routes:hubspot:{PORTAL}", fleet.settings.queue.namespace);
    let client = redis::Client::open(redis.url()).expect("redis url");
    wait_for("the scheduler to publish the routes again", || async {
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("EXISTS")
            .arg(&routes_key)
            .query_async::<bool>(&mut conn)
            .await
            .unwrap_or(false)
    })
    .await;
    let _ = stop.send(true);
    let _ = scheduler.await;
    crm_edit(&fleet, &crm_id, "by webhook after the loss").await;
    wait_for("the webhook's change on the platform", || async {
        platform_title(&fleet, &crm_id).await.as_deref() == Some("by webhook after the loss")
    })
    .await;

    // The next delta (the scheduler's, in production) pushes the outbox.
    enqueue_delta(&fleet).await;
    wait_for("the lost push to reach HubSpot", || async {
        fleet
            .sandbox_contacts()
            .await
            .get(&crm_id)
            .is_some_and(|p| p["company"] == "Pushed After Loss")
    })
    .await;
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_job_is_retried_until_it_is_back() {
    let pg = PrivatePostgres::start();
    let services = Services {
        admin_url: pg.admin_url(),
        ..Services::shared()
    };
    let (fleet, _, crm_id) = synced_fleet(services).await;

    // Postgres goes down (as after a crash), a job arrives, Postgres comes
    // back: the job is retried (backoff) and applies the change.
    pg.stop();
    crm_edit(&fleet, &crm_id, "while postgres was down").await;
    enqueue_delta(&fleet).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();
    wait_for("the delta to apply after Postgres came back", || async {
        platform_title(&fleet, &crm_id).await.as_deref() == Some("while postgres was down")
    })
    .await;

    // And a restart under a running fleet needs nothing either.
    pg.restart();
    crm_edit(&fleet, &crm_id, "after the restart").await;
    enqueue_delta(&fleet).await;
    wait_for("the next delta after the restart", || async {
        platform_title(&fleet, &crm_id).await.as_deref() == Some("after the restart")
    })
    .await;
    fleet.finish().await;
}
