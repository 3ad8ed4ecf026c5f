//! Fleet-wide rate budgets: processes that share a Redis share each CRM
//! account's budget — its pace, its cool-down and its day count — and a
//! caller that would wait too long is refused with the wait instead.

use crate::fleet::redis_url;
use crate::support::{PORTAL, TOKEN, TestSandbox};
use crmsync::config::Settings;
use crmsync::domain::CrmObject;
use crmsync::providers::ProviderError;
use crmsync::providers::hubspot::HubspotClient;
use crmsync::ratelimit::shared::SharedStore;
use crmsync::ratelimit::{BudgetError, BudgetSpec, Budgets, Priority, Waits, WindowLimit, shared};
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
        let budgets = process(
            &ns,
            Waits {
                max_wait: Duration::from_secs(30),
            },
        )
        .await;
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
    let waits = Waits {
        max_wait: Duration::from_secs(1),
    };
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
    let waits = Waits {
        max_wait: Duration::from_secs(5),
    };
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
    let impatient = process(
        &ns,
        Waits {
            max_wait: Duration::from_secs(1),
        },
    )
    .await;
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
    let budgets = process(
        &ns,
        Waits {
            max_wait: Duration::from_secs(1),
        },
    )
    .await;
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
    let waits = Waits {
        max_wait: Duration::from_secs(10),
    };
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
