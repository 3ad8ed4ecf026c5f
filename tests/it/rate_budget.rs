//! Fleet-wide rate budgets: processes that share a Redis share each CRM
//! account's budget — its pace, its cool-down, its day and rolling counts
//! (costs summed), its in-flight leases and what the CRM reported of its
//! limits — and a caller that would wait too long is refused with the wait
//! instead.

use crate::fleet::redis_url;
use crate::support::{PORTAL, TOKEN, TestSandbox};
use crmsync::config::Settings;
use crmsync::domain::CrmObject;
use crmsync::providers::ProviderError;
use crmsync::providers::hubspot::HubspotClient;
use crmsync::ratelimit::shared::SharedStore;
use crmsync::ratelimit::{
    BudgetError, BudgetPlan, BudgetSpec, Budgets, DAY, InFlightLimit, LimitKind, Limits, Permit,
    Priority, Report, Waits, WindowLimit, shared,
};
use secrecy::SecretString;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn redis() -> redis::aio::ConnectionManager {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_connection_manager()
        .await
        .expect("redis")
}

fn namespace() -> String {
    format!("crmsync-it-{}", uuid::Uuid::now_v7().simple())
}

/// What one worker process has: its own budget registry, on the fleet's Redis.
async fn process(namespace: &str, waits: Waits) -> Budgets {
    Budgets::shared(SharedStore::new(redis().await, namespace), waits)
}

/// A process's `[budgets]` with this wait, all of each budget for crmsync.
fn waiting(max_wait: Duration) -> Waits {
    Waits {
        max_wait,
        ..Waits::default()
    }
}

