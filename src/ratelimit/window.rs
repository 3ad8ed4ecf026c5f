//! The budget algorithm itself, pure and in one place: what one call may
//! take from a budget's limits (a pace, a fixed-window count, a rolling-window
//! count, an in-flight limit) and what the CRM's own figures lower them to.
//! The embedded mode runs it as is; the fleet's Redis script
//! ([`super::shared`]) is the same algorithm in Lua, on the same fields. Every
//! time is in microseconds since the Unix epoch.
//!
//! - **Pace** (GCRA). A call of cost `n` starts at
//!   `max(tat + (n − m)⁺·T, now, cool-down)` and moves `tat` to
//!   `start + n·T`, where `m` is the budget's `max_cost` and
//!   `T = max(W·1.01, W + J) / (usable − m + 1)`, `J` = 50 ms. Between two
//!   calls the gap is at least the first one's `n·T` plus the second's
//!   excess over `m`, so the calls starting in any closed window `W` hold at
//!   most `⌊W/T⌋ + m ≤ usable` units (`W/T < usable − m + 1`), whatever the
//!   costs: HubSpot's pace is the case `m = n = 1` (`T = W·1.01 / L`). The
//!   1 % and the 50 ms are room for the CRM's clock and the network: calls
//!   that arrive closer together than they were sent (up to `J` or 1 % of
//!   the window, whichever is more) still fit. (Until this release `T` was
//!   `W·1.01 / (usable − m)`: safe, but a 5-per-second limit was paced at
//!   4 per 1.01 s, 79 % of it.)
//! - **Fixed windows** count units per window aligned on the epoch: a
//!   window of 86,400 s is a UTC day, as HubSpot's daily budget is kept.
//! - **Rolling windows** count units in buckets of `W / 1440` (at least
//!   1 ms): for 24 h, one-minute buckets. A bucket is forgotten only when its
//!   *end* is a window old, so a unit is counted for between `W` and
//!   `W + W/1440` after it is sent: never released before the CRM releases
//!   it (the count over every true rolling window stays within capacity),
//!   at most one bucket later (≤ 0.07 % of the window's capacity unused).
//!   Why buckets and not a log of every call (a sorted set scored by time,
//!   exact to the microsecond): a Zoho or Salesforce org may make millions
//!   of calls a day, one member each, and the wait for room means summing
//!   members from the oldest; buckets keep a budget to at most ~1,440 small
//!   counters and a running sum, whatever the traffic, each call costing
//!   O(1) (forgetting old buckets is amortised over the calls), and the
//!   CRM's own count is not finer than that anyway (Salesforce's
//!   `api-usage` lags by minutes).
//! - **In flight.** A call takes a lease that expires `lease` after its
//!   start (longer than the request timeout, so a live call never outlives
//!   it); a finished call gives it back, and a process that dies holding
//!   one loses it at its expiry. Expired leases never count.
//! - **Learned from the CRM.** A report "remaining `N` of `M`" lowers the
//!   limit's capacity to `M` (never above the configured one) and, until
//!   the window resets (or, for a rolling window, for `W/288`, at least 1 s),
//!   admits at most `N` less the customer's part of `M` (`(1 − share)·M`).
//!   Each report replaces the last.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The bucket count of a rolling window (see the module documentation).
pub const ROLLING_BUCKETS: u64 = 1440;

/// A fixed window of this length is a UTC day (kept on the fields HubSpot's
/// daily count has always used).
pub const DAY_MICROS: u64 = 86_400_000_000;

/// Microseconds of `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Which limit of a budget a CRM's figures are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// The paced window (a burst limit: HubSpot's 10 s, Pipedrive's 2 s,
    /// Dynamics' 5 min).
    Pace,
    /// The fixed-window count (a daily budget).
    Fixed,
    /// The rolling-window count (Salesforce's and Zoho's 24 h).
    Rolling,
    /// The in-flight limit (only its capacity is learned).
    InFlight,
}

impl LimitKind {
    pub(crate) const ALL: [LimitKind; 4] = [
        LimitKind::Pace,
        LimitKind::Fixed,
        LimitKind::Rolling,
        LimitKind::InFlight,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The prefix of its learned fields in the budget's Redis hash.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            LimitKind::Pace => "p",
            LimitKind::Fixed => "f",
            LimitKind::Rolling => "r",
            LimitKind::InFlight => "i",
        }
    }
}

