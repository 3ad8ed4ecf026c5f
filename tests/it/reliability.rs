//! The reliability suite: the production shape as separate processes
//! (`crmsync-ingress`, two `crmsync-worker`s, `crmsync-scheduler`; the api
//! in-process) on a Redis and a Postgres of its own, against the sandbox
//! with faults on (5 % 5xx, 5 % 429, 1 % timeouts, duplicated and reordered
//! webhooks), while 10,000 changes are made on both sides
//! (`CRMSYNC_RELIABILITY_CHANGES` scales it; `CRMSYNC_RELIABILITY_PROVIDER`,
//! default `hubspot`, picks the CRM). During the run workers are
//! killed with SIGKILL at random and restarted, Redis is restarted (losing
//! everything: it runs without persistence) and Postgres is restarted.
//!
//! Each side owns different fields (the CRM edits names, the platform edits
//! company and job title) so every field's final value is known; both sides
//! also create records. Asserted, and printed as a table:
//! - 0 lost changes: every field on both sides holds its last value;
//! - 0 duplicates: each record exists once on each side;
//! - 0 echo writes: crmsync never wrote a CRM-owned field back to HubSpot,
//!   re-sent no value HubSpot already held once faults are off, and wrote
//!   no more often than the platform changed something;
//! - converged within 30 s after the last fault;
//! - 0 requests sent during a cool-down a 429 asked for;
//! - then, faults off, error answers ≤ 1 % of CRM calls.

use crate::fleet::{ApiClient, Backend, CrmSetup, Fleet, Killed, Services};
use crate::services::{PrivatePostgres, PrivateRedis};
use crate::support::{Lcg, PORTAL};
use crmsync::domain::{CanonicalField, RecordKind};
use crmsync::sandbox::hubspot::model::ObjectType;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Fields each side edits: (platform field, API name, HubSpot property).
const CRM_OWNED: [(CanonicalField, &str); 2] = [
    (CanonicalField::FirstName, "firstname"),
    (CanonicalField::LastName, "lastname"),
];
const PLATFORM_OWNED: [(CanonicalField, &str, &str); 2] = [
    (CanonicalField::Company, "company", "company"),
    (CanonicalField::JobTitle, "jobTitle", "jobtitle"),
];

struct Processes {
    extra: Vec<(String, String)>,
    workers: Vec<Killed>,
    _ingress: Killed,
    _scheduler: Killed,
    killed: u32,
}

impl Processes {
    fn spawn(fleet: &Fleet, extra: &[(String, String)], binary: &str) -> Killed {
        let mut command = fleet.command(binary);
        command.envs(extra.iter().map(|(k, v)| (k, v)));
        Killed(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        )
    }

    fn worker(fleet: &Fleet, extra: &[(String, String)]) -> Killed {
        Self::spawn(fleet, extra, env!("CARGO_BIN_EXE_crmsync-worker"))
    }

    /// SIGKILLs worker `i` and starts a new one in its place.
    fn kill_worker(&mut self, fleet: &Fleet, i: usize) {
        let i = i % self.workers.len();
        self.workers[i] = Self::worker(fleet, &self.extra);
        self.killed += 1;
    }
}

/// A HubSpot user's edit of one contact property.
async fn crm_set(fleet: &Fleet, crm_id: u64, property: &str, value: &str) {
    let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}");
    let reply = fleet
        .sandbox
        .control(
            Method::PATCH,
            &path,
            Some(json!({"properties": {property: value}})),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
}

/// A platform edit of one lead field through the api.
async fn platform_set(api: &ApiClient, lead: &str, name: &str, value: &str) {
    let path = format!("/v1/leads/{lead}");
    retrying("edit a lead", || {
        api_call(api, Method::PATCH, &path, json!({name: value}))
    })
    .await;
}

/// Waits up to 30 s for both sides to hold what is expected; returns what
/// still differs and how long it took.
async fn converge(fleet: &Fleet, expected: &Expected) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let mut remaining = differences(fleet, expected).await;
    while !remaining.is_empty() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        remaining = differences(fleet, expected).await;
    }
    (remaining, started.elapsed())
}

/// Retries an operation that fails while Redis or Postgres restarts.
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(60), "{what}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn api_call(
    api: &ApiClient,
    method: Method,
    path: &str,
    body: Value,
) -> Result<Value, String> {
    let (status, reply, _) = api.send(method, path, Some(body)).await;
    if status.is_success() {
        Ok(reply)
    } else {
        Err(format!("{status}: {reply}"))
    }
}

