//! Sync against an unwilling CRM: credentials the CRM refuses mark the
//! connection `needs_reauth`; a delta attempt cut off at the job timeout
//! does not stay `running`; fifty jobs needing a fresh OAuth token make one
//! refresh. (Syncs converging through 429s, 5xx, hangs and garbage bodies,
//! and an expired token refreshed and a revoked one ending in
//! `needs_reauth`, are conformance scenarios.)

use crate::fleet::{Fleet, on_both_backends};
use crate::support::{PORTAL, TOKEN, TestSandbox};
use crmsync::domain::{ConnectionId, ConnectionStatus, RunId, RunKind, RunStatus, TenantId};
use crmsync::store::{Credentials, RunRow};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "sandbox-client-id";
const CLIENT_SECRET: &str = "sandbox-client-secret";

async fn set_faults(sandbox: &TestSandbox, faults: Value) {
    let reply = sandbox.put_control("/_sandbox/faults", faults).await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
}

/// Waits (on state) until a run of `tenant` ends.
async fn wait_run_of(fleet: &Fleet, tenant: TenantId, run: RunId, limit: Duration) -> RunRow {
    let started = Instant::now();
    loop {
        let row = fleet.store.run(tenant, run).await.expect("run");
        if row.status != RunStatus::Running {
            return row;
        }
        assert!(
            started.elapsed() < limit,
            "run {run} still running after {limit:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A full sync of `connection` of `tenant` through the queue, to its end.
async fn full_sync_of(
    fleet: &Fleet,
    tenant: TenantId,
    connection: ConnectionId,
    limit: Duration,
) -> RunRow {
    let runs = crmsync::cli::start_full_sync(&fleet.deps, tenant, connection)
        .await
        .expect("start full sync");
    let run = runs.into_iter().next().expect("one object");
    wait_run_of(fleet, tenant, run.id, limit).await
}

on_both_backends! {
    async fn a_refused_private_app_token_marks_the_connection_needs_reauth_until_it_is_reconnected(backend) {
        let mut fleet = Fleet::start(backend, 150).await;
        fleet.start_workers();
        let tenant = fleet.store.create_tenant("refused").await.expect("tenant").id;
        let wrong = Credentials::PrivateAppToken {
            token: SecretString::from("pat-na1-ffffffff-ffff-4fff-8fff-ffffffffffff"),
        };
        let (connection, portal) = crmsync::cli::connect_hubspot_token(
            &fleet.settings,
            &fleet.store,
            tenant,
            wrong,
            Some(PORTAL),
        )
        .await
        .expect("connect with an explicit portal id");
        assert_eq!(portal, PORTAL);

        let run = full_sync_of(&fleet, tenant, connection, Duration::from_secs(20)).await;
        assert_eq!(run.status, RunStatus::Failed, "{run:?}");
        let error = run.error.clone().unwrap_or_default();
        assert!(error.contains("re-authorisation"), "the error names the cure: {error}");
        assert_eq!(run.created, 0, "{run:?}");
        let row = fleet.store.connection(tenant, connection).await.expect("connection");
        assert_eq!(row.status, ConnectionStatus::NeedsReauth);
        let reason = row.status_reason.unwrap_or_default();
        assert!(reason.contains("crmsync connect"), "the reason says how to fix it: {reason}");

        // While it needs re-authorisation, syncs stop at once without calling the CRM.
        let again = full_sync_of(&fleet, tenant, connection, Duration::from_secs(20)).await;
        assert_eq!(again.status, RunStatus::Failed, "{again:?}");
        assert!(
            again.error.as_deref().unwrap_or_default().contains("needs_reauth"),
            "{again:?}"
        );

        // Reconnecting with a token the CRM accepts reactivates the same connection.
        let right = Credentials::PrivateAppToken { token: SecretString::from(TOKEN) };
        let (reconnected, _) = crmsync::cli::connect_hubspot_token(
            &fleet.settings,
            &fleet.store,
            tenant,
            right,
            None,
        )
        .await
        .expect("reconnect");
        assert_eq!(reconnected, connection, "a re-authorisation keeps the connection");
        let row = fleet.store.connection(tenant, connection).await.expect("connection");
        assert_eq!(row.status, ConnectionStatus::Active);
        let healed = full_sync_of(&fleet, tenant, connection, Duration::from_secs(20)).await;
        assert_eq!(healed.status, RunStatus::Succeeded, "{healed:?}");
        assert_eq!(healed.created, 150, "{healed:?}");
        // The other tenant's connection never noticed.
        let ours = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("connection");
        assert_eq!(ours.status, ConnectionStatus::Active);
        fleet.finish().await;
    }
}

fn oauth_parts(credentials: Credentials) -> (String, String) {
    match credentials {
        Credentials::OAuth {
            access_token,
            refresh_token,
            ..
        } => (
            access_token.expose_secret().to_string(),
            refresh_token.expose_secret().to_string(),
        ),
        other => panic!("expected OAuth credentials, got {other:?}"),
    }
}

on_both_backends! {
    async fn a_delta_attempt_cut_off_at_the_job_timeout_does_not_leave_its_run_running(backend) {
        let mut fleet = Fleet::start(backend, 100).await;
        // Requests give up after the job does, so the job timeout (4 s) cuts
        // the attempt off while its request hangs.
        fleet.rewire(|s| s.hubspot.request_timeout_secs = 6).await;
        let job_timeout = Duration::from_secs(fleet.settings.worker.job_timeout_secs);
        fleet.start_workers();
        fleet.full_sync().await;
        set_faults(&fleet.sandbox, json!({"timeoutRate": 1.0})).await;
        fleet.enqueue_delta().await;
        let started = Instant::now();
        let first = loop {
            let latest = fleet
                .store
                .latest_run(fleet.tenant, fleet.connection)
                .await
                .expect("latest run");
            if let Some(run) = latest.filter(|r| r.kind == RunKind::DeltaSync) {
                break run;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no delta run started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let since_start = Instant::now();
        let ended = loop {
            let row = fleet.store.run(fleet.tenant, first.id).await.expect("run");
            if row.status != RunStatus::Running {
                break row;
            }
            assert!(
                since_start.elapsed() < job_timeout + Duration::from_secs(4),
                "the delta attempt was abandoned at the {job_timeout:?} job timeout, yet its run \
                 is still `running` {:?} later: {row:?}",
                since_start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        set_faults(&fleet.sandbox, json!({})).await;
        assert_eq!(ended.status, RunStatus::Failed, "{ended:?}");
        assert!(ended.error.is_some(), "{ended:?}");
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn fifty_jobs_needing_a_fresh_token_at_once_make_one_refresh(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        fleet.rewire(|s| {
            s.hubspot.client_id = Some(CLIENT_ID.into());
            s.hubspot.client_secret = Some(SecretString::from(CLIENT_SECRET));
        })
        .await;
        let (access, refresh, _) = fleet.sandbox.oauth_tokens(CLIENT_ID, CLIENT_SECRET).await;
        // Stored as expired: every job opening a session must refresh first.
        let credentials = Credentials::OAuth {
            access_token: SecretString::from(access.clone()),
            refresh_token: SecretString::from(refresh),
            expires_at: chrono::Utc::now() - chrono::Duration::minutes(1),
        };
        crmsync::cli::connect_hubspot_token(&fleet.settings, &fleet.store, fleet.tenant, credentials, Some(PORTAL))
            .await
            .expect("connect with OAuth tokens");
        // Two worker processes on the production shape (their leases meet in
        // Redis); the embedded mode is one process.
        let mut processes = vec![fleet.deps.clone()];
        if backend == crate::fleet::Backend::Postgres {
            processes.push(crmsync::app::deps(&fleet.settings, fleet.store.clone()).await.expect("deps"));
        }
        let row = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("connection");
        let mut jobs = Vec::new();
        for n in 0..50 {
            let deps = processes[n % processes.len()].clone();
            let row = row.clone();
            jobs.push(tokio::spawn(async move {
                crmsync::jobs::Session::open(&deps, row)
                    .await
                    .map(|s| s.token().expose_secret().to_string())
            }));
        }
        let mut tokens = std::collections::BTreeSet::new();
        for job in jobs {
            tokens.insert(job.await.expect("join").expect("a session"));
        }
        // Each refresh call gives a new access token: one token, one call.
        assert_eq!(tokens.len(), 1, "{} refreshes for 50 jobs", tokens.len());
        let fresh = tokens.into_iter().next().expect("token");
        assert_ne!(fresh, access);
        let row = fleet.store.connection(fleet.tenant, fleet.connection).await.expect("connection");
        let (stored, _) = oauth_parts(fleet.store.credentials(&row).expect("credentials"));
        assert_eq!(stored, fresh, "the one refresh is stored");
        assert!(fleet.sandbox.status_with(&fresh).await.is_success());
        for deps in processes.iter().skip(1) {
            deps.queue.close().await;
        }
        fleet.finish().await;
    }
}