fn spec(requests: u32, window: Duration, daily_limit: u32) -> BudgetSpec {
    BudgetSpec {
        limit: WindowLimit { requests, window },
        daily_limit,
        share: 1.0,
        kind: "burst",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_accounts_budget_and_draw_no_429() {
    // The sandbox allows 20 requests per rolling 10 s; three processes
    // pacing alone would send ~57 in that window.
    let sandbox = TestSandbox::start().await;
    let limits = sandbox
        .put_control(
            &format!("/_sandbox/accounts/{PORTAL}/limits"),
            json!({"perTenSeconds": 20, "daily": 250000, "searchPerSecond": 5}),
        )
        .await;
    assert!(limits.status.is_success(), "{:?}", limits.body);
    let ns = namespace();
    let mut settings = Settings::defaults().expect("defaults").hubspot;
    settings.api_base_url = sandbox.base.clone();
    settings.requests_per_10s = 20;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let budgets = process(&ns, waiting(Duration::from_secs(30))).await;
        let client = HubspotClient::new(settings.clone(), Arc::new(budgets)).expect("client");
        calls.push(tokio::spawn(async move {
            let token = SecretString::from(TOKEN);
            let mut results = Vec::new();
            for _ in 0..7 {
                results.push(
                    client
                        .list_page(&PORTAL.to_string(), &token, CrmObject::Contacts, None, 1)
                        .await
                        .map(|_| ()),
                );
            }
            results
        }));
    }
    let mut failures = Vec::new();
    for call in calls {
        failures.extend(
            call.await
                .expect("join")
                .into_iter()
                .filter_map(Result::err),
        );
    }
    assert!(failures.is_empty(), "{failures:?}");
    let counters = sandbox.counters().await;
    assert_eq!(counters["totalRequests"], 21, "{counters}");
    assert_eq!(
        counters["totalRateLimited"], 0,
        "the fleet kept to the account's budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_in_one_process_cools_the_budget_down_for_every_process() {
    let ns = namespace();
    let waits = waiting(Duration::from_secs(1));
    let (a, b) = (process(&ns, waits).await, process(&ns, waits).await);
    let budget_spec = spec(1000, Duration::from_secs(1), 0);
    let in_a = a.get("hubspot:1:burst", budget_spec);
    let in_b = b.get("hubspot:1:burst", budget_spec);
    assert_eq!(in_b.acquire(Priority::Interactive).await, Ok(()));
    in_a.cool_down(Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    match in_b.acquire(Priority::Interactive).await {
        Err(BudgetError::WaitTooLong { retry_after, .. }) => {
            assert!(retry_after > Duration::from_secs(2), "{retry_after:?}");
        }
        other => panic!("expected the other process to be held off, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused, not parked"
    );
    // The api shows it.
    let status = shared::status(
        &redis().await,
        &ns,
        "hubspot:1:burst",
        Duration::from_secs(1),
    )
    .await
    .expect("status");
    assert!(status.cool_down_until.is_some(), "{status:?}");
    assert_eq!(status.requests_today, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_calls_reserve_ahead_and_background_calls_take_only_free_slots() {
    let ns = namespace();
    let waits = waiting(Duration::from_secs(5));
    let workers = process(&ns, waits).await;
    // 10 per 10 s: a slot every ~1.1 s.
    let budget_spec = spec(10, Duration::from_secs(10), 0);
    let started = std::time::Instant::now();
    // Three webhook follow-ups reserve the next three slots at once...
    let mut reserving = Vec::new();
    for _ in 0..3 {
        let budget = workers.get("hubspot:1:burst", budget_spec);
        reserving.push(tokio::spawn(async move {
            budget
                .acquire(Priority::Interactive)
                .await
                .expect("reserved");
            started.elapsed()
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...a full-sync page that may wait only a second is rescheduled
    // rather than parked or served first...
    let impatient = process(&ns, waiting(Duration::from_secs(1))).await;
    match impatient
        .get("hubspot:1:burst", budget_spec)
        .acquire(Priority::Background)
        .await
    {
        Err(BudgetError::WaitTooLong { retry_after, .. }) => {
            assert!(retry_after > Duration::from_secs(1), "{retry_after:?}");
        }
        other => panic!("expected the page to be deferred, got {other:?}"),
    }
    // ...and one that may wait goes after all three.
    let full_sync = process(&ns, waits).await;
    full_sync
        .get("hubspot:1:burst", budget_spec)
        .acquire(Priority::Background)
        .await
        .expect("a free slot");
    let page_at = started.elapsed();
    for reserved in reserving {
        let at = reserved.await.expect("join");
        assert!(
            at < page_at,
            "interactive slot at {at:?}, page at {page_at:?}"
        );
    }
    let status = shared::status(
        &redis().await,
        &ns,
        "hubspot:1:burst",
        Duration::from_secs(1),
    )
    .await
    .expect("status");
    assert_eq!(status.requests_today, 4, "the deferred page took no slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_budget_is_counted_across_processes() {
    let ns = namespace();
    let (a, b) = (
        process(&ns, Waits::default()).await,
        process(&ns, Waits::default()).await,
    );
    let budget_spec = spec(1000, Duration::from_secs(1), 4);
    let (in_a, in_b) = (
        a.get("hubspot:1:burst", budget_spec),
        b.get("hubspot:1:burst", budget_spec),
    );
    for budget in [&in_a, &in_b, &in_a, &in_b] {
        assert_eq!(budget.acquire(Priority::Interactive).await, Ok(()));
    }
    match in_b.acquire(Priority::Interactive).await {
        Err(BudgetError::WaitTooLong { retry_after, .. }) => {
            assert!(
                retry_after <= Duration::from_secs(86_400),
                "until the day ends: {retry_after:?}"
            );
        }
        other => panic!("expected the day to be spent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_would_wait_too_long_is_rate_limited_for_the_job_to_reschedule() {
    let sandbox = TestSandbox::start().await;
    let ns = namespace();
    let mut settings = Settings::defaults().expect("defaults").hubspot;
    settings.api_base_url = sandbox.base.clone();
    let budgets = process(&ns, waiting(Duration::from_secs(1))).await;
    budgets
        .get("hubspot:62515:burst", spec(100, Duration::from_secs(10), 0))
        .cool_down(Duration::from_secs(20))
        .await;
    let client = HubspotClient::new(settings, Arc::new(budgets)).expect("client");
    let token = SecretString::from(TOKEN);
    match client
        .list_page(&PORTAL.to_string(), &token, CrmObject::Contacts, None, 1)
        .await
    {
        Err(ProviderError::RateLimited {
            retry_after,
            policy,
        }) => {
            assert_eq!(policy, "CRMSYNC_BUDGET");
            assert!(retry_after > Duration::from_secs(15), "{retry_after:?}");
        }
        other => panic!("expected a deferral, got {other:?}"),
    }
    assert_eq!(
        sandbox.counters().await["totalRequests"],
        0,
        "nothing sent during the cool-down"
    );
}

/// Redis restarted empty forgets every pace and cool-down, while the CRM
/// still counts its window and may still be waiting out a 429: nothing is
/// admitted until one window has passed since Redis started. A Redis that
/// has been up longer than a window admits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_no_budget_admits_a_request_for_one_window() {
    let window = Duration::from_secs(3);
    let waits = waiting(Duration::from_secs(10));
    let budget_spec = spec(1000, window, 0);

    let long_running = process(&namespace(), waits).await;
    let started = std::time::Instant::now();
    let budget = long_running.get("hubspot:1:burst", budget_spec);
    assert_eq!(budget.acquire(Priority::Interactive).await, Ok(()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a Redis up for long admits at once: {:?}",
        started.elapsed()
    );

    let mut private = crate::services::PrivateRedis::start();
    let url = private.url();
    let connect = || async {
        let conn = redis::Client::open(url.as_str())
            .expect("url")
            .get_connection_manager()
            .await
            .expect("private redis");
        Budgets::shared(SharedStore::new(conn, "crmsync-it"), waits)
    };
    // Used before the restart, as a fleet would have.
    let before = connect().await;
    let budget = before.get("hubspot:1:burst", budget_spec);
    let _ = budget.acquire(Priority::Interactive).await;

    // Taken before the restart: Redis starts somewhere inside
    // `restart_empty`, so a window from here is never more than the hold.
    let restarted = std::time::Instant::now();
    private.restart_empty();
    let operators_view = redis::Client::open(url.as_str())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("private redis");
    let status = shared::status(&operators_view, "crmsync-it", "hubspot:1:burst", window)
        .await
        .expect("status");
    assert!(
        status.cool_down_until.is_some(),
        "operators see the pause: {status:?}"
    );
    let fresh_process = connect().await;
    let budget = fresh_process.get("hubspot:1:burst", budget_spec);
    assert_eq!(budget.acquire(Priority::Interactive).await, Ok(()));
    let held = restarted.elapsed();
    assert!(
        held >= window - Duration::from_millis(200),
        "admitted {held:?} after Redis restarted empty; the CRM's window is {window:?}"
    );
    // Redis's whole-second uptime may add up to two seconds to the hold.
    assert!(held < window + Duration::from_secs(3), "held for {held:?}");
}

/// A budget of the general shape, every limit at crmsync's full share.
fn plan(limits: Limits, max_cost: u32) -> BudgetPlan {
    BudgetPlan {
        limits,
        max_cost,
        share: 1.0,
        kind: "calls",
    }
}

/// The wait a refused take asks for.
fn refused_for(taken: Result<Permit, BudgetError>) -> Duration {
    match taken {
        Err(BudgetError::WaitTooLong { retry_after, .. }) => retry_after,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn rolling(units: u32, window: Duration) -> Limits {
    Limits {
        rolling: Some(WindowLimit {
            requests: units,
            window,
        }),
        ..Limits::default()
    }
}

fn in_flight(calls: u32, lease: Duration) -> Limits {
    Limits {
        in_flight: Some(InFlightLimit { calls, lease }),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_day_sums_the_costs_of_every_process_until_its_oldest_units_leave_it() {
    let ns = namespace();
    let (a, b) = (
        process(&ns, Waits::default()).await,
        process(&ns, Waits::default()).await,
    );
    // Zoho-like: 10 credits per rolling 24 h; a search costs 3, a read 1.
    let credits = plan(rolling(10, DAY), 3);
    let (in_a, in_b) = (
        a.get("zoho:1:credits", credits),
        b.get("zoho:1:credits", credits),
    );
    for (budget, cost) in [(&in_a, 3), (&in_b, 3), (&in_a, 3), (&in_b, 1)] {
        budget
            .take(Priority::Interactive, cost)
            .await
            .expect("room in the day")
            .release()
            .await;
    }
    for (budget, priority) in [
        (&in_a, Priority::Interactive),
        (&in_b, Priority::Background),
    ] {
        let retry = refused_for(budget.take(priority, 1).await);
        // The first search's credits leave the window a day after it, at
        // most one bucket (a minute) late.
        assert!(
            retry > DAY - Duration::from_secs(30) && retry <= DAY + Duration::from_secs(60),
            "{retry:?}"
        );
    }
    // A later day's view: nothing else was counted by the refusals.
    let c = process(&ns, Waits::default()).await;
    let retry = refused_for(
        c.get("zoho:1:credits", credits)
            .take(Priority::Interactive, 1)
            .await,
    );
    assert!(retry > DAY - Duration::from_secs(30), "{retry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_rolling_window_admits_again_once_its_units_have_left_it() {
    let ns = namespace();
    let window = Duration::from_secs(2);
    let budget_plan = plan(rolling(5, window), 5);
    let (a, b) = (
        process(&ns, Waits::default()).await,
        process(&ns, Waits::default()).await,
    );
    let started = std::time::Instant::now();
    a.get("pipedrive:1:tokens", budget_plan)
        .take(Priority::Interactive, 5)
        .await
        .expect("an empty window")
        .release()
        .await;
    // Another process's call waits (within its 5 s) for the units to leave.
    b.get("pipedrive:1:tokens", budget_plan)
        .take(Priority::Interactive, 2)
        .await
        .expect("admitted once the window moved on")
        .release()
        .await;
    let held = started.elapsed();
    assert!(
        held >= window - Duration::from_millis(50) && held < window + Duration::from_millis(600),
        "{held:?}"
    );
}

/// Units that left the window stay forgotten when the call that noticed
/// is itself refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_window_forgets_old_units_even_for_a_refused_call() {
    let ns = namespace();
    let budgets = process(&ns, waiting(Duration::from_millis(100))).await;
    let budget = budgets.get(
        "zoho:1:credits",
        plan(rolling(5, Duration::from_secs(2)), 1),
    );
    let take = |cost| {
        let budget = budget.clone();
        async move { budget.take(Priority::Interactive, cost).await }
    };
    let started = std::time::Instant::now();
    let at = |ms: u64| Duration::from_millis(ms).saturating_sub(started.elapsed());
    take(3).await.expect("room").release().await;
    tokio::time::sleep(at(1_000)).await;
    take(1).await.expect("room").release().await;
    tokio::time::sleep(at(1_500)).await;
    take(1).await.expect("room").release().await;
    // The first 3 have left the window; 2 + 4 do not fit.
    tokio::time::sleep(at(2_100)).await;
    let retry = refused_for(take(4).await);
    assert!(retry < Duration::from_secs(1), "{retry:?}");
    // 2 + 3 do.
    take(3)
        .await
        .expect("the room the first 3 left")
        .release()
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(2_900),
        "within the window of the 1s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_holds_across_processes_and_a_returned_lease_frees_its_place() {
    let ns = namespace();
    let limits = in_flight(2, Duration::from_secs(30));
    let holder = process(&ns, Waits::default()).await;
    let budget = holder.get("dynamics:1:calls", plan(limits, 1));
    let first = budget
        .take(Priority::Interactive, 1)
        .await
        .expect("a lease");
    let second = budget
        .take(Priority::Interactive, 1)
        .await
        .expect("a lease");

    // A process that may wait only a little is refused, soon.
    let impatient = process(&ns, waiting(Duration::from_millis(300))).await;
    let started = std::time::Instant::now();
    let retry = refused_for(
        impatient
            .get("dynamics:1:calls", plan(limits, 1))
            .take(Priority::Background, 1)
            .await,
    );
    assert!(retry <= Duration::from_secs(1), "{retry:?}");
    assert!(started.elapsed() < Duration::from_millis(800), "not parked");

    // One that may wait gets the lease the holder gives back.
    let patient = process(&ns, Waits::default()).await;
    let patient_budget = patient.get("dynamics:1:calls", plan(limits, 1));
    let waiting_call = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let permit = patient_budget.take(Priority::Interactive, 1).await;
        (permit, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.release().await;
    let (permit, waited) = waiting_call.await.expect("join");
    let _third = permit.expect("the returned lease");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(800),
        "{waited:?}"
    );
    // A permit dropped without an explicit release gives its lease back too.
    drop(second);
    let late = process(&ns, Waits::default()).await;
    let started = std::time::Instant::now();
    let _fourth = late
        .get("dynamics:1:calls", plan(limits, 1))
        .take(Priority::Interactive, 1)
        .await
        .expect("the dropped permit's lease");
    assert!(started.elapsed() < Duration::from_millis(800));
}

/// A process that dies never gives its leases back: Redis sees nothing
/// more of it, which is what forgetting the permit and dropping the
/// process's connection leave behind. Its lease frees at its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_process_that_dies_frees_at_its_expiry() {
    let ns = namespace();
    let lease = Duration::from_secs(2);
    let limits = in_flight(1, lease);
    let started = std::time::Instant::now();
    {
        let dying = process(&ns, Waits::default()).await;
        let permit = dying
            .get("zoho:1:calls", plan(limits, 1))
            .take(Priority::Interactive, 1)
            .await
            .expect("a lease");
        std::mem::forget(permit);
    }
    let survivor = process(&ns, Waits::default()).await;
    let _permit = survivor
        .get("zoho:1:calls", plan(limits, 1))
        .take(Priority::Interactive, 1)
        .await
        .expect("the dead process's lease, expired");
    let held = started.elapsed();
    assert!(
        held >= lease - Duration::from_millis(50) && held < lease + Duration::from_millis(700),
        "{held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_crm_reports_lowers_the_fleets_budget_and_never_raises_it() {
    let ns = namespace();
    let (a, b) = (
        process(&ns, Waits::default()).await,
        process(&ns, Waits::default()).await,
    );
    // Salesforce-like: 10 calls per rolling 24 h configured.
    let calls = plan(rolling(10, DAY), 1);
    let (in_a, in_b) = (
        a.get("salesforce:1:api", calls),
        b.get("salesforce:1:api", calls),
    );
    // `Sforce-Limit-Info: api-usage=99997/100000`, read by one process...
    in_a.learn(Report {
        limit: LimitKind::Rolling,
        remaining: 3,
        of: Some(100_000),
        resets_in: None,
    })
    .await;
    // ...holds the other to 3 more calls, for five minutes (then the next
    // answer's figures take over).
    for _ in 0..3 {
        in_b.take(Priority::Interactive, 1)
            .await
            .expect("reported room")
            .release()
            .await;
    }
    let retry = refused_for(in_b.take(Priority::Interactive, 1).await);
    assert!(
        retry > Duration::from_secs(290) && retry <= Duration::from_secs(300),
        "{retry:?}"
    );
    // A CRM that says it allows far more does not raise the configured 10.
    in_b.learn(Report {
        limit: LimitKind::Rolling,
        remaining: 1_000_000,
        of: Some(1_000_000),
        resets_in: None,
    })
    .await;
    for _ in 0..7 {
        in_a.take(Priority::Interactive, 1)
            .await
            .expect("configured room")
            .release()
            .await;
    }
    let retry = refused_for(in_a.take(Priority::Interactive, 1).await);
    assert!(retry > DAY - Duration::from_secs(30), "{retry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_burst_capacity_slows_the_fleets_pace() {
    let ns = namespace();
    let (a, b) = (
        process(&ns, Waits::default()).await,
        process(&ns, Waits::default()).await,
    );
    let window = Duration::from_secs(1);
    let burst = plan(
        Limits {
            pace: Some(WindowLimit {
                requests: 100,
                window,
            }),
            ..Limits::default()
        },
        1,
    );
    // Pipedrive-like `x-ratelimit-limit: 10`, `x-ratelimit-remaining: 10`.
    a.get("pipedrive:1:burst", burst)
        .learn(Report {
            limit: LimitKind::Pace,
            remaining: 10,
            of: Some(10),
            resets_in: Some(window),
        })
        .await;
    let in_b = b.get("pipedrive:1:burst", burst);
    let started = std::time::Instant::now();
    for _ in 0..4 {
        in_b.acquire(Priority::Interactive).await.expect("paced");
    }
    // 10 per second paces at 1.01 s ÷ 9, not 1.01 s ÷ 99.
    let period = WindowLimit {
        requests: 10,
        window,
    }
    .period(1.0);
    assert!(
        started.elapsed() >= period * 3 - Duration::from_millis(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_costing_more_than_a_whole_window_is_refused_as_an_error_not_deferred() {
    let budgets = process(&namespace(), Waits::default()).await;
    match budgets
        .get("zoho:1:credits", plan(rolling(5, DAY), 1))
        .take(Priority::Interactive, 6)
        .await
    {
        Err(BudgetError::Unavailable(message)) => assert!(message.contains("6"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `crmsync status` in an empty folder with `env` and, when given, the
/// overlay `config/old.toml`.
fn crmsync_status(env: &[(&str, &str)], overlay: Option<&str>) -> std::process::Output {
    let dir =
        std::env::temp_dir().join(format!("crmsync-budgets-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("config")).expect("temp dir");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_crmsync"));
    command.current_dir(&dir).stdin(std::process::Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CRMSYNC") {
            command.env_remove(key);
        }
    }
    if let Some(toml) = overlay {
        std::fs::write(dir.join("config/old.toml"), toml).expect("overlay");
        command.env("CRMSYNC_ENV", "old");
    }
    let output = command
        .envs(env.iter().copied())
        .arg("status")
        .output()
        .expect("run crmsync");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[test]
fn a_moved_budget_key_stops_the_process_naming_its_new_key() {
    let output = crmsync_status(&[("CRMSYNC__HUBSPOT__BUDGET_SHARE", "0.5")], None);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("CRMSYNC__HUBSPOT__BUDGET_SHARE")
            && message.contains("budgets.share (CRMSYNC__BUDGETS__SHARE)"),
        "{message}"
    );
    let output = crmsync_status(&[], Some("[hubspot]\nbudget_max_wait_secs = 10\n"));
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("old.toml")
            && message.contains("budgets.max_wait_secs (CRMSYNC__BUDGETS__MAX_WAIT_SECS)"),
        "{message}"
    );
    // The new keys start it.
    let output = crmsync_status(
        &[("CRMSYNC__BUDGETS__SHARE", "0.5")],
        Some("[budgets]\nmax_wait_secs = 10\n"),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The connection view shows the account's fleet-wide budget as the workers
/// use it: the limits crmsync is configured to and the calls made today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_view_shows_the_accounts_budget_and_todays_calls() {
    let mut fleet = crate::fleet::Fleet::start(crate::fleet::Backend::Postgres, 150).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let api = fleet.start_api_client().await;
    let view = api.connection_view(fleet.connection).await;
    let budget = &view["rateBudget"];
    assert_eq!(
        budget["requestsPer10s"],
        json!(fleet.settings.hubspot.requests_per_10s),
        "{view}"
    );
    assert_eq!(
        budget["requestsPerDay"],
        json!(fleet.settings.hubspot.requests_per_day),
        "{view}"
    );
    assert_eq!(
        budget["share"],
        json!(fleet.settings.budgets.share),
        "{view}"
    );
    // 150 contacts are listed whole (on this budget, not search's): two
    // list pages of 100.
    assert!(
        budget["requestsToday"].as_u64().is_some_and(|n| n >= 2),
        "{view}"
    );
    fleet.finish().await;
}