/// The sandbox's counters for the portal.
fn counters(fleet: &Fleet) -> crmsync::sandbox::hubspot::state::Counters {
    fleet.sandbox.sandbox.counters(PORTAL).expect("counters")
}

/// Values crmsync changed in HubSpot on the fields only the CRM edits: each
/// one is an echo (or a revert) of a CRM change.
fn crm_owned_writes(c: &crmsync::sandbox::hubspot::state::Counters) -> u64 {
    CRM_OWNED
        .iter()
        .map(|(_, property)| c.app_changed_values.get(*property).copied().unwrap_or(0))
        .sum()
}

fn crm_write_requests(c: &crmsync::sandbox::hubspot::state::Counters) -> u64 {
    c.requests
        .iter()
        .filter(|(route, _)| {
            route.contains("batch/update")
                || route.contains("batch/upsert")
                || route.contains("batch/create")
                || (route.starts_with("PATCH /crm") && !route.contains("/_sandbox"))
        })
        .map(|(_, n)| n)
        .sum()
}

/// What each side must hold at the end: by CRM id, property → value; and
/// the emails created on each side.
#[derive(Default)]
struct Expected {
    values: BTreeMap<u64, BTreeMap<&'static str, String>>,
    created_on_platform: BTreeSet<String>,
    created_in_crm: BTreeSet<String>,
}

/// Differences between the two sides and what is expected (empty: converged).
async fn differences(fleet: &Fleet, expected: &Expected) -> Vec<String> {
    let crm = fleet
        .sandbox
        .sandbox
        .live_records(PORTAL, ObjectType::Contacts);
    let platform = match fleet.store.records(fleet.tenant, RecordKind::Lead).await {
        Ok(records) => records,
        Err(e) => return vec![format!("store: {e}")],
    };
    let mut out = Vec::new();
    let mut by_email: BTreeMap<String, Vec<&crmsync::domain::RecordFields>> = BTreeMap::new();
    for (_, fields) in &platform {
        if let Some(email) = fields.get(CanonicalField::Email) {
            by_email
                .entry(email.to_lowercase())
                .or_default()
                .push(fields);
        }
    }
    let mut crm_by_email: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (id, values) in &crm {
        if let Some(email) = values.get("email") {
            crm_by_email
                .entry(email.to_lowercase())
                .or_default()
                .push(*id);
        }
    }
    for (email, records) in &by_email {
        if records.len() > 1 {
            out.push(format!("{} platform records for {email}", records.len()));
        }
    }
    for (email, ids) in &crm_by_email {
        if ids.len() > 1 {
            out.push(format!("{} HubSpot contacts for {email}", ids.len()));
        }
    }
    if platform.len() != crm.len() {
        out.push(format!(
            "{} platform records vs {} HubSpot contacts",
            platform.len(),
            crm.len()
        ));
    }
    for email in expected
        .created_on_platform
        .iter()
        .chain(&expected.created_in_crm)
    {
        if !crm_by_email.contains_key(email) || !by_email.contains_key(email) {
            out.push(format!("{email} missing on a side"));
        }
    }
    for (crm_id, fields) in &expected.values {
        let Some(values) = crm.get(crm_id) else {
            out.push(format!("contact {crm_id} gone"));
            continue;
        };
        let email = values
            .get("email")
            .map(|e| e.to_lowercase())
            .unwrap_or_default();
        let Some(record) = by_email.get(&email).and_then(|r| r.first()) else {
            out.push(format!("no platform record for {email}"));
            continue;
        };
        for (property, value) in fields {
            let field = CRM_OWNED
                .iter()
                .map(|(f, p)| (*f, *p))
                .chain(PLATFORM_OWNED.iter().map(|(f, _, p)| (*f, *p)))
                .find(|(_, p)| p == property)
                .map(|(f, _)| f)
                .expect("a mapped property");
            let in_crm = values.get(*property).map(String::as_str).unwrap_or("");
            let on_platform = record.get(field).unwrap_or("");
            if in_crm != value || on_platform != value {
                out.push(format!("{crm_id}.{property}: want {value:?}, HubSpot {in_crm:?}, platform {on_platform:?}"));
            }
        }
    }
    out
}

