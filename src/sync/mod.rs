//! The pure core: what to do with a CRM record that arrives (from a full page,
//! a delta page or, later, a webhook). No I/O here; the store applies it.

pub mod events;
pub mod merge;

use crate::domain::{CanonicalField, CrmId, RecordFields, RecordId};
use chrono::{DateTime, Utc};
pub use merge::{
    ConflictStrategy, FieldConflict, FieldDecision, Merged, Newer, Rule, merge, needs_change_times,
};
use std::collections::BTreeMap;

/// When each field last changed on one side; a field not listed falls back
/// to the record's own modified time.
pub type FieldTimes = BTreeMap<CanonicalField, DateTime<Utc>>;

/// A CRM record as the provider adapter mapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Its id in the CRM.
    pub crm_id: CrmId,
    /// The CRM's last-modified time.
    pub modified_at: DateTime<Utc>,
    /// Its mapped, normalised field values.
    pub fields: RecordFields,
    /// The platform record id the CRM record carries (our upsert key), when
    /// we created it: links our own creation even before its push is booked.
    pub platform_id: Option<RecordId>,
    /// Per-field change times, when the CRM gave them (HubSpot's
    /// `propertiesWithHistory`); `newest_wins` compares these.
    pub field_times: FieldTimes,
    /// Fields whose latest CRM change was our own write (the history names
    /// our app): the CRM did not change them, we did, with a platform value
    /// that may since have been superseded — so `newest_wins` keeps the
    /// platform's, however late the write landed.
    pub own_writes: std::collections::BTreeSet<crate::domain::CanonicalField>,
    /// Whether this state was read with per-field history, so that
    /// `field_times` and `own_writes` are known. Without it, a record whose
    /// merge depends on them ([`needs_history`]) is not decided: the store
    /// asks for it to be read again with history.
    pub history: bool,
    /// Where the record's person lives when that is another CRM record (a
    /// HubSpot lead's primary contact): kept on the link so that the
    /// person's privacy deletion can find the record.
    pub person_crm_id: Option<CrmId>,
}

/// What a record's link remembers from the last sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The last agreed values.
    pub base: RecordFields,
    /// Fingerprint of the CRM state last pulled.
    pub pulled_fingerprint: Option<String>,
    /// Fingerprint of what we last wrote to the CRM (our echo).
    pub pushed_fingerprint: Option<String>,
    /// The CRM's modified time of the last state applied.
    pub crm_modified_at: Option<DateTime<Utc>>,
    /// When this link's last push wrote (or, while one is under way, the
    /// end of its window): a write of ours to the CRM at or before it can
    /// be this link's own.
    pub pushed_until: Option<DateTime<Utc>>,
}

impl LinkState {
    /// What a CRM record that carries the platform record's own id, but
    /// whose link is not booked yet, knows: no agreed base, and every write
    /// our app made to it before `now` was a push of that very record (it
    /// could only come from one), so none of them is a CRM edit.
    pub fn unbooked_creation(now: DateTime<Utc>) -> Self {
        Self {
            base: RecordFields::new(),
            pulled_fingerprint: None,
            pushed_fingerprint: None,
            crm_modified_at: None,
            pushed_until: Some(now),
        }
    }
}

/// The platform record's present state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    /// Its field values.
    pub fields: RecordFields,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When each field last changed.
    pub field_times: FieldTimes,
}

/// The decision for one incoming record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullDecision {
    /// Same state as last time: write nothing.
    Unchanged,
    /// Our own write come back (its values are the ones we pushed): write
    /// nothing, and count it — an echo must never become a write.
    Echo,
    /// Older than the state already applied (a reordered or late page):
    /// write nothing, so a field never regresses.
    Stale,
    /// Write the record (if `record_changed`) and the link.
    Apply {
        /// The platform record's new values.
        local: RecordFields,
        /// What the CRM should hold (differs from the incoming values
        /// exactly when `push`).
        remote: RecordFields,
        /// The link's new base.
        base: RecordFields,
        /// Whether the platform record's values change.
        record_changed: bool,
        /// Whether the CRM must be updated: the merge kept platform values
        /// the CRM does not hold (a local change, or a conflict the platform
        /// won). Without this push both sides would stay apart.
        push: bool,
        /// Fields that changed a side, with the rule that decided each.
        decisions: Vec<FieldDecision>,
        /// Fields held for an operator (`manual`).
        conflicts: Vec<FieldConflict>,
    },
}

