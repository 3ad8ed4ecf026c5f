//! Field-level three-way merge (`SYNC_ALGORITHMS.md` §3): with the last agreed
//! base `B`, the platform's value `L` and the CRM's value `R`, a field changed
//! on one side is taken; changed on both to different values is a conflict
//! settled by the connection's strategy. Every field that changes a side
//! comes back with the rule that decided it, so "why did this field change?"
//! has an answer.

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
    /// The side whose field changed last wins (the default).
    #[default]
    NewestWins,
    /// Neither side changes; an operator decides.
    Manual,
}

impl ConflictStrategy {
    /// The name operators use (`platform_wins`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlatformWins => "platform_wins",
            Self::CrmWins => "crm_wins",
            Self::NewestWins => "newest_wins",
            Self::Manual => "manual",
        }
    }
}

impl std::str::FromStr for ConflictStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "platform_wins" => Ok(Self::PlatformWins),
            "crm_wins" => Ok(Self::CrmWins),
            "newest_wins" => Ok(Self::NewestWins),
            "manual" => Ok(Self::Manual),
            other => Err(format!(
                "unknown strategy {other:?}: use platform_wins, crm_wins, newest_wins or manual"
            )),
        }
    }
}

/// Which side changed a field last, for `newest_wins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    /// The platform's field changed after the CRM's.
    Platform,
    /// The CRM's field changed at or after the platform's.
    Crm,
}

/// The rule that settled one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Only the CRM changed it: taken.
    CrmChanged,
    /// Only the platform changed it: pushed.
    PlatformChanged,
    /// Both changed; the strategy `platform_wins` chose the platform.
    PlatformWins,
    /// Both changed; the strategy `crm_wins` chose the CRM.
    CrmWins,
    /// Both changed; the later change won.
    NewestWins,
}

impl Rule {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrmChanged => "crm_changed",
            Self::PlatformChanged => "platform_changed",
            Self::PlatformWins => "platform_wins",
            Self::CrmWins => "crm_wins",
            Self::NewestWins => "newest_wins",
        }
    }
}

/// One field that changed a side, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDecision {
    /// The field.
    pub field: CanonicalField,
    /// The rule.
    pub rule: Rule,
    /// The platform's value before.
    pub platform_before: Option<String>,
    /// The CRM's value before.
    pub crm_before: Option<String>,
    /// The value both sides now hold.
    pub value: Option<String>,
}

/// A field both sides changed differently under `manual`: held for an
/// operator, neither side overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The field.
    pub field: CanonicalField,
    /// The last agreed value.
    pub base: Option<String>,
    /// The platform's value.
    pub platform: Option<String>,
    /// The CRM's value.
    pub crm: Option<String>,
}

/// The outcome of merging one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// What the platform record should hold.
    pub local: RecordFields,
    /// What the CRM should hold (the push side uses it).
    pub remote: RecordFields,
    /// The new base: fields both sides now agree on (a held conflict keeps
    /// its old base).
    pub base: RecordFields,
    /// Fields held for an operator (`manual`).
    pub conflicts: Vec<FieldConflict>,
    /// Fields that changed a side, with their rule.
    pub decisions: Vec<FieldDecision>,
}

