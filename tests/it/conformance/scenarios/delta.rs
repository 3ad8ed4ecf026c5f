//! Delta sync against a CRM's change feed: every edit arrives — made while
//! a full sync pages, inside the feed's index lag, or more of them than one
//! query of the feed can return, in one instant or across many.

use super::assert_mirrors;
use crate::conformance::crm::{Crm, Faults};
use crate::fleet::{Backend, Fleet, wait_for};
use std::time::Duration;

/// The CRM's ids, in its order.
async fn ids(crm: Crm, fleet: &Fleet) -> Vec<String> {
    crm.people(fleet).await.into_keys().collect()
}

/// Edits made while a full sync pages and after it all arrive by delta,
/// and a second delta, re-reading its overlap, changes nothing.
pub async fn edits_made_during_and_after_a_full_sync_all_arrive_by_delta(
    crm: Crm,
    backend: Backend,
) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 6_000).await;
    // A little latency so the full sync is still paging while users edit.
    crm.set_faults(
        &fleet,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let ids = ids(crm, &fleet).await;
    fleet.start_workers();
    let run = fleet.start_full_sync().await;
    // 2,500 edits while the full sync runs, in imports of 100.
    for (n, chunk) in ids[..2_500].chunks(100).enumerate() {
        crm.import_first_names(&fleet, chunk, &format!("During{n}"))
            .await;
    }
    let full = fleet.wait_run(run.id, Duration::from_secs(120)).await;
    assert_eq!(full.created, 6_000, "{full:?}");
    // 2,500 more after it, half of them on records already edited once.
    for (n, chunk) in ids[1_250..3_750].chunks(100).enumerate() {
        crm.import_first_names(&fleet, chunk, &format!("After{n}"))
            .await;
    }
    let delta = fleet.delta_sync().await;
    assert!(
        delta.updated >= 3_750 - 1_250,
        "every edited record updated: {delta:?}"
    );
    assert_eq!(delta.created, 0, "{delta:?}");
    assert_mirrors(crm, &fleet).await;
    let again = fleet.delta_sync().await;
    assert_eq!((again.created, again.updated), (0, 0), "{again:?}");
    fleet.finish().await;
}

/// Edits the change feed does not show yet bring nothing over; once its
/// index catches up, the next delta (re-reading behind its cursor) brings
/// every one.
pub async fn edits_inside_the_search_index_lag_arrive_on_a_later_delta(crm: Crm, backend: Backend) {
    let mut fleet = Fleet::start_crm(crm.provider(), backend, 500).await;
    fleet.start_workers();
    fleet.full_sync().await;
    crm.set_index_lag(&fleet, Duration::from_millis(1_500))
        .await;
    let ids = ids(crm, &fleet).await;
    let edited = &ids[..300];
    crm.import_first_names(&fleet, edited, "Lagging").await;
    let blind = fleet.delta_sync().await;
    assert_eq!(blind.updated, 0, "{blind:?}");
    // One import, one instant: the feed shows all of it at once.
    let (first, last) = (&edited[0], &edited[edited.len() - 1]);
    wait_for("the change feed to catch up", || async {
        crm.feed_shows(&fleet, last, &format!("Lagging #{last}"))
            .await
    })
    .await;
    assert!(
        crm.feed_shows(&fleet, first, &format!("Lagging #{first}"))
            .await
    );
    let seen = fleet.delta_sync().await;
    assert_eq!(seen.updated, 300, "{seen:?}");
    assert_mirrors(crm, &fleet).await;
    fleet.finish().await;
}

/// More changes than one query of the change feed returns all arrive:
/// spread over many instants (imports of 200), then all in one instant
/// (where no cursor on time alone can page past the cap).
pub async fn more_changes_than_the_feeds_result_cap_all_arrive_in_many_instants_or_one(
    crm: Crm,
    backend: Backend,
) {
    let n = crm.result_cap() + 2_000;
    let mut fleet = Fleet::start_crm(crm.provider(), backend, n as u64).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let ids = ids(crm, &fleet).await;
    for (wave, chunk) in ids.chunks(200).enumerate() {
        crm.import_first_names(&fleet, chunk, &format!("Wave{wave}"))
            .await;
    }
    let delta = fleet.delta_sync().await;
    assert_eq!(delta.updated, n as i64, "many instants: {delta:?}");
    assert_mirrors(crm, &fleet).await;
    crm.import_first_names(&fleet, &ids, "Imported").await;
    let delta = fleet.delta_sync().await;
    assert_eq!(delta.updated, n as i64, "one instant: {delta:?}");
    assert_mirrors(crm, &fleet).await;
    fleet.finish().await;
}
