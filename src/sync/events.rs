//! What a CRM's webhook says, in one shape for every CRM, and what a batch
//! of such events means per record. Each adapter's verifier turns its
//! deliveries into [`Event`]s; ingress routes, dedupes and coalesces them
//! the same way for all.
//!
//! Coalescing orders the events by when they happened: the current state is
//! fetched (never taken from an event's value), so only "changed, deleted,
//! erased or merged" matters, and reordering or duplicate delivery cannot
//! change the outcome.

use crate::domain::{CrmId, CrmObject};
use std::collections::{BTreeMap, BTreeSet};

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created, changed or restored: read it.
    Changed,
    /// Deleted (archived) in the CRM.
    Deleted,
    /// Erased for privacy: its personal fields must go on the platform too.
    Erased,
    /// The record survives a merge that absorbed `absorbed` (the survivor
    /// itself may be listed; it is skipped).
    Merged {
        /// The records merged away.
        absorbed: Vec<CrmId>,
    },
    /// Something that changes no mapped field (an association, say):
    /// routed, deduped and counted, nothing to read.
    Other,
}

/// One webhook event, as every adapter reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The object it is about.
    pub object: CrmObject,
    /// The record (for a merge, the survivor).
    pub crm_id: CrmId,
    /// What happened.
    pub change: Change,
    /// When, in epoch milliseconds (the CRM's clock).
    pub occurred_at_ms: i64,
    /// Identifies one delivery of one change (duplicates share it).
    pub dedupe_key: String,
    /// The change is crmsync's own write come back (the CRM's echo marker).
    pub by_us: bool,
}

impl Event {
    /// The record this event asks to read, if any: a change by anyone but
    /// us, or a merge's survivor. Ingress marks it as waiting before it
    /// knows how the whole delivery coalesces, so it covers every record
    /// [`coalesce`] can put in `changed` (a property test pins that);
    /// marking more only costs a read that finds the record gone.
    pub fn changed_record(&self) -> Option<&CrmId> {
        match self.change {
            Change::Changed if !self.by_us => Some(&self.crm_id),
            Change::Merged { .. } => Some(&self.crm_id),
            _ => None,
        }
    }

    fn rank(&self) -> u8 {
        match self.change {
            Change::Changed => 0,
            Change::Deleted => 1,
            Change::Erased => 2,
            Change::Merged { .. } => 3,
            Change::Other => 4,
        }
    }
}

/// What a batch of events means per record (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coalesced {
    /// Records to fetch and merge (created, changed or restored).
    pub changed: BTreeSet<CrmId>,
    /// Records deleted in the CRM.
    pub deleted: BTreeSet<CrmId>,
    /// Records erased for privacy: personal fields must go.
    pub erased: BTreeSet<CrmId>,
    /// Merged-away record → the record that survives it.
    pub merged_into: BTreeMap<CrmId, CrmId>,
    /// Records whose every change in the batch is our own write → the
    /// latest such change's time: an echo, fetched only if that write is
    /// not booked.
    pub echoed: BTreeMap<CrmId, i64>,
}

impl Coalesced {
    /// Only changes to read (no deletion, erasure, merge or echo).
    pub fn only_changes(&self) -> bool {
        self.deleted.is_empty()
            && self.erased.is_empty()
            && self.merged_into.is_empty()
            && self.echoed.is_empty()
    }
}

