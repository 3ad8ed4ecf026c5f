//! A CRM that throttles (429), fails (5xx), hangs and answers garbage, all
//! at once: sync still converges, every record once, nothing lost.

use super::{assert_mirrors, nothing_to_push};
use crate::conformance::crm::{Crm, Faults, Injected};
use crate::conformance::garbage::Garbler;
use crate::fleet::{Backend, Fleet};
use crmsync::domain::{CanonicalField, RunKind, RunStatus};
use std::time::{Duration, Instant};

/// What the CRM does to the calls it gets, per call.
const FAULTS: Faults = Faults {
    error_rate: 0.15,
    rate_limit_rate: 0.1,
    timeout_rate: 0.1,
    latency_ms: 0,
};

/// Share of the answers the proxy in front of the CRM garbles.
const GARBAGE_RATE: f64 = 0.1;

/// A fleet with `people` whose CRM is reached through a garbling proxy,
/// a hanging call given up after 1 s, and workers running.
async fn faulty_fleet(crm: Crm, backend: Backend, people: u64) -> (Fleet, Garbler) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, people).await;
    let upstream = crm.api_settings(&mut fleet.settings).base_url.clone();
    let garbler = Garbler::start(&upstream).await;
    fleet
        .rewire(|settings| {
            let api = crm.api_settings(settings);
            *api.base_url = garbler.base.clone();
            *api.request_timeout_secs = 1;
        })
        .await;
    fleet.start_workers();
    (fleet, garbler)
}

/// Turns every fault on.
async fn faults_on(crm: Crm, fleet: &Fleet, garbler: &Garbler) {
    crm.set_faults(fleet, FAULTS).await;
    garbler.set_rate(GARBAGE_RATE);
}

/// Turns every fault off; answers what was injected, and how many answers
/// were garbled.
async fn faults_off(crm: Crm, fleet: &Fleet, garbler: &Garbler) -> (Injected, u64) {
    crm.set_faults(fleet, Faults::default()).await;
    garbler.set_rate(0.0);
    (crm.injected(fleet).await, garbler.garbled())
}

/// A full sync through every fault lands each record exactly once.
pub async fn a_full_sync_through_throttles_errors_hangs_and_garbage_lands_every_record_once(
    crm: Crm,
    backend: Backend,
) {
    let n: u64 = 3_000;
    let (fleet, garbler) = faulty_fleet(crm, backend, n).await;
    faults_on(crm, &fleet, &garbler).await;
    let run = fleet.start_full_sync().await;
    let done = fleet.wait_run(run.id, Duration::from_secs(120)).await;
    let (injected, garbled) = faults_off(crm, &fleet, &garbler).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert!(
        injected.throttled > 0 && injected.failed > 0 && injected.hung > 0 && garbled > 0,
        "a fault never happened, so the test proves nothing about it: {injected:?}, {garbled} garbled"
    );
    assert_eq!(
        (done.processed, done.created, done.failed),
        (n as i64, n as i64, 0),
        "every page applied exactly once despite {injected:?} and {garbled} garbled: {done:?}"
    );
    assert_mirrors(crm, &fleet).await;
    fleet.finish().await;
}

/// Platform leads whose first name starts with `prefix`.
async fn leads_named(fleet: &Fleet, prefix: &str) -> usize {
    fleet
        .leads()
        .await
        .iter()
        .filter(|f| {
            f.get(CanonicalField::FirstName)
                .is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// Whether the connection's newest delta run succeeded (the delta is not
/// halfway through a page). Push runs are not waited on: one cut off at
/// the job timeout is left `running` for good (a ghost in status only;
/// the retry pushes its records).
async fn delta_finished(fleet: &Fleet) -> bool {
    fleet
        .store
        .list_runs(fleet.tenant, Some(fleet.connection), None, 100)
        .await
        .expect("runs")
        .iter()
        .find(|r| r.kind == RunKind::DeltaSync)
        .is_some_and(|r| r.status == RunStatus::Succeeded)
}

/// CRM edits brought by a queued delta and platform creates pushed, both
/// through every fault, all arrive, once each.
pub async fn a_queued_delta_and_platform_creates_through_every_fault_lose_nothing(
    crm: Crm,
    backend: Backend,
) {
    let (fleet, garbler) = faulty_fleet(crm, backend, 3_000).await;
    fleet.full_sync().await;
    let api = fleet.start_api_client().await;
    let ids: Vec<String> = crm.people(&fleet).await.into_keys().collect();
    let edited = &ids[..1_000];
    crm.import_first_names(&fleet, edited, "Edited").await;
    faults_on(crm, &fleet, &garbler).await;
    fleet.enqueue_delta().await;
    let created: Vec<String> = (0..20)
        .map(|i| format!("platform{i}@example.com"))
        .collect();
    for email in &created {
        api.create_lead(email, "Platform").await;
    }
    // Watched on the platform's side only: the CRM's API, faults on, is
    // no place for the test's own reads.
    let started = Instant::now();
    loop {
        let arrived = leads_named(&fleet, "Edited #").await;
        let pushed = nothing_to_push(&fleet).await;
        if arrived == edited.len() && pushed && delta_finished(&fleet).await {
            break;
        }
        // A liveness bound, not a speed claim: alone this takes ~15 s;
        // a loaded 2-core CI machine running the suite took 45.
        if started.elapsed() > Duration::from_secs(120) {
            let runs = fleet
                .store
                .list_runs(fleet.tenant, Some(fleet.connection), None, 5);
            let dead = fleet
                .store
                .list_dead_letters(fleet.tenant, false, None, None, 10);
            panic!(
                "{arrived} of {} CRM edits arrived; platform creates all pushed: {pushed}; \
                 latest runs {:?}; dead letters {:?}",
                edited.len(),
                runs.await.expect("runs"),
                dead.await.expect("dead letters"),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (injected, garbled) = faults_off(crm, &fleet, &garbler).await;
    assert!(
        injected.failed > 0,
        "the CRM failed no request, so the test proves nothing: {injected:?}, {garbled} garbled"
    );
    // Every record once on each side: no push wrote twice, no pull added a
    // second lead.
    let people = crm.people(&fleet).await;
    for email in &created {
        let copies = people.values().filter(|p| &p.email == email).count();
        assert_eq!(copies, 1, "{email} in the CRM");
    }
    assert_mirrors(crm, &fleet).await;
    fleet.finish().await;
}
