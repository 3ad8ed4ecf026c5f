//! Sync runs (one per full or delta sync of one object, with its counts and
//! paging state; one per periodic job and connection, with its named
//! counts) and delta cursors.

use super::{Store, StoreError, Tx, on_db};
use crate::domain::{
    ConnectionId, CrmId, CrmObject, Cursor, FeedPosition, RunId, RunKind, RunStatus, TenantId,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

/// One sync run as stored.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRow {
    /// Its id.
    pub id: RunId,
    /// Owner.
    #[serde(skip)]
    pub tenant: TenantId,
    /// The connection synced.
    #[serde(rename = "connectionId")]
    pub connection: ConnectionId,
    /// The CRM object synced; `None` for a periodic job's run, which is
    /// about the whole connection.
    pub object: Option<CrmObject>,
    /// Full, delta, webhook or push; or a periodic job's kind.
    pub kind: RunKind,
    /// Running, succeeded or failed.
    pub status: RunStatus,
    /// The provider's token for the next full-sync page, as a run kept it
    /// before partitions (`store::partitions`); the partitions keep theirs.
    #[serde(skip)]
    pub page_token: Option<String>,
    /// Full-sync pages applied so far, over all its partitions.
    pub pages_done: i64,
    /// Records read.
    pub processed: i64,
    /// Platform records created.
    pub created: i64,
    /// Platform records changed.
    pub updated: i64,
    /// Records that were already up to date (or our echo, or stale).
    pub unchanged: i64,
    /// Records that could not be applied.
    pub failed: i64,
    /// The error that ended a failed run.
    pub error: Option<String>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// End time.
    pub finished_at: Option<DateTime<Utc>>,
    /// A periodic job's named counts (e.g. `checked`, `drifted`,
    /// `repaired`, `conflicts`); absent on sync runs, whose counts are the
    /// fields above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<RunCounts>,
}

impl RunRow {
    /// What the run was about, for one-line summaries: its CRM object, or
    /// `connection` for a periodic job's run.
    pub fn object_name(&self) -> &'static str {
        self.object.map_or("connection", CrmObject::as_str)
    }
}

/// A periodic job's counts by name: each kind reports what it does, so
/// the names differ per kind (documented in the README and the api).
pub type RunCounts = std::collections::BTreeMap<String, i64>;

/// Counts for one page, added to its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunUpdate {
    /// Records read.
    pub processed: i64,
    /// Created.
    pub created: i64,
    /// Updated.
    pub updated: i64,
    /// Unchanged.
    pub unchanged: i64,
    /// Failed.
    pub failed: i64,
}

const SELECT_RUN: &str = "SELECT id, tenant_id, connection_id, crm_object, kind, status, page_token, pages_done, processed, created, updated, unchanged, failed, error, started_at, finished_at, counts FROM sync_runs";

/// The kinds "a connection's latest run" considers: those that move
/// records, so an hourly health check never hides the last sync.
const SYNC_KINDS: &str = "kind IN ('full_sync', 'delta_sync', 'process_webhook', 'push_changes')";

#[derive(sqlx::FromRow)]
struct RunSql {
    id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    connection_id: uuid::Uuid,
    crm_object: Option<String>,
    kind: String,
    status: String,
    page_token: Option<String>,
    pages_done: i64,
    processed: i64,
    created: i64,
    updated: i64,
    unchanged: i64,
    failed: i64,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    counts: Option<sqlx::types::Json<RunCounts>>,
}

fn to_run(r: RunSql) -> Result<RunRow, StoreError> {
    let corrupt = |e: crate::domain::UnknownName| StoreError::Corrupt(e.to_string());
    Ok(RunRow {
        id: RunId(r.id),
        tenant: TenantId(r.tenant_id),
        connection: ConnectionId(r.connection_id),
        object: r
            .crm_object
            .map(|o| o.parse())
            .transpose()
            .map_err(corrupt)?,
        kind: r.kind.parse().map_err(corrupt)?,
        status: r.status.parse().map_err(corrupt)?,
        page_token: r.page_token,
        pages_done: r.pages_done,
        processed: r.processed,
        created: r.created,
        updated: r.updated,
        unchanged: r.unchanged,
        failed: r.failed,
        error: r.error,
        started_at: r.started_at,
        finished_at: r.finished_at,
        counts: r.counts.map(|c| c.0),
    })
}