/// Merges `local` and `remote` against `base`, field by field; `newer` says
/// which side changed a field last (only `newest_wins` asks).
pub fn merge(
    base: &RecordFields,
    local: &RecordFields,
    remote: &RecordFields,
    strategy: ConflictStrategy,
    newer: &dyn Fn(CanonicalField) -> Newer,
) -> Merged {
    let mut merged = Merged {
        local: local.clone(),
        remote: remote.clone(),
        base: RecordFields::new(),
        conflicts: Vec::new(),
        decisions: Vec::new(),
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
        let (take, rule) = if l == r {
            (l, None)
        } else if l == b {
            (r, Some(Rule::CrmChanged))
        } else if r == b {
            (l, Some(Rule::PlatformChanged))
        } else {
            match strategy {
                ConflictStrategy::PlatformWins => (l, Some(Rule::PlatformWins)),
                ConflictStrategy::CrmWins => (r, Some(Rule::CrmWins)),
                ConflictStrategy::NewestWins => match newer(field) {
                    Newer::Platform => (l, Some(Rule::NewestWins)),
                    Newer::Crm => (r, Some(Rule::NewestWins)),
                },
                ConflictStrategy::Manual => {
                    merged.conflicts.push(FieldConflict {
                        field,
                        base: b.map(str::to_string),
                        platform: l.map(str::to_string),
                        crm: r.map(str::to_string),
                    });
                    if let Some(b) = b {
                        merged.base.set(field, b);
                    }
                    continue;
                }
            }
        };
        let value = take.unwrap_or("");
        if let Some(rule) = rule {
            merged.decisions.push(FieldDecision {
                field,
                rule,
                platform_before: l.map(str::to_string),
                crm_before: r.map(str::to_string),
                value: take.map(str::to_string),
            });
        }
        merged.local.set(field, value);
        merged.remote.set(field, value);
        // The base is the state both sides last shared: what the CRM holds
        // now. A value the platform is ahead with becomes the base only
        // when a push writes it; were it the base already, a read before
        // that push (or after one that failed) would see the CRM's older
        // value as a CRM edit and undo the platform's.
        merged.base.set(field, r.unwrap_or(""));
    }
    merged
}

