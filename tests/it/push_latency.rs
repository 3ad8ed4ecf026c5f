//! No stranded push: under sparse traffic — one user, one write at a time,
//! each waited for in HubSpot before the next — every platform write reaches
//! the CRM within a second. Before the push-waiting mark, a write that fell
//! in the same 100 ms window as a push job that had already read the outbox
//! was dropped as that job's duplicate and waited for the next write (or
//! the next delta, a minute later). With a worker killed mid-run, writes
//! arrive within the orphan window, and a second once it has passed.

use crate::fleet::{ApiClient, Backend, Fleet, Killed, on_both_backends};
use crate::support::{Lcg, PORTAL};
use crmsync::sandbox::hubspot::model::ObjectType;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

/// How soon a write must be in HubSpot.
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);

/// `CRMSYNC_PUSH_LATENCY_WRITES`, else 200.
fn writes() -> usize {
    std::env::var("CRMSYNC_PUSH_LATENCY_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Whether the sandbox holds a contact with `email` whose `company` is
/// `company` (read in-process: no request, no budget).
fn in_crm(fleet: &Fleet, email: &str, company: &str) -> bool {
    fleet
        .sandbox
        .sandbox
        .live_records(PORTAL, ObjectType::Contacts)
        .values()
        .any(|v| {
            v.get("email").map(String::as_str) == Some(email)
                && v.get("company").map(String::as_str) == Some(company)
        })
}

/// Polls until the write is in HubSpot; how long it took from `sent`, or
/// `None` after `give_up`.
async fn seen_after(
    fleet: &Fleet,
    email: &str,
    company: &str,
    sent: Instant,
    give_up: Duration,
) -> Option<Duration> {
    loop {
        if in_crm(fleet, email, company) {
            return Some(sent.elapsed());
        }
        if sent.elapsed() > give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One write: every third creates a lead, the others change the company of
/// the lead created last. Returns (email, company, when it was sent).
async fn write(
    api: &ApiClient,
    n: usize,
    last: &mut Option<(String, String)>,
) -> (String, String, Instant) {
    let company = format!("Company {n}");
    let sent = Instant::now();
    match last {
        Some((id, email)) if !n.is_multiple_of(3) => {
            let (status, body, _) = api
                .send(
                    Method::PATCH,
                    &format!("/v1/leads/{id}"),
                    Some(json!({"company": company})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            (email.clone(), company, sent)
        }
        _ => {
            let email = format!("sparse{n}@example.com");
            let (status, body, _) = api
                .send(
                    Method::POST,
                    "/v1/leads",
                    Some(json!({"email": email, "firstName": "Sparse", "company": company})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let id = body["id"].as_str().expect("an id").to_string();
            *last = Some((id, email.clone()));
            (email, company, sent)
        }
    }
}

/// Latency summary for the failure message and the log.
fn summary(latencies: &[Duration]) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q) as usize];
    format!(
        "{} writes: p50 {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

on_both_backends! {
    async fn every_sparse_platform_write_reaches_the_crm_within_a_second(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let api = fleet.start_api_client().await;
        let mut gaps = Lcg(0x5eed_0012);
        let mut last = None;
        let mut latencies = Vec::new();
        let mut late = Vec::new();
        for n in 0..writes() {
            let (email, company, sent) = write(&api, n, &mut last).await;
            match seen_after(&fleet, &email, &company, sent, VISIBLE_WITHIN * 5).await {
                Some(took) if took <= VISIBLE_WITHIN => latencies.push(took),
                other => late.push(format!("write {n} ({email}, {company}): {other:?}")),
            }
            // The user's pause before the next write (0–500 ms; 0 puts two
            // writes in one instant).
            tokio::time::sleep(Duration::from_millis(gaps.next(501) as u64)).await;
        }
        eprintln!("{backend:?}: {}", summary(&latencies));
        assert!(late.is_empty(), "{} writes were late: {late:#?}", late.len());
        fleet.finish().await;
    }
}

/// A push worker SIGKILLed mid-run: its lease and its job wait out their
/// windows, and no write is lost meanwhile. Production shape (Postgres and
/// Redis, workers as processes): the embedded mode is one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_crm_within_the_orphan_window_after_a_worker_is_killed() {
    let mut fleet = Fleet::start(Backend::Postgres, 3).await;
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.stop_workers().await;
    let api = fleet.start_api_client().await;
    let worker = |fleet: &Fleet| {
        let mut command = fleet.command(env!("CARGO_BIN_EXE_crmsync-worker"));
        command
            .args(["--jobs", "push_changes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Killed(command.spawn().expect("spawn crmsync-worker"))
    };
    let mut workers = vec![worker(&fleet), worker(&fleet)];
    // What a kill can cost: the orphaned job runs again after the missed
    // heartbeats, and the push lease it held expires after a job timeout.
    let settings = &fleet.settings;
    let orphan_window = Duration::from_secs(
        settings.queue.heartbeat_secs * u64::from(settings.queue.missed_heartbeats + 1),
    )
    .max(Duration::from_secs(settings.worker.job_timeout_secs + 1));
    let total = writes() / 2;
    let mut gaps = Lcg(0x5eed_0013);
    let mut last = None;
    let mut killed_at: Option<Instant> = None;
    let mut late = Vec::new();
    let mut after_the_window = Vec::new();
    for n in 0..total {
        let (email, company, sent) = write(&api, n, &mut last).await;
        if n == total / 3 {
            // Right after a write: its push is most likely in flight.
            let mut victim = workers.remove(0);
            victim.0.kill().expect("SIGKILL");
            let _ = victim.0.wait();
            killed_at = Some(Instant::now());
            workers.push(worker(&fleet));
        }
        let limit = match killed_at {
            Some(at) if sent < at + orphan_window => orphan_window + VISIBLE_WITHIN,
            _ => VISIBLE_WITHIN,
        };
        match seen_after(&fleet, &email, &company, sent, limit * 3).await {
            Some(took) if took <= limit => {
                if killed_at.is_some_and(|at| sent >= at + orphan_window) {
                    after_the_window.push(took);
                }
            }
            other => late.push(format!(
                "write {n} ({email}, {company}), limit {limit:?}: {other:?}"
            )),
        }
        tokio::time::sleep(Duration::from_millis(gaps.next(501) as u64)).await;
    }
    assert!(
        !after_the_window.is_empty(),
        "the run must go on past the orphan window ({orphan_window:?}) to show the fleet recovered"
    );
    eprintln!("after the orphan window: {}", summary(&after_the_window));
    assert!(
        late.is_empty(),
        "{} writes were late: {late:#?}",
        late.len()
    );
    drop(workers);
    fleet.finish().await;
}