/// Coalesces the events of one object per record (see [`Coalesced`]).
pub fn coalesce<'a>(events: impl IntoIterator<Item = &'a Event>) -> Coalesced {
    let mut ordered: Vec<&Event> = events.into_iter().collect();
    // When it happened first; ties broken by a stable key so duplicates and
    // any delivery order give the same sequence.
    ordered.sort_by(|a, b| {
        a.occurred_at_ms
            .cmp(&b.occurred_at_ms)
            .then_with(|| a.dedupe_key.cmp(&b.dedupe_key))
            .then_with(|| a.rank().cmp(&b.rank()))
            .then_with(|| a.crm_id.cmp(&b.crm_id))
    });
    let mut out = Coalesced::default();
    for event in ordered {
        let id = &event.crm_id;
        match &event.change {
            // Our own write come back: remembered apart (see `echoed`).
            Change::Changed if event.by_us => {
                let at = out.echoed.entry(id.clone()).or_insert(event.occurred_at_ms);
                *at = (*at).max(event.occurred_at_ms);
            }
            // An erased record never comes back.
            Change::Changed if !out.erased.contains(id) => {
                out.deleted.remove(id);
                out.changed.insert(id.clone());
            }
            Change::Changed | Change::Other => {}
            Change::Deleted => {
                out.changed.remove(id);
                out.deleted.insert(id.clone());
            }
            Change::Erased => {
                out.changed.remove(id);
                out.deleted.remove(id);
                out.erased.insert(id.clone());
            }
            Change::Merged { absorbed } => {
                for merged in absorbed.iter().filter(|m| *m != id) {
                    out.changed.remove(merged);
                    out.merged_into.insert(merged.clone(), id.clone());
                }
                out.changed.insert(id.clone());
            }
        }
    }
    // Anyone else's change, a deletion or an erasure decides those records.
    let decided: BTreeSet<CrmId> = out
        .changed
        .iter()
        .chain(&out.deleted)
        .chain(&out.erased)
        .chain(out.merged_into.keys())
        .cloned()
        .collect();
    out.echoed.retain(|id, _| !decided.contains(id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> CrmId {
        CrmId(n.to_string())
    }

    fn event(change: Change, record: u64, at: i64, key: u64) -> Event {
        Event {
            object: CrmObject::Contacts,
            crm_id: id(record),
            change,
            occurred_at_ms: at,
            dedupe_key: key.to_string(),
            by_us: false,
        }
    }

    #[test]
    fn a_deletion_after_a_change_deletes_and_a_change_after_it_reads() {
        let c = coalesce(&[
            event(Change::Changed, 1, 10, 1),
            event(Change::Deleted, 1, 20, 2),
            event(Change::Changed, 2, 5, 3),
            event(Change::Deleted, 2, 4, 4),
        ]);
        assert!(c.deleted.contains(&id(1)) && !c.changed.contains(&id(1)));
        assert!(c.changed.contains(&id(2)) && !c.deleted.contains(&id(2)));
        let erased = coalesce(&[
            event(Change::Erased, 3, 1, 5),
            event(Change::Changed, 3, 2, 6),
        ]);
        assert!(
            erased.erased.contains(&id(3)) && !erased.changed.contains(&id(3)),
            "an erased record never comes back"
        );
    }

    #[test]
    fn our_writes_are_echoes_unless_someone_else_changed_the_record_too() {
        let mut ours = event(Change::Changed, 1, 10, 1);
        ours.by_us = true;
        let mut later = ours.clone();
        later.occurred_at_ms = 30;
        later.dedupe_key = "9".into();
        let mut shared = ours.clone();
        shared.crm_id = id(3);
        let c = coalesce(&[ours, later, shared, event(Change::Changed, 3, 11, 4)]);
        assert_eq!(c.echoed.get(&id(1)), Some(&30), "the latest of our writes");
        assert!(!c.changed.contains(&id(1)));
        assert!(c.changed.contains(&id(3)) && !c.echoed.contains_key(&id(3)));
        assert!(!c.only_changes());
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let change = prop_oneof![Just(0u8), Just(1u8), Just(2u8), Just(3u8), Just(4u8)];
        (change, 1u64..6, 0i64..50, 0u64..1000, any::<bool>()).prop_map(
            |(change, record, at, key, ours)| {
                let change = match change {
                    0 => Change::Changed,
                    1 => Change::Deleted,
                    2 => Change::Erased,
                    3 => Change::Merged {
                        absorbed: vec![id(record), id(record % 5 + 1)],
                    },
                    _ => Change::Other,
                };
                let mut e = event(change, record, at, key);
                e.by_us = ours;
                e
            },
        )
    }

    proptest! {
        #[test]
        fn coalescing_ignores_delivery_order_and_duplicates(
            events in proptest::collection::vec(any_event(), 0..30),
            seed in any::<u64>(),
            dup in any::<usize>(),
        ) {
            let expected = coalesce(&events);
            let mut shuffled = events.clone();
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            if n > 0 {
                shuffled.push(events[dup % n].clone());
            }
            prop_assert_eq!(&coalesce(&shuffled), &expected);
            // A record is never both an echo and decided otherwise.
            for id in expected.echoed.keys() {
                prop_assert!(!expected.changed.contains(id) && !expected.deleted.contains(id) && !expected.erased.contains(id));
            }
        }

        #[test]
        fn every_record_to_read_was_marked_by_one_of_its_events(
            events in proptest::collection::vec(any_event(), 0..30),
            first in proptest::collection::vec(any::<bool>(), 30),
        ) {
            // Whatever subset of a delivery dedupe lets through, the records
            // its job reads were each marked waiting by one of those events.
            let kept: Vec<Event> = events.iter().zip(&first).filter(|(_, f)| **f).map(|(e, _)| e.clone()).collect();
            let marked: BTreeSet<&CrmId> = kept.iter().filter_map(Event::changed_record).collect();
            for id in &coalesce(&kept).changed {
                prop_assert!(marked.contains(id), "record {} is read but was never marked", id);
            }
        }
    }
}
