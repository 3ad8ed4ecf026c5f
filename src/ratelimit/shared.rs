//! The fleet-wide side of a budget: one Redis hash per budget, changed only
//! by one Lua script on Redis's clock (`TIME`), so every process reserves
//! slots from the same pace and sees the same cool-down and day count.
//!
//! The hash holds, in microseconds since the epoch: `tat` (when the next
//! slot is free: GCRA's theoretical arrival time), `cool` (no request
//! before this), and `day`/`count` (requests this UTC day). It expires two
//! days after its last use.
//!
//! **A Redis that restarts empty** (these fleets run it without
//! persistence) forgets every pace and cool-down while the CRM still
//! counts the requests of its current window and may still be waiting out
//! a 429. So no budget admits a request until one of its windows has
//! passed since Redis started: the script reads Redis's uptime once after
//! a start and keeps the start time in `{namespace}:redis-started`, a key
//! that a restart loses with everything else. A Redis up for longer than a
//! window costs nothing; the day counts a restart loses are not recovered.
//!
//! Redis reports its uptime as whole seconds between two whole-second
//! clocks, so it may say 1 s for 0.1 s of uptime: the start is taken one
//! second later than reported ([`started_from_uptime`]), never earlier
//! than the true start.

use super::BudgetError;
use chrono::{DateTime, TimeZone, Utc};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;

const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 'tat', 'cool', 'day', 'count')
local tat = tonumber(h[1]) or 0
local cool = tonumber(h[2]) or 0
local function num(x) return string.format('%.0f', x) end
local started = tonumber(redis.call('GET', KEYS[2]))
if not started then
  local up = string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)')
  started = now - math.max((tonumber(up) or 0) - 1, 0) * 1000000
  redis.call('SET', KEYS[2], num(started))
end
cool = math.max(cool, started + tonumber(ARGV[6]))
if ARGV[1] == 'cool' then
  local untl = now + tonumber(ARGV[5])
  if untl > cool then redis.call('HSET', KEYS[1], 'cool', num(untl)) end
  redis.call('PEXPIRE', KEYS[1], 172800000)
  return {1, 0}
end
if ARGV[1] == 'check' then
  return {1, math.max(cool - now, 0)}
end
local period = tonumber(ARGV[2])
local ahead = tonumber(ARGV[3])
local daily = tonumber(ARGV[4])
local start = math.max(tat, now, cool)
local wait = start - now
if wait > ahead then return {0, wait} end
local day = math.floor(tonumber(t[1]) / 86400)
local count = 0
if tonumber(h[3]) == day then count = tonumber(h[4]) or 0 end
if daily > 0 and count >= daily then
  return {0, (day + 1) * 86400000000 - now}
end
redis.call('HSET', KEYS[1], 'tat', num(start + period), 'day', num(day), 'count', num(count + 1))
redis.call('PEXPIRE', KEYS[1], 172800000)
return {1, wait}
";

/// The script's answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// A slot is reserved: send after `wait`.
    Slot {
        /// Until the slot.
        wait: Duration,
    },
    /// Nothing reserved: the next slot (or the day's end) is `wait` away.
    Refused {
        /// Until the next slot could be taken.
        wait: Duration,
    },
}

/// When Redis started, in microseconds, from its clock `now_micros` and its
/// `uptime_in_seconds`: never before the true start. Redis computes that
/// uptime as the whole seconds of now minus the whole seconds of its start,
/// which overstates the true uptime by up to a second; the script above
/// makes the same estimate.
fn started_from_uptime(now_micros: u64, uptime_secs: u64) -> u64 {
    now_micros.saturating_sub(uptime_secs.saturating_sub(1) * 1_000_000)
}

/// The Redis all budgets of a fleet live in.
#[derive(Clone)]
pub struct SharedStore {
    conn: ConnectionManager,
    namespace: String,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// Budgets under `namespace` (the queue's, so that deployments sharing
    /// a Redis do not share budgets unless they share a queue).
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            namespace: namespace.to_string(),
            script: Arc::new(redis::Script::new(SCRIPT)),
        }
    }

    pub(super) fn budget(&self, name: &str, window: Duration) -> SharedBudget {
        SharedBudget {
            store: self.clone(),
            key: key(&self.namespace, name),
            started_key: started_key(&self.namespace),
            window,
        }
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}:budget:{name}")
}

/// When Redis last started (see the module documentation).
fn started_key(namespace: &str) -> String {
    format!("{namespace}:redis-started")
}

