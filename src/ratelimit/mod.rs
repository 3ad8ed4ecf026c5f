//! Rate budgets per (provider, CRM account, kind of call), paced so that the
//! CRM's rolling window is used to the last request and never exceeded — by
//! the whole fleet, not by each process (`SYNC_ALGORITHMS.md` §7).
//!
//! - **Pacing.** A rolling window of `L` requests per `W` admits GCRA traffic
//!   with burst `b` and rate `r` only if `b + r·W ≤ L`; with `b = 1` the pace
//!   is one request per `W / (L − 1)`, plus 1 % for arrival jitter, of the
//!   share of `L` crmsync may use (the rest is the customer's).
//! - **Fleet-wide.** With Redis, every process reserves its slot in one
//!   atomic script on one key per budget ([`shared`]), on Redis's clock: the
//!   slots of all processes together keep the pace. `governor` in front
//!   smooths each process (on average never faster than the whole budget,
//!   in bursts no longer than the slots one may reserve ahead); without
//!   Redis (the embedded mode) it is the only limiter, with no burst.
//! - **Cool-down.** A 429 sets a cool-down on the same key that every caller
//!   honours before its next request.
//! - **Daily budgets** count requests per UTC day on the same key.
//! - **Priorities.** Interactive calls (webhook follow-ups, pushes) reserve a
//!   slot up to `max_wait` ahead; background calls (full-sync pages) take
//!   only the next free slot, so interactive work is served first.
//! - **No parked workers.** A call whose slot is further away than
//!   `max_wait` is refused with the wait ([`BudgetError::WaitTooLong`]); the
//!   job is rescheduled then instead of holding a worker slot.

pub mod shared;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A rolling-window limit as the CRM states it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

impl WindowLimit {
    /// The pacing period for this limit when we may use `share` of it.
    pub fn period(&self, share: f64) -> Duration {
        let usable = ((f64::from(self.requests) * share).floor() as u32).max(2);
        self.window.mul_f64(1.01) / (usable - 1)
    }
}

/// Who is asking: interactive work is served before background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Webhook follow-ups, pushes, deltas: reserve a slot up to `max_wait`.
    Interactive,
    /// Full-sync pages: take only the next free slot, else wait and retry.
    Background,
}

/// Why a request may not go now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The budget's next slot is further away than a job should wait for:
    /// reschedule after `retry_after`.
    #[error("rate budget {budget} has no slot for {retry_after:?}")]
    WaitTooLong {
        /// The budget.
        budget: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The shared budget (Redis) cannot be asked: rather than risk the
    /// fleet exceeding it, the request waits for a retry.
    #[error("rate budget store unavailable: {0}")]
    Unavailable(String),
}

/// How long callers may wait for a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waits {
    /// The longest wait for a slot before the job is rescheduled.
    pub max_wait: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(5),
        }
    }
}

/// One budget: the in-process limiter, the local cool-down and day count,
/// and, in a fleet, its shared key.
#[derive(Debug)]
pub struct Budget {
    name: String,
    kind: &'static str,
    period: Duration,
    daily_limit: u32,
    local: DefaultDirectRateLimiter,
    cooldown_until: Mutex<Option<Instant>>,
    day: Mutex<(u64, u32)>,
    shared: Option<shared::SharedBudget>,
    waits: Waits,
}

impl Budget {
    /// The provider the budget belongs to (its name's first part), so that
    /// metrics add up per provider across accounts.
    fn provider(&self) -> String {
        self.name
            .split_once(':')
            .map_or(self.name.as_str(), |(provider, _)| provider)
            .to_string()
    }

