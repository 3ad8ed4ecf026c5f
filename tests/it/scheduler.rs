//! The scheduler: replicas ticking at the same moment claim each due
//! connection once between them, and the delta they enqueue runs.

use crate::fleet::{Fleet, on_both_backends};
use crate::support::{PORTAL, TOKEN};
use crmsync::domain::{CanonicalField, ConnectionId, RunKind, RunStatus, TenantId};
use crmsync::jobs::Deps;
use crmsync::store::Credentials;
use secrecy::SecretString;
use serde_json::json;
use std::time::{Duration, Instant};

/// A scheduler replica: its own store pool, queue handle and clients.
async fn replica(fleet: &Fleet) -> Deps {
    let store = crmsync::app::open_store(&fleet.settings, false)
        .await
        .expect("store");
    crmsync::app::deps(&fleet.settings, store)
        .await
        .expect("deps")
}

async fn close(deps: Deps) {
    deps.queue.close().await;
    deps.store.close().await;
}

/// `n` more tenants, each with a fresh connection (never scheduled, so due).
async fn more_connections(fleet: &Fleet, n: usize) -> Vec<(TenantId, ConnectionId)> {
    let mut out = Vec::new();
    for i in 0..n {
        let tenant = fleet
            .store
            .create_tenant(&format!("tenant-{i}"))
            .await
            .expect("tenant")
            .id;
        let credentials = Credentials::PrivateAppToken {
            token: SecretString::from(TOKEN),
        };
        let (connection, _) = crmsync::cli::connect_hubspot_token(
            &fleet.settings,
            &fleet.store,
            tenant,
            credentials,
            Some(PORTAL),
        )
        .await
        .expect("connect");
        out.push((tenant, connection));
    }
    out
}

on_both_backends! {
    async fn two_scheduler_replicas_ticking_at_once_enqueue_each_due_connection_once(backend) {
        let fleet = Fleet::start(backend, 0).await;
        let others = more_connections(&fleet, 11).await;
        let due = others.len() + 1;
        let (one, two) = (replica(&fleet).await, replica(&fleet).await);
        let (first, second) = tokio::join!(
            crmsync::scheduler::tick(&one),
            crmsync::scheduler::tick(&two)
        );
        let (first, second) = (first.expect("tick"), second.expect("tick"));
        assert_eq!(
            first + second,
            due,
            "each due connection claimed once in total (replicas claimed {first} and {second})"
        );
        // Claimed connections are not due again until their interval passes.
        let (again_one, again_two) = tokio::join!(
            crmsync::scheduler::tick(&one),
            crmsync::scheduler::tick(&two)
        );
        assert_eq!(
            (again_one.expect("tick"), again_two.expect("tick")),
            (0, 0),
            "an immediate second tick enqueues nothing"
        );
        close(one).await;
        close(two).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn the_delta_a_scheduler_tick_enqueues_runs_and_brings_a_crm_edit(backend) {
        let mut fleet = Fleet::start(backend, 30).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let contacts = fleet.sandbox_contacts().await;
        let id = contacts.keys().next().expect("a contact").clone();
        let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}");
        let edit = fleet
            .sandbox
            .control(reqwest::Method::PATCH, &path, Some(json!({"properties": {"firstname": "Scheduled"}})))
            .await;
        assert!(edit.status.is_success(), "{:?}", edit.body);

        let scheduler = replica(&fleet).await;
        let ticked_at = chrono::Utc::now();
        assert_eq!(crmsync::scheduler::tick(&scheduler).await.expect("tick"), 1);
        let started = Instant::now();
        let run = loop {
            let latest = fleet
                .store
                .latest_run(fleet.tenant, fleet.connection)
                .await
                .expect("latest run");
            if let Some(run) = latest.filter(|r| {
                r.kind == RunKind::DeltaSync && r.started_at >= ticked_at && r.status != RunStatus::Running
            }) {
                break run;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no delta run ended within 10 s of the tick"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        assert_eq!((run.created, run.updated), (0, 1), "{run:?}");
        let renamed = fleet
            .leads()
            .await
            .iter()
            .filter(|f| f.get(CanonicalField::FirstName) == Some("Scheduled"))
            .count();
        assert_eq!(renamed, 1, "the CRM edit reached the platform");
        assert_eq!(crmsync::scheduler::tick(&scheduler).await.expect("tick"), 0);
        close(scheduler).await;
        fleet.finish().await;
    }
}