/// The usable part of `capacity` at `share`, never below `floor`.
pub fn usable(capacity: u32, share: f64, floor: u32) -> u32 {
    ((f64::from(capacity) * share).floor() as u32).max(floor)
}

/// The pace period (µs) for `usable` units per `window` µs when a call may
/// cost up to `max_cost` without waiting extra (see the module docs).
pub fn period_for(window: u64, usable: u32, max_cost: u32) -> u64 {
    let room = usable.max(max_cost.saturating_add(1)) - max_cost + 1;
    let stretched = (window as f64 * 1.01).max((window + ARRIVAL_JITTER_MICROS) as f64);
    (stretched / f64::from(room)).floor() as u64
}

/// How much closer together than they were sent calls may reach the CRM
/// (network and scheduling jitter) while its window still holds them: the
/// pace stretches each window by this much, or by 1 %, whichever is more.
pub const ARRIVAL_JITTER_MICROS: u64 = 50_000;

/// A paced limit as one take sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceRule {
    /// µs between units at the configured size.
    pub period: u64,
    /// The CRM's window, µs.
    pub window: u64,
    /// Units per window crmsync may use.
    pub usable: u32,
}

/// A counted limit (fixed or rolling) as one take sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRule {
    /// The window, µs.
    pub window: u64,
    /// Units per window crmsync may use.
    pub usable: u32,
}

/// An in-flight limit as one take sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightRule {
    /// Calls at once crmsync may have.
    pub usable: u32,
    /// How long a lease lives after its call's start, µs.
    pub lease: u64,
}

/// A budget's limits at their usable size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    /// The pace.
    pub pace: Option<PaceRule>,
    /// The fixed-window count.
    pub fixed: Option<CountRule>,
    /// The rolling-window count.
    pub rolling: Option<CountRule>,
    /// The in-flight limit.
    pub in_flight: Option<InFlightRule>,
    /// The largest cost the pace lets through without waiting extra (≥ 1).
    pub max_cost: u32,
}

impl Rules {
    /// After a Redis restart, how long nothing is admitted: the pace's
    /// window (the CRM still counts it) or a lease (calls of the lost leases
    /// may still run), whichever is longer. Counts are not paused for: their
    /// loss is learned back from the CRM's figures, as a lost day count.
    pub fn restart_pause(&self) -> u64 {
        let pace = self.pace.map_or(0, |p| p.window);
        let lease = self.in_flight.map_or(0, |i| i.lease);
        pace.max(lease)
    }

    fn usable(&self, kind: LimitKind) -> Option<u32> {
        match kind {
            LimitKind::Pace => self.pace.map(|p| p.usable),
            LimitKind::Fixed => self.fixed.map(|c| c.usable),
            LimitKind::Rolling => self.rolling.map(|c| c.usable),
            LimitKind::InFlight => self.in_flight.map(|i| i.usable),
        }
    }

    /// How long a report stands when the CRM does not say when its window
    /// resets (µs from `now`): the pace's window; the fixed window's end;
    /// `W/288` (at least 1 s, at most `W`) of a rolling window, one probe
    /// call per five minutes at most while a 24 h window is spent.
    pub fn default_validity(&self, kind: LimitKind, now: u64) -> u64 {
        match kind {
            LimitKind::Pace => self.pace.map_or(0, |p| p.window),
            LimitKind::Fixed => self
                .fixed
                .map_or(0, |c| (now / c.window.max(1) + 1) * c.window.max(1) - now),
            LimitKind::Rolling => self
                .rolling
                .map_or(0, |c| (c.window / 288).max(1_000_000).min(c.window)),
            LimitKind::InFlight => 0,
        }
    }
}

/// The width of a rolling window's buckets, µs.
pub fn bucket_width(window: u64) -> u64 {
    (window / ROLLING_BUCKETS).max(1_000)
}

