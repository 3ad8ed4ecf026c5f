//! A worker killed with SIGKILL in the middle of a full sync loses nothing and
//! duplicates nothing once a worker runs again.

use crate::fleet::{Fleet, assert_mirrors_sandbox, on_both_backends};
use crmsync::domain::RunStatus;
use crmsync::sandbox::hubspot::SandboxConfig;
use std::time::{Duration, Instant};

on_both_backends! {
    async fn a_worker_killed_mid_full_sync_resumes_with_exactly_the_sandboxs_records(backend) {
        // 30 pages of 200 at ≥ 40 ms each: long enough to kill it in the middle.
        let config = SandboxConfig { seed_contacts: 6_000, latency_ms: 40, ..SandboxConfig::for_tests() };
        let fleet = Fleet::with_sandbox(backend, config).await;
        let run = fleet.start_full_sync().await;
        let mut first = fleet.spawn_worker_process();
        let started = Instant::now();
        loop {
            let row = fleet.store.run(fleet.tenant, run.id).await.expect("run");
            if row.pages_done >= 10 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the worker made no progress: {row:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.kill().expect("SIGKILL");
        let _ = first.wait();
        let mid = fleet.store.run(fleet.tenant, run.id).await.expect("run");
        assert_eq!(mid.status, RunStatus::Running, "killed in the middle: {mid:?}");
        assert!(mid.processed < 6_000, "{mid:?}");

        // The killed worker's page is re-run once its heartbeats are missed:
        // within the orphan window plus one heartbeat (60 s by default).
        let mut second = fleet.spawn_worker_process();
        let killed = Instant::now();
        loop {
            let row = fleet.store.run(fleet.tenant, run.id).await.expect("run");
            if row.pages_done > mid.pages_done {
                break;
            }
            let limit = fleet.settings.orphan_window() + Duration::from_secs(fleet.settings.queue.heartbeat_secs + 5);
            assert!(killed.elapsed() < limit, "the orphaned page was not re-run within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = fleet.wait_run(run.id, Duration::from_secs(120)).await;
        let _ = second.kill();
        let _ = second.wait();
        assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
        assert_eq!((done.processed, done.created), (6_000, 6_000), "every record once: {done:?}");
        assert_mirrors_sandbox(&fleet).await;
        fleet.finish().await;
    }
}
