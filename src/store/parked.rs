//! Parked records: one record the CRM or the store refuses never blocks the
//! rest of its batch. It is set aside with its reason as a dead letter of
//! its own, naming the record:
//!
//! - `pull_record`: a CRM record the platform refused (a value breaking
//!   [`crate::domain::validate`], or a write the store refused, such as a
//!   second lead with one email). The page commits without it and the
//!   cursor moves past it. The record's next good read (the CRM user fixed
//!   it) resolves the dead letter; a replay reads it again.
//! - `push_record`: a platform record the CRM refused. Its outbox rows wait
//!   with status `parked` (no push retries them); the record's next good
//!   push (the platform fixed it) completes them and resolves the dead
//!   letter; a replay puts them back in the outbox.
//!
//! A record parked again while its dead letter is open updates that one
//! (its reason, time and attempts) instead of adding another.

use super::{Store, StoreError, Tx, on_db};
use crate::domain::{ConnectionId, CrmId, CrmObject, RecordId, TenantId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;

/// Dead-letter kind of a CRM record the platform refused.
pub const PULL_RECORD: &str = "pull_record";
/// Dead-letter kind of a platform record the CRM refused.
pub const PUSH_RECORD: &str = "push_record";

/// A CRM record left out of its page, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRecord {
    /// Its CRM id.
    pub crm_id: CrmId,
    /// Why, for operators (names the field where one is at fault).
    pub reason: String,
}

/// A platform record the CRM refused, with the outbox rows it holds back.
#[derive(Debug, Clone)]
pub struct RefusedPush {
    /// The platform record.
    pub record: RecordId,
    /// Its pending outbox rows, parked with it.
    pub outbox_ids: Vec<uuid::Uuid>,
    /// The CRM's reason.
    pub reason: String,
}

/// Parks CRM records refused by a page, inside the page's transaction (so
/// the cursor moves past them only together with their dead letters).
pub(crate) async fn park_pulled(
    tx: &mut Tx,
    (tenant, connection): (TenantId, ConnectionId),
    object: CrmObject,
    refused: &[RefusedRecord],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for r in refused {
        let job = serde_json::json!({
            "tenant": tenant, "connection": connection, "object": object, "crmId": r.crm_id,
        });
        let key = Parked::Crm(object, &r.crm_id);
        park(tx, (tenant, connection), key, &job, &r.reason, now).await?;
    }
    Ok(())
}

/// Resolves the open `pull_record` dead letters of records a page applied
/// (the CRM user fixed them): `replayedBy` says `fixed`.
pub(crate) async fn resolve_pulled(
    tx: &mut Tx,
    (tenant, connection): (TenantId, ConnectionId),
    object: CrmObject,
    applied: &[&CrmId],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if applied.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE dead_letters SET replayed_at = $1, replayed_by = 'fixed'
          WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND job_kind = 'pull_record'
            AND replayed_at IS NULL AND crm_id IS NOT NULL AND crm_id IN ({})",
        super::in_list(5, applied.len())
    );
    on_db!(tx, |c| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(now)
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str());
        for id in applied {
            query = query.bind(id.as_str());
        }
        query.execute(c).await.map(|_| ())
    })?;
    Ok(())
}

/// Resolves the open `push_record` dead letters of records just pushed and
/// completes their parked outbox rows (the latest values went out).
pub(crate) async fn resolve_pushed(
    tx: &mut Tx,
    (tenant, connection): (TenantId, ConnectionId),
    records: &[RecordId],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let list = super::in_list(4, records.len());
    for sql in [
        format!(
            "UPDATE dead_letters SET replayed_at = $1, replayed_by = 'fixed'
              WHERE tenant_id = $2 AND connection_id = $3 AND job_kind = 'push_record'
                AND replayed_at IS NULL AND record_id IS NOT NULL AND record_id IN ({list})"
        ),
        format!(
            "UPDATE outbox SET status = 'done', error = NULL, updated_at = $1
              WHERE tenant_id = $2 AND connection_id = $3 AND status = 'parked' AND record_id IN ({list})"
        ),
    ] {
        on_db!(tx, |c| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(now)
                .bind(tenant.0)
                .bind(connection.0);
            for id in records {
                query = query.bind(id.0);
            }
            query.execute(c).await.map(|_| ())
        })?;
    }
    Ok(())
}

