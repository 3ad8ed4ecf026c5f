//! Delta sync: every edit arrives, including edits inside the search-index
//! lag window, edits sharing one timestamp, and more than 10,000 changes in
//! one window (HubSpot's search cap).

use crate::fleet::{Fleet, assert_mirrors_sandbox, on_both_backends};
use crate::support::PORTAL;
use crmsync::sandbox::hubspot::SandboxConfig;
use serde_json::json;

async fn bulk_edit(fleet: &Fleet, ids: &[u64], firstname: &str) -> serde_json::Value {
    let reply = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
            json!({"ids": ids, "properties": {"firstname": firstname}, "suffixWithId": true}),
        )
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    reply.body
}

async fn contact_ids(fleet: &Fleet) -> Vec<u64> {
    fleet
        .sandbox_contacts()
        .await
        .keys()
        .map(|id| id.parse().expect("numeric id"))
        .collect()
}

on_both_backends! {
    async fn edits_made_during_and_after_a_full_sync_all_arrive_by_delta(backend) {
        // A little latency so the full sync is still paging while users edit.
        let config = SandboxConfig { seed_contacts: 6_000, latency_ms: 5, ..SandboxConfig::for_tests() };
        let mut fleet = Fleet::with_sandbox(backend, config).await;
        let ids = contact_ids(&fleet).await;
        fleet.start_workers();
        let run = fleet.start_full_sync().await;
        // 2,500 edits while the full sync runs, in batches of 100.
        for (n, chunk) in ids[..2_500].chunks(100).enumerate() {
            bulk_edit(&fleet, chunk, &format!("During{n}")).await;
        }
        let full = fleet.wait_run(run.id, std::time::Duration::from_secs(120)).await;
        assert_eq!(full.created, 6_000, "{full:?}");
        // 2,500 more after it, half of them on records already edited once.
        for (n, chunk) in ids[1_250..3_750].chunks(100).enumerate() {
            bulk_edit(&fleet, chunk, &format!("After{n}")).await;
        }
        let delta = fleet.delta_sync().await;
        assert!(delta.updated >= 3_750 - 1_250, "every edited record updated: {delta:?}");
        assert_eq!(delta.created, 0, "{delta:?}");
        assert_mirrors_sandbox(&fleet).await;
        // Nothing left: a second delta re-reads the overlap and changes nothing.
        let again = fleet.delta_sync().await;
        assert_eq!((again.created, again.updated), (0, 0), "{again:?}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn edits_inside_the_search_index_lag_arrive_on_a_later_delta(backend) {
        let mut fleet = Fleet::start(backend, 500).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let set = fleet.sandbox.put_control("/_sandbox/settings", json!({"indexLagMs": 1_500, "tokenTtlSecs": 1_800})).await;
        assert!(set.status.is_success(), "{:?}", set.body);
        let ids = contact_ids(&fleet).await;
        bulk_edit(&fleet, &ids[..300], "Lagging").await;
        // The search index does not show the edits yet: nothing to bring over.
        let blind = fleet.delta_sync().await;
        assert_eq!(blind.updated, 0, "{blind:?}");
        // Once the index catches up, the overlap window re-reads past the
        // cursor and the edits arrive.
        tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
        let seen = fleet.delta_sync().await;
        assert_eq!(seen.updated, 300, "{seen:?}");
        assert_mirrors_sandbox(&fleet).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn twelve_thousand_edits_sharing_one_timestamp_all_arrive(backend) {
        let mut fleet = Fleet::start(backend, 12_000).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let ids = contact_ids(&fleet).await;
        let edit = bulk_edit(&fleet, &ids, "Imported").await;
        assert_eq!(edit["updated"], 12_000);
        let delta = fleet.delta_sync().await;
        assert_eq!(delta.updated, 12_000, "{delta:?}");
        assert_mirrors_sandbox(&fleet).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn more_than_ten_thousand_changes_in_one_window_all_arrive(backend) {
        let mut fleet = Fleet::start(backend, 12_000).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let ids = contact_ids(&fleet).await;
        // 60 imports of 200 records: many timestamps, many records each.
        for (n, chunk) in ids.chunks(200).enumerate() {
            bulk_edit(&fleet, chunk, &format!("Wave{n}")).await;
        }
        let delta = fleet.delta_sync().await;
        assert_eq!(delta.updated, 12_000, "{delta:?}");
        assert_mirrors_sandbox(&fleet).await;
        fleet.finish().await;
    }
}
