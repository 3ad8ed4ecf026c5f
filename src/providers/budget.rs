//! In-process rate budgets per (provider, account, kind of call), paced so the
//! CRM's rolling window is used to the last request and never exceeded.
//!
//! A rolling window of `L` requests per `W` admits GCRA traffic with burst `b`
//! and rate `r` only if `b + r·W ≤ L`; with `b = 1` the pace is one request
//! per `W / (L − 1)`, plus 1 % for arrival jitter. A 429 sets a cool-down that
//! every caller of the same budget honours. (Fleet-wide budgets in Redis come
//! with the fleet guarantees; this is the per-process layer in front of them.)

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

/// One budget: a pacing limiter and a shared cool-down.
#[derive(Debug)]
pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    cooldown_until: Mutex<Option<Instant>>,
}

impl Budget {
    fn new(limit: WindowLimit, share: f64) -> Self {
        let quota = Quota::with_period(limit.period(share))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::direct(quota),
            cooldown_until: Mutex::new(None),
        }
    }

    /// Waits for this budget's next slot (after any cool-down).
    pub async fn acquire(&self) {
        let until = self.cooldown_until.lock().map(|g| *g).unwrap_or(None);
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
        self.limiter.until_ready().await;
    }

    /// Makes every caller wait `for_` before the next request (after a 429).
    pub fn cool_down(&self, for_: Duration) {
        if let Ok(mut guard) = self.cooldown_until.lock() {
            let until = Instant::now() + for_;
            if guard.is_none_or(|g| g < until) {
                *guard = Some(until);
            }
        }
    }
}

/// Every budget of this process, keyed by provider, account and call kind.
#[derive(Debug, Default)]
pub struct Budgets {
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    /// The budget named `key`, created with `limit` on first use.
    pub fn get(&self, key: &str, limit: WindowLimit, share: f64) -> Arc<Budget> {
        match self.budgets.lock() {
            Ok(mut map) => map
                .entry(key.to_string())
                .or_insert_with(|| Arc::new(Budget::new(limit, share)))
                .clone(),
            Err(_) => Arc::new(Budget::new(limit, share)),
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
}