/// What a parked dead letter names: a CRM record, or a platform record.
#[derive(Clone, Copy)]
enum Parked<'a> {
    Crm(CrmObject, &'a CrmId),
    Record(CrmObject, RecordId),
}

/// Parks one record: its open dead letter of the kind takes the new reason,
/// time and one more attempt; without one, a new dead letter is made.
async fn park(
    tx: &mut Tx,
    (tenant, connection): (TenantId, ConnectionId),
    parked: Parked<'_>,
    job: &serde_json::Value,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (kind, object, crm_id, record) = match parked {
        Parked::Crm(object, id) => (PULL_RECORD, object, Some(id.as_str()), None),
        Parked::Record(object, id) => (PUSH_RECORD, object, None, Some(id.0)),
    };
    let key = if crm_id.is_some() {
        "crm_id"
    } else {
        "record_id"
    };
    let update = format!(
        "UPDATE dead_letters SET error = $1, failed_at = $2, attempts = attempts + 1
          WHERE tenant_id = $3 AND connection_id = $4 AND crm_object = $5 AND {key} = $6
            AND job_kind = $7 AND replayed_at IS NULL"
    );
    let updated = on_db!(tx, |c| {
        let query = sqlx::query(sqlx::AssertSqlSafe(update.clone()))
            .bind(reason)
            .bind(now)
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str());
        let query = match (crm_id, record) {
            (Some(id), _) => query.bind(id),
            (None, id) => query.bind(id),
        };
        query.bind(kind).execute(c).await.map(|d| d.rows_affected())
    })?;
    if updated > 0 {
        return Ok(());
    }
    on_db!(tx, |c| {
        sqlx::query(
            "INSERT INTO dead_letters (id, tenant_id, connection_id, job_kind, job, error, attempts, failed_at, redrives, crm_object, crm_id, record_id)
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, 0, $8, $9, $10)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(tenant.0)
        .bind(connection.0)
        .bind(kind)
        .bind(Json(job))
        .bind(reason)
        .bind(now)
        .bind(object.as_str())
        .bind(crm_id)
        .bind(record)
        .execute(c)
        .await
        .map(|_| ())
    })?;
    Ok(())
}

/// Ends the parking of a record deleted on the platform: nothing of it is
/// left to push, on any connection.
pub(crate) async fn resolve_deleted(
    tx: &mut Tx,
    tenant: TenantId,
    record: RecordId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    on_db!(tx, |c| {
        sqlx::query(
            "UPDATE dead_letters SET replayed_at = $1, replayed_by = 'fixed'
              WHERE tenant_id = $2 AND record_id = $3 AND job_kind = 'push_record' AND replayed_at IS NULL",
        )
        .bind(now)
        .bind(tenant.0)
        .bind(record.0)
        .execute(c)
        .await
        .map(|_| ())
    })?;
    Ok(())
}

impl Store {
    /// Parks platform records the CRM refused: their outbox rows leave the
    /// push queue (status `parked`) and each gets a `push_record` dead
    /// letter with the CRM's reason.
    pub async fn park_pushes(
        &self,
        (tenant, connection): (TenantId, ConnectionId),
        object: CrmObject,
        refused: &[RefusedPush],
    ) -> Result<(), StoreError> {
        if refused.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut tx = self.begin(tenant).await?;
        for r in refused {
            if !r.outbox_ids.is_empty() {
                let sql = format!(
                    "UPDATE outbox SET status = 'parked', error = $1, updated_at = $2
                      WHERE tenant_id = $3 AND status = 'pending' AND id IN ({})",
                    super::in_list(4, r.outbox_ids.len())
                );
                on_db!(&mut tx, |c| {
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(&r.reason)
                        .bind(now)
                        .bind(tenant.0);
                    for id in &r.outbox_ids {
                        query = query.bind(id);
                    }
                    query.execute(c).await.map(|_| ())
                })?;
            }
            let job = serde_json::json!({
                "tenant": tenant, "connection": connection, "object": object, "record": r.record,
            });
            let key = Parked::Record(object, r.record);
            park(&mut tx, (tenant, connection), key, &job, &r.reason, now).await?;
        }
        tx.commit().await
    }

