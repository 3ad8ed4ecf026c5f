//! A worker killed (SIGKILL) in the middle of a full sync loses nothing and
//! duplicates nothing once a worker runs again.

use super::assert_mirrors;
use crate::conformance::crm::{Crm, Faults};
use crate::fleet::{Backend, Fleet, Killed};
use crmsync::domain::RunStatus;
use crmsync::store::RunRow;
use std::time::{Duration, Instant};

/// Waits (on state) until the run has done more than `pages` pages;
/// fails the test with `stuck` after `limit`.
async fn past_page(fleet: &Fleet, run: &RunRow, pages: i64, limit: Duration, stuck: &str) {
    let started = Instant::now();
    loop {
        let row = fleet.store.run(fleet.tenant, run.id).await.expect("run");
        if row.pages_done > pages {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{stuck} within {limit:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker running a full sync is killed with SIGKILL a few pages in;
/// another takes the orphaned page over within the orphan window, and the
/// run ends with every record exactly once.
pub async fn a_worker_killed_mid_full_sync_resumes_with_every_record_once(
    crm: Crm,
    backend: Backend,
) {
    let n: u64 = 6_000;
    let fleet = Fleet::start_crm(crm.provider(), backend, n).await;
    // 30 pages of 200 at ≥ 40 ms each: long enough to kill it in the middle.
    let slow = Faults {
        latency_ms: 40,
        ..Faults::default()
    };
    crm.set_faults(&fleet, slow).await;
    let run = fleet.start_full_sync().await;
    let first = Killed(fleet.spawn_worker_process());
    let limit = Duration::from_secs(60);
    past_page(&fleet, &run, 9, limit, "the worker made no progress").await;
    drop(first); // SIGKILL
    let mid = fleet.store.run(fleet.tenant, run.id).await.expect("run");
    assert_eq!(
        mid.status,
        RunStatus::Running,
        "killed in the middle: {mid:?}"
    );
    assert!(mid.processed < n as i64, "{mid:?}");

    // The killed worker's page is re-run once its heartbeats are missed:
    // within the orphan window plus one heartbeat.
    let second = Killed(fleet.spawn_worker_process());
    let heartbeat = Duration::from_secs(fleet.settings.queue.heartbeat_secs + 5);
    let limit = fleet.settings.orphan_window() + heartbeat;
    let orphaned = "the orphaned page was not re-run";
    past_page(&fleet, &run, mid.pages_done, limit, orphaned).await;
    let done = fleet.wait_run(run.id, Duration::from_secs(120)).await;
    drop(second);
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(
        (done.processed, done.created),
        (n as i64, n as i64),
        "every record once: {done:?}"
    );
    assert_mirrors(crm, &fleet).await;
    fleet.finish().await;
}
