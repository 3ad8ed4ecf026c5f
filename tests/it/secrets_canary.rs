//! No plaintext secret in a database dump, a log line or an error message:
//! canary credentials go through a connection's whole life — connect, a
//! full sync by a worker process logging at debug level, a webhook secret,
//! a refused token — and are then searched for everywhere they could leak.

use crate::fleet::{Backend, Fleet};
use crmsync::domain::RunStatus;
use crmsync::store::Credentials;
use secrecy::SecretString;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_credentials_appear_in_no_dump_log_or_error() {
    let fleet = Fleet::start(Backend::Postgres, 0).await;
    // A customer's account, with a private-app token we have never seen.
    let account = fleet
        .sandbox
        .post_control("/_sandbox/accounts", json!({}))
        .await;
    assert!(account.status.is_success(), "{:?}", account.body);
    let portal = account.body["portalId"].as_u64().expect("portal");
    let canary_token = account.body["privateAppToken"]
        .as_str()
        .expect("token")
        .to_string();
    let seeded = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{portal}/seed"),
            json!({"contacts": 30, "leads": 0}),
        )
        .await;
    assert!(seeded.status.is_success(), "{:?}", seeded.body);
    let canary_secret = format!("whsec-canary-{}", uuid::Uuid::new_v4().simple());
    let tenant = fleet
        .store
        .create_tenant("canary")
        .await
        .expect("tenant")
        .id;
    let credentials = Credentials::PrivateAppToken {
        token: SecretString::from(canary_token.clone()),
    };
    // Not even a panic message or a debug print shows them.
    let printed = format!("{credentials:?}");
    assert!(!printed.contains(&canary_token), "{printed}");
    let (connection, _) = crmsync::cli::connect_hubspot_token(
        &fleet.settings,
        &fleet.store,
        tenant,
        credentials,
        None,
    )
    .await
    .expect("connect");
    fleet
        .store
        .set_webhook_secret(
            tenant,
            connection,
            Some(&SecretString::from(canary_secret.clone())),
        )
        .await
        .expect("secret");
    // A token the CRM refuses: its error says why, not what.
    let refused_token = format!("pat-na1-{}", uuid::Uuid::new_v4());
    let refused = crmsync::cli::connect_hubspot_token(
        &fleet.settings,
        &fleet.store,
        tenant,
        Credentials::PrivateAppToken {
            token: SecretString::from(refused_token.clone()),
        },
        None,
    )
    .await
    .expect_err("refused");
    let refused = format!("{refused:#} {refused:?}");
    assert!(!refused.contains(&refused_token), "{refused}");

    // A worker process syncs with the token, logging everything at debug.
    let log = std::env::temp_dir().join(format!("crmsync-canary-{}.log", uuid::Uuid::now_v7()));
    let mut worker = fleet.spawn_logging_worker(&log, "debug");
    let runs = crmsync::cli::start_full_sync(&fleet.deps, tenant, connection)
        .await
        .expect("full sync");
    for run in runs {
        let started = std::time::Instant::now();
        loop {
            let row = fleet.store.run(tenant, run.id).await.expect("run");
            if row.status != RunStatus::Running {
                assert_eq!(row.status, RunStatus::Succeeded, "{row:?}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{row:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let logged = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.lines().count() > 10 && logged.contains("DEBUG"),
        "the worker logged at debug level: {logged}"
    );
    for canary in [&canary_token, &canary_secret] {
        assert!(
            !logged.contains(canary.as_str()),
            "a secret in the worker's log"
        );
    }

    // A dump of the whole database, as its owner (no row-level security).
    let url = fleet.owner_database_url().expect("postgres");
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", "--no-owner", &url])
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains(&portal.to_string()),
        "the dump holds the connection"
    );
    for canary in [&canary_token, &canary_secret] {
        assert!(
            !dump.contains(canary.as_str()),
            "a secret in plain text in the database"
        );
    }
    fleet.finish().await;
}
