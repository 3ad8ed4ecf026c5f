//! What the benchmarks share: a fresh Postgres database per run, migrated as
//! the owner and entered as an application role (row-level security on, as
//! in production), and its removal.

// Each benchmark is its own crate and uses a subset of these.
#![allow(dead_code)]

use crmsync::store::Store;
use sqlx::Connection;

/// The admin connection (`DATABASE_URL`), which may create databases.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `db` on the admin URL's host, as `user`.
pub fn db_url(db: &str, user: &str) -> String {
    let admin = admin_url();
    let rest = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
    let host = rest.split_once('/').map_or(rest, |(h, _)| h);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("postgres://{user}@{host}/{db}")
}

/// A fresh `crmsync_bench_*` database: (name, URL as the app role).
pub async fn postgres_database() -> anyhow::Result<(String, String)> {
    let name = format!("crmsync_bench_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    Store::migrate(&db_url(&name, "postgres")).await?;
    // Roles are cluster-wide: a concurrent run may create it first.
    sqlx::query(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crmsync_bench_app') THEN
             CREATE ROLE crmsync_bench_app LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE crmsync_app;
           END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$",
    )
    .execute(&mut admin)
    .await?;
    Ok((name.clone(), db_url(&name, "crmsync_bench_app")))
}

/// Drops a benchmark database (best effort: a failed run may leave one for
/// `scripts/test` to sweep).
pub async fn drop_database(name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}
