//! Rolling-window request counters, the shape of most CRMs' burst limits
//! ("N requests in any 10 seconds").

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counts requests admitted in the last `window`; admits one only while fewer
/// than `max` are in it, so the limit is never exceeded at any instant.
#[derive(Debug)]
pub struct RollingWindow {
    window: Duration,
    admitted: VecDeque<Instant>,
}

impl RollingWindow {
    /// An empty window of the given length.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            admitted: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&front) = self.admitted.front() {
            if now.duration_since(front) >= self.window {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }

    /// Admits a request at `now` if fewer than `max` were admitted in the
    /// window; returns whether it was admitted.
    pub fn try_admit(&mut self, now: Instant, max: u64) -> bool {
        self.expire(now);
        if (self.admitted.len() as u64) < max {
            self.admitted.push_back(now);
            true
        } else {
            false
        }
    }

    /// How many requests are still allowed in the window at `now`.
    pub fn remaining(&mut self, now: Instant, max: u64) -> u64 {
        self.expire(now);
        max.saturating_sub(self.admitted.len() as u64)
    }

    /// When the oldest admitted request leaves the window (a place opens).
    pub fn next_free_in(&mut self, now: Instant) -> Duration {
        self.expire(now);
        self.admitted
            .front()
            .map(|&t| self.window.saturating_sub(now.duration_since(t)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_then_refuses_until_the_window_moves() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::from_secs(10));
        assert!((0..3).all(|_| w.try_admit(t0, 3)));
        assert!(!w.try_admit(t0 + Duration::from_secs(9), 3));
        assert_eq!(w.remaining(t0 + Duration::from_secs(9), 3), 0);
        assert!(w.try_admit(t0 + Duration::from_secs(10), 3));
    }
}