/// "The CRM says remaining `remaining` of `of` in this window", as an
/// adapter reads it from a response's headers (`Sforce-Limit-Info`,
/// `x-ms-ratelimit-*`, Pipedrive's `x-ratelimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The limit it is about.
    pub limit: LimitKind,
    /// Units the CRM still allows in its window.
    pub remaining: u32,
    /// The window's capacity, when the CRM says it.
    pub of: Option<u32>,
    /// When the CRM's window resets, when it says (Pipedrive's
    /// `x-ratelimit-reset`); else see [`Rules::default_validity`].
    pub resets_in: Option<Duration>,
}

/// What a report lowers a limit to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learning {
    /// The limit's usable capacity from now on (never above the configured
    /// usable capacity).
    pub capacity: u32,
    /// Units the fleet may still take until the report expires.
    pub allowance: u32,
}

/// What `report` lowers a limit configured at `configured` units (used at
/// `share`; at least `floor` usable) to. The CRM's capacity never raises the
/// configured one; the customer's part of it, `(1 − share)·M`, is kept free
/// of the remaining units whoever used the rest.
pub fn learn(configured: u32, share: f64, floor: u32, report: &Report) -> Learning {
    let total = report.of.unwrap_or(configured);
    let capacity =
        usable(total.min(configured), share, floor).min(usable(configured, share, floor));
    let reserve = (f64::from(total) * (1.0 - share)).ceil().max(0.0) as u32;
    Learning {
        capacity,
        allowance: report.remaining.saturating_sub(reserve).min(capacity),
    }
}

/// Why a call may not go yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its pace slot (or the cool-down) is further away than it may wait.
    Pace,
    /// The fixed window is spent.
    Fixed,
    /// The rolling window is spent.
    Rolling,
    /// As many calls are in flight as allowed.
    InFlight,
    /// The CRM said fewer units remain.
    Learned,
    /// The call costs more than a whole window allows: it never fits.
    Costly,
}

impl Reason {
    /// As the script names it.
    pub fn parse(s: &str) -> Self {
        match s {
            "fixed" => Reason::Fixed,
            "rolling" => Reason::Rolling,
            "in_flight" => Reason::InFlight,
            "learned" => Reason::Learned,
            "costly" => Reason::Costly,
            _ => Reason::Pace,
        }
    }
}

/// What a take gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted: send `wait` µs from now.
    Admitted {
        /// Until the call's start.
        wait: u64,
    },
    /// Nothing taken: try again in `wait` µs at the earliest (for
    /// [`Reason::InFlight`], when the oldest lease expires; one may come
    /// back sooner).
    Refused {
        /// Until a take could succeed.
        wait: u64,
        /// Which limit refused.
        reason: Reason,
    },
}

/// A rolling window's buckets: start µs / width → units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Buckets {
    width: u64,
    counts: BTreeMap<u64, u64>,
    sum: u64,
}

impl Buckets {
    /// Forgets the buckets whose end is a window old at `now`.
    fn forget(&mut self, now: u64, window: u64) {
        let width = bucket_width(window);
        if self.width != width {
            *self = Buckets {
                width,
                ..Buckets::default()
            };
        }
        let cutoff = now.saturating_sub(window) / width;
        let kept = self.counts.split_off(&cutoff);
        self.sum -= self.counts.values().sum::<u64>();
        self.counts = kept;
    }

    /// µs from `now` until `need` units have been forgotten.
    fn wait_for(&self, need: u64, now: u64, window: u64) -> u64 {
        let mut freed = 0;
        for (bucket, count) in &self.counts {
            freed += count;
            if freed >= need {
                return ((bucket + 1) * self.width + window).saturating_sub(now);
            }
        }
        window
    }
}

/// A reported allowance and what was taken since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allowance {
    remaining: u64,
    used: u64,
    until: u64,
}

/// One budget's state (the embedded mode's; the fleet's is the Redis hash).
#[derive(Debug, Clone, Default)]
pub struct State {
    tat: u64,
    fixed_index: u64,
    fixed_count: u64,
    rolling: Buckets,
    leases: HashMap<String, u64>,
    capacity: [Option<u32>; 4],
    allowance: [Option<Allowance>; 4],
}

