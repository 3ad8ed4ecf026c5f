//! sqlx repositories, the only module with SQL. One set of runtime queries
//! serves Postgres (production, row-level security per tenant) and SQLite
//! (the embedded store); [`on_db!`] runs the same query text on either.

mod conflicts;
mod connections;
mod dead_letters;
mod health;
mod oauth_states;
mod parked;
mod partitions;
mod platform;
mod records;
mod retention;
mod rotation;
mod runs;
mod sweep;
mod tenants;

pub use conflicts::{ConflictRow, FieldChange, Resolution};
pub use connections::{
    ConnectionRow, ConnectionSettings, Credentials, NewConnection, ObjectMapping,
    WebhookCredential, open_webhook_credential,
};
pub use dead_letters::{DeadLetter, ReplayedBy};
pub use health::HealthCheck;
pub use oauth_states::{Consumed, NewOAuthState};
pub use parked::{PULL_RECORD, PUSH_RECORD, RefusedPush, RefusedRecord};
pub use partitions::PartitionRow;
pub use platform::{LinkView, PendingDelete, PendingPush, PushedRecord, RecordQuery, RecordView};
pub use records::{FullSyncPage, PageApplied, PageOutcome, PageWrite, PushTarget};
pub use retention::Purged;
pub use rotation::Rotation;
pub use runs::{RunCounts, RunRow, RunUpdate};
pub use sweep::SweepCheckpoint;
pub use tenants::{DEFAULT_TENANT, NewTenant};

use crate::domain::TenantId;
use crate::secrets::KeyRing;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// Postgres schema migrations, run by `crmsync migrate` as the table owner.
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
/// SQLite schema migrations, run automatically when the embedded store opens.
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Store failures, classified so that jobs can tell "retry" from "give up".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or a query failed transiently.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The schema is missing: the operator has to run `crmsync migrate`.
    #[error("the database has no crmsync schema; run `crmsync migrate` first ({0})")]
    NotMigrated(String),
    /// A row that must exist does not (or belongs to another tenant).
    #[error("{0} not found")]
    NotFound(String),
    /// Input the store refuses, with the reason.
    #[error("{0}")]
    Invalid(String),
    /// The write would break a uniqueness rule (e.g. a second lead with the
    /// same email).
    #[error("{0}")]
    Conflict(String),
    /// Credentials could not be sealed or opened.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// Stored data does not parse (a bug or a manual edit).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying later may succeed (connection loss, lock timeouts,
    /// serialization failures, unique races between two workers).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Database(db) => {
                    // 23505 unique, 40001 serialization, 40P01 deadlock,
                    // SQLite 5/6 busy/locked, 2067 unique (two racing inserts).
                    matches!(
                        db.code().as_deref(),
                        Some(
                            "23505"
                                | "40001"
                                | "40P01"
                                | "55P03"
                                | "5"
                                | "6"
                                | "517"
                                | "2067"
                                | "1555"
                        )
                    )
                }
                sqlx::Error::RowNotFound | sqlx::Error::ColumnNotFound(_) => false,
                sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => false,
                _ => true,
            },
            _ => false,
        }
    }
}

/// The pool of whichever database is configured.
#[derive(Clone, Debug)]
pub enum Db {
    /// Production.
    Postgres(PgPool),
    /// Embedded.
    Sqlite(SqlitePool),
}

/// An open transaction on either database. On Postgres it has already set
/// `app.tenant_id`, so row-level security admits that tenant's rows only.
pub enum Tx {
    /// Postgres.
    Postgres(Transaction<'static, Postgres>),
    /// SQLite (`BEGIN IMMEDIATE`, so writers queue instead of failing).
    Sqlite(Transaction<'static, Sqlite>),
}

/// Runs `$body` with `$c` bound to the connection of either database; the
/// same query text and binds compile against both.
macro_rules! on_db {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::store::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}
pub(crate) use on_db;

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Postgres(t) => t.commit().await?,
            Tx::Sqlite(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// The store: a pool plus the key that seals credentials.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    key: Option<KeyRing>,
}

impl Store {
    /// Opens the database at `url`. SQLite files are created and migrated;
    /// Postgres must have been migrated by `crmsync migrate`.
    pub async fn open(
        url: &str,
        max_connections: u32,
        key: Option<KeyRing>,
    ) -> Result<Self, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let pool = open_sqlite(url, max_connections).await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Db::Sqlite(pool)
        } else {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            let probe = sqlx::query("SELECT 1 FROM tenants LIMIT 0")
                .execute(&pool)
                .await;
            if let Err(e) = probe {
                return Err(StoreError::NotMigrated(e.to_string()));
            }
            Db::Postgres(pool)
        };
        Ok(Self { db, key })
    }