/// Whether merging these states asks which side changed some field last:
/// only when both sides moved it from the base, to different values. A
/// caller can skip fetching per-field change times (HubSpot's property
/// history halves what one batch read takes) for records where it is false.
pub fn needs_change_times(
    base: &RecordFields,
    local: &RecordFields,
    remote: &RecordFields,
) -> bool {
    CanonicalField::ALL.iter().any(|&field| {
        let (b, l, r) = (base.get(field), local.get(field), remote.get(field));
        l != r && l != b && r != b
    })
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
        fn change_times_matter_only_where_needs_change_times_says(b in fields(), l in fields(), r in fields()) {
            let platform = merge(&b, &l, &r, ConflictStrategy::NewestWins, &|_| Newer::Platform);
            let crm = merge(&b, &l, &r, ConflictStrategy::NewestWins, &|_| Newer::Crm);
            if !needs_change_times(&b, &l, &r) {
                prop_assert_eq!(platform, crm);
            } else {
                prop_assert_ne!(platform.local, crm.local);
            }
        }

        #[test]
        fn automatic_strategies_converge_both_sides(b in fields(), l in fields(), r in fields(), s in strategy(), platform_newer: bool) {
            let newer = if platform_newer { Newer::Platform } else { Newer::Crm };
            let m = merge(&b, &l, &r, s, &|_| newer);
            prop_assert_eq!(&m.local, &m.remote);
            // The base is what the CRM holds until a push writes the rest.
            for field in CanonicalField::ALL {
                prop_assert_eq!(m.base.get(field), r.get(field));
            }
            prop_assert!(m.conflicts.is_empty());
        }

        #[test]
        fn merging_again_changes_nothing(b in fields(), l in fields(), r in fields(), s in strategy()) {
            let m = merge(&b, &l, &r, s, &|_| Newer::Crm);
            // Once the push has written the merged values, they are the base.
            let pushed = merge(&m.remote, &m.local, &m.remote, s, &|_| Newer::Crm);
            prop_assert_eq!((&pushed.local, &pushed.remote, &pushed.base), (&m.local, &m.remote, &m.remote));
            prop_assert!(pushed.decisions.is_empty());
        }

        #[test]
        fn a_second_read_before_the_push_lands_keeps_the_platforms_values(b in fields(), l in fields(), r in fields(), s in strategy(), platform_newer: bool) {
            // The CRM still holds `r` (the push failed, or has not run yet):
            // reading it again must not undo what the platform won, even if
            // the CRM now looks newer (an edit of another field).
            let newer = if platform_newer { Newer::Platform } else { Newer::Crm };
            let m = merge(&b, &l, &r, s, &|_| newer);
            let again = merge(&m.base, &m.local, &r, s, &|_| Newer::Crm);
            prop_assert_eq!((&again.local, &again.remote, &again.base), (&m.local, &m.remote, &m.base));
        }

        #[test]
        fn a_change_on_one_side_only_is_taken(b in fields(), r in fields(), s in strategy()) {
            // The platform did not move: the CRM's values win whatever the strategy.
            let m = merge(&b, &b, &r, s, &|_| Newer::Platform);
            prop_assert_eq!(m.local, r);
        }

        #[test]
        fn manual_changes_neither_side_of_a_conflict(b in fields(), l in fields(), r in fields()) {
            let m = merge(&b, &l, &r, ConflictStrategy::Manual, &|_| Newer::Crm);
            for c in &m.conflicts {
                prop_assert_eq!(m.local.get(c.field), l.get(c.field));
                prop_assert_eq!(m.remote.get(c.field), r.get(c.field));
                prop_assert_eq!(m.base.get(c.field), b.get(c.field));
                prop_assert_eq!(c.platform.as_deref(), l.get(c.field));
                prop_assert_eq!(c.crm.as_deref(), r.get(c.field));
            }
            // Everything else still merges: outside the held fields, both
            // sides agree.
            for (field, value) in m.local.iter() {
                if m.conflicts.iter().all(|c| c.field != field) {
                    prop_assert_eq!(m.remote.get(field), Some(value));
                }
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
            &|_| Newer::Platform,
        );
        assert_eq!(m.local.get(CanonicalField::Company), Some("Acme"));
        assert_eq!(m.local.get(CanonicalField::Phone), Some("2"));
    }

    proptest! {
        #[test]
        fn every_field_that_changes_a_side_names_its_rule(b in fields(), l in fields(), r in fields(), s in strategy(), platform_newer: bool) {
            let newer = if platform_newer { Newer::Platform } else { Newer::Crm };
            let m = merge(&b, &l, &r, s, &|_| newer);
            for field in [CanonicalField::FirstName, CanonicalField::LastName, CanonicalField::Company] {
                let changed = m.local.get(field) != l.get(field) || m.remote.get(field) != r.get(field);
                let decided = m.decisions.iter().find(|d| d.field == field);
                prop_assert_eq!(changed, decided.is_some());
                if let Some(d) = decided {
                    prop_assert_eq!(d.value.as_deref(), m.local.get(field));
                    let both_changed = l.get(field) != b.get(field) && r.get(field) != b.get(field);
                    let expected_conflict_rule = match s {
                        ConflictStrategy::PlatformWins => Rule::PlatformWins,
                        ConflictStrategy::CrmWins => Rule::CrmWins,
                        _ => Rule::NewestWins,
                    };
                    if both_changed {
                        prop_assert_eq!(d.rule, expected_conflict_rule);
                    }
                }
            }
        }
    }

    #[test]
    fn newest_wins_decides_each_field_by_its_own_time() {
        let base = RecordFields::new()
            .with(CanonicalField::FirstName, "Ada")
            .with(CanonicalField::Company, "Old");
        let local = base
            .clone()
            .with(CanonicalField::FirstName, "Platform")
            .with(CanonicalField::Company, "Platform Inc");
        let remote = base
            .clone()
            .with(CanonicalField::FirstName, "Crm")
            .with(CanonicalField::Company, "Crm Inc");
        // The platform changed the name last, the CRM the company.
        let newer = |f: CanonicalField| {
            if f == CanonicalField::FirstName {
                Newer::Platform
            } else {
                Newer::Crm
            }
        };
        let m = merge(&base, &local, &remote, ConflictStrategy::NewestWins, &newer);
        assert_eq!(m.local.get(CanonicalField::FirstName), Some("Platform"));
        assert_eq!(m.local.get(CanonicalField::Company), Some("Crm Inc"));
        assert_eq!(m.local, m.remote);
        assert!(m.decisions.iter().all(|d| d.rule == Rule::NewestWins));
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [
            ConflictStrategy::PlatformWins,
            ConflictStrategy::CrmWins,
            ConflictStrategy::NewestWins,
            ConflictStrategy::Manual,
        ] {
            assert_eq!(s.as_str().parse::<ConflictStrategy>(), Ok(s));
        }
        assert!("latest".parse::<ConflictStrategy>().is_err());
    }
}