impl State {
    /// Takes `cost` units from every limit in `rules` at once, or nothing:
    /// the call starts after any cool-down (`cool`) and its pace slot, and
    /// only if that is at most `ahead` away; `lease` names its in-flight
    /// lease.
    pub fn take(
        &mut self,
        rules: &Rules,
        now: u64,
        cool: u64,
        ahead: u64,
        cost: u32,
        lease: Option<&str>,
    ) -> Outcome {
        let cost = u64::from(cost.max(1));
        let refuse = |wait: u64, reason| Outcome::Refused { wait, reason };
        // The pace, at the learned capacity when the CRM said less.
        let mut start = now.max(cool);
        let mut period = 0;
        if let Some(pace) = rules.pace {
            period = pace.period;
            let mut usable = pace.usable;
            if let Some(learned) = self.capacity[LimitKind::Pace.index()]
                && learned < pace.usable
            {
                usable = learned;
                period = period.max(period_for(pace.window, learned, rules.max_cost));
            }
            if cost > u64::from(usable) {
                return refuse(pace.window, Reason::Costly);
            }
            let extra = cost.saturating_sub(u64::from(rules.max_cost)) * period;
            start = start.max(self.tat + extra);
        }
        let wait = start - now;
        if wait > ahead {
            return refuse(wait, Reason::Pace);
        }
        // The CRM's own figures, while they stand.
        for kind in LimitKind::ALL {
            if rules.usable(kind).is_none() || kind == LimitKind::InFlight {
                continue;
            }
            if let Some(a) = self.allowance[kind.index()]
                && a.until > now
                && a.used + cost > a.remaining
            {
                return refuse((a.until - now).max(wait), Reason::Learned);
            }
        }
        let capped = |kind: LimitKind, usable: u32| {
            u64::from(self.capacity[kind.index()].map_or(usable, |c| c.min(usable)))
        };
        if let Some(fixed) = rules.fixed {
            let window = fixed.window.max(1);
            let index = now / window;
            let count = if self.fixed_index == index {
                self.fixed_count
            } else {
                0
            };
            let cap = capped(LimitKind::Fixed, fixed.usable);
            if cost > cap {
                return refuse(window, Reason::Costly);
            }
            if count + cost > cap {
                return refuse(((index + 1) * window - now).max(wait), Reason::Fixed);
            }
        }
        if let Some(rolling) = rules.rolling {
            self.rolling.forget(now, rolling.window);
            let cap = capped(LimitKind::Rolling, rolling.usable);
            if cost > cap {
                return refuse(rolling.window, Reason::Costly);
            }
            if self.rolling.sum + cost > cap {
                let need = self.rolling.sum + cost - cap;
                let until = self.rolling.wait_for(need, now, rolling.window);
                return refuse(until.max(wait), Reason::Rolling);
            }
        }
        if let Some(in_flight) = rules.in_flight {
            self.leases.retain(|_, expiry| *expiry > now);
            let cap = capped(LimitKind::InFlight, in_flight.usable);
            if self.leases.len() as u64 >= cap {
                let first = self.leases.values().min().copied().unwrap_or(now);
                return refuse((first - now).max(1), Reason::InFlight);
            }
        }
        // Admitted: commit every limit.
        if rules.pace.is_some() {
            self.tat = start + cost * period;
        }
        if let Some(fixed) = rules.fixed {
            let index = now / fixed.window.max(1);
            if self.fixed_index != index {
                (self.fixed_index, self.fixed_count) = (index, 0);
            }
            self.fixed_count += cost;
        }
        if rules.rolling.is_some() {
            *self
                .rolling
                .counts
                .entry(start / self.rolling.width)
                .or_default() += cost;
            self.rolling.sum += cost;
        }
        if let Some(in_flight) = rules.in_flight {
            self.leases.insert(
                lease.unwrap_or_default().to_string(),
                start + in_flight.lease,
            );
        }
        for a in self.allowance.iter_mut().flatten() {
            if a.until > now {
                a.used += cost;
            }
        }
        Outcome::Admitted { wait }
    }

    /// Gives a lease back.
    pub fn release(&mut self, lease: &str) {
        self.leases.remove(lease);
    }

