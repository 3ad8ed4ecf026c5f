//! Dead letters: jobs that failed for good (a permanent error, or retries
//! exhausted), kept with the job, the error and the attempts, so that every
//! failure ends somewhere an operator can see it and replay it.

use super::{Store, StoreError, on_db};
use crate::domain::{ConnectionId, TenantId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

/// One dead letter as the api shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its id (time-ordered).
    pub id: uuid::Uuid,
    /// The connection the job was for.
    pub connection_id: ConnectionId,
    /// `full_sync` | `delta_sync` | `process_webhook` | `push_changes` |
    /// `detect_conflicts` | `health_check` (fleet-wide periodic jobs keep
    /// none: they have no connection).
    pub job_kind: String,
    /// The job as it was queued (ids only: no customer data is queued).
    pub job: serde_json::Value,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: i64,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
    /// When it was replayed (then it is no longer open).
    pub replayed_at: Option<DateTime<Utc>>,
    /// `operator` (the api) or `retry_failed` (the scheduler).
    pub replayed_by: Option<String>,
    /// Times the scheduler's `RetryFailed` had re-driven this chain of
    /// failures before this one; at the limit only an operator replays it.
    pub redrives: i64,
    /// A parked record's CRM object (`pull_record`, `push_record`).
    pub crm_object: Option<String>,
    /// A parked CRM record's id (`pull_record`).
    pub crm_id: Option<String>,
    /// A parked platform record's id (`push_record`).
    pub record_id: Option<crate::domain::RecordId>,
}

/// Who replays a dead letter: what `replayedBy` says, and whether the
/// replay counts against the chain's automatic re-drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayedBy {
    /// An operator, through the api.
    Operator,
    /// The scheduler's hourly `RetryFailed`.
    RetryFailed,
    /// Nobody: a parked record's next good read or push resolved it.
    Fixed,
}

impl ReplayedBy {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::RetryFailed => "retry_failed",
            Self::Fixed => "fixed",
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DeadLetterSql {
    id: uuid::Uuid,
    connection_id: uuid::Uuid,
    job_kind: String,
    job: Json<serde_json::Value>,
    error: String,
    attempts: i64,
    failed_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
    replayed_by: Option<String>,
    redrives: i64,
    crm_object: Option<String>,
    crm_id: Option<String>,
    record_id: Option<uuid::Uuid>,
}

impl From<DeadLetterSql> for DeadLetter {
    fn from(r: DeadLetterSql) -> Self {
        Self {
            id: r.id,
            connection_id: ConnectionId(r.connection_id),
            job_kind: r.job_kind,
            job: r.job.0,
            error: r.error,
            attempts: r.attempts,
            failed_at: r.failed_at,
            replayed_at: r.replayed_at,
            replayed_by: r.replayed_by,
            redrives: r.redrives,
            crm_object: r.crm_object,
            crm_id: r.crm_id,
            record_id: r.record_id.map(crate::domain::RecordId),
        }
    }
}

pub(super) const SELECT: &str = "SELECT id, connection_id, job_kind, job, error, attempts, failed_at, replayed_at, replayed_by, redrives, crm_object, crm_id, record_id FROM dead_letters";

impl Store {
    /// Keeps a job that failed for good; its re-drive count is the job's
    /// own (`redrives`, carried through its retries).
    pub async fn record_dead_letter(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        job_kind: &str,
        job: &serde_json::Value,
        error: &str,
        attempts: u32,
    ) -> Result<uuid::Uuid, StoreError> {
        let redrives = job
            .get("redrives")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let id = uuid::Uuid::now_v7();
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO dead_letters (id, tenant_id, connection_id, job_kind, job, error, attempts, failed_at, redrives)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )
        .bind(id)
        .bind(tenant.0)
        .bind(connection.0)
        .bind(job_kind)
        .bind(Json(job))
        .bind(error)
        .bind(i64::from(attempts))
        .bind(Utc::now())
        .bind(redrives)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await?;
        Ok(id)
    }

    /// Dead letters, newest first: open ones, or those already replayed.
    pub async fn list_dead_letters(
        &self,
        tenant: TenantId,
        replayed: bool,
        connection: Option<ConnectionId>,
        before: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut sql = format!(
            "{SELECT} WHERE tenant_id = $1 AND replayed_at IS {}NULL",
            if replayed { "NOT " } else { "" }
        );
        sql.push_str(&super::optional_filter(
            connection.is_some(),
            "connection_id = $2",
            2,
        ));
        sql.push_str(&super::optional_filter(before.is_some(), "id < $3", 3));
        sql.push_str(" ORDER BY id DESC LIMIT $4");
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<DeadLetterSql> = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(tenant.0)
        .bind(connection.map(|c| c.0))
        .bind(before)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        tx.commit().await?;
        Ok(rows.into_iter().map(DeadLetter::from).collect())
    }

    /// An open dead letter (`None`: unknown, another tenant's, or replayed).
    pub async fn open_dead_letter(
        &self,
        tenant: TenantId,
        id: uuid::Uuid,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let found: Option<DeadLetterSql> =
            on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT} WHERE tenant_id = $1 AND id = $2 AND replayed_at IS NULL"
            )))
            .bind(tenant.0)
            .bind(id)
            .fetch_optional(c)
            .await)?;
        tx.commit().await?;
        Ok(found.map(DeadLetter::from))
    }

    /// Open dead letters the scheduler may re-drive (fewer than
    /// `max_redrives` re-drives so far), oldest first.
    pub async fn redrivable_dead_letters(
        &self,
        tenant: TenantId,
        max_redrives: u32,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<DeadLetterSql> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT} WHERE tenant_id = $1 AND replayed_at IS NULL AND redrives < $2
                   AND job_kind NOT IN ('pull_record', 'push_record') ORDER BY id LIMIT $3"
            )))
            .bind(tenant.0)
            .bind(i64::from(max_redrives))
            .bind(limit)
            .fetch_all(c)
            .await
        })?;
        tx.commit().await?;
        Ok(rows.into_iter().map(DeadLetter::from).collect())
    }

    /// Marks a dead letter replayed, before its job is queued again (see
    /// [`crate::jobs::replay::replay`]); `None` when it was not open.
    pub async fn mark_replayed(
        &self,
        tenant: TenantId,
        id: uuid::Uuid,
        by: ReplayedBy,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = Utc::now();
        let mut tx = self.begin(tenant).await?;
        let updated = on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE dead_letters SET replayed_at = $3, replayed_by = $4 WHERE tenant_id = $1 AND id = $2 AND replayed_at IS NULL"
        )
        .bind(tenant.0)
        .bind(id)
        .bind(now)
        .bind(by.as_str())
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok((updated > 0).then_some(now))
    }

    /// Opens a dead letter again that `by` marked replayed but whose job
    /// could not be queued, so the failure is not lost. One resolved since
    /// by another hand (`fixed`) stays resolved.
    pub async fn reopen_dead_letter(
        &self,
        tenant: TenantId,
        id: uuid::Uuid,
        by: ReplayedBy,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
                "UPDATE dead_letters SET replayed_at = NULL, replayed_by = NULL
                  WHERE tenant_id = $1 AND id = $2 AND replayed_by = $3",
            )
            .bind(tenant.0)
            .bind(id)
            .bind(by.as_str())
            .execute(c)
            .await
            .map(|_| ())
        })?;
        tx.commit().await
    }
}