/// Whether deciding `incoming` against this link and platform state depends
/// on per-field change times or on which CRM changes were our own writes:
/// exactly when some field differs on all three of base, platform and CRM.
/// It must be asked under the locks that guard the write the decision leads
/// to — a platform edit committing after an unlocked check could make a
/// record contested that was not, and then our own unbooked write (a push
/// killed before its booking) would look like a CRM edit newer than that
/// platform edit. A state read without history is never decided when this
/// holds; it is read again with history. Property-tested: when it is false,
/// no change times or own-write marks alter [`decide_pull`].
pub fn needs_history(
    link: Option<&LinkState>,
    local: Option<&LocalState>,
    incoming: &Incoming,
) -> bool {
    let Some(local) = local else {
        return false;
    };
    let empty = RecordFields::new();
    let base = link.map_or(&empty, |l| &l.base);
    needs_change_times(base, &local.fields, &incoming.fields)
}

/// Decides how one pulled CRM record changes the platform. `link` is `None`
/// for a record seen for the first time; `local` is `None` when no platform
/// record matched it by link or by email either.
pub fn decide_pull(
    link: Option<&LinkState>,
    local: Option<&LocalState>,
    incoming: &Incoming,
    strategy: ConflictStrategy,
) -> PullDecision {
    let fingerprint = incoming.fields.fingerprint();
    let mut seen_before = false;
    if let Some(link) = link {
        if link
            .crm_modified_at
            .is_some_and(|seen| incoming.modified_at < seen)
        {
            return PullDecision::Stale;
        }
        let known = [&link.pulled_fingerprint, &link.pushed_fingerprint];
        seen_before = known
            .iter()
            .any(|f| f.as_deref() == Some(fingerprint.as_str()));
        // Our own echo, or a state seen before, that the platform agrees
        // with: nothing to do.
        if seen_before && local.is_none_or(|l| l.fields == incoming.fields) {
            return if link.pushed_fingerprint.as_deref() == Some(fingerprint.as_str()) {
                PullDecision::Echo
            } else {
                PullDecision::Unchanged
            };
        }
    }
    let Some(local) = local else {
        return PullDecision::Apply {
            local: incoming.fields.clone(),
            remote: incoming.fields.clone(),
            base: incoming.fields.clone(),
            record_changed: true,
            push: false,
            decisions: Vec::new(),
            conflicts: Vec::new(),
        };
    };
    let empty = RecordFields::new();
    let base = link.map_or(&empty, |l| &l.base);
    // Our own write (by this link's push: at or before its mark) is not a
    // CRM edit, however late it landed — under every strategy, or a push
    // that lands after a newer platform edit would undo that edit under
    // `crm_wins` and raise a conflict with ourselves under `manual`.
    let own_write = |field: CanonicalField| {
        incoming.own_writes.contains(&field)
            && link.and_then(|l| l.pushed_until).is_some_and(|mark| {
                incoming
                    .field_times
                    .get(&field)
                    .is_some_and(|at| *at <= mark + chrono::Duration::seconds(1))
            })
    };
    let newer = |field: CanonicalField| {
        if own_write(field) {
            return Newer::Platform;
        }
        let platform = local
            .field_times
            .get(&field)
            .copied()
            .unwrap_or(local.updated_at);
        let crm = incoming
            .field_times
            .get(&field)
            .copied()
            .unwrap_or(incoming.modified_at);
        if platform > crm {
            Newer::Platform
        } else {
            Newer::Crm
        }
    };
    // A CRM state seen before holds no CRM change: every difference in it
    // was merged already (the platform won it, or changed since, or — under
    // `manual` — holds it as a conflict). Merging it as new would let a
    // stale read undo a decision; so the CRM side counts as the base, but
    // for held conflicts, which stay held. The push flag below still
    // compares with what the CRM really holds.
    let remote = if seen_before {
        let mut effective = base.clone();
        for field in crate::domain::CanonicalField::ALL {
            let (b, l, r) = (
                base.get(field),
                local.fields.get(field),
                incoming.fields.get(field),
            );
            if strategy == ConflictStrategy::Manual && l != b && r != b && l != r {
                effective.set(field, r.unwrap_or(""));
            }
        }
        effective
    } else {
        incoming.fields.clone()
    };
    // Where the platform changed the field too, to another value, our own
    // write counts as no CRM edit: the CRM side is the base. (Where only
    // the CRM side changed, its value is taken as always: a write by
    // another connection of the same app within this link's push window
    // must still arrive. Where the CRM already holds the platform's value,
    // both sides agree and that value becomes the base.)
    let mut remote = remote;
    for field in crate::domain::CanonicalField::ALL {
        if own_write(field)
            && local.fields.get(field) != base.get(field)
            && remote.get(field) != local.fields.get(field)
        {
            remote.set(field, base.get(field).unwrap_or(""));
        }
    }
    let merged = merge(base, &local.fields, &remote, strategy, &newer);
    let record_changed = merged.local != local.fields;
    let push = merged.remote != incoming.fields;
    PullDecision::Apply {
        record_changed,
        push,
        local: merged.local,
        remote: merged.remote,
        base: merged.base,
        decisions: merged.decisions,
        conflicts: merged.conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CanonicalField;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }

    fn incoming(name: &str, ms: i64) -> Incoming {
        Incoming {
            crm_id: CrmId("101".into()),
            modified_at: at(ms),
            fields: RecordFields::new()
                .with(CanonicalField::Email, "a@x.io")
                .with(CanonicalField::FirstName, name),
            platform_id: None,
            field_times: FieldTimes::new(),
            own_writes: Default::default(),
            history: false,
            person_crm_id: None,
        }
    }

    fn applied(link_from: &Incoming) -> LinkState {
        LinkState {
            base: link_from.fields.clone(),
            pulled_fingerprint: Some(link_from.fields.fingerprint()),
            pushed_fingerprint: None,
            crm_modified_at: Some(link_from.modified_at),
            pushed_until: None,
        }
    }

    proptest! {
        #[test]
        fn applying_the_same_state_twice_is_unchanged(name in "[a-z]{1,8}", ms in 0i64..1_000_000) {
            let first = incoming(&name, ms);
            let local = LocalState { fields: first.fields.clone(), updated_at: at(ms), field_times: FieldTimes::new() };
            prop_assert_eq!(decide_pull(Some(&applied(&first)), Some(&local), &first, ConflictStrategy::NewestWins), PullDecision::Unchanged);
        }

        #[test]
        fn an_older_state_never_overwrites_a_newer_one(a in "[a-z]{1,8}", b in "[a-z]{1,8}", ms in 1i64..1_000_000, back in 1i64..1000) {
            prop_assume!(a != b);
            let newer = incoming(&a, ms + back);
            let older = incoming(&b, ms);
            let local = LocalState { fields: newer.fields.clone(), updated_at: at(ms + back), field_times: FieldTimes::new() };
            prop_assert_eq!(decide_pull(Some(&applied(&newer)), Some(&local), &older, ConflictStrategy::NewestWins), PullDecision::Stale);
        }
    }

    fn small_fields() -> impl Strategy<Value = RecordFields> {
        let value = prop_oneof![Just(String::new()), "[ab]"];
        (value.clone(), value.clone(), value).prop_map(|(a, b, c)| {
            RecordFields::new()
                .with(CanonicalField::Email, "a@x.io")
                .with(CanonicalField::FirstName, &a)
                .with(CanonicalField::Company, &b)
                .with(CanonicalField::JobTitle, &c)
        })
    }

    fn strategy_of(i: usize) -> ConflictStrategy {
        [
            ConflictStrategy::PlatformWins,
            ConflictStrategy::CrmWins,
            ConflictStrategy::NewestWins,
            ConflictStrategy::Manual,
        ][i % 4]
    }

    const SMALL: [CanonicalField; 3] = [
        CanonicalField::FirstName,
        CanonicalField::Company,
        CanonicalField::JobTitle,
    ];

    proptest! {
        /// The store decides a record read without history only when
        /// `needs_history` is false: then history could not have changed
        /// the decision, whatever it would have said.
        #[test]
        fn where_history_is_not_needed_it_changes_no_decision(
            base in small_fields(), local in small_fields(), remote in small_fields(),
            linked: bool, seen: bool, pushed: bool, mark in proptest::option::of(0i64..100),
            times in proptest::collection::vec((0usize..3, 0i64..100), 0..4),
            own in proptest::collection::vec(0usize..3, 0..3),
            local_s in 0i64..100, remote_s in 0i64..100, strategy in 0usize..4,
        ) {
            let link = LinkState {
                base,
                pulled_fingerprint: seen.then(|| remote.fingerprint()),
                pushed_fingerprint: pushed.then(|| remote.fingerprint()),
                crm_modified_at: None,
                pushed_until: mark.map(|s| at(s * 1000)),
            };
            let link = linked.then_some(&link);
            let local = LocalState { fields: local, updated_at: at(local_s * 1000), field_times: FieldTimes::new() };
            let plain = Incoming { fields: remote, modified_at: at(remote_s * 1000), ..incoming("x", 0) };
            let mut detailed = plain.clone();
            detailed.history = true;
            for (field, s) in times {
                detailed.field_times.insert(SMALL[field], at(s * 1000));
            }
            for field in own {
                detailed.own_writes.insert(SMALL[field]);
            }
            if !needs_history(link, Some(&local), &plain) {
                let strategy = strategy_of(strategy);
                prop_assert_eq!(
                    decide_pull(link, Some(&local), &plain, strategy),
                    decide_pull(link, Some(&local), &detailed, strategy)
                );
            }
        }
    }

    #[test]
    fn our_unbooked_creation_read_back_never_undoes_a_platform_edit() {
        // Our push created the CRM record with company "Old" and died before
        // booking its link; the platform then changed the company. The read
        // (with history: every field is our app's write) finds the record by
        // the platform id it carries: the platform's edit stands and goes
        // out, under every strategy, with no conflict.
        let mut created = incoming("Ada", 50);
        created.fields.set(CanonicalField::Company, "Old");
        created.history = true;
        created
            .field_times
            .insert(CanonicalField::Company, at(50_000));
        created.own_writes.insert(CanonicalField::Company);
        created.own_writes.insert(CanonicalField::FirstName);
        let local = LocalState {
            fields: created.fields.clone().with(CanonicalField::Company, "New"),
            updated_at: at(60_000),
            field_times: FieldTimes::from([(CanonicalField::Company, at(60_000))]),
        };
        let link = LinkState::unbooked_creation(at(70_000));
        assert!(needs_history(Some(&link), Some(&local), &created));
        for strategy in (0..4).map(strategy_of) {
            match decide_pull(Some(&link), Some(&local), &created, strategy) {
                PullDecision::Apply {
                    local: merged,
                    push,
                    conflicts,
                    ..
                } => {
                    assert_eq!(
                        merged.get(CanonicalField::Company),
                        Some("New"),
                        "{strategy:?}"
                    );
                    assert!(push && conflicts.is_empty(), "{strategy:?}");
                }
                other => panic!("{strategy:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_own_app_write_to_a_field_the_platform_kept_is_taken() {
        // Another connection of the same app wrote the field while this
        // link's push window was open; the platform did not change it: for
        // this link it is a CRM edit like any other, under every strategy.
        let base = incoming("base", 10);
        let mut remote = incoming("other tenant", 50);
        remote
            .field_times
            .insert(CanonicalField::FirstName, at(50_000));
        remote.own_writes.insert(CanonicalField::FirstName);
        let local = LocalState {
            fields: base.fields.clone(),
            updated_at: at(10),
            field_times: FieldTimes::new(),
        };
        let link = LinkState {
            pushed_until: Some(at(60_000)),
            ..applied(&base)
        };
        for strategy in [
            ConflictStrategy::NewestWins,
            ConflictStrategy::CrmWins,
            ConflictStrategy::PlatformWins,
            ConflictStrategy::Manual,
        ] {
            match decide_pull(Some(&link), Some(&local), &remote, strategy) {
                PullDecision::Apply { local, .. } => assert_eq!(
                    local.get(CanonicalField::FirstName),
                    Some("other tenant"),
                    "{strategy:?}"
                ),
                other => panic!("{strategy:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn our_own_late_write_never_beats_a_newer_platform_value() {
        // We pushed "pushed" long ago; the push landed late (after the
        // platform changed again), so the CRM's change time looks newer.
        let base = incoming("base", 10);
        let mut remote = incoming("pushed", 50);
        remote
            .field_times
            .insert(CanonicalField::FirstName, at(50_000));
        let local = LocalState {
            fields: base.fields.clone().with(CanonicalField::FirstName, "newer"),
            updated_at: at(30),
            field_times: FieldTimes::from([(CanonicalField::FirstName, at(30))]),
        };
        let decide_as =
            |strategy: ConflictStrategy, remote: &Incoming, pushed_until: Option<DateTime<Utc>>| {
                let link = LinkState {
                    pushed_until,
                    ..applied(&base)
                };
                match decide_pull(Some(&link), Some(&local), remote, strategy) {
                    PullDecision::Apply {
                        local, conflicts, ..
                    } => {
                        assert!(conflicts.is_empty(), "{strategy:?}: {conflicts:?}");
                        local.get(CanonicalField::FirstName).map(str::to_string)
                    }
                    other => panic!("{other:?}"),
                }
            };
        let decide = |remote: &Incoming, pushed_until: Option<DateTime<Utc>>| {
            decide_as(ConflictStrategy::NewestWins, remote, pushed_until)
        };
        let mark = Some(at(60_000));
        assert_eq!(
            decide(&remote, mark).as_deref(),
            Some("pushed"),
            "a CRM edit that late wins"
        );
        remote.own_writes.insert(CanonicalField::FirstName);
        assert_eq!(
            decide(&remote, mark).as_deref(),
            Some("newer"),
            "this link's own write does not"
        );
        // Our app wrote it, but not through this link's push (another
        // connection to the same account): a CRM edit as far as it knows.
        assert_eq!(decide(&remote, Some(at(20_000))).as_deref(), Some("pushed"));
        assert_eq!(decide(&remote, None).as_deref(), Some("pushed"));
        // Nor under the other strategies: under `crm_wins` the late write
        // would undo the platform's edit, under `manual` it would be a
        // conflict with ourselves.
        for strategy in [ConflictStrategy::CrmWins, ConflictStrategy::Manual] {
            assert_eq!(
                decide_as(strategy, &remote, mark).as_deref(),
                Some("newer"),
                "{strategy:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn a_pull_either_takes_the_crm_values_or_asks_for_a_push(
            name in "[a-z]{1,6}", other in "[a-z]{1,6}", platform_newer: bool,
        ) {
            prop_assume!(name != other);
            let base = incoming("base", 10);
            let remote = incoming(&name, 20);
            let local = LocalState {
                fields: base.fields.clone().with(CanonicalField::FirstName, &other),
                updated_at: at(if platform_newer { 30 } else { 15 }),
                field_times: FieldTimes::new(),
            };
            match decide_pull(Some(&applied(&base)), Some(&local), &remote, ConflictStrategy::NewestWins) {
                PullDecision::Apply { local: merged, push, .. } => {
                    // Both sides changed the field: the newer side wins, and if
                    // it is the platform, the CRM has to be told.
                    prop_assert_eq!(push, platform_newer);
                    prop_assert_eq!(merged.get(CanonicalField::FirstName), Some(if platform_newer { other.as_str() } else { name.as_str() }));
                }
                other => prop_assert!(false, "expected Apply, got {:?}", other),
            }
        }
    }

    #[test]
    fn an_echo_of_a_stale_push_sends_the_platforms_newer_values_again() {
        let pushed = incoming("Old", 10);
        let link = LinkState {
            base: pushed.fields.clone(),
            pulled_fingerprint: None,
            pushed_fingerprint: Some(pushed.fields.fingerprint()),
            crm_modified_at: None,
            pushed_until: None,
        };
        let local = LocalState {
            fields: pushed.fields.clone().with(CanonicalField::FirstName, "New"),
            updated_at: at(20),
            field_times: FieldTimes::new(),
        };
        match decide_pull(
            Some(&link),
            Some(&local),
            &pushed,
            ConflictStrategy::NewestWins,
        ) {
            PullDecision::Apply {
                push,
                record_changed,
                local: kept,
                ..
            } => {
                assert!(push && !record_changed);
                assert_eq!(kept.get(CanonicalField::FirstName), Some("New"));
            }
            other => panic!("expected a push, got {other:?}"),
        }
    }

    #[test]
    fn a_crm_state_read_again_never_undoes_a_decision_the_platform_won() {
        // A push merged the CRM's "Crm" and decided "Platform" (base and
        // local now "Platform"); a webhook job read the same CRM state
        // before the push landed. It must push again, not take "Crm".
        let read = incoming("Crm", 10);
        let link = LinkState {
            base: read
                .fields
                .clone()
                .with(CanonicalField::FirstName, "Platform"),
            pulled_fingerprint: Some(read.fields.fingerprint()),
            pushed_fingerprint: None,
            crm_modified_at: Some(read.modified_at),
            pushed_until: None,
        };
        let local = LocalState {
            fields: link.base.clone(),
            updated_at: at(20),
            field_times: FieldTimes::new(),
        };
        for strategy in [
            ConflictStrategy::NewestWins,
            ConflictStrategy::CrmWins,
            ConflictStrategy::Manual,
        ] {
            match decide_pull(Some(&link), Some(&local), &read, strategy) {
                PullDecision::Apply {
                    record_changed,
                    push,
                    remote,
                    ..
                } => {
                    assert!(!record_changed && push, "{strategy:?}");
                    assert_eq!(remote.get(CanonicalField::FirstName), Some("Platform"));
                }
                other => panic!("{strategy:?}: expected a push, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_held_manual_conflict_stays_held_when_its_crm_state_is_read_again() {
        let read = incoming("Crm", 10);
        let link = LinkState {
            base: read.fields.clone().with(CanonicalField::FirstName, "Base"),
            pulled_fingerprint: Some(read.fields.fingerprint()),
            pushed_fingerprint: None,
            crm_modified_at: Some(read.modified_at),
            pushed_until: None,
        };
        let local = LocalState {
            fields: read
                .fields
                .clone()
                .with(CanonicalField::FirstName, "Platform"),
            updated_at: at(20),
            field_times: FieldTimes::new(),
        };
        match decide_pull(Some(&link), Some(&local), &read, ConflictStrategy::Manual) {
            PullDecision::Apply {
                record_changed,
                push,
                conflicts,
                ..
            } => {
                assert!(!record_changed && !push);
                assert_eq!(conflicts.len(), 1);
            }
            other => panic!("expected the conflict held, got {other:?}"),
        }
    }

    #[test]
    fn our_own_echo_is_recognised_as_an_echo() {
        let pushed = incoming("Ada", 10);
        let link = LinkState {
            base: RecordFields::new(),
            pulled_fingerprint: None,
            pushed_fingerprint: Some(pushed.fields.fingerprint()),
            crm_modified_at: None,
            pushed_until: None,
        };
        assert_eq!(
            decide_pull(Some(&link), None, &pushed, ConflictStrategy::NewestWins),
            PullDecision::Echo
        );
    }

    #[test]
    fn a_crm_edit_updates_the_platform_record() {
        let first = incoming("Ada", 10);
        let edit = incoming("Grace", 20);
        let local = LocalState {
            fields: first.fields.clone(),
            updated_at: at(10),
            field_times: FieldTimes::new(),
        };
        match decide_pull(
            Some(&applied(&first)),
            Some(&local),
            &edit,
            ConflictStrategy::NewestWins,
        ) {
            PullDecision::Apply {
                local,
                record_changed,
                ..
            } => {
                assert!(record_changed);
                assert_eq!(local.get(CanonicalField::FirstName), Some("Grace"));
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }
}