impl Store {
    /// Starts a run. A full sync also seeds the object's delta cursor at its
    /// start time if there is none, so deltas pick up every change made while
    /// (and after) the full sync pages through.
    pub async fn start_run(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        kind: RunKind,
    ) -> Result<RunRow, StoreError> {
        let id = RunId::new();
        let now = Utc::now();
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO sync_runs (id, tenant_id, connection_id, crm_object, kind, direction, status, started_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $7, 'running', $6, $6)"
        )
        .bind(id.0)
        .bind(tenant.0)
        .bind(connection.0)
        .bind(object.as_str())
        .bind(kind.as_str())
        .bind(now)
        .bind(if kind == RunKind::PushChanges { "push" } else { "pull" })
        .execute(c)
        .await
        .map(|_| ())
        })?;
        if kind == RunKind::FullSync {
            on_db!(&mut tx, |c| {
                sqlx::query(
                "INSERT INTO sync_cursors (tenant_id, connection_id, crm_object, feed, modified_at, crm_id, updated_at)
                 VALUES ($1, $2, $3, 'changes', $4, '0', $4) ON CONFLICT (connection_id, crm_object, feed) DO NOTHING"
            )
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
            })?;
        }
        tx.commit().await?;
        self.run(tenant, id).await
    }

    /// Closes runs of this kind left `running` by a process that died (no
    /// progress since `idle_since`), so status never shows a ghost run.
    pub async fn close_abandoned_runs(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        kind: RunKind,
        idle_since: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let closed = on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE sync_runs SET status = 'failed', error = 'abandoned: the worker running it stopped', finished_at = $1, updated_at = $1
              WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND kind = $5 AND status = 'running' AND updated_at < $6"
        )
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(connection.0)
        .bind(object.as_str())
        .bind(kind.as_str())
        .bind(idle_since)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(closed)
    }

    /// Loads a run.
    pub async fn run(&self, tenant: TenantId, id: RunId) -> Result<RunRow, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let found: Option<RunSql> = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            format!("{SELECT_RUN} WHERE tenant_id = $1 AND id = $2")
        ))
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(c)
        .await)?;
        tx.commit().await?;
        to_run(found.ok_or_else(|| StoreError::NotFound(format!("sync run {id}")))?)
    }

    /// The running run of this kind for this object, if any (so a second
    /// `crmsync sync` follows the first instead of starting another).
    pub async fn running_run(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        kind: RunKind,
    ) -> Result<Option<RunRow>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let found: Option<RunSql> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_RUN} WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND kind = $4 AND status = 'running'
             ORDER BY started_at DESC LIMIT 1"
        )))
        .bind(tenant.0)
        .bind(connection.0)
        .bind(object.as_str())
        .bind(kind.as_str())
        .fetch_optional(c)
        .await
        })?;
        tx.commit().await?;
        found.map(to_run).transpose()
    }

    /// The tenant's runs, newest first, optionally of one connection, before
    /// a (start time, id) cursor.
    pub async fn list_runs(
        &self,
        tenant: TenantId,
        connection: Option<ConnectionId>,
        before: Option<(DateTime<Utc>, RunId)>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let mut sql = format!("{SELECT_RUN} WHERE tenant_id = $1");
        sql.push_str(&super::optional_filter(
            connection.is_some(),
            "connection_id = $2",
            2,
        ));
        if before.is_some() {
            sql.push_str(" AND (started_at < $3 OR (started_at = $3 AND id < $4))");
        } else {
            sql.push_str(" AND $3 IS NULL AND $4 IS NULL");
        }
        sql.push_str(" ORDER BY started_at DESC, id DESC LIMIT $5");
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<RunSql> = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(tenant.0)
        .bind(connection.map(|c| c.0))
        .bind(before.map(|b| b.0))
        .bind(before.map(|b| b.1.0))
        .bind(limit)
        .fetch_all(c)
        .await)?;
        tx.commit().await?;
        rows.into_iter().map(to_run).collect()
    }

    /// The connection's most recent run that moved records (full, delta,
    /// webhook or push): what `crmsync status` shows as the last run.
    pub async fn latest_run(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
    ) -> Result<Option<RunRow>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let found: Option<RunSql> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_RUN} WHERE tenant_id = $1 AND connection_id = $2 AND {SYNC_KINDS} ORDER BY started_at DESC, id DESC LIMIT 1"
        )))
        .bind(tenant.0)
        .bind(connection.0)
        .fetch_optional(c)
        .await
        })?;
        tx.commit().await?;
        found.map(to_run).transpose()
    }

    /// Records a periodic job's run on one connection once it is over, in
    /// one statement: these jobs are short and idempotent, so a crash
    /// leaves no ghost `running` row, only a job the queue runs again.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_periodic_run(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        kind: RunKind,
        started_at: DateTime<Utc>,
        status: RunStatus,
        error: Option<&str>,
        counts: &RunCounts,
    ) -> Result<RunId, StoreError> {
        let id = RunId::new();
        let now = Utc::now();
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO sync_runs (id, tenant_id, connection_id, crm_object, kind, direction, status, error, started_at, finished_at, updated_at, counts)
             VALUES ($1, $2, $3, NULL, $4, 'none', $5, $6, $7, $8, $8, $9)"
        )
        .bind(id.0)
        .bind(tenant.0)
        .bind(connection.0)
        .bind(kind.as_str())
        .bind(status.as_str())
        .bind(error)
        .bind(started_at)
        .bind(now)
        .bind(sqlx::types::Json(counts))
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await?;
        Ok(id)
    }

    /// Ends a run (deltas end in the same call that applies their last page;
    /// failures end here).
    pub async fn finish_run(
        &self,
        tenant: TenantId,
        id: RunId,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| sqlx::query(
            "UPDATE sync_runs SET status = $1, error = $2, finished_at = $3, updated_at = $3
              WHERE tenant_id = $4 AND id = $5 AND status = 'running'"
        )
        .bind(status.as_str())
        .bind(error)
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ()))?;
        tx.commit().await
    }

    /// The delta cursor of one object.
    pub async fn cursor(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
    ) -> Result<Option<Cursor>, StoreError> {
        Ok(self
            .cursors(tenant, connection)
            .await?
            .into_iter()
            .find(|(o, _)| *o == object)
            .map(|(_, c)| c))
    }

    /// Every delta cursor of a connection.
    pub async fn cursors(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
    ) -> Result<Vec<(CrmObject, Cursor)>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<CursorRow> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "SELECT crm_object, modified_at, crm_id, position FROM sync_cursors
              WHERE tenant_id = $1 AND connection_id = $2 AND feed = 'changes' ORDER BY crm_object",
            )
            .bind(tenant.0)
            .bind(connection.0)
            .fetch_all(c)
            .await
        })?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(o, modified_at, id, position)| {
                let object = o
                    .parse()
                    .map_err(|e: crate::domain::UnknownName| StoreError::Corrupt(e.to_string()))?;
                Ok((
                    object,
                    Cursor {
                        modified_at,
                        crm_id: CrmId(id),
                        position: position.map(|p| p.0),
                    },
                ))
            })
            .collect()
    }

    /// Platform records linked to a connection.
    pub async fn linked_records(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let (n,): (i64,) = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT COUNT(DISTINCT record_id) FROM record_links WHERE tenant_id = $1 AND connection_id = $2 AND crm_deleted_at IS NULL"
        )
        .bind(tenant.0)
        .bind(connection.0)
        .fetch_one(c)
        .await
        })?;
        tx.commit().await?;
        Ok(n)
    }
}

