//! Rate budgets per (provider, CRM account, kind of call), kept so that the
//! CRM's limits are used to the last unit and never exceeded — by the whole
//! fleet, not by each process (`SYNC_ALGORITHMS.md` §7).
//!
//! **One model for every CRM.** A budget is a set of limits a call draws
//! from at once, each call costing `n` units (a HubSpot or Salesforce call
//! 1, a Pipedrive list 10 tokens, a Zoho search 3 credits); an account has
//! several budgets (burst, search, concurrency). The limits, any of which a
//! budget may have ([`Limits`], the algorithm in [`window`]):
//! - **a pace** over a window of any length (HubSpot's 10 s, Pipedrive's
//!   2 s, Dynamics' 5 min): GCRA, one unit per
//!   `max(W·1.01, W + 50 ms) / (L − m + 1)` of the share of `L` crmsync may
//!   use, `m` being the largest cost the pace lets through at once (1 for
//!   HubSpot: one request per `W / L`, plus 1 % or 50 ms, whichever is
//!   more, for arrival jitter);
//! - **a fixed-window count** (a UTC day for HubSpot's daily budget);
//! - **a rolling-window count** (Salesforce's and Zoho's 24 h), in buckets;
//! - **an in-flight limit** (Zoho, Dynamics): a lease per call that expires,
//!   so a process that dies holding one cannot leak it.
//!
//! What a CRM says of its own limits ([`Report`]: `Sforce-Limit-Info`,
//! `x-ms-ratelimit-*`, Pipedrive's `x-ratelimit-*`) lowers them, never above
//! their configured size ([`Budget::learn`]).
//!
//! - **Fleet-wide.** With Redis, every process takes from one atomic script
//!   on one key per budget ([`shared`]), on Redis's clock: the slots of all
//!   processes together keep the pace. `governor` in front smooths each
//!   process (on average never faster than the whole budget, in bursts no
//!   longer than the slots one may reserve ahead); without Redis (the
//!   embedded mode) the same algorithm runs in the process.
//! - **Cool-down.** A throttle (whatever the CRM's reply: each adapter
//!   classifies its own, see `providers::throttle`) sets a cool-down on the
//!   budget's key that every caller honours before its next request.
//! - **Share.** `budgets.share` of every limit is crmsync's; the rest is
//!   left to the customer's own integrations.
//! - **Priorities.** Interactive calls (webhook follow-ups, pushes) reserve a
//!   slot up to `budgets.max_wait_secs` ahead; background calls (full-sync
//!   pages) take only the next free slot, so interactive work is served
//!   first.
//! - **No parked workers.** A call whose slot is further away than
//!   `max_wait` is refused with the wait ([`BudgetError::WaitTooLong`]); the
//!   job is rescheduled then instead of holding a worker slot.

pub mod shared;
pub mod window;

pub use window::{LimitKind, Report};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use window::{CountRule, InFlightRule, Outcome, PaceRule, Reason, Rules, micros, usable};

/// A limit as the CRM states it: units (requests, tokens, credits) per
/// window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowLimit {
    /// Units allowed per window (for HubSpot, requests).
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

impl WindowLimit {
    /// The pacing period for this limit when we may use `share` of it, for
    /// calls that cost 1.
    pub fn period(&self, share: f64) -> Duration {
        self.paced(share, 1)
    }

    /// The pacing period when a call may cost up to `max_cost` at once: one
    /// unit per `max(W·1.01, W + 50 ms) / (usable − max_cost + 1)` (see
    /// [`window`]).
    pub fn paced(&self, share: f64, max_cost: u32) -> Duration {
        let usable = usable(self.requests, share, max_cost.saturating_add(1));
        Duration::from_micros(window::period_for(micros(self.window), usable, max_cost))
    }
}

/// A fleet-wide in-flight limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InFlightLimit {
    /// Calls the CRM serves at once.
    pub calls: u32,
    /// How long a call's lease lives after its start: longer than the
    /// request timeout, so that a live call never outlives its lease, and
    /// as short as that allows, so that a dead process's lease frees soon.
    pub lease: Duration,
}

/// Every limit of one budget; a call draws from all of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Paced (GCRA) over its window.
    pub pace: Option<WindowLimit>,
    /// Counted per fixed window aligned on the Unix epoch (86,400 s: a UTC
    /// day).
    pub fixed: Option<WindowLimit>,
    /// Counted over the rolling window.
    pub rolling: Option<WindowLimit>,
    /// Calls in flight at once.
    pub in_flight: Option<InFlightLimit>,
}

