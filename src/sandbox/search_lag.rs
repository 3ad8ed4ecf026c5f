//! The lagging search view every emulated CRM has: a write shows in search
//! results only after the CRM's index catches up (HubSpot: seconds; Zoho's
//! COQL and Pipedrive's search lag too), while reads by id see it at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What search sees of one record: the copy published `lag` ago or earlier.
/// `None` means search does not see the record (not yet created, or
/// deleted).
#[derive(Debug)]
pub struct LaggingView<V> {
    visible: Option<Arc<V>>,
    pending: VecDeque<(Instant, Option<Arc<V>>)>,
}

impl<V> Default for LaggingView<V> {
    fn default() -> Self {
        Self {
            visible: None,
            pending: VecDeque::new(),
        }
    }
}

impl<V> Clone for LaggingView<V> {
    fn clone(&self) -> Self {
        Self {
            visible: self.visible.clone(),
            pending: self.pending.clone(),
        }
    }
}

impl<V> LaggingView<V> {
    /// Publishes the record's state at `now` (`None`: gone), visible from
    /// `now + lag`. With no lag it shows at once and earlier pending copies
    /// are forgotten.
    pub fn publish(&mut self, now: Instant, lag: Duration, view: Option<Arc<V>>) {
        if lag.is_zero() {
            self.pending.clear();
            self.visible = view;
        } else {
            self.promote(now);
            self.pending.push_back((now + lag, view));
        }
    }

    fn promote(&mut self, now: Instant) {
        while let Some((visible_at, _)) = self.pending.front() {
            if *visible_at > now {
                break;
            }
            if let Some((_, view)) = self.pending.pop_front() {
                self.visible = view;
            }
        }
    }

    /// What search sees at `now`.
    pub fn at(&mut self, now: Instant) -> Option<Arc<V>> {
        self.promote(now);
        self.visible.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAG: Duration = Duration::from_millis(500);

    #[test]
    fn a_write_shows_only_after_the_lag_and_a_delete_too() {
        let t0 = Instant::now();
        let mut view = LaggingView::default();
        view.publish(t0, LAG, Some(Arc::new("v1")));
        assert_eq!(view.at(t0 + LAG - Duration::from_millis(1)), None);
        assert_eq!(view.at(t0 + LAG).as_deref(), Some(&"v1"));
        view.publish(t0 + LAG, LAG, None);
        assert_eq!(
            view.at(t0 + LAG * 2 - Duration::from_millis(1)).as_deref(),
            Some(&"v1")
        );
        assert_eq!(view.at(t0 + LAG * 2), None);
    }

    #[test]
    fn no_lag_shows_at_once_and_drops_older_pending_copies() {
        let t0 = Instant::now();
        let mut view = LaggingView::default();
        view.publish(t0, LAG, Some(Arc::new(1)));
        view.publish(t0, Duration::ZERO, Some(Arc::new(2)));
        assert_eq!(view.at(t0 + LAG * 3).as_deref(), Some(&2));
    }

    proptest! {
        /// Whatever the sequence of writes, search at any time shows the
        /// last write published at least `lag` before it.
        #[test]
        fn search_shows_the_last_write_older_than_the_lag(
            gaps in proptest::collection::vec(0u64..1000, 1..20), probe in 0u64..20_000,
        ) {
            let t0 = Instant::now();
            let mut view = LaggingView::default();
            let mut at = t0;
            let mut writes = Vec::new();
            for (n, gap) in gaps.iter().enumerate() {
                at += Duration::from_millis(*gap);
                view.publish(at, LAG, Some(Arc::new(n)));
                writes.push((at, n));
            }
            let now = t0 + Duration::from_millis(probe);
            let probe_at = now.max(at);
            let expected = writes.iter().rev().find(|(t, _)| *t + LAG <= probe_at).map(|(_, n)| *n);
            prop_assert_eq!(view.at(probe_at).as_deref().copied(), expected);
        }
    }
}