    /// Applies what the CRM said about `kind` (see [`learn`]), standing for
    /// `valid_for` µs.
    pub fn learn(&mut self, kind: LimitKind, learning: Learning, now: u64, valid_for: u64) {
        self.capacity[kind.index()] = Some(learning.capacity);
        if kind != LimitKind::InFlight {
            self.allowance[kind.index()] = Some(Allowance {
                remaining: u64::from(learning.allowance),
                used: 0,
                until: now.saturating_add(valid_for),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000;
    const EPOCH: u64 = 1_700_000_000 * S;

    fn paced(window: u64, capacity: u32, max_cost: u32) -> Rules {
        let usable = usable(capacity, 1.0, max_cost + 1);
        Rules {
            pace: Some(PaceRule {
                period: period_for(window, usable, max_cost),
                window,
                usable,
            }),
            max_cost,
            ..Rules::default()
        }
    }

    fn counted(rolling: bool, window: u64, capacity: u32) -> Rules {
        let rule = Some(CountRule {
            window,
            usable: capacity,
        });
        Rules {
            fixed: if rolling { None } else { rule },
            rolling: if rolling { rule } else { None },
            max_cost: 1,
            ..Rules::default()
        }
    }

    /// The most units any closed window `[s, s + window]` starting at an
    /// admitted call holds.
    fn densest(calls: &[(u64, u64)], window: u64) -> u64 {
        calls
            .iter()
            .map(|(s, _)| {
                calls
                    .iter()
                    .filter(|(t, _)| *t >= *s && *t <= s + window)
                    .map(|(_, n)| n)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn hubspots_pace_is_the_case_of_calls_costing_one() {
        // 10 s × 1.01 ÷ 100.
        assert_eq!(period_for(10 * S, 100, 1), 101_000);
        let rules = paced(10 * S, 100, 1);
        let mut state = State::default();
        let mut starts = Vec::new();
        for _ in 0..3 {
            match state.take(&rules, EPOCH, 0, u64::MAX, 1, None) {
                Outcome::Admitted { wait } => starts.push(wait),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(starts, [0, 101_000, 202_000]);
    }

    #[test]
    fn a_small_limit_is_paced_at_its_capacity_less_the_jitter_room() {
        // HubSpot's search: 5 a second, one every (1 s + 50 ms) ÷ 5; the
        // six calls of any closed second never fit in it.
        assert_eq!(period_for(S, 5, 1), 210_000);
        let rules = paced(S, 5, 1);
        let mut state = State::default();
        let mut starts = Vec::new();
        for _ in 0..30 {
            match state.take(&rules, EPOCH, 0, u64::MAX, 1, None) {
                Outcome::Admitted { wait } => starts.push((EPOCH + wait, 1)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(densest(&starts, S), 5);
    }

    #[test]
    fn a_call_costing_more_than_the_pace_allows_at_once_waits_its_excess() {
        let rules = paced(2 * S, 20, 5);
        let period = rules.pace.map(|p| p.period).unwrap_or_default();
        let mut state = State::default();
        assert_eq!(
            state.take(&rules, EPOCH, 0, u64::MAX, 5, None),
            Outcome::Admitted { wait: 0 }
        );
        // 5 units took 5 periods; 8 more wait 3 periods on top.
        assert_eq!(
            state.take(&rules, EPOCH, 0, u64::MAX, 8, None),
            Outcome::Admitted {
                wait: 5 * period + 3 * period
            }
        );
    }

    #[test]
    fn the_fixed_utc_day_refuses_until_midnight_and_costs_add_up() {
        let rules = counted(false, DAY_MICROS, 10);
        let mut state = State::default();
        let noon = (EPOCH / DAY_MICROS) * DAY_MICROS + DAY_MICROS / 2;
        for cost in [3, 3, 4] {
            assert_eq!(
                state.take(&rules, noon, 0, 0, cost, None),
                Outcome::Admitted { wait: 0 }
            );
        }
        assert_eq!(
            state.take(&rules, noon, 0, 0, 1, None),
            Outcome::Refused {
                wait: DAY_MICROS / 2,
                reason: Reason::Fixed
            }
        );
        assert_eq!(
            state.take(&rules, noon + DAY_MICROS / 2, 0, 0, 10, None),
            Outcome::Admitted { wait: 0 }
        );
        assert_eq!(
            state.take(&rules, noon + DAY_MICROS / 2, 0, 0, 11, None),
            Outcome::Refused {
                wait: DAY_MICROS,
                reason: Reason::Costly
            }
        );
    }

    #[test]
    fn a_rolling_day_frees_units_a_day_and_at_most_a_bucket_after_their_call() {
        let day = 86_400 * S;
        let rules = counted(true, day, 10);
        let mut state = State::default();
        assert!(matches!(
            state.take(&rules, EPOCH, 0, 0, 6, None),
            Outcome::Admitted { .. }
        ));
        assert!(matches!(
            state.take(&rules, EPOCH + 3600 * S, 0, 0, 4, None),
            Outcome::Admitted { .. }
        ));
        let Outcome::Refused { wait, reason } = state.take(&rules, EPOCH + 7200 * S, 0, 0, 5, None)
        else {
            panic!("the window is spent");
        };
        assert_eq!(reason, Reason::Rolling);
        // The first call's 6 units free up a day after it (within a bucket).
        let free_at = EPOCH + 7200 * S + wait;
        assert!(free_at >= EPOCH + day, "{free_at}");
        assert!(free_at <= EPOCH + day + bucket_width(day), "{free_at}");
        assert!(matches!(
            state.take(&rules, free_at, 0, 0, 5, None),
            Outcome::Admitted { .. }
        ));
    }

    #[test]
    fn a_lease_counts_until_released_or_expired() {
        let rules = Rules {
            in_flight: Some(InFlightRule {
                usable: 2,
                lease: 30 * S,
            }),
            max_cost: 1,
            ..Rules::default()
        };
        let mut state = State::default();
        for lease in ["a", "b"] {
            assert!(matches!(
                state.take(&rules, EPOCH, 0, 0, 1, Some(lease)),
                Outcome::Admitted { .. }
            ));
        }
        assert_eq!(
            state.take(&rules, EPOCH + S, 0, 0, 1, Some("c")),
            Outcome::Refused {
                wait: 29 * S,
                reason: Reason::InFlight
            }
        );
        state.release("a");
        assert!(matches!(
            state.take(&rules, EPOCH + S, 0, 0, 1, Some("c")),
            Outcome::Admitted { .. }
        ));
        // "b"'s holder died: its lease expires.
        assert!(matches!(
            state.take(&rules, EPOCH + 30 * S, 0, 0, 1, Some("d")),
            Outcome::Admitted { .. }
        ));
    }

    #[test]
    fn a_report_lowers_a_limit_and_expires() {
        let rules = counted(true, 86_400 * S, 1000);
        let mut state = State::default();
        let report = Report {
            limit: LimitKind::Rolling,
            remaining: 3,
            of: Some(5000),
            resets_in: None,
        };
        let learning = learn(1000, 1.0, 1, &report);
        assert_eq!(
            learning,
            Learning {
                capacity: 1000,
                allowance: 3
            }
        );
        let valid = rules.default_validity(LimitKind::Rolling, EPOCH);
        assert_eq!(valid, 300 * S, "five minutes for a 24 h window");
        state.learn(LimitKind::Rolling, learning, EPOCH, valid);
        assert!(matches!(
            state.take(&rules, EPOCH, 0, 0, 2, None),
            Outcome::Admitted { .. }
        ));
        assert_eq!(
            state.take(&rules, EPOCH, 0, 0, 2, None),
            Outcome::Refused {
                wait: valid,
                reason: Reason::Learned
            }
        );
        assert!(matches!(
            state.take(&rules, EPOCH + valid, 0, 0, 2, None),
            Outcome::Admitted { .. }
        ));
    }

    #[test]
    fn a_learned_burst_capacity_slows_the_pace() {
        let rules = paced(2 * S, 80, 1);
        let mut state = State::default();
        let report = Report {
            limit: LimitKind::Pace,
            remaining: 20,
            of: Some(20),
            resets_in: Some(Duration::from_secs(2)),
        };
        state.learn(LimitKind::Pace, learn(80, 1.0, 2, &report), EPOCH, 2 * S);
        let _ = state.take(&rules, EPOCH, 0, u64::MAX, 1, None);
        let Outcome::Admitted { wait } = state.take(&rules, EPOCH, 0, u64::MAX, 1, None) else {
            panic!("paced");
        };
        assert_eq!(wait, period_for(2 * S, 20, 1));
    }

    #[test]
    fn a_refused_call_takes_nothing_from_any_limit() {
        let mut rules = paced(10 * S, 100, 5);
        rules.fixed = Some(CountRule {
            window: DAY_MICROS,
            usable: 1000,
        });
        rules.rolling = Some(CountRule {
            window: 3600 * S,
            usable: 1000,
        });
        rules.in_flight = Some(InFlightRule {
            usable: 1,
            lease: 30 * S,
        });
        let period = rules.pace.map(|p| p.period).unwrap_or_default();
        let mut state = State::default();
        assert_eq!(
            state.take(&rules, EPOCH, 0, u64::MAX, 5, Some("a")),
            Outcome::Admitted { wait: 0 }
        );
        // The lease is taken: the pace, the counts and the lease are untouched.
        let later = EPOCH + 5 * period;
        assert!(matches!(
            state.take(&rules, later, 0, u64::MAX, 5, Some("b")),
            Outcome::Refused {
                reason: Reason::InFlight,
                ..
            }
        ));
        state.release("a");
        assert_eq!(
            state.take(&rules, later, 0, u64::MAX, 5, Some("c")),
            Outcome::Admitted { wait: 0 }
        );
        assert_eq!(state.fixed_count, 10);
        assert_eq!(state.rolling.sum, 10);
        assert_eq!(state.tat, later + 5 * period);
    }

    proptest! {
        /// Whatever the costs and arrivals, no window of the pace's length
        /// holds more units than its usable capacity, and calls of cost ≤ m
        /// under saturation use the window to within 2 % + m.
        #[test]
        fn the_pace_never_admits_more_than_capacity_in_any_window(
            capacity in 2u32..400,
            max_cost in 1u32..12,
            window_ms in 100u64..20_000,
            calls in proptest::collection::vec((0u64..50_000, 1u32..30), 1..150),
        ) {
            let max_cost = max_cost.min(capacity - 1);
            let window = window_ms * 1000;
            let rules = paced(window, capacity, max_cost);
            let mut state = State::default();
            let mut now = EPOCH;
            let mut admitted = Vec::new();
            for (gap, cost) in calls {
                now += gap;
                match state.take(&rules, now, 0, u64::MAX, cost, None) {
                    Outcome::Admitted { wait } => admitted.push((now + wait, u64::from(cost))),
                    Outcome::Refused { reason: Reason::Costly, .. } => prop_assert!(cost > capacity),
                    other => prop_assert!(false, "an unbounded wait is never refused: {other:?}"),
                }
            }
            prop_assert!(densest(&admitted, window) <= u64::from(capacity));
        }

        /// Fixed windows: the units admitted in each window, costs summed,
        /// never exceed its capacity; a refusal's wait ends at the window's
        /// end, where the same call is admitted.
        #[test]
        fn a_fixed_window_never_admits_more_than_capacity(
            capacity in 1u32..100,
            window_s in 1u64..100,
            calls in proptest::collection::vec((0u64..5_000_000, 1u32..10), 1..200),
        ) {
            let window = window_s * S;
            let rules = counted(false, window, capacity);
            let mut state = State::default();
            let mut now = EPOCH;
            let mut per_window: HashMap<u64, u64> = HashMap::new();
            for (gap, cost) in calls {
                now += gap;
                match state.take(&rules, now, 0, 0, cost, None) {
                    Outcome::Admitted { .. } => *per_window.entry(now / window).or_default() += u64::from(cost),
                    Outcome::Refused { wait, reason: Reason::Fixed } => {
                        prop_assert_eq!((now + wait) % window, 0);
                        let spent = per_window.get(&(now / window)).copied().unwrap_or(0);
                        prop_assert!(spent + u64::from(cost) > u64::from(capacity));
                        let mut later = state.clone();
                        let then = later.take(&rules, now + wait, 0, 0, cost, None);
                        prop_assert!(matches!(then, Outcome::Admitted { .. }), "{:?} after the wait", then);
                    }
                    Outcome::Refused { reason, .. } => prop_assert_eq!(reason, Reason::Costly),
                }
            }
            prop_assert!(per_window.values().all(|n| *n <= u64::from(capacity)));
        }

        /// Rolling windows: no window of the rolling length, anywhere, holds
        /// more than capacity; a refusal is never more than one bucket too
        /// cautious; after the refusal's wait the call is admitted.
        #[test]
        fn a_rolling_window_never_admits_more_than_capacity_and_frees_within_a_bucket(
            capacity in 1u32..200,
            window_s in 1u64..86_400,
            calls in proptest::collection::vec((0u64..2_000, 1u32..20), 1..200),
        ) {
            let window = window_s * S;
            let width = bucket_width(window);
            let rules = counted(true, window, capacity);
            let mut state = State::default();
            let mut now = EPOCH;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in calls {
                // Gaps up to ~2 windows.
                now += gap * window / 1000;
                let cost64 = u64::from(cost);
                match state.take(&rules, now, 0, 0, cost, None) {
                    Outcome::Admitted { wait } => {
                        prop_assert_eq!(wait, 0);
                        admitted.push((now, cost64));
                    }
                    Outcome::Refused { wait, reason: Reason::Rolling } => {
                        let recent: u64 = admitted
                            .iter()
                            .filter(|(t, _)| *t + window + width > now)
                            .map(|(_, n)| n)
                            .sum();
                        prop_assert!(recent + cost64 > u64::from(capacity), "refused with {recent} in the last window and a bucket");
                        let mut later = state.clone();
                        let then = later.take(&rules, now + wait, 0, 0, cost, None);
                        prop_assert!(matches!(then, Outcome::Admitted { .. }), "{:?} after the wait", then);
                    }
                    Outcome::Refused { reason, .. } => {
                        prop_assert_eq!(reason, Reason::Costly);
                        prop_assert!(cost > capacity);
                    }
                }
            }
            // Every rolling window (t − W, t] ending at a call.
            for (t, _) in &admitted {
                let inside: u64 = admitted
                    .iter()
                    .filter(|(s, _)| *s <= *t && *s + window > *t)
                    .map(|(_, n)| n)
                    .sum();
                prop_assert!(inside <= u64::from(capacity), "{inside} in the window ending at {t}");
            }
        }

        /// In flight: live leases never exceed capacity; expired and
        /// released ones free their place.
        #[test]
        fn the_in_flight_limit_never_holds_more_live_leases_than_capacity(
            capacity in 1u32..10,
            ops in proptest::collection::vec((0u8..3, 0u64..40), 1..300),
        ) {
            let lease = 10 * S;
            let rules = Rules {
                in_flight: Some(InFlightRule { usable: capacity, lease }),
                max_cost: 1,
                ..Rules::default()
            };
            let mut state = State::default();
            let mut now = EPOCH;
            let mut held: Vec<(String, u64)> = Vec::new();
            for (i, (op, arg)) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        let id = i.to_string();
                        let live = held.iter().filter(|(_, e)| *e > now).count() as u32;
                        match state.take(&rules, now, 0, 0, 1, Some(&id)) {
                            Outcome::Admitted { .. } => {
                                prop_assert!(live < capacity);
                                held.push((id, now + lease));
                            }
                            Outcome::Refused { wait, reason } => {
                                prop_assert_eq!(reason, Reason::InFlight);
                                prop_assert_eq!(live, capacity);
                                prop_assert!(wait > 0 && wait <= lease);
                            }
                        }
                    }
                    1 if !held.is_empty() => {
                        let (id, _) = held.remove(arg as usize % held.len());
                        state.release(&id);
                    }
                    _ => now += arg * S / 2,
                }
            }
        }

        /// A report never raises a limit above its configured size, never
        /// allows more than the CRM said remains, and keeps the customer's
        /// share of the CRM's capacity free.
        #[test]
        fn a_report_only_ever_lowers_a_limit(
            configured in 1u32..1_000_000,
            share in 0.01f64..=1.0,
            remaining in 0u32..2_000_000,
            of in proptest::option::of(1u32..2_000_000),
        ) {
            let report = Report { limit: LimitKind::Rolling, remaining, of, resets_in: None };
            let learned = learn(configured, share, 1, &report);
            prop_assert!(learned.capacity <= usable(configured, share, 1));
            prop_assert!(learned.allowance <= remaining);
            prop_assert!(learned.allowance <= learned.capacity);
            // What the CRM has left once the allowance is spent keeps the
            // customer's part, unless less than that was left to begin with.
            let customers = f64::from(of.unwrap_or(configured)) * (1.0 - share);
            prop_assert!(f64::from(remaining - learned.allowance) + 1e-6 >= f64::from(remaining).min(customers));
        }
    }
}
