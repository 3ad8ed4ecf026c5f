//! The `detect_conflicts` sweep's state: a checkpoint per connection and
//! object (where a pass stands, so it resumes in the next job), the links a
//! pass saw (a generation stamp on each), and the closing of `manual`
//! conflicts whose sides came to agree without a change the merge would see.

use super::{Store, StoreError, in_list, on_db};
use crate::domain::{CanonicalField, ConnectionId, CrmId, CrmObject, RecordFields, TenantId};
use crate::sync::Incoming;
use chrono::{DateTime, Utc};
use sqlx::types::Json;

/// Where a sweep pass of one object stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepCheckpoint {
    /// The pass's number; links it saw carry it.
    pub generation: i64,
    /// The list page token to continue from (`None`: the first page).
    pub page_token: Option<String>,
    /// When the pass began: links created later were not there to be seen.
    pub pass_started_at: DateTime<Utc>,
}

impl Store {
    /// The pass in progress for this object, or with `start` a new one (the
    /// generation after the last) when none is: a job that finds a pass
    /// half done — its predecessor stopped at its deadline or crashed —
    /// continues it.
    pub async fn sweep_checkpoint(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        start: bool,
    ) -> Result<Option<SweepCheckpoint>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let row: Option<(i64, bool, Option<String>, DateTime<Utc>)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "SELECT generation, in_pass, page_token, pass_started_at FROM sweep_checkpoints
                  WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3",
            )
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .fetch_optional(c)
            .await
        })?;
        if let Some((generation, true, page_token, pass_started_at)) = row {
            tx.commit().await?;
            return Ok(Some(SweepCheckpoint {
                generation,
                page_token,
                pass_started_at,
            }));
        }
        if !start {
            tx.commit().await?;
            return Ok(None);
        }
        let generation = row.map_or(1, |(g, ..)| g + 1);
        let now = Utc::now();
        on_db!(&mut tx, |c| {
            sqlx::query(
                "INSERT INTO sweep_checkpoints (tenant_id, connection_id, crm_object, generation, in_pass, page_token, pass_started_at, updated_at)
                 VALUES ($1, $2, $3, $4, TRUE, NULL, $5, $5)
                 ON CONFLICT (connection_id, crm_object) DO UPDATE
                   SET generation = $4, in_pass = TRUE, page_token = NULL, pass_started_at = $5, updated_at = $5",
            )
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(generation)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
        })?;
        tx.commit().await?;
        // Read back: the stored time is what later comparisons use (Postgres
        // keeps microseconds, chrono has nanoseconds).
        let mut tx = self.begin(tenant).await?;
        let (pass_started_at,): (DateTime<Utc>,) = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "SELECT pass_started_at FROM sweep_checkpoints
                  WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3",
            )
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .fetch_one(c)
            .await
        })?;
        tx.commit().await?;
        Ok(Some(SweepCheckpoint {
            generation,
            page_token: None,
            pass_started_at,
        }))
    }

    /// Stamps the links of `seen` (one page of the pass) with the pass's
    /// generation and moves the checkpoint from `from` to `next`, in one
    /// transaction. `false` when the checkpoint was not at `from` any more:
    /// another job of the same connection is sweeping this object, and this
    /// one stops rather than page through it twice.
    pub async fn advance_sweep(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        checkpoint: &SweepCheckpoint,
        seen: &[CrmId],
        next: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let moved = on_db!(&mut tx, |c| {
            sqlx::query(
                "UPDATE sweep_checkpoints SET page_token = $1, updated_at = $2
                  WHERE tenant_id = $3 AND connection_id = $4 AND crm_object = $5
                    AND generation = $6 AND in_pass AND page_token IS NOT DISTINCT FROM $7",
            )
            .bind(next)
            .bind(Utc::now())
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(checkpoint.generation)
            .bind(checkpoint.page_token.as_deref())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        if moved == 0 {
            return Ok(false);
        }
        if !seen.is_empty() {
            let sql = format!(
                "UPDATE record_links SET swept_generation = $1
                  WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND crm_id IN ({})",
                in_list(5, seen.len())
            );
            on_db!(&mut tx, |c| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(checkpoint.generation)
                    .bind(tenant.0)
                    .bind(connection.0)
                    .bind(object.as_str());
                for id in seen {
                    query = query.bind(id.as_str());
                }
                query.execute(c).await.map(|_| ())
            })?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The live links of this object that existed when the pass began and
    /// that the pass did not see: after a complete pass, CRM records gone
    /// with no event.
    pub async fn unswept_links(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        checkpoint: &SweepCheckpoint,
    ) -> Result<Vec<CrmId>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<(String,)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "SELECT crm_id FROM record_links
                  WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3
                    AND crm_deleted_at IS NULL AND created_at < $4
                    AND swept_generation IS DISTINCT FROM $5",
            )
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(checkpoint.pass_started_at)
            .bind(checkpoint.generation)
            .fetch_all(c)
            .await
        })?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(id,)| CrmId(id)).collect())
    }

    /// Ends the pass: the next job starts a new one.
    pub async fn finish_sweep_pass(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        checkpoint: &SweepCheckpoint,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
                "UPDATE sweep_checkpoints SET in_pass = FALSE, page_token = NULL, updated_at = $1
                  WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND generation = $5",
            )
            .bind(Utc::now())
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(checkpoint.generation)
            .execute(c)
            .await
            .map(|_| ())
        })?;
        tx.commit().await
    }

    /// Closes open conflicts of these CRM records whose platform value now
    /// equals the CRM's (`settled`), and makes that value the link's base
    /// for the field. The merge closes such conflicts itself when it
    /// applies a record, but a CRM state it has seen before that the
    /// platform came to agree with is skipped as unchanged before that —
    /// so without this a conflict the operator no longer needs to decide
    /// would stay open. Returns how many it closed.
    pub async fn settle_agreed_conflicts(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        records: &[Incoming],
    ) -> Result<i64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT id, crm_id, field, record_id FROM conflicts
              WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND status = 'open' AND crm_id IN ({})
              ORDER BY crm_id",
            in_list(4, records.len())
        );
        let mut tx = self.begin(tenant).await?;
        let open: Vec<(uuid::Uuid, String, String, uuid::Uuid)> = on_db!(&mut tx, |c| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(connection.0)
                .bind(object.as_str());
            for record in records {
                query = query.bind(record.crm_id.as_str());
            }
            query.fetch_all(c).await
        })?;
        // The record is locked before its link and its conflicts, in CRM-id
        // order: the order of every path that writes them (pages, pushes,
        // resolutions), so none can deadlock with this one.
        let lock = match &tx {
            super::Tx::Postgres(_) => " FOR UPDATE",
            super::Tx::Sqlite(_) => "",
        };
        let record_sql =
            format!("SELECT fields FROM records WHERE tenant_id = $1 AND id = $2{lock}");
        let link_sql = format!(
            "SELECT id, base FROM record_links
              WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id = $4{lock}"
        );
        let now = Utc::now();
        let mut closed = 0;
        for (id, crm_id, field, record) in open {
            let Ok(field) = field.parse::<CanonicalField>() else {
                continue;
            };
            let Some(crm) = records.iter().find(|r| r.crm_id.as_str() == crm_id) else {
                continue;
            };
            let platform: Option<(Json<RecordFields>,)> = on_db!(&mut tx, |c| {
                sqlx::query_as(sqlx::AssertSqlSafe(record_sql.clone()))
                    .bind(tenant.0)
                    .bind(record)
                    .fetch_optional(c)
                    .await
            })?;
            let Some((Json(platform),)) = platform else {
                continue;
            };
            let platform = platform.renormalized();
            let agreed = platform.get(field);
            if agreed != crm.fields.get(field) {
                continue;
            }
            on_db!(&mut tx, |c| {
                sqlx::query(
                    "UPDATE conflicts SET status = 'resolved', resolution = 'settled', resolved_at = $1, updated_at = $1
                      WHERE tenant_id = $2 AND id = $3 AND status = 'open'",
                )
                .bind(now)
                .bind(tenant.0)
                .bind(id)
                .execute(c)
                .await
                .map(|_| ())
            })?;
            let base: Option<(uuid::Uuid, Json<RecordFields>)> = on_db!(&mut tx, |c| {
                sqlx::query_as(sqlx::AssertSqlSafe(link_sql.clone()))
                    .bind(tenant.0)
                    .bind(connection.0)
                    .bind(object.as_str())
                    .bind(&crm_id)
                    .fetch_optional(c)
                    .await
            })?;
            if let Some((link, Json(mut base))) = base {
                base.set(field, agreed.unwrap_or(""));
                on_db!(&mut tx, |c| {
                    sqlx::query(
                        "UPDATE record_links SET base = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
                    )
                    .bind(Json(&base))
                    .bind(now)
                    .bind(tenant.0)
                    .bind(link)
                    .execute(c)
                    .await
                    .map(|_| ())
                })?;
            }
            closed += 1;
        }
        tx.commit().await?;
        Ok(closed)
    }
}
