//! The fleet-wide side of a budget: one Redis hash per budget (plus, for the
//! limits that need them, a hash of rolling-window buckets and a sorted set
//! of in-flight leases), changed only by one Lua script on Redis's clock
//! (`TIME`), so every process takes from the same pace, counts and leases
//! and sees the same cool-down. The script is [`super::window`]'s algorithm
//! (property-tested there) in Lua, field for field.
//!
//! Keys, all under the queue's namespace, all expiring two days (or two
//! windows, if longer) after their last use:
//! - `{ns}:budget:{name}`, a hash, in microseconds since the epoch: `tat`
//!   (the pace's next free slot: GCRA's theoretical arrival time), `cool`
//!   (no request before this), `day`/`count` (units this UTC day: the daily
//!   limit when the fixed window is a day, and what operators see),
//!   `fidx`/`fcount` (a fixed window of another length), `rsum`, `rlow`,
//!   `rhigh`, `rw` (the rolling window's sum, lowest and highest live bucket
//!   and bucket width), and per limit (`p` pace, `f` fixed, `r` rolling, `i`
//!   in flight) what the CRM last said: `{p}cap` (capacity), `{p}rem`,
//!   `{p}used`, `{p}until` (the allowance it left, what was taken since, and
//!   until when it stands). HubSpot's budgets use `tat`, `cool`, `day` and
//!   `count` exactly as before this model, so processes of the previous
//!   release share a budget with these during a rolling upgrade.
//! - `{ns}:budget-rolling:{name}`, a hash: bucket → units.
//! - `{ns}:budget-leases:{name}`, a sorted set: lease id scored by its
//!   expiry. Expired leases are dropped before every count, so a process
//!   that dies holding one holds it only until then.
//!
//! **A Redis that restarts empty** (these fleets run it without
//! persistence) forgets every pace, cool-down and lease while the CRM still
//! counts the requests of its current window, may still be waiting out a
//! 429 and may still be serving calls. So no budget admits a request until
//! its pace window or its lease (whichever is longer) has passed since
//! Redis started: the script reads Redis's uptime once after a start and
//! keeps the start time in `{namespace}:redis-started`, a key that a
//! restart loses with everything else. A Redis up for longer than that
//! costs nothing; the day and rolling counts a restart loses are not
//! recovered (what the CRM reports of them is learned back, where it
//! reports it).
//!
//! Redis reports its uptime as whole seconds between two whole-second
//! clocks, so it may say 1 s for 0.1 s of uptime: the start is taken one
//! second later than reported ([`started_from_uptime`]), never earlier
//! than the true start.

use super::BudgetError;
use super::window::{Learning, LimitKind, Outcome, Reason, Rules, micros};
use chrono::{DateTime, TimeZone, Utc};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;

/// Arguments (`ARGV`), all times in microseconds: 1 the op (`take`, `cool`,
/// `check`, `learn`, `release`); 2 the pace period (0: no pace); 3 how far
/// ahead a slot may be; 4 the fixed window's usable units (0: no fixed
/// limit); 5 the cool-down to set; 6 the pause after a Redis start; 7 the
/// call's cost; 8 the budget's `max_cost`; 9 the pace window; 10 the pace's
/// usable units; 11 the fixed window; 12 the rolling window's usable units
/// (0: none); 13 the rolling window; 14 the in-flight usable calls (0:
/// none); 15 the lease; 16 the lease id; 17 the learned limit (`p`, `f`,
/// `r`, `i`); 18 its learned capacity; 19 the allowance; 20 how long it
/// stands. Answers `{admitted (1|0), wait, reason}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local A = ARGV
local function num(x) return string.format('%.0f', x) end
if A[1] == 'release' then
  redis.call('ZREM', KEYS[4], A[16])
  return {1, 0, ''}
end
local names = {'tat', 'cool', 'day', 'count', 'fidx', 'fcount', 'rsum', 'rlow', 'rhigh', 'rw',
  'pcap', 'prem', 'pused', 'puntil', 'fcap', 'frem', 'fused', 'funtil',
  'rcap', 'rrem', 'rused', 'runtil', 'icap'}