    /// The budget's name (`hubspot:{account}:burst`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for this budget's next slot (after any cool-down), or says why
    /// the request should not wait here.
    pub async fn acquire(&self, priority: Priority) -> Result<(), BudgetError> {
        let started = Instant::now();
        let outcome = self.acquire_inner(priority, started).await;
        let label = match &outcome {
            Ok(()) => "admitted",
            Err(BudgetError::WaitTooLong { .. }) => "deferred",
            Err(BudgetError::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("crmsync_budget_requests_total", "provider" => self.provider(), "budget" => self.kind, "outcome" => label)
            .increment(1);
        if outcome.is_ok() {
            metrics::histogram!("crmsync_budget_wait_seconds", "provider" => self.provider(), "budget" => self.kind)
                .record(started.elapsed().as_secs_f64());
        }
        outcome
    }

    async fn acquire_inner(&self, priority: Priority, started: Instant) -> Result<(), BudgetError> {
        loop {
            let until = self.cooldown_until.lock().map(|g| *g).unwrap_or(None);
            if let Some(until) = until {
                let wait = until.saturating_duration_since(Instant::now());
                if started.elapsed() + wait > self.waits.max_wait {
                    return Err(self.too_long(wait));
                }
                tokio::time::sleep(wait).await;
            }
            self.local.until_ready().await;
            let Some(shared) = &self.shared else {
                return self.count_locally();
            };
            let ahead = match priority {
                Priority::Interactive => self.waits.max_wait.saturating_sub(started.elapsed()),
                // Only the next slot: interactive callers reserve ahead.
                Priority::Background => self.period,
            };
            match shared.take(self.period, ahead, self.daily_limit).await? {
                shared::Taken::Slot { wait } if wait.is_zero() => return Ok(()),
                shared::Taken::Slot { wait } => {
                    tokio::time::sleep(wait).await;
                    // A 429 while we waited for the slot (here or in any
                    // process) cools the budget down: honour it before
                    // sending, or the request lands inside the cool-down —
                    // then take a fresh slot, so that the fleet's waiting
                    // requests do not all go at once when it ends.
                    if self.honour_cool_down(started).await? {
                        continue;
                    }
                    return Ok(());
                }
                shared::Taken::Refused { wait } => {
                    let left = self.waits.max_wait.saturating_sub(started.elapsed());
                    if priority == Priority::Background && wait < left {
                        // Try again when the slot frees up (others may
                        // reserve it first: they are served before us).
                        tokio::time::sleep(wait.max(self.period / 2)).await;
                        continue;
                    }
                    return Err(self.too_long(wait));
                }
            }
        }
    }

    /// Waits out a cool-down that began after a slot was reserved (by this
    /// process or any other), or says it is too long to wait: what a
    /// request reserved earlier checks just before it is sent. `true`: it
    /// waited, and the caller should take a fresh slot.
    pub async fn honour_cool_down(&self, started: Instant) -> Result<bool, BudgetError> {
        let local = self
            .cooldown_until
            .lock()
            .map(|g| *g)
            .unwrap_or(None)
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let shared = match &self.shared {
            Some(shared) => shared.cool_down_left().await?,
            None => Duration::ZERO,
        };
        let left = shared.max(local);
        if left.is_zero() {
            return Ok(false);
        }
        if started.elapsed() + left > self.waits.max_wait {
            return Err(self.too_long(left));
        }
        tokio::time::sleep(left).await;
        Ok(true)
    }

    /// The embedded mode's day count (the fleet's is in Redis).
    fn count_locally(&self) -> Result<(), BudgetError> {
        if self.daily_limit == 0 {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let today = now.as_secs() / 86_400;
        let mut day = self
            .day
            .lock()
            .map_err(|_| BudgetError::Unavailable("day counter poisoned".into()))?;
        if day.0 != today {
            *day = (today, 0);
        }
        if day.1 >= self.daily_limit {
            let midnight = Duration::from_secs((today + 1) * 86_400);
            return Err(self.too_long(midnight.saturating_sub(now)));
        }
        day.1 += 1;
        Ok(())
    }

    fn too_long(&self, retry_after: Duration) -> BudgetError {
        BudgetError::WaitTooLong {
            budget: self.name.clone(),
            retry_after: retry_after.max(Duration::from_millis(100)),
        }
    }

    /// Makes every caller — in every process sharing the budget — wait
    /// `for_` before the next request (after a 429).
    pub async fn cool_down(&self, for_: Duration) {
        if let Ok(mut guard) = self.cooldown_until.lock() {
            let until = Instant::now() + for_;
            if guard.is_none_or(|g| g < until) {
                *guard = Some(until);
            }
        }
        metrics::counter!("crmsync_budget_cooldowns_total", "provider" => self.provider(), "budget" => self.kind)
            .increment(1);
        if let Some(shared) = &self.shared
            && let Err(e) = shared.cool_down(for_).await
        {
            tracing::warn!(budget = %self.name, error = %e, "could not share a cool-down");
        }
    }
}

/// What a budget is for and how big it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// The rolling-window limit.
    pub limit: WindowLimit,
    /// Requests per UTC day (0: none).
    pub daily_limit: u32,
    /// Share of both crmsync may use.
    pub share: f64,
    /// Label for metrics (`burst`, `search`).
    pub kind: &'static str,
}

/// Every budget of this process, keyed by provider, account and call kind;
/// shared through Redis when the fleet has one.
#[derive(Debug, Default)]
pub struct Budgets {
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
    shared: Option<shared::SharedStore>,
    waits: Waits,
}

impl Budgets {
    /// Budgets of this process only (the embedded mode).
    pub fn local(waits: Waits) -> Self {
        Self {
            waits,
            ..Self::default()
        }
    }

    /// Budgets shared by every process using the same Redis and namespace.
    pub fn shared(store: shared::SharedStore, waits: Waits) -> Self {
        Self {
            shared: Some(store),
            waits,
            ..Self::default()
        }
    }

    /// The budget named `name`, created from `spec` on first use.
    pub fn get(&self, name: &str, spec: BudgetSpec) -> Arc<Budget> {
        let make = || {
            let period = spec.limit.period(spec.share);
            // Alone, the process paces exactly (burst 1). In a fleet the
            // shared key paces; the local limiter keeps the process to the
            // budget's rate on average but lets it reserve the slots that
            // fit in `max_wait` at once (else its own callers would queue
            // here, one period apart, before they could reserve ahead).
            let burst = if self.shared.is_some() {
                let ahead = self.waits.max_wait.as_secs_f64() / period.as_secs_f64();
                (ahead.ceil() as u32).saturating_add(1)
            } else {
                1
            };
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            Arc::new(Budget {
                name: name.to_string(),
                kind: spec.kind,
                period,
                daily_limit: (f64::from(spec.daily_limit) * spec.share).floor() as u32,
                local: RateLimiter::direct(quota),
                cooldown_until: Mutex::new(None),
                day: Mutex::new((0, 0)),
                shared: self
                    .shared
                    .as_ref()
                    .map(|s| s.budget(name, spec.limit.window)),
                waits: self.waits,
            })
        };
        match self.budgets.lock() {
            Ok(mut map) => map.entry(name.to_string()).or_insert_with(make).clone(),
            Err(_) => make(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_fits_the_rolling_window() {
        let limit = WindowLimit {
            requests: 100,
            window: Duration::from_secs(10),
        };
        let period = limit.period(1.0);
        // One burst slot plus the requests paced within any window stay ≤ 100.
        let in_window = 1 + (limit.window.as_secs_f64() / period.as_secs_f64()).floor() as u32;
        assert!(in_window <= 100, "{in_window}");
        // And the pace wastes little: within 2 % of the budget.
        assert!(period <= Duration::from_millis(103), "{period:?}");
        let half = limit.period(0.5);
        assert!(half >= Duration::from_millis(200), "{half:?}");
    }

    fn spec(daily_limit: u32) -> BudgetSpec {
        BudgetSpec {
            limit: WindowLimit {
                requests: 1000,
                window: Duration::from_secs(1),
            },
            daily_limit,
            share: 1.0,
            kind: "burst",
        }
    }

    #[tokio::test]
    async fn the_embedded_day_count_refuses_past_the_daily_limit_until_midnight() {
        let budgets = Budgets::local(Waits::default());
        let budget = budgets.get("hubspot:1:burst", spec(3));
        for _ in 0..3 {
            assert_eq!(budget.acquire(Priority::Interactive).await, Ok(()));
        }
        match budget.acquire(Priority::Interactive).await {
            Err(BudgetError::WaitTooLong { retry_after, .. }) => {
                assert!(
                    retry_after <= Duration::from_secs(86_400),
                    "{retry_after:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cool_down_longer_than_the_wait_limit_reschedules_instead_of_waiting() {
        let budgets = Budgets::local(Waits {
            max_wait: Duration::from_secs(1),
        });
        let budget = budgets.get("hubspot:1:burst", spec(0));
        budget.cool_down(Duration::from_secs(30)).await;
        let started = Instant::now();
        match budget.acquire(Priority::Interactive).await {
            Err(BudgetError::WaitTooLong { retry_after, .. }) => {
                assert!(retry_after > Duration::from_secs(29), "{retry_after:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "did not park"
        );
    }
}