    /// Runs the schema migrations for `url` (as the table owner on Postgres).
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        if url.starts_with("sqlite:") {
            let pool = open_sqlite(url, 1).await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            pool.close().await;
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(PgConnectOptions::from_str(url)?)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            pool.close().await;
        }
        Ok(())
    }

    /// Whether the connected Postgres role bypasses row-level security
    /// (superuser, BYPASSRLS, or owner of the tables); `false` on SQLite.
    pub async fn bypasses_row_security(&self) -> Result<bool, StoreError> {
        match &self.db {
            Db::Sqlite(_) => Ok(false),
            Db::Postgres(pool) => {
                let (bypass,): (bool,) = sqlx::query_as(
                    "SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(current_user, t.tableowner, 'MEMBER')
                       FROM pg_roles r, pg_tables t
                      WHERE r.rolname = current_user AND t.schemaname = current_schema() AND t.tablename = 'records'",
                )
                .fetch_one(pool)
                .await?;
                Ok(bypass)
            }
        }
    }

    /// The underlying pool.
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn key(&self) -> Result<&KeyRing, StoreError> {
        self.key.as_ref().ok_or_else(|| {
            StoreError::Invalid(
                "no encryption key: set CRMSYNC__SECRETS__ENCRYPTION_KEY (32 random bytes, base64)"
                    .into(),
            )
        })
    }

    /// Begins a transaction scoped to `tenant`.
    pub async fn begin(&self, tenant: TenantId) -> Result<Tx, StoreError> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                    .bind(tenant.to_string())
                    .execute(&mut *tx)
                    .await?;
                Ok(Tx::Postgres(tx))
            }
            Db::Sqlite(pool) => Ok(Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)),
        }
    }

    /// Closes the pool, waiting for connections to return.
    pub async fn close(&self) {
        match &self.db {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }
}

/// Opens an SQLite pool the way a busy embedded store needs it: WAL, normal
/// sync, a busy timeout so concurrent writers wait instead of failing.
pub async fn open_sqlite(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        .connect_with(options)
        .await?)
}

/// Queues `record` for a push to `connection` (an outbox row), inside the
/// caller's transaction so the row commits with the change that needs it.
pub(crate) async fn queue_outbox(
    tx: &mut Tx,
    tenant: TenantId,
    connection: uuid::Uuid,
    record: uuid::Uuid,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    queue_outbox_operation(tx, tenant, connection, record, "upsert", now).await
}

/// `$first, $first+1, …` for `n` values: the placeholders of an `IN (…)`
/// list whose values are bound after the first `first - 1` parameters.
/// An optional list filter that keeps its bind: ` AND {condition}` when the
/// filter is given, else ` AND ${param} IS NULL` (the `None` bound there), so
/// parameter numbers never shift with the filters in use.
pub(crate) fn optional_filter(given: bool, condition: &str, param: usize) -> String {
    if given {
        format!(" AND {condition}")
    } else {
        format!(" AND ${param} IS NULL")
    }
}

pub(crate) fn in_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Queues an outbox row of either operation (`upsert` | `delete`).
pub(crate) async fn queue_outbox_operation(
    tx: &mut Tx,
    tenant: TenantId,
    connection: uuid::Uuid,
    record: uuid::Uuid,
    operation: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    on_db!(tx, |c| {
        sqlx::query(
        "INSERT INTO outbox (id, tenant_id, connection_id, record_id, operation, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)"
    )
    .bind(uuid::Uuid::now_v7())
    .bind(tenant.0)
    .bind(connection)
    .bind(record)
    .bind(operation)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ())
    })?;
    Ok(())
}