/// What a budget is for and how big it is: the general shape every CRM's
/// budgets take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPlan {
    /// Its limits.
    pub limits: Limits,
    /// The largest cost a call may have without waiting extra for its pace
    /// (≥ 1; the adapter's costliest common call kind). A costlier call
    /// waits out its excess; a call costing more than a whole count window
    /// is refused ([`BudgetError::Unavailable`]).
    pub max_cost: u32,
    /// Share of every limit this kind of call may use, before
    /// `budgets.share` (a sweep's part of the account's rate; 1.0 for most).
    pub share: f64,
    /// Label for metrics (`burst`, `search`).
    pub kind: &'static str,
}

/// The common shape of HubSpot's budgets: one paced window and a UTC-day
/// count, every call costing 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// The rolling-window limit (paced).
    pub limit: WindowLimit,
    /// Requests per UTC day (0: none).
    pub daily_limit: u32,
    /// Share of both this kind of call may use, before `budgets.share`.
    pub share: f64,
    /// Label for metrics (`burst`, `search`).
    pub kind: &'static str,
}

/// The length of a UTC day, HubSpot's daily window.
pub const DAY: Duration = Duration::from_secs(86_400);

impl From<BudgetSpec> for BudgetPlan {
    fn from(spec: BudgetSpec) -> Self {
        BudgetPlan {
            limits: Limits {
                pace: Some(spec.limit),
                fixed: (spec.daily_limit > 0).then_some(WindowLimit {
                    requests: spec.daily_limit,
                    window: DAY,
                }),
                ..Limits::default()
            },
            max_cost: 1,
            share: spec.share,
            kind: spec.kind,
        }
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
    /// fleet exceeding it, the request waits for a retry. (Also a call that
    /// costs more than a whole window allows: it would never fit.)
    #[error("rate budget store unavailable: {0}")]
    Unavailable(String),
}

/// How this deployment uses its budgets (`[budgets]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waits {
    /// The longest wait for a slot before the job is rescheduled
    /// (`budgets.max_wait_secs`).
    pub max_wait: Duration,
    /// Share of every budget crmsync may use, in (0, 1]; the rest is the
    /// customer's (`budgets.share`).
    pub share: f64,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(5),
            share: 1.0,
        }
    }
}

impl From<&crate::config::BudgetSettings> for Waits {
    fn from(settings: &crate::config::BudgetSettings) -> Self {
        Self {
            max_wait: Duration::from_secs(settings.max_wait_secs),
            share: settings.share,
        }
    }
}

/// The shortest pause between two tries of a refused take, and the longest
/// between two looks at a full in-flight limit (a lease may come back any
/// moment; the oldest one's expiry is only the latest it frees).
const MIN_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(200);

/// One budget: its limits at their usable size, the process's own state
/// (the embedded mode's whole state; in a fleet, the smoothing limiter and
/// a cached cool-down) and, in a fleet, its shared keys.
#[derive(Debug)]
pub struct Budget {
    name: String,
    kind: &'static str,
    rules: Rules,
    /// As configured, before the share: what the CRM's figures are held to.
    limits: Limits,
    share: f64,
    /// The pace's period (zero without a pace).
    period: Duration,
    /// In a fleet: keeps this process to the budget's average rate.
    smoother: Option<(DefaultDirectRateLimiter, u32)>,
    cooldown_until: Mutex<Option<Instant>>,
    state: Arc<Mutex<window::State>>,
    shared: Option<Arc<shared::SharedBudget>>,
    waits: Waits,
}

/// Leave to send one call: holds its in-flight lease, if the budget has an
/// in-flight limit, until [`Permit::release`] (or drop) gives it back.
#[derive(Debug)]
#[must_use = "dropping the permit ends the call's in-flight lease"]
pub struct Permit {
    lease: Option<(String, Releaser)>,
}

#[derive(Debug)]
enum Releaser {
    Local(Arc<Mutex<window::State>>),
    Shared(Arc<shared::SharedBudget>),
}

impl Permit {
    /// Gives the call's lease back now that its answer is in; without a
    /// lease, nothing.
    pub async fn release(mut self) {
        if let Some((lease, releaser)) = self.lease.take() {
            match releaser {
                Releaser::Local(state) => {
                    if let Ok(mut state) = state.lock() {
                        state.release(&lease);
                    }
                }
                Releaser::Shared(budget) => {
                    if let Err(e) = budget.release(&lease).await {
                        // It expires anyway.
                        tracing::debug!(error = %e, "could not give an in-flight lease back");
                    }
                }
            }
        }
    }
}

impl Drop for Permit {
    /// A permit dropped unreleased (an early return, a cancelled future)
    /// gives its lease back in the background; a process that dies holding
    /// one leaves it to expire.
    fn drop(&mut self) {
        let Some((lease, releaser)) = self.lease.take() else {
            return;
        };
        match releaser {
            Releaser::Local(state) => {
                if let Ok(mut state) = state.lock() {
                    state.release(&lease);
                }
            }
            Releaser::Shared(budget) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = budget.release(&lease).await;
                    });
                }
            }
        }
    }
}