/// `CRMSYNC_RELIABILITY_CHANGES`, else `default`.
fn changes(default: usize) -> usize {
    std::env::var("CRMSYNC_RELIABILITY_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// One test per strategy, run one after another (`.config/nextest.toml`):
// `newest_wins` (the default) at full size, the other three at a fifth, so
// that the four fit CI; `CRMSYNC_RELIABILITY_CHANGES` sets all of them.
// `scripts/reliability-runs` repeats them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_wins_loses_nothing_under_kill_9_restarts_and_faults() {
    run_suite("newest_wins", changes(10_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_wins_loses_nothing_under_kill_9_restarts_and_faults() {
    run_suite("crm_wins", changes(2_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_wins_loses_nothing_under_kill_9_restarts_and_faults() {
    run_suite("platform_wins", changes(2_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_loses_nothing_under_kill_9_restarts_and_faults() {
    run_suite("manual", changes(2_000)).await;
}

/// `CRMSYNC_RELIABILITY_PROVIDER` (default `hubspot`): the CRM the suite
/// runs against. An unknown name stops the run naming the known ones.
fn provider() -> crmsync::domain::ProviderKind {
    let name = std::env::var("CRMSYNC_RELIABILITY_PROVIDER").unwrap_or_else(|_| "hubspot".into());
    name.parse()
        .unwrap_or_else(|e| panic!("CRMSYNC_RELIABILITY_PROVIDER: {e}"))
}

async fn run_suite(strategy: &str, changes: usize) {
    let provider = provider();
    // The suite drives each CRM through its sandbox; a new provider adds
    // its arm here (and in `conformance::crm::Crm`).
    match provider {
        crmsync::domain::ProviderKind::Hubspot => {}
    }
    eprintln!("reliability suite: {changes} changes under {strategy} against {provider}");
    let mut redis = PrivateRedis::start();
    let postgres = PrivatePostgres::start();
    let services = Services {
        redis_url: redis.url(),
        admin_url: postgres.admin_url(),
    };
    let crm = CrmSetup::seeded(provider, 200);
    let mut fleet = Fleet::on_services(Backend::Postgres, crm, services).await;
    fleet.start_workers();
    fleet.full_sync().await;
    fleet.stop_workers().await;
    let api = fleet.start_api_client().await;
    // Deltas every 5 s (the least a connection may ask): they heal whatever
    // a lost webhook job missed.
    api_call(
        &api,
        Method::PATCH,
        &format!("/v1/connections/{}", fleet.connection),
        json!({"deltaIntervalSecs": 5, "strategy": strategy}),
    )
    .await
    .expect("delta interval and strategy");
    let (port, mut extra) = fleet.ingress_process_env().await;
    extra.push((
        "CRMSYNC__HUBSPOT__REQUEST_TIMEOUT_SECS".to_string(),
        "2".to_string(),
    ));
    let mut processes = Processes {
        workers: vec![
            Processes::worker(&fleet, &extra),
            Processes::worker(&fleet, &extra),
        ],
        _ingress: Processes::spawn(&fleet, &extra, env!("CARGO_BIN_EXE_crmsync-ingress")),
        _scheduler: Processes::spawn(&fleet, &extra, env!("CARGO_BIN_EXE_crmsync-scheduler")),
        extra,
        killed: 0,
    };
    fleet.deliver_webhooks_to(port).await;

    // Record pairs: platform id ↔ CRM id, by email.
    let crm = fleet
        .sandbox
        .sandbox
        .live_records(PORTAL, ObjectType::Contacts);
    let crm_ids: Vec<u64> = crm.keys().copied().collect();
    let mut platform_ids: BTreeMap<u64, String> = BTreeMap::new();
    for (id, fields) in fleet
        .store
        .records(fleet.tenant, RecordKind::Lead)
        .await
        .expect("records")
    {
        let email = fields
            .get(CanonicalField::Email)
            .unwrap_or("")
            .to_lowercase();
        if let Some((crm_id, _)) = crm
            .iter()
            .find(|(_, v)| v.get("email").map(|e| e.to_lowercase()) == Some(email.clone()))
        {
            platform_ids.insert(*crm_id, id.to_string());
        }
    }
    assert_eq!(
        platform_ids.len(),
        crm_ids.len(),
        "every contact linked after the full sync"
    );

    // Faults on.
    let faults = json!({"errorRate": 0.05, "rateLimitRate": 0.05, "timeoutRate": 0.01, "webhookDuplicateRate": 0.05, "webhookReorderRate": 0.05});
    let reply = fleet.sandbox.put_control("/_sandbox/faults", faults).await;
    assert!(reply.status.is_success(), "{:?}", reply.body);

    let started = Instant::now();
    let mut rng = Lcg(11);
    let mut expected = Expected::default();
    let mut platform_changes = 0u64;
    let (redis_at, postgres_at) = (changes * 2 / 5, changes * 3 / 5);
    for i in 0..changes {
        if i > 0 && i % (changes / 8).max(1) == 0 {
            processes.kill_worker(&fleet, rng.next(2));
        }
        if i == redis_at {
            redis.restart_empty();
        }
        if i == postgres_at {
            postgres.restart();
        }
        let crm_id = crm_ids[rng.next(crm_ids.len())];
        if i % 2 == 0 {
            if i % 200 == 0 {
                let email = format!("crm-created-{i}@example.com");
                let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts");
                let reply = fleet
                    .sandbox
                    .control(
                        Method::POST,
                        &path,
                        Some(json!({"properties": {"email": email}})),
                    )
                    .await;
                assert!(reply.status.is_success(), "{:?}", reply.body);
                expected.created_in_crm.insert(email);
                continue;
            }
            let (_, property) = CRM_OWNED[rng.next(CRM_OWNED.len())];
            let value = format!("c{i}");
            crm_set(&fleet, crm_id, property, &value).await;
            expected
                .values
                .entry(crm_id)
                .or_default()
                .insert(property, value);
        } else {
            if i % 200 == 1 {
                let email = format!("platform-created-{i}@example.com");
                retrying("create a lead", || {
                    api_call(
                        &api,
                        Method::POST,
                        "/v1/leads",
                        json!({"email": email, "firstName": "New"}),
                    )
                })
                .await;
                expected.created_on_platform.insert(email);
                platform_changes += 1;
                continue;
            }
            let (_, name, property) = PLATFORM_OWNED[rng.next(PLATFORM_OWNED.len())];
            let value = format!("p{i}");
            platform_set(&api, &platform_ids[&crm_id], name, &value).await;
            expected
                .values
                .entry(crm_id)
                .or_default()
                .insert(property, value);
            platform_changes += 1;
        }
        // ~200 changes a second: a busy tenant, not a bulk import.
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let changing = started.elapsed();
    // The last fault: the last kill, the restarts and the injected errors.
    let reply = fleet
        .sandbox
        .put_control("/_sandbox/faults", json!({}))
        .await;
    assert!(reply.status.is_success());
    let (remaining, converged_in) = converge(&fleet, &expected).await;
    let faulty = counters(&fleet);

    // Faults off: a clean stretch, then the error share of CRM calls.
    fleet.sandbox.sandbox.reset_counters(PORTAL);
    let clean = (changes / 20).max(50);
    for i in changes..changes + clean {
        let crm_id = crm_ids[rng.next(crm_ids.len())];
        if i % 2 == 0 {
            let value = format!("c{i}");
            crm_set(&fleet, crm_id, "firstname", &value).await;
            expected
                .values
                .entry(crm_id)
                .or_default()
                .insert("firstname", value);
        } else {
            let value = format!("p{i}");
            platform_set(&api, &platform_ids[&crm_id], "company", &value).await;
            expected
                .values
                .entry(crm_id)
                .or_default()
                .insert("company", value);
            platform_changes += 1;
        }
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (clean_remaining, _) = converge(&fleet, &expected).await;
    let clean_counters = counters(&fleet);
    let clean_calls: u64 = clean_counters.responses.values().sum();
    let clean_errors: u64 = clean_counters
        .responses
        .iter()
        .filter(|(c, _)| c.as_str() != "2xx")
        .map(|(_, n)| n)
        .sum();
    let writes = crm_write_requests(&faulty) + crm_write_requests(&clean_counters);

    let faulty_calls: u64 = faulty.responses.values().sum();
    eprintln!("| measure | value | limit |");
    eprintln!("|---|---|---|");
    eprintln!(
        "| changes (both sides, faults on) | {changes} in {:.1} s | — |",
        changing.as_secs_f64()
    );
    eprintln!("| workers killed with SIGKILL | {} | — |", processes.killed);
    eprintln!("| Redis / Postgres restarts | 1 / 1 | — |");
    eprintln!(
        "| CRM calls with faults / injected 5xx+timeouts / 429s | {faulty_calls} / {} / {} | — |",
        faulty.faults_injected,
        faulty.rate_limited.values().sum::<u64>()
    );
    eprintln!(
        "| differences after the last fault | {} | 0 |",
        remaining.len()
    );
    eprintln!(
        "| converged after the last fault | {:.1} s | 30 s |",
        converged_in.as_secs_f64()
    );
    eprintln!(
        "| requests sent in a cool-down | {} | 0 |",
        faulty.requests_in_cool_down + clean_counters.requests_in_cool_down
    );
    eprintln!(
        "| CRM write requests / platform changes | {writes} / {platform_changes} | ≤ 1 (no echo writes) |"
    );
    eprintln!(
        "| values written to CRM-owned fields | {} | 0 (no echo writes) |",
        crm_owned_writes(&faulty) + crm_owned_writes(&clean_counters)
    );
    let clean_unchanged: u64 = clean_counters.app_unchanged_values.values().sum();
    eprintln!(
        "| values written that HubSpot already held, faults on / off | {} / {clean_unchanged} | — / 0 |",
        faulty.app_unchanged_values.values().sum::<u64>()
    );
    eprintln!("| error answers without faults | {clean_errors} of {clean_calls} | ≤ 1 % |");
    eprintln!(
        "without faults: answers {:?}, 429s {:?}, requests {:?}",
        clean_counters.responses, clean_counters.rate_limited, clean_counters.requests
    );

    if let Some(first) = remaining.first() {
        // The audit of the first field that did not converge: why it changed.
        let (record, property) = first
            .split_once(':')
            .and_then(|(key, _)| key.split_once('.'))
            .unwrap_or_default();
        if let Ok(crm_id) = record.parse::<u64>()
            && let Some(id) = platform_ids.get(&crm_id)
        {
            let (_, history, _) = api
                .send(Method::GET, &format!("/v1/leads/{id}/history"), None)
                .await;
            let changes = history["data"].as_array().into_iter().flatten();
            for change in changes
                .filter(|c| c["field"].as_str().map(str::to_lowercase).as_deref() == Some(property))
                .take(20)
            {
                eprintln!(
                    "  {} {} {} -> {} by {} ({})",
                    change["decidedAt"],
                    change["field"],
                    change["oldValue"],
                    change["newValue"],
                    change["source"],
                    change["rule"]
                );
            }
            // And HubSpot's side: who wrote the property, when.
            let url = format!(
                "{}/crm/v3/objects/contacts/{crm_id}?propertiesWithHistory={property}",
                fleet.sandbox.base
            );
            if let Ok(reply) = fleet
                .sandbox
                .http
                .get(&url)
                .bearer_auth(crate::support::TOKEN)
                .send()
                .await
                && let Ok(body) = reply.json::<Value>().await
            {
                for version in body["propertiesWithHistory"][property]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(20)
                {
                    eprintln!(
                        "  HubSpot {} {} by {} {}",
                        version["timestamp"],
                        version["value"],
                        version["sourceType"],
                        version["sourceId"]
                    );
                }
            }
        }
    }
    let open_conflicts = fleet
        .store
        .count_open_conflicts(fleet.tenant)
        .await
        .expect("conflicts");
    eprintln!("| conflicts held for an operator | {open_conflicts} | 0 |");
    if open_conflicts > 0 {
        let held = fleet
            .store
            .list_conflicts(fleet.tenant, "open", None, None, 5)
            .await
            .expect("conflicts");
        for c in held {
            eprintln!(
                "  conflict {}.{}: base {:?}, platform {:?} at {:?}, CRM {:?} at {:?}",
                c.crm_id,
                c.field,
                c.base_value,
                c.platform_value,
                c.platform_changed_at,
                c.crm_value,
                c.crm_changed_at
            );
        }
    }
    assert_eq!(open_conflicts, 0, "conflicts crmsync raised with itself");
    assert!(
        remaining.is_empty(),
        "not converged 30 s after the last fault: {:?}",
        &remaining[..remaining.len().min(10)]
    );
    assert!(
        clean_remaining.is_empty(),
        "not converged without faults: {:?}",
        &clean_remaining[..clean_remaining.len().min(10)]
    );
    assert_eq!(
        faulty.requests_in_cool_down + clean_counters.requests_in_cool_down,
        0,
        "requests sent during a cool-down: {:?} / {:?}",
        faulty.cool_down_routes,
        clean_counters.cool_down_routes
    );
    assert!(
        clean_counters
            .app_changed_values
            .get("company")
            .copied()
            .unwrap_or(0)
            > 0,
        "the sandbox tallies crmsync's writes (platform-owned company pushed): {:?}",
        clean_counters.app_changed_values
    );
    assert_eq!(
        crm_owned_writes(&faulty) + crm_owned_writes(&clean_counters),
        0,
        "crmsync wrote CRM-owned fields back to HubSpot (echo writes): {:?} / {:?}",
        faulty.app_changed_values,
        clean_counters.app_changed_values
    );
    assert_eq!(
        clean_unchanged, 0,
        "without faults, crmsync re-sent values HubSpot already held: {:?}",
        clean_counters.app_unchanged_values
    );
    assert!(
        writes <= platform_changes,
        "{writes} write requests for {platform_changes} platform changes: echo writes"
    );
    assert!(
        clean_errors * 100 <= clean_calls,
        "{clean_errors} error answers of {clean_calls} calls without faults"
    );
    drop(processes);
    fleet.finish().await;
}
