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
    /// `full_sync` | `delta_sync` | `process_webhook` | `push_changes`.
    pub job_kind: String,
    /// The job as it was queued (ids only: no customer data is queued).
    pub job: serde_json::Value,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: i64,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
    /// When an operator replayed it (then it is no longer open).
    pub replayed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct DeadLetterSql {
    id: uuid::Uuid,
    connection_id: uuid::Uuid,
    job_kind: String,
    job: Json<serde_json::Value>,
    error: String,
    attempts: i64,
    failed_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
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
        }
    }
}

const SELECT: &str = "SELECT id, connection_id, job_kind, job, error, attempts, failed_at, replayed_at FROM dead_letters";

impl Store {
    /// Keeps a job that failed for good.
    pub async fn record_dead_letter(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        job_kind: &str,
        job: &serde_json::Value,
        error: &str,
        attempts: u32,
    ) -> Result<uuid::Uuid, StoreError> {
        let id = uuid::Uuid::now_v7();
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO dead_letters (id, tenant_id, connection_id, job_kind, job, error, attempts, failed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(id)
        .bind(tenant.0)
        .bind(connection.0)
        .bind(job_kind)
        .bind(Json(job))
        .bind(error)
        .bind(i64::from(attempts))
        .bind(Utc::now())
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
        sql.push_str(if connection.is_some() {
            " AND connection_id = $2"
        } else {
            " AND $2 IS NULL"
        });
        sql.push_str(if before.is_some() {
            " AND id < $3"
        } else {
            " AND $3 IS NULL"
        });
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

    /// Marks a dead letter replayed (after its job was queued again, so a
    /// failure in between leaves it open rather than lost).
    pub async fn mark_replayed(
        &self,
        tenant: TenantId,
        id: uuid::Uuid,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = Utc::now();
        let mut tx = self.begin(tenant).await?;
        let updated = on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE dead_letters SET replayed_at = $3 WHERE tenant_id = $1 AND id = $2 AND replayed_at IS NULL"
        )
        .bind(tenant.0)
        .bind(id)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok((updated > 0).then_some(now))
    }
}
