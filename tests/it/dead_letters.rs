//! Jobs that fail for good end as dead letters an operator can list and
//! replay through the api — per tenant, and exactly once.

use crate::fleet::{ApiClient, Fleet, on_both_backends, wait_for};
use crate::support::TOKEN;
use crmsync::domain::{ConnectionStatus, RunKind, RunStatus};
use crmsync::jobs::DeltaSyncJob;
use crmsync::jobs::replay::retry_failed;
use crmsync::store::Credentials;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;

on_both_backends! {
    async fn a_job_that_fails_for_good_is_a_dead_letter_the_operator_replays_once(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        fleet.start_workers();
        let base = fleet.start_api().await;
        let acme = fleet.store.create_tenant("acme").await.expect("tenant");
        let credentials = Credentials::PrivateAppToken { token: SecretString::from(TOKEN) };
        let (connection, _) = crmsync::cli::connect_hubspot_token(&fleet.settings, &fleet.store, acme.id, credentials, None)
            .await
            .expect("connect");
        let runs = crmsync::cli::start_full_sync(&fleet.deps, acme.id, connection).await.expect("full sync");
        for run in runs {
            let store = fleet.store.clone();
            wait_for("acme's full sync", || {
                let store = store.clone();
                async move { store.run(acme.id, run.id).await.is_ok_and(|r| r.status == RunStatus::Succeeded) }
            })
            .await;
        }
        let api = ApiClient { base: base.clone(), token: acme.token.clone(), http: reqwest::Client::new() };

        // The connection is paused under a delta that is already queued: the
        // delta cannot run, and retrying cannot help.
        fleet.store.set_connection_status(acme.id, connection, ConnectionStatus::Paused, None).await.expect("pause");
        let job = DeltaSyncJob {
            tenant: acme.id,
            connection,
            object: None,
            trigger: "queued-before-the-pause".into(),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
        fleet.deps.queue.push_delta_sync(&job).await.expect("enqueue");
        wait_for("the dead letter", || async {
            let (_, page, _) = api.send(Method::GET, "/v1/dead-letters", None).await;
            page["data"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
        let (status, page, _) = api.send(Method::GET, &format!("/v1/dead-letters?connectionId={connection}"), None).await;
        assert_eq!(status, StatusCode::OK);
        let dead = page["data"][0].clone();
        assert_eq!(dead["jobKind"], "delta_sync", "{dead}");
        assert_eq!(dead["attempts"], 1, "a permanent error is not retried: {dead}");
        assert!(dead["error"].as_str().unwrap_or("").contains("paused"), "{dead}");
        assert_eq!(dead["job"]["trigger"], "queued-before-the-pause");
        assert!(dead["replayedAt"].is_null());
        let id = dead["id"].as_str().expect("id").to_string();

        // Another tenant sees none of it and cannot replay it.
        let globex = fleet.store.create_tenant("globex").await.expect("tenant");
        let other = ApiClient { base, token: globex.token, http: reqwest::Client::new() };
        let (_, theirs, _) = other.send(Method::GET, "/v1/dead-letters", None).await;
        assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0), "{theirs}");
        let (status, _, _) = other.send(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The operator resumes the connection and replays: the delta runs.
        fleet.store.set_connection_status(acme.id, connection, ConnectionStatus::Active, None).await.expect("resume");
        let (status, replayed, _) = api.send(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
        assert!(replayed["replayedAt"].is_string(), "{replayed}");
        wait_for("the replayed delta", || async {
            fleet.store.latest_run(acme.id, connection).await.ok().flatten()
                .is_some_and(|r| r.kind == RunKind::DeltaSync && r.status == RunStatus::Succeeded)
        })
        .await;
        let (_, open, _) = api.send(Method::GET, "/v1/dead-letters", None).await;
        assert_eq!(open["data"].as_array().map(Vec::len), Some(0), "{open}");
        let (_, done, _) = api.send(Method::GET, "/v1/dead-letters?status=replayed", None).await;
        assert_eq!(done["data"][0]["id"], id.as_str());
        // Once only.
        let (status, _, _) = api.send(Method::POST, &format!("/v1/dead-letters/{id}/replay"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, all, _) = api.send(Method::POST, "/v1/dead-letters/replay", None).await;
        assert_eq!((status, all["replayed"].as_i64()), (StatusCode::ACCEPTED, Some(0)));
        fleet.finish().await;
    }
}

/// The tenant's open dead letters, newest first.
async fn open_dead_letters(fleet: &Fleet) -> Vec<crmsync::store::DeadLetter> {
    fleet
        .store
        .list_dead_letters(fleet.tenant, false, None, None, 100)
        .await
        .expect("dead letters")
}

on_both_backends! {
    async fn retry_failed_re_drives_a_chain_of_failures_three_times_then_leaves_it_to_the_operator(backend) {
        let mut fleet = Fleet::start(backend, 3).await;
        // One attempt per job, so each failure is a dead letter at once.
        fleet.settings.worker.max_attempts = 1;
        fleet.deps = crmsync::app::deps(&fleet.settings, fleet.store.clone()).await.expect("deps");
        fleet.start_workers();
        fleet.full_sync().await;

        // HubSpot fails every request: a delta dies.
        let reply = fleet.sandbox.put_control("/_sandbox/faults", serde_json::json!({"errorRate": 1.0})).await;
        assert!(reply.status.is_success(), "{:?}", reply.body);
        let job = DeltaSyncJob {
            tenant: fleet.tenant,
            connection: fleet.connection,
            object: None,
            trigger: "chain".into(),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
        fleet.deps.queue.push_delta_sync(&job).await.expect("enqueue");
        wait_for("the first dead letter", || async { open_dead_letters(&fleet).await.len() == 1 }).await;

        // A paused connection's dead letters are left alone: they would only fail again.
        fleet.store.set_connection_status(fleet.tenant, fleet.connection, ConnectionStatus::Paused, None).await.expect("pause");
        assert_eq!(retry_failed(&fleet.deps).await.expect("round"), 0);
        fleet.store.set_connection_status(fleet.tenant, fleet.connection, ConnectionStatus::Active, None).await.expect("resume");

        // Each round re-drives the chain; while HubSpot still fails, each
        // re-drive dies again with one more re-drive on it.
        for round in 1..=3 {
            assert_eq!(retry_failed(&fleet.deps).await.expect("round"), 1, "round {round}");
            wait_for("the re-driven job to fail again", || async {
                open_dead_letters(&fleet).await.first().is_some_and(|d| d.redrives == round)
            })
            .await;
            let open = open_dead_letters(&fleet).await;
            assert_eq!(open.len(), 1, "the re-driven dead letter is closed: {open:?}");
        }
        // The fourth failure stays for the operator.
        assert_eq!(retry_failed(&fleet.deps).await.expect("round"), 0);
        let replayed = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 100).await.expect("replayed");
        assert_eq!(replayed.len(), 3);
        assert!(replayed.iter().all(|d| d.replayed_by.as_deref() == Some("retry_failed")), "{replayed:?}");

        // The operator fixes the cause and replays it.
        let reply = fleet.sandbox.put_control("/_sandbox/faults", serde_json::json!({})).await;
        assert!(reply.status.is_success());
        let dead = open_dead_letters(&fleet).await.remove(0);
        let by = crmsync::store::ReplayedBy::Operator;
        crmsync::jobs::replay::replay(&fleet.deps.queue, &fleet.store, (fleet.tenant, &dead), by)
            .await
            .expect("replay")
            .expect("was open");
        let shown = fleet.store.list_dead_letters(fleet.tenant, true, None, None, 1).await.expect("replayed");
        let shown = serde_json::to_value(&shown[0]).expect("json");
        assert_eq!((shown["replayedBy"].as_str(), shown["redrives"].as_i64()), (Some("operator"), Some(3)), "{shown}");
        wait_for("the operator's replay to succeed", || async {
            fleet.store.latest_run(fleet.tenant, fleet.connection).await.ok().flatten()
                .is_some_and(|r| r.kind == RunKind::DeltaSync && r.status == RunStatus::Succeeded)
        })
        .await;
        assert!(open_dead_letters(&fleet).await.is_empty());
        fleet.finish().await;
    }
}