local raw = redis.call('HMGET', KEYS[1], unpack(names))
local f = {}
for i, name in ipairs(names) do f[name] = tonumber(raw[i]) end
local started = tonumber(redis.call('GET', KEYS[2]))
if not started then
  local up = string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)')
  started = now - math.max((tonumber(up) or 0) - 1, 0) * 1000000
  redis.call('SET', KEYS[2], num(started))
end
local cool = math.max(f.cool or 0, started + tonumber(A[6]))
if A[1] == 'cool' then
  local untl = now + tonumber(A[5])
  if untl > cool then redis.call('HSET', KEYS[1], 'cool', num(untl)) end
  redis.call('PEXPIRE', KEYS[1], 172800000)
  return {1, 0, ''}
end
if A[1] == 'check' then
  return {1, math.max(cool - now, 0), ''}
end
if A[1] == 'learn' then
  local k = A[17]
  redis.call('HSET', KEYS[1], k .. 'cap', A[18])
  if k ~= 'i' then
    redis.call('HSET', KEYS[1], k .. 'rem', A[19], k .. 'used', 0, k .. 'until', num(now + tonumber(A[20])))
  end
  redis.call('PEXPIRE', KEYS[1], 172800000)
  return {1, 0, ''}
end
local period = tonumber(A[2])
local ahead = tonumber(A[3])
local daily = tonumber(A[4])
local cost = tonumber(A[7])
local m = tonumber(A[8])
local ru = tonumber(A[12])
local iu = tonumber(A[14])
-- Keys live two days after their last use, or two windows if longer.
local keep = 172800000
if daily > 0 then keep = math.max(keep, math.ceil(2 * tonumber(A[11]) / 1000)) end
if ru > 0 then keep = math.max(keep, math.ceil(2 * tonumber(A[13]) / 1000)) end
local function capped(k, usable)
  local c = f[k .. 'cap']
  if c and c < usable then return c end
  return usable
end
-- The pace, at the learned capacity when the CRM said less.
local start = math.max(now, cool)
if period > 0 then
  local pu = tonumber(A[10])
  if f.pcap and f.pcap < pu then
    pu = f.pcap
    local w = tonumber(A[9])
    period = math.max(period, math.floor(math.max(w * 1.01, w + 50000) / (math.max(pu, m + 1) - m + 1)))
  end
  if cost > pu then return {0, tonumber(A[9]), 'costly'} end
  start = math.max(start, (f.tat or 0) + math.max(cost - m, 0) * period)
end
local wait = start - now
if wait > ahead then return {0, wait, 'pace'} end
-- The CRM's own figures, while they stand.
for _, k in ipairs({{'p', period > 0}, {'f', daily > 0}, {'r', ru > 0}}) do
  local untl = f[k[1] .. 'until']
  if k[2] and untl and untl > now and (f[k[1] .. 'used'] or 0) + cost > (f[k[1] .. 'rem'] or 0) then
    return {0, math.max(untl - now, wait), 'learned'}
  end
