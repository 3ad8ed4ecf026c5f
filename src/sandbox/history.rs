//! Per-field history, kept by every emulated CRM that serves it (HubSpot's
//! `propertiesWithHistory`, Salesforce's field history, Zoho's timeline):
//! each field's values, newest first, with when and by whom.

use std::collections::HashMap;

/// One past value of a field. `A` is the CRM's notion of who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<A> {
    /// The value set ("" when cleared).
    pub value: String,
    /// When, epoch ms.
    pub timestamp_ms: i64,
    /// Who.
    pub actor: A,
}

/// How many entries a field keeps (CRMs keep more; tests need few, and a
/// cap keeps a long benchmark's memory flat).
pub const HISTORY_CAP: usize = 20;

/// Field name → its entries, newest first.
pub type FieldHistory<A> = HashMap<String, Vec<Entry<A>>>;

/// Records that `name` became `value` at `timestamp_ms`, by `actor`.
pub fn record<A>(
    history: &mut FieldHistory<A>,
    name: &str,
    value: &str,
    actor: A,
    timestamp_ms: i64,
) {
    let entries = history.entry(name.to_string()).or_default();
    entries.insert(
        0,
        Entry {
            value: value.to_string(),
            timestamp_ms,
            actor,
        },
    );
    entries.truncate(HISTORY_CAP);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newest_first_per_field() {
        let mut history = FieldHistory::new();
        record(&mut history, "email", "a@x.io", 'u', 1);
        record(&mut history, "email", "b@x.io", 'a', 2);
        record(&mut history, "phone", "1", 'u', 3);
        let values: Vec<&str> = history["email"].iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["b@x.io", "a@x.io"]);
        assert_eq!(history["email"][0].actor, 'a');
        assert_eq!(history["phone"].len(), 1);
    }

    proptest! {
        #[test]
        fn a_field_keeps_its_latest_entries_up_to_the_cap(writes in 1usize..100) {
            let mut history = FieldHistory::new();
            for n in 0..writes {
                record(&mut history, "f", &n.to_string(), (), n as i64);
            }
            let kept = &history["f"];
            prop_assert_eq!(kept.len(), writes.min(HISTORY_CAP));
            prop_assert_eq!(kept[0].value.clone(), (writes - 1).to_string());
            prop_assert!(kept.windows(2).all(|w| w[0].timestamp_ms > w[1].timestamp_ms));
        }
    }
}