/// Adds counts to a run; optionally counts a full-sync page and ends it.
pub(super) async fn add_counts(
    tx: &mut Tx,
    tenant: TenantId,
    id: RunId,
    n: RunUpdate,
    counts_page: bool,
    finish: bool,
) -> Result<(), StoreError> {
    let now = Utc::now();
    on_db!(tx, |c| {
        sqlx::query(
        "UPDATE sync_runs SET processed = processed + $1, created = created + $2, updated = updated + $3,
                unchanged = unchanged + $4, failed = failed + $5,
                pages_done = pages_done + CASE WHEN $6 THEN 1 ELSE 0 END,
                status = CASE WHEN $7 THEN 'succeeded' ELSE status END,
                finished_at = CASE WHEN $7 THEN $8 ELSE finished_at END,
                updated_at = $8
          WHERE tenant_id = $9 AND id = $10"
    )
    .bind(n.processed)
    .bind(n.created)
    .bind(n.updated)
    .bind(n.unchanged)
    .bind(n.failed)
    .bind(counts_page)
    .bind(finish)
    .bind(now)
    .bind(tenant.0)
    .bind(id.0)
    .execute(c)
    .await
    .map(|_| ())
    })?;
    Ok(())
}

/// A `sync_cursors` row as read: object, watermark, position.
type CursorRow = (String, DateTime<Utc>, String, Option<Json<FeedPosition>>);

/// Moves the cursor forward to `to` if it is past the stored one; never back.
pub(super) async fn advance_cursor(
    tx: &mut Tx,
    tenant: TenantId,
    connection: ConnectionId,
    object: CrmObject,
    to: &Cursor,
) -> Result<(), StoreError> {
    let lock = match tx {
        Tx::Postgres(_) => " FOR UPDATE",
        Tx::Sqlite(_) => "",
    };
    let current: Option<(DateTime<Utc>, String)> = on_db!(tx, |c| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT modified_at, crm_id FROM sync_cursors
          WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND feed = 'changes'{lock}"
    )))
    .bind(tenant.0)
    .bind(connection.0)
    .bind(object.as_str())
    .fetch_optional(c)
    .await
    })?;
    if let Some((modified_at, id)) = current
        && Cursor::at(modified_at, CrmId(id)).reaches(to)
    {
        return Ok(());
    }
    let now = Utc::now();
    on_db!(tx, |c| {
        sqlx::query(
        "INSERT INTO sync_cursors (tenant_id, connection_id, crm_object, feed, modified_at, crm_id, position, updated_at)
         VALUES ($1, $2, $3, 'changes', $4, $5, $6, $7)
         ON CONFLICT (connection_id, crm_object, feed) DO UPDATE
            SET modified_at = excluded.modified_at, crm_id = excluded.crm_id,
                position = excluded.position, updated_at = excluded.updated_at"
    )
    .bind(tenant.0)
    .bind(connection.0)
    .bind(object.as_str())
    .bind(to.modified_at)
    .bind(to.crm_id.as_str())
    .bind(to.position.as_ref().map(Json))
    .bind(now)
    .execute(c)
    .await
    .map(|_| ())
    })?;
    Ok(())
}
