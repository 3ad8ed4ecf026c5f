//! Field-level three-way merge (`SYNC_ALGORITHMS.md` §3): with the last agreed
//! base `B`, the platform's value `L` and the CRM's value `R`, a field changed
//! on one side is taken; changed on both to different values is a conflict
//! settled by the connection's strategy.

use crate::domain::{CanonicalField, RecordFields};
use serde::{Deserialize, Serialize};

/// How a both-sides conflict is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStrategy {
    /// The platform's value is pushed.
    PlatformWins,
    /// The CRM's value is taken.
    CrmWins,
    /// The side changed last wins (the default).
    #[default]
    NewestWins,
    /// Neither side changes; an operator decides.
    Manual,
}

/// Which side changed last, for `newest_wins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    /// The platform record changed after the CRM record.
    Platform,
    /// The CRM record changed at or after the platform record.
    Crm,
}

/// The outcome of merging one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// What the platform record should hold.
    pub local: RecordFields,
    /// What the CRM should hold (the push side uses it).
    pub remote: RecordFields,
    /// The new base: fields both sides now agree on.
    pub base: RecordFields,
    /// Fields held for an operator (`manual`), with base, local and remote.
    pub conflicts: Vec<CanonicalField>,
}

/// Merges `local` and `remote` against `base`, field by field.
pub fn merge(
    base: &RecordFields,
    local: &RecordFields,
    remote: &RecordFields,
    strategy: ConflictStrategy,
    newer: Newer,
) -> Merged {
    let mut merged = Merged {
        local: local.clone(),
        remote: remote.clone(),
        base: RecordFields::new(),
        conflicts: Vec::new(),
    };
    let mut fields: Vec<CanonicalField> = base
        .iter()
        .chain(local.iter())
        .chain(remote.iter())
        .map(|(f, _)| f)
        .collect();
    fields.sort();
    fields.dedup();
    for field in fields {
        let (b, l, r) = (base.get(field), local.get(field), remote.get(field));
        let take = if l == r {
            l
        } else if l == b {
            r
        } else if r == b {
            l
        } else {
            let platform = match strategy {
                ConflictStrategy::PlatformWins => Some(true),
                ConflictStrategy::CrmWins => Some(false),
                ConflictStrategy::NewestWins => Some(newer == Newer::Platform),
                ConflictStrategy::Manual => None,
            };
            match platform {
                Some(true) => l,
                Some(false) => r,
                None => {
                    merged.conflicts.push(field);
                    if let Some(b) = b {
                        merged.base.set(field, b);
                    }
                    continue;
                }
            }
        };
        let value = take.unwrap_or("");
        merged.local.set(field, value);
        merged.remote.set(field, value);
        merged.base.set(field, value);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields() -> impl Strategy<Value = RecordFields> {
        let value = prop_oneof![Just(String::new()), "[ab]{1,2}"];
        (value.clone(), value.clone(), value).prop_map(|(a, b, c)| {
            RecordFields::new()
                .with(CanonicalField::FirstName, &a)
                .with(CanonicalField::LastName, &b)
                .with(CanonicalField::Company, &c)
        })
    }

    fn strategy() -> impl Strategy<Value = ConflictStrategy> {
        prop_oneof![
            Just(ConflictStrategy::PlatformWins),
            Just(ConflictStrategy::CrmWins),
            Just(ConflictStrategy::NewestWins),
        ]
    }

    proptest! {
        #[test]
        fn automatic_strategies_converge_both_sides(b in fields(), l in fields(), r in fields(), s in strategy(), platform_newer: bool) {
            let newer = if platform_newer { Newer::Platform } else { Newer::Crm };
            let m = merge(&b, &l, &r, s, newer);
            prop_assert_eq!(&m.local, &m.remote);
            prop_assert_eq!(&m.local, &m.base);
            prop_assert!(m.conflicts.is_empty());
        }

        #[test]
        fn merging_again_changes_nothing(b in fields(), l in fields(), r in fields(), s in strategy()) {
            let m = merge(&b, &l, &r, s, Newer::Crm);
            let again = merge(&m.base, &m.local, &m.remote, s, Newer::Crm);
            prop_assert_eq!(again, m);
        }

        #[test]
        fn a_change_on_one_side_only_is_taken(b in fields(), r in fields(), s in strategy()) {
            // The platform did not move: the CRM's values win whatever the strategy.
            let m = merge(&b, &b, &r, s, Newer::Platform);
            prop_assert_eq!(m.local, r);
        }

        #[test]
        fn manual_changes_neither_side_of_a_conflict(b in fields(), l in fields(), r in fields()) {
            let m = merge(&b, &l, &r, ConflictStrategy::Manual, Newer::Crm);
            for field in &m.conflicts {
                prop_assert_eq!(m.local.get(*field), l.get(*field));
                prop_assert_eq!(m.remote.get(*field), r.get(*field));
                prop_assert_eq!(m.base.get(*field), b.get(*field));
            }
        }
    }

    #[test]
    fn first_link_copies_one_sided_fields_and_settles_differences_by_strategy() {
        let local = RecordFields::new()
            .with(CanonicalField::Email, "a@x.io")
            .with(CanonicalField::Phone, "1");
        let remote = RecordFields::new()
            .with(CanonicalField::Email, "a@x.io")
            .with(CanonicalField::Phone, "2")
            .with(CanonicalField::Company, "Acme");
        let m = merge(
            &RecordFields::new(),
            &local,
            &remote,
            ConflictStrategy::CrmWins,
            Newer::Platform,
        );
        assert_eq!(m.local.get(CanonicalField::Company), Some("Acme"));
        assert_eq!(m.local.get(CanonicalField::Phone), Some("2"));
    }
}