/// Now on the wall clock, µs since the epoch (the embedded mode's clock; a
/// fleet's is Redis's).
fn wall_micros() -> u64 {
    micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
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

    /// Waits for this budget's next slot (after any cool-down) for a call
    /// costing 1, or says why the request should not wait here. For budgets
    /// without an in-flight limit; with one, see [`Self::take`].
    pub async fn acquire(&self, priority: Priority) -> Result<(), BudgetError> {
        self.take(priority, 1).await.map(drop)
    }

    /// Waits until a call costing `cost` units may go (after any cool-down,
    /// its pace slot, room in every count and, with an in-flight limit, a
    /// lease), or says why it should not wait here. Hold the permit until
    /// the call's answer is in.
    pub async fn take(&self, priority: Priority, cost: u32) -> Result<Permit, BudgetError> {
        let started = Instant::now();
        let outcome = self.take_inner(priority, cost.max(1), started).await;
        let label = match &outcome {
            Ok(_) => "admitted",
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

    async fn take_inner(
        &self,
        priority: Priority,
        cost: u32,
        started: Instant,
    ) -> Result<Permit, BudgetError> {
        let mut poll = MIN_POLL;
        loop {
            let until = self.cooldown_until.lock().map(|g| *g).unwrap_or(None);
            if let Some(until) = until {
                let wait = until.saturating_duration_since(Instant::now());
                if started.elapsed() + wait > self.waits.max_wait {
                    return Err(self.too_long(wait));
                }
                tokio::time::sleep(wait).await;
            }
            if let Some((smoother, burst)) = &self.smoother {
                // Cells of the local limiter: at most its burst at once (a
                // costlier call's excess waits in the shared pace).
                let n = NonZeroU32::new(cost.min(*burst)).unwrap_or(NonZeroU32::MIN);
                if smoother.until_n_ready(n).await.is_err() {
                    smoother.until_ready().await;
                }
            }
            let lease = self
                .rules
                .in_flight
                .map(|_| uuid::Uuid::new_v4().simple().to_string());
            let (outcome, permit) = match &self.shared {
                Some(shared) => {
                    let ahead = match priority {
                        Priority::Interactive => {
                            self.waits.max_wait.saturating_sub(started.elapsed())
                        }
                        // Only the next slot: interactive callers reserve ahead.
                        Priority::Background => self.period,
                    };
                    let outcome = shared
                        .take(ahead, cost, lease.as_deref().unwrap_or_default())
                        .await?;
                    let releaser = Releaser::Shared(shared.clone());
                    (outcome, lease.map(|l| (l, releaser)))
                }
                None => {
                    // Alone, a process waits for its pace slot however far
                    // (as `governor` alone always did); counts and leases
                    // refuse as in a fleet.
                    let outcome = self
                        .state
                        .lock()
                        .map_err(|_| BudgetError::Unavailable("budget state poisoned".into()))?
                        .take(
                            &self.rules,
                            wall_micros(),
                            0,
                            u64::MAX,
                            cost,
                            lease.as_deref(),
                        );
                    let releaser = Releaser::Local(self.state.clone());
                    (outcome, lease.map(|l| (l, releaser)))
                }
            };
            let permit = match outcome {
                // Nothing was taken: there is no lease to give back.
                Outcome::Refused { .. } => Permit { lease: None },
                Outcome::Admitted { .. } => Permit { lease: permit },
            };
            match outcome {
                Outcome::Admitted { wait: 0 } => return Ok(permit),
                Outcome::Admitted { wait } => {
                    tokio::time::sleep(Duration::from_micros(wait)).await;
                    // A throttle while we waited for the slot (here or in
                    // any process) cools the budget down: honour it before
                    // sending, or the request lands inside the cool-down —
                    // then take a fresh slot, so that the fleet's waiting
                    // requests do not all go at once when it ends.
                    if self.honour_cool_down(started).await? {
                        permit.release().await;
                        continue;
                    }
                    return Ok(permit);
                }
                Outcome::Refused {
                    reason: Reason::Costly,
                    ..
                } => {
                    return Err(BudgetError::Unavailable(format!(
                        "a call costing {cost} does not fit in rate budget {}'s window",
                        self.name
                    )));
                }
                Outcome::Refused { wait, reason } => {
                    let wait = Duration::from_micros(wait);
                    let left = self.waits.max_wait.saturating_sub(started.elapsed());
                    let pause = match reason {
                        // A lease may come back any moment.
                        Reason::InFlight => {
                            let pause = wait.min(poll);
                            poll = (poll * 2).min(MAX_POLL);
                            pause
                        }
                        // Others may reserve the freed slot first: they are
                        // served before us.
                        Reason::Pace => wait.max(self.period / 2),
                        _ => wait.max(MIN_POLL),
                    };
                    if pause < left {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    return Err(self.too_long(match reason {
                        Reason::InFlight => wait.min(Duration::from_secs(1)),
                        _ => wait,
                    }));
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

    fn too_long(&self, retry_after: Duration) -> BudgetError {
        BudgetError::WaitTooLong {
            budget: self.name.clone(),
            retry_after: retry_after.max(Duration::from_millis(100)),
        }
    }

    /// Makes every caller — in every process sharing the budget — wait
    /// `for_` before the next request (after a throttle).
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

    /// Tells the budget — in every process sharing it — what the CRM says
    /// of one of its limits ("remaining `N` of `M`", from a response's
    /// headers): the limit is lowered to `M` (never raised above its
    /// configured size) and, until the CRM's window resets, at most `N`
    /// less the customer's share is admitted ([`window::learn`]). Each
    /// report replaces the last; a report on a limit the budget does not
    /// have is ignored. The count is approximate by the calls in flight when
    /// the CRM answered.
    pub async fn learn(&self, report: Report) {
        let configured = match report.limit {
            LimitKind::Pace => self
                .limits
                .pace
                .map(|l| (l.requests, self.rules.max_cost + 1)),
            LimitKind::Fixed => self.limits.fixed.map(|l| (l.requests, 1)),
            LimitKind::Rolling => self.limits.rolling.map(|l| (l.requests, 1)),
            LimitKind::InFlight => self.limits.in_flight.map(|l| (l.calls, 1)),
        };
        let Some((configured, floor)) = configured else {
            tracing::debug!(budget = %self.name, limit = ?report.limit, "a report on a limit the budget does not have");
            return;
        };
        let learning = window::learn(configured, self.share, floor, &report);
        let now = wall_micros();
        let valid_for = report
            .resets_in
            .map_or_else(|| self.rules.default_validity(report.limit, now), micros);
        match &self.shared {
            Some(shared) => {
                if let Err(e) = shared.learn(report.limit, learning, valid_for).await {
                    tracing::warn!(budget = %self.name, error = %e, "could not share what the CRM reported");
                }
            }
            None => {
                if let Ok(mut state) = self.state.lock() {
                    state.learn(report.limit, learning, now, valid_for);
                }
            }
        }
    }
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

    /// The budget named `name`, created from `plan` on first use (a
    /// [`BudgetSpec`] or a [`BudgetPlan`]).
    pub fn get(&self, name: &str, plan: impl Into<BudgetPlan>) -> Arc<Budget> {
        let plan = plan.into();
        let make = || {
            let share = plan.share * self.waits.share;
            let max_cost = plan.max_cost.max(1);
            let limits = plan.limits;
            let period = limits
                .pace
                .map_or(Duration::ZERO, |l| l.paced(share, max_cost));
            let rules = Rules {
                pace: limits.pace.map(|l| PaceRule {
                    period: micros(period),
                    window: micros(l.window),
                    usable: usable(l.requests, share, max_cost + 1),
                }),
                fixed: limits.fixed.map(|l| CountRule {
                    window: micros(l.window),
                    usable: usable(l.requests, share, 1),
                }),
                rolling: limits.rolling.map(|l| CountRule {
                    window: micros(l.window),
                    usable: usable(l.requests, share, 1),
                }),
                in_flight: limits.in_flight.map(|l| InFlightRule {
                    usable: usable(l.calls, share, 1),
                    lease: micros(l.lease),
                }),
                max_cost,
            };
            // In a fleet the shared key paces; the local limiter keeps the
            // process to the budget's rate on average but lets it reserve
            // the slots that fit in `max_wait` at once (else its own callers
            // would queue here, one period apart, before they could reserve
            // ahead).
            let smoother = (self.shared.is_some() && limits.pace.is_some()).then(|| {
                let ahead = self.waits.max_wait.as_secs_f64() / period.as_secs_f64();
                let burst = (ahead.ceil() as u32).saturating_add(max_cost);
                let quota = Quota::with_period(period)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                (RateLimiter::direct(quota), burst)
            });
            Arc::new(Budget {
                name: name.to_string(),
                kind: plan.kind,
                rules,
                limits,
                share,
                period,
                smoother,
                cooldown_until: Mutex::new(None),
                state: Arc::default(),
                shared: self
                    .shared
                    .as_ref()
                    .map(|s| Arc::new(s.budget(name, rules))),
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
            ..Waits::default()
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
