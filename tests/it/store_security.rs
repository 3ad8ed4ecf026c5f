//! Postgres as the application role: row-level security keeps tenants apart
//! even for hand-written SQL, and CRM credentials are sealed at rest, bound
//! to their row.

use crate::fleet::{Backend, Fleet};
use crate::support::{PORTAL, TOKEN};
use crmsync::domain::{ConnectionId, RunStatus, TenantId};
use crmsync::store::Credentials;
use secrecy::SecretString;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::time::{Duration, Instant};

/// A second tenant with its own connection to the same portal, fully synced.
async fn second_tenant(fleet: &Fleet) -> (TenantId, ConnectionId) {
    let tenant = fleet
        .store
        .create_tenant("globex")
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
    let run = crmsync::cli::start_full_sync(&fleet.deps, tenant, connection)
        .await
        .expect("start")
        .remove(0);
    let started = Instant::now();
    loop {
        let row = fleet.store.run(tenant, run.id).await.expect("run");
        if row.status != RunStatus::Running {
            assert_eq!(row.status, RunStatus::Succeeded, "{row:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (tenant, connection)
}

/// One connection as the application role (one, so that a setting leaking
/// from one transaction into the next would show).
async fn app_pool(fleet: &Fleet) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&fleet.settings.database.url)
        .await
        .expect("connect as the application role")
}

/// `(tenant_id of every row)` of `table` seen with `tenant` set (or none).
async fn visible(pool: &PgPool, table: &str, tenant: Option<TenantId>) -> Vec<uuid::Uuid> {
    let mut tx = pool.begin().await.expect("begin");
    if let Some(t) = tenant {
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(t.to_string())
            .execute(&mut *tx)
            .await
            .expect("set tenant");
    }
    let column = if table == "tenants" {
        "id"
    } else {
        "tenant_id"
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {column} FROM {table}")))
        .fetch_all(&mut *tx)
        .await
        .expect("select");
    tx.commit().await.expect("commit");
    rows.iter().map(|r| r.get::<uuid::Uuid, _>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_shows_the_app_role_only_the_tenant_it_set() {
    let mut fleet = Fleet::start(Backend::Postgres, 40).await;
    fleet.start_workers();
    fleet.full_sync().await;
    let a = fleet.tenant;
    let (b, _) = second_tenant(&fleet).await;
    let pool = app_pool(&fleet).await;

    for table in [
        "records",
        "record_links",
        "sync_runs",
        "sync_cursors",
        "connections",
    ] {
        for tenant in [a, b] {
            let rows = visible(&pool, table, Some(tenant)).await;
            assert!(!rows.is_empty(), "{table}: tenant {tenant} has rows");
            assert!(
                rows.iter().all(|t| *t == tenant.0),
                "{table}: with tenant {tenant} set, another tenant's row showed"
            );
        }
        assert!(
            visible(&pool, table, None).await.is_empty(),
            "{table}: with no tenant set nothing shows"
        );
    }
    assert_eq!(visible(&pool, "records", Some(a)).await.len(), 40);
    assert_eq!(visible(&pool, "records", Some(b)).await.len(), 40);
    assert_eq!(visible(&pool, "tenants", Some(a)).await, vec![a.0]);
    assert!(visible(&pool, "tenants", None).await.is_empty());

    // Writes: a row for B cannot be inserted, and B's rows cannot be touched,
    // while A is set.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .expect("set tenant");
    let updated = sqlx::query("UPDATE records SET version = version + 1 WHERE tenant_id = $1")
        .bind(b.0)
        .execute(&mut *tx)
        .await
        .expect("update");
    assert_eq!(
        updated.rows_affected(),
        0,
        "B's records are invisible to an update as A"
    );
    let deleted = sqlx::query("DELETE FROM sync_runs WHERE tenant_id = $1")
        .bind(b.0)
        .execute(&mut *tx)
        .await
        .expect("delete");
    assert_eq!(
        deleted.rows_affected(),
        0,
        "B's runs are invisible to a delete as A"
    );
    let insert_sql =
        "INSERT INTO records (id, tenant_id, kind, fields, origin, version, created_at, updated_at)
         VALUES ($1, $2, 'lead', '{}'::jsonb, 'platform', 1, now(), now())";
    // The same row for A is accepted: what fails below is the tenant alone.
    sqlx::query(insert_sql)
        .bind(uuid::Uuid::now_v7())
        .bind(a.0)
        .execute(&mut *tx)
        .await
        .expect("a row for the tenant that is set");
    let insert = sqlx::query(insert_sql)
        .bind(uuid::Uuid::now_v7())
        .bind(b.0)
        .execute(&mut *tx)
        .await;
    let error = insert.expect_err("inserting a row for B while A is set must fail");
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("42501"),
        "a row-level security violation: {error}"
    );
    tx.rollback().await.expect("rollback");

    // Moving one of A's rows over to B is refused as well.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .expect("set tenant");
    let moved = sqlx::query("UPDATE records SET tenant_id = $1")
        .bind(b.0)
        .execute(&mut *tx)
        .await;
    assert!(moved.is_err(), "A's rows cannot be handed to B");
    tx.rollback().await.expect("rollback");

    // The setting was transaction-local: the same connection sees nothing now.
    assert!(visible(&pool, "records", None).await.is_empty());
    assert_eq!(
        fleet.leads().await.len(),
        40,
        "nothing changed through the store"
    );
    pool.close().await;
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sealed_at_rest_and_do_not_open_on_another_connections_row() {
    let mut fleet = Fleet::start(Backend::Postgres, 20).await;
    fleet.start_workers();
    let a = fleet.tenant;
    let (b, b_connection) = second_tenant(&fleet).await;
    let pool = app_pool(&fleet).await;

    let sealed_of = |tenant: TenantId, connection: ConnectionId| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                .bind(tenant.to_string())
                .execute(&mut *tx)
                .await
                .expect("set tenant");
            let (bytes,): (Vec<u8>,) =
                sqlx::query_as("SELECT credentials FROM connections WHERE id = $1")
                    .bind(connection.0)
                    .fetch_one(&mut *tx)
                    .await
                    .expect("credentials column");
            tx.commit().await.expect("commit");
            bytes
        }
    };
    let a_sealed = sealed_of(a, fleet.connection).await;
    let b_sealed = sealed_of(b, b_connection).await;
    for sealed in [&a_sealed, &b_sealed] {
        let text = String::from_utf8_lossy(sealed);
        assert!(
            !text.contains(TOKEN),
            "the token is not stored in the clear"
        );
        assert!(!text.contains("pat-na1"), "no part of the token shows");
        assert!(
            !text.contains("private_app_token"),
            "nor the credential's shape"
        );
        assert!(sealed.len() > TOKEN.len(), "a real ciphertext");
    }
    assert_ne!(
        a_sealed, b_sealed,
        "the same token seals differently per row"
    );

    // A's ciphertext copied onto B's row (as B, which RLS allows) does not open.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(b.to_string())
        .execute(&mut *tx)
        .await
        .expect("set tenant");
    let copied = sqlx::query("UPDATE connections SET credentials = $1 WHERE id = $2")
        .bind(&a_sealed)
        .bind(b_connection.0)
        .execute(&mut *tx)
        .await
        .expect("copy ciphertext");
    assert_eq!(copied.rows_affected(), 1);
    tx.commit().await.expect("commit");

    let b_row = fleet
        .store
        .connection(b, b_connection)
        .await
        .expect("connection");
    let error = fleet
        .store
        .credentials(&b_row)
        .expect_err("a ciphertext sealed for another row must not open");
    assert!(error.to_string().contains("do not decrypt"), "{error}");
    let a_row = fleet
        .store
        .connection(a, fleet.connection)
        .await
        .expect("connection");
    assert!(
        fleet.store.credentials(&a_row).is_ok(),
        "A's own credentials still open"
    );

    // What the operator sees: B's sync fails, naming the cause; A's runs.
    let run = crmsync::cli::start_full_sync(&fleet.deps, b, b_connection)
        .await
        .expect("start")
        .remove(0);
    let started = Instant::now();
    let failed = loop {
        let row = fleet.store.run(b, run.id).await.expect("run");
        if row.status != RunStatus::Running {
            break row;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("do not decrypt"),
        "{failed:?}"
    );
    let ok = fleet.full_sync().await;
    assert_eq!(ok.created, 20, "{ok:?}");
    pool.close().await;
    fleet.finish().await;
}