/// One budget's key.
#[derive(Debug, Clone)]
pub(super) struct SharedBudget {
    store: SharedStore,
    key: String,
    started_key: String,
    /// The CRM's window: how long after a Redis start nothing is sent.
    window: Duration,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl SharedBudget {
    /// Runs the script's `op` on this budget (the arguments an op does not
    /// use are 0); answers its two numbers.
    async fn run(
        &self,
        op: &str,
        (period, ahead, daily_limit): (Duration, Duration, u32),
        cool_for: Duration,
    ) -> Result<(i64, i64), BudgetError> {
        let mut conn = self.store.conn.clone();
        self.store
            .script
            .key(&self.key)
            .key(&self.started_key)
            .arg(op)
            .arg(micros(period))
            .arg(micros(ahead))
            .arg(daily_limit)
            .arg(micros(cool_for))
            .arg(micros(self.window))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| BudgetError::Unavailable(e.to_string()))
    }

    /// Reserves the next slot if it is at most `ahead` away.
    pub(super) async fn take(
        &self,
        period: Duration,
        ahead: Duration,
        daily_limit: u32,
    ) -> Result<Taken, BudgetError> {
        let (admitted, wait) = self
            .run("take", (period, ahead, daily_limit), Duration::ZERO)
            .await?;
        let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        Ok(if admitted == 1 {
            Taken::Slot { wait }
        } else {
            Taken::Refused { wait }
        })
    }

    /// How much of a cool-down is left (zero: none).
    pub(super) async fn cool_down_left(&self) -> Result<Duration, BudgetError> {
        let (_, left) = self
            .run("check", (Duration::ZERO, Duration::ZERO, 0), Duration::ZERO)
            .await?;
        Ok(Duration::from_micros(u64::try_from(left).unwrap_or(0)))
    }

    /// No request of the fleet before `for_` from now.
    pub(super) async fn cool_down(&self, for_: Duration) -> Result<(), BudgetError> {
        self.run("cool", (Duration::ZERO, Duration::ZERO, 0), for_)
            .await
            .map(|_| ())
    }
}

/// A budget's state as the fleet sees it, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// Set while the budget is in use: callers wait for quota until then
    /// (the next free slot).
    pub waiting_until: Option<DateTime<Utc>>,
    /// Set during a cool-down after a 429.
    pub cool_down_until: Option<DateTime<Utc>>,
    /// Requests this UTC day.
    pub requests_today: u64,
}

/// Reads budget `name`'s state (nothing is changed); `window` is the
/// budget's, for the pause after a Redis start.
pub async fn status(
    conn: &ConnectionManager,
    namespace: &str,
    name: &str,
    window: Duration,
) -> Result<BudgetStatus, redis::RedisError> {
    let mut conn = conn.clone();
    let (secs, micros_part): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let now = secs * 1_000_000 + micros_part;
    let started: Option<f64> = redis::cmd("GET")
        .arg(started_key(namespace))
        .query_async(&mut conn)
        .await?;
    let started = match started {
        Some(started) => started,
        None => {
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            let uptime = info
                .lines()
                .find_map(|line| line.strip_prefix("uptime_in_seconds:"))
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            started_from_uptime(now, uptime) as f64
        }
    };
    let restart_pause = started + window.as_micros() as f64;
    let (tat, cool, day, count): (Option<f64>, Option<f64>, Option<f64>, Option<u64>) =
        redis::cmd("HMGET")
            .arg(key(namespace, name))
            .arg("tat")
            .arg("cool")
            .arg("day")
            .arg("count")
            .query_async(&mut conn)
            .await?;
    let at = |us: f64| Utc.timestamp_micros(us as i64).single();
    let future = |us: Option<f64>| us.filter(|us| *us > now as f64).and_then(at);
    Ok(BudgetStatus {
        waiting_until: future(tat),
        cool_down_until: future(Some(cool.unwrap_or(0.0).max(restart_pause))),
        requests_today: match day {
            Some(d) if d as u64 == secs / 86_400 => count.unwrap_or(0),
            _ => 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::started_from_uptime;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the fractions of the start and of now, the estimate is
        /// never before the true start (a budget never reopens early after a
        /// restart) and at most two seconds after it.
        #[test]
        fn the_start_taken_from_a_whole_second_uptime_is_never_early(
            start in 1_000_000_000_000_000u64..2_000_000_000_000_000,
            up in 0u64..10_000_000,
        ) {
            let now = start + up;
            let reported = now / 1_000_000 - start / 1_000_000;
            let estimate = started_from_uptime(now, reported);
            prop_assert!(estimate >= start, "{estimate} < {start}");
            prop_assert!(estimate < start + 2_000_000);
        }
    }

    #[test]
    fn an_uptime_of_one_second_may_be_a_tenth_of_one() {
        // Started at 10.9 s, asked at 11.0 s: Redis says 1 s.
        assert_eq!(started_from_uptime(11_000_000, 1), 11_000_000);
        assert_eq!(started_from_uptime(11_000_000, 0), 11_000_000);
        assert_eq!(started_from_uptime(20_000_000, 5), 16_000_000);
    }
}