    /// Ends the parking of records a push found nothing to write for (the
    /// CRM holds their values already): their parked rows are done.
    pub async fn settle_parked_pushes(
        &self,
        (tenant, connection): (TenantId, ConnectionId),
        records: &[RecordId],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(tenant).await?;
        resolve_pushed(&mut tx, (tenant, connection), records, Utc::now()).await?;
        tx.commit().await
    }

    /// Puts a parked record's outbox rows back in the push queue (a replay
    /// of its `push_record` dead letter). Returns how many.
    pub async fn unpark_pushes(
        &self,
        (tenant, connection): (TenantId, ConnectionId),
        record: RecordId,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let moved = on_db!(&mut tx, |c| {
            sqlx::query(
                "UPDATE outbox SET status = 'pending', error = NULL, updated_at = $1
                  WHERE tenant_id = $2 AND connection_id = $3 AND record_id = $4 AND status = 'parked'",
            )
            .bind(Utc::now())
            .bind(tenant.0)
            .bind(connection.0)
            .bind(record.0)
            .execute(c)
            .await
            .map(|d| d.rows_affected())
        })?;
        tx.commit().await?;
        Ok(moved)
    }

    /// The open parked dead letters of one platform record: its pushes the
    /// CRM refused, and its linked CRM records the platform refused.
    pub async fn parked_for_record(
        &self,
        tenant: TenantId,
        record: RecordId,
    ) -> Result<Vec<super::DeadLetter>, StoreError> {
        use super::dead_letters::{DeadLetterSql, SELECT};
        let sql = format!(
            "{SELECT} WHERE tenant_id = $1 AND replayed_at IS NULL AND (
                 (job_kind = 'push_record' AND record_id = $2)
              OR (job_kind = 'pull_record' AND EXISTS (
                     SELECT 1 FROM record_links l
                      WHERE l.tenant_id = dead_letters.tenant_id AND l.connection_id = dead_letters.connection_id
                        AND l.crm_object = dead_letters.crm_object AND l.crm_id = dead_letters.crm_id
                        AND l.record_id = $2)))
             ORDER BY id"
        );
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<DeadLetterSql> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(record.0)
                .fetch_all(c)
                .await
        })?;
        tx.commit().await?;
        Ok(rows.into_iter().map(super::DeadLetter::from).collect())
    }

    /// Open parked records per connection of a tenant (connections with
    /// none are absent).
    pub async fn parked_counts(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(ConnectionId, i64)>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<(uuid::Uuid, i64)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "SELECT connection_id, COUNT(*) FROM dead_letters
                  WHERE tenant_id = $1 AND replayed_at IS NULL AND job_kind IN ('pull_record', 'push_record')
                  GROUP BY connection_id",
            )
            .bind(tenant.0)
            .fetch_all(c)
            .await
        })?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(c, n)| (ConnectionId(c), n))
            .collect())
    }
}

/// Whether a failed write is the store refusing this record's data — a
/// value it cannot hold (class 22, e.g. a NUL in `jsonb`) or a second
/// record with one email (`records_one_per_email`) — rather than a fault
/// of the database worth retrying the whole page for.
pub(crate) fn refusal(error: &StoreError) -> Option<String> {
    let StoreError::Database(sqlx::Error::Database(db)) = error else {
        return None;
    };
    let code = db.code().unwrap_or_default();
    let message = db.message();
    let one_email = db.constraint() == Some("records_one_per_email")
        || (code == "2067" && message.contains("records.dedupe_key"));
    if one_email {
        return Some(
            "another platform record already has this email (the tenant allows one record per email)"
                .into(),
        );
    }
    // Postgres data exceptions; SQLite CHECK, NOT NULL and datatype failures.
    if code.starts_with("22") || matches!(code.as_ref(), "275" | "1299" | "3091") {
        return Some(format!("the store refused a value: {message}"));
    }
    None
}
