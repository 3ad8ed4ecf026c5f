//! Platform → CRM: a platform lead is written to HubSpot once (upsert on our
//! record id), its echo is recognised and skipped, and a genuine CRM edit of
//! it still flows back.

use crate::fleet::{Fleet, on_both_backends, wait_for};
use crate::support::PORTAL;
use crmsync::domain::{CanonicalField, RecordFields, RecordKind, RunKind};
use serde_json::json;

/// Write requests the sandbox served, by route fragment.
async fn writes(fleet: &Fleet, route: &str) -> u64 {
    let counters = fleet.sandbox.counters().await;
    counters["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.contains(route))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

async fn sandbox_contact(fleet: &Fleet, email: &str) -> Option<(String, serde_json::Value)> {
    fleet
        .sandbox_contacts()
        .await
        .into_iter()
        .find(|(_, p)| p["email"].as_str().map(str::to_lowercase).as_deref() == Some(email))
}

/// Echoes recognised so far (this test process's metrics; the first call
/// installs the recorder).
fn echo_skips() -> u64 {
    crmsync::telemetry::metrics()
        .map(|h| h.render())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("crmsync_echo_skipped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

on_both_backends! {
    async fn a_platform_lead_reaches_hubspot_once_its_echo_is_skipped_and_crm_edits_flow_back(backend) {
        let mut fleet = Fleet::start(backend, 5).await;
        let echoes_before = echo_skips(); // installs the recorder
        fleet.start_workers();
        fleet.full_sync().await;
        fleet.start_ingress(true).await;

        let fields = RecordFields::new()
            .with(CanonicalField::Email, "new.lead@example.com")
            .with(CanonicalField::FirstName, "Ada")
            .with(CanonicalField::Status, "contacted");
        let (record, queued) = fleet.store.create_platform_record(fleet.tenant, RecordKind::Lead, &fields).await.expect("create");
        assert_eq!(queued, vec![fleet.connection], "queued for the one connection that syncs leads");
        fleet.enqueue_push().await;
        wait_for("the lead in HubSpot", || async { sandbox_contact(&fleet, "new.lead@example.com").await.is_some() }).await;
        let (crm_id, props) = sandbox_contact(&fleet, "new.lead@example.com").await.expect("contact");
        assert_eq!(props["firstname"], "Ada");
        // The echo (a webhook for our own creation) is recognised — by the
        // app that wrote it and the booked push, without reading it back —
        // and counted, not applied.
        wait_for("the echo to be recognised", || async { echo_skips() > echoes_before }).await;
        let latest = fleet.store.latest_run(fleet.tenant, fleet.connection).await.expect("run").expect("run");
        // (Had the echo outrun the push's booking, it would have been read
        // back once — and still changed nothing.)
        assert!(latest.kind != RunKind::ProcessWebhook || (latest.created, latest.updated) == (0, 0), "{latest:?}");
        // Pushing again (a retried job) neither writes nor duplicates.
        fleet.enqueue_push().await;
        let delta = fleet.delta_sync().await;
        assert_eq!((delta.created, delta.updated), (0, 0), "{delta:?}");
        assert_eq!(fleet.sandbox_contacts().await.len(), 6, "one new contact in HubSpot");
        assert_eq!(fleet.leads().await.len(), 6, "and no duplicate lead on the platform");
        assert_eq!(writes(&fleet, "batch/upsert").await, 1, "one write, no echo writes");
        let view = fleet.store.record_view(fleet.tenant, RecordKind::Lead, record).await.expect("view").expect("lead");
        assert_eq!(view.links.len(), 1);
        assert_eq!(view.links[0].crm_id, crm_id);

        // A genuine CRM edit of a platform-originated lead still flows back.
        let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}");
        let edited = fleet.sandbox.control(reqwest::Method::PATCH, &path, Some(json!({"properties": {"firstname": "Ada L."}}))).await;
        assert!(edited.status.is_success(), "{:?}", edited.body);
        wait_for("the CRM edit on the platform", || async {
            fleet.store.record_view(fleet.tenant, RecordKind::Lead, record).await.ok().flatten()
                .and_then(|v| v.fields.get(CanonicalField::FirstName).map(str::to_string)).as_deref() == Some("Ada L.")
        })
        .await;

        // And a platform edit goes out as a patch by CRM id.
        let changed = fields.clone().with(CanonicalField::FirstName, "Ada Lovelace");
        fleet.store.update_platform_record(fleet.tenant, RecordKind::Lead, record, &changed).await.expect("update").expect("exists");
        fleet.enqueue_push().await;
        wait_for("the platform edit in HubSpot", || async {
            sandbox_contact(&fleet, "new.lead@example.com").await.is_some_and(|(_, p)| p["firstname"] == "Ada Lovelace")
        })
        .await;
        assert_eq!(writes(&fleet, "batch/upsert").await, 1);
        assert_eq!(fleet.sandbox_contacts().await.len(), 6);
        fleet.finish().await;
    }
}