end
-- The fixed window (a UTC day on the fields HubSpot's count always used).
local day = math.floor(now / 86400000000)
local count = 0
if f.day == day then count = f.count or 0 end
local fwin = tonumber(A[11])
local fidx, fcount = day, count
if daily > 0 and fwin ~= 86400000000 then
  fidx = math.floor(now / fwin)
  fcount = 0
  if f.fidx == fidx then fcount = f.fcount or 0 end
end
if daily > 0 then
  local cap = capped('f', daily)
  if cost > cap then return {0, fwin, 'costly'} end
  if fcount + cost > cap then return {0, math.max((fidx + 1) * fwin - now, wait), 'fixed'} end
end
-- The rolling window: forget the buckets whose end is a window old.
local rwin = tonumber(A[13])
local rsum, rlow, rhigh, rw = 0, 0, -1, 0
if ru > 0 then
  rw = math.max(math.floor(rwin / 1440), 1000)
  rsum, rlow, rhigh = f.rsum or 0, f.rlow or 0, f.rhigh or -1
  if f.rw ~= rw then
    redis.call('DEL', KEYS[3])
    rsum, rhigh = 0, -1
  end
  local cutoff = math.floor(math.max(now - rwin, 0) / rw)
  if rhigh < cutoff then
    if rsum > 0 then redis.call('DEL', KEYS[3]) end
    rsum, rlow, rhigh = 0, cutoff, cutoff - 1
  else
    for b = rlow, cutoff - 1 do
      local v = tonumber(redis.call('HGET', KEYS[3], num(b)))
      if v then
        rsum = rsum - v
        redis.call('HDEL', KEYS[3], num(b))
      end
    end
    rlow = math.max(rlow, cutoff)
  end
  -- What was forgotten stays forgotten, whether or not this call goes.
  redis.call('HSET', KEYS[1], 'rsum', num(rsum), 'rlow', num(rlow), 'rhigh', num(rhigh), 'rw', num(rw))
  redis.call('PEXPIRE', KEYS[1], keep)
  local cap = capped('r', ru)
  if cost > cap then return {0, rwin, 'costly'} end
  if rsum + cost > cap then
    local need, freed, free_in = rsum + cost - cap, 0, rwin
    for b = rlow, rhigh do
      freed = freed + (tonumber(redis.call('HGET', KEYS[3], num(b))) or 0)
      if freed >= need then
        free_in = (b + 1) * rw + rwin - now
        break
      end
    end
    return {0, math.max(free_in, wait), 'rolling'}
  end
end
-- In flight: expired leases never count.
if iu > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', num(now))
  if redis.call('ZCARD', KEYS[4]) >= capped('i', iu) then
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return {0, math.max(tonumber(first[2]) - now, 1), 'in_flight'}
  end
end
-- Admitted: commit every limit at once.
local set = {'day', num(day), 'count', num(count + cost)}
if period > 0 then
  table.insert(set, 'tat')
  table.insert(set, num(start + cost * period))
end
if daily > 0 and fwin ~= 86400000000 then
  table.insert(set, 'fidx')
  table.insert(set, num(fidx))
  table.insert(set, 'fcount')
  table.insert(set, num(fcount + cost))
end
if ru > 0 then
  local b = math.floor(start / rw)
  redis.call('HINCRBY', KEYS[3], num(b), cost)
  redis.call('PEXPIRE', KEYS[3], keep)
  for _, v in ipairs({'rsum', num(rsum + cost), 'rlow', num(rlow), 'rhigh', num(math.max(rhigh, b)), 'rw', num(rw)}) do
    table.insert(set, v)
  end
end
for _, k in ipairs({'p', 'f', 'r'}) do
  local untl = f[k .. 'until']
  if untl and untl > now then
    table.insert(set, k .. 'used')
    table.insert(set, num((f[k .. 'used'] or 0) + cost))
  end
end
redis.call('HSET', KEYS[1], unpack(set))
redis.call('PEXPIRE', KEYS[1], keep)
if iu > 0 then
  local expiry = start + tonumber(A[15])
  redis.call('ZADD', KEYS[4], num(expiry), A[16])
  local ttl = math.ceil((expiry - now) / 1000) + 1000
  if redis.call('PTTL', KEYS[4]) < ttl then redis.call('PEXPIRE', KEYS[4], ttl) end
end
return {1, wait, ''}
";

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

    pub(super) fn budget(&self, name: &str, rules: Rules) -> SharedBudget {
        SharedBudget {
            store: self.clone(),
            key: key(&self.namespace, name),
            rolling_key: format!("{}:budget-rolling:{name}", self.namespace),
            leases_key: format!("{}:budget-leases:{name}", self.namespace),
            started_key: started_key(&self.namespace),
            rules,
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

/// One budget's keys and limits.
#[derive(Debug, Clone)]
pub(super) struct SharedBudget {
    store: SharedStore,
    key: String,
    rolling_key: String,
    leases_key: String,
    started_key: String,
    rules: Rules,
}

/// What one script call carries besides the budget's limits.
#[derive(Debug, Default)]
struct Call<'a> {
    ahead: u64,
    cool_for: u64,
    cost: u32,
    lease: &'a str,
    learned: Option<(LimitKind, Learning, u64)>,
}

impl SharedBudget {
    /// Runs the script's `op` on this budget; answers its three values.
    async fn run(&self, op: &str, call: Call<'_>) -> Result<(i64, i64, String), BudgetError> {
        let rules = &self.rules;
        let pace = rules.pace;
        let fixed = rules.fixed;
        let rolling = rules.rolling;
        let in_flight = rules.in_flight;
        let (kind, learning, valid_for) = match call.learned {
            Some((kind, learning, valid_for)) => (kind.prefix(), learning, valid_for),
            None => (
                "",
                Learning {
                    capacity: 0,
                    allowance: 0,
                },
                0,
            ),
        };
        let mut conn = self.store.conn.clone();
        self.store
            .script
            .key(&self.key)
            .key(&self.started_key)
            .key(&self.rolling_key)
            .key(&self.leases_key)
            .arg(op)
            .arg(pace.map_or(0, |p| p.period))
            .arg(call.ahead)
            .arg(fixed.map_or(0, |c| c.usable))
            .arg(call.cool_for)
            .arg(rules.restart_pause())
            .arg(call.cost.max(1))
            .arg(rules.max_cost.max(1))
            .arg(pace.map_or(0, |p| p.window))
            .arg(pace.map_or(0, |p| p.usable))
            .arg(fixed.map_or(super::window::DAY_MICROS, |c| c.window.max(1)))
            .arg(rolling.map_or(0, |c| c.usable))
            .arg(rolling.map_or(0, |c| c.window))
            .arg(in_flight.map_or(0, |i| i.usable))
            .arg(in_flight.map_or(0, |i| i.lease))
            .arg(call.lease)
            .arg(kind)
            .arg(learning.capacity)
            .arg(learning.allowance)
            .arg(valid_for)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| BudgetError::Unavailable(e.to_string()))
    }

    /// Takes `cost` units from every limit at once, if the call's slot is at
    /// most `ahead` away; `lease` names its in-flight lease.
    pub(super) async fn take(
        &self,
        ahead: Duration,
        cost: u32,
        lease: &str,
    ) -> Result<Outcome, BudgetError> {
        let (admitted, wait, reason) = self
            .run(
                "take",
                Call {
                    ahead: micros(ahead),
                    cost,
                    lease,
                    ..Call::default()
                },
            )
            .await?;
        let wait = u64::try_from(wait).unwrap_or(0);
        Ok(if admitted == 1 {
            Outcome::Admitted { wait }
        } else {
            Outcome::Refused {
                wait,
                reason: Reason::parse(&reason),
            }
        })
    }

    /// Gives an in-flight lease back.
    pub(super) async fn release(&self, lease: &str) -> Result<(), BudgetError> {
        self.run(
            "release",
            Call {
                lease,
                ..Call::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// Stores what the CRM said about a limit, standing for `valid_for` µs.
    pub(super) async fn learn(
        &self,
        kind: LimitKind,
        learning: Learning,
        valid_for: u64,
    ) -> Result<(), BudgetError> {
        self.run(
            "learn",
            Call {
                learned: Some((kind, learning, valid_for)),
                ..Call::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// How much of a cool-down is left (zero: none).
    pub(super) async fn cool_down_left(&self) -> Result<Duration, BudgetError> {
        let (_, left, _) = self.run("check", Call::default()).await?;
        Ok(Duration::from_micros(u64::try_from(left).unwrap_or(0)))
    }

    /// No request of the fleet before `for_` from now.
    pub(super) async fn cool_down(&self, for_: Duration) -> Result<(), BudgetError> {
        self.run(
            "cool",
            Call {
                cool_for: micros(for_),
                ..Call::default()
            },
        )
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
    /// Units taken this UTC day (for HubSpot, requests), whatever the
    /// budget's limits.
    pub requests_today: u64,
}

/// Reads budget `name`'s state (nothing is changed); `window` is its pause
/// after a Redis start (its pace window, or its lease if longer).
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
