//! Platform-side writes and the outbox (`SYNC_ALGORITHMS.md` §4): a platform
//! write and the outbox rows that will push it commit in one transaction, so
//! a crash can delay a push but never lose it; the push's bookkeeping (CRM id,
//! base, pushed fingerprint) commits with the outbox rows it completes.

use super::{Store, StoreError, on_db};
use crate::domain::{
    CanonicalField, ConnectionId, CrmId, CrmObject, Origin, RecordFields, RecordId, RecordKind,
    TenantId,
};
use crate::store::ConnectionSettings;
use crate::sync::FieldTimes;
use chrono::{DateTime, Utc};
use sqlx::types::Json;

/// A platform record with its CRM links, as the api shows it.
#[derive(Debug, Clone)]
pub struct RecordView {
    /// Its id.
    pub id: RecordId,
    /// Lead or contact.
    pub kind: RecordKind,
    /// Field values.
    pub fields: RecordFields,
    /// Where it was born.
    pub origin: Origin,
    /// The CRM it came from, if any.
    pub origin_provider: Option<String>,
    /// Its id there.
    pub origin_crm_id: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Its links.
    pub links: Vec<LinkView>,
}

/// Filters and paging of [`Store::list_records`].
#[derive(Debug, Clone, Default)]
pub struct RecordQuery {
    /// Only records linked to a connection of this CRM.
    pub provider: Option<crate::domain::ProviderKind>,
    /// Only this origin.
    pub origin: Option<Origin>,
    /// Only this status.
    pub status: Option<String>,
    /// Only records changed at or after this time.
    pub updated_since: Option<DateTime<Utc>>,
    /// Only records linked to this connection.
    pub connection: Option<ConnectionId>,
    /// Order by last change instead of creation.
    pub by_updated: bool,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Continue after this (sort time, id).
    pub after: Option<(DateTime<Utc>, RecordId)>,
    /// Page size.
    pub limit: i64,
}

/// One link of a record to a CRM record.
#[derive(Debug, Clone)]
pub struct LinkView {
    /// The connection.
    pub connection: ConnectionId,
    /// Its CRM.
    pub provider: crate::domain::ProviderKind,
    /// The CRM id.
    pub crm_id: String,
    /// When the CRM deleted it, if it did.
    pub crm_deleted_at: Option<DateTime<Utc>>,
    /// Its connection was deleted: the link is history, no longer synced.
    pub unlinked: bool,
    /// Last pull or push.
    pub updated_at: DateTime<Utc>,
}

/// One record waiting to be pushed to a connection.
#[derive(Debug, Clone)]
pub struct PendingPush {
    /// The outbox row.
    pub outbox_id: uuid::Uuid,
    /// The record.
    pub record: RecordId,
    /// Its present values.
    pub fields: RecordFields,
    /// Its CRM id on this connection, when already linked.
    pub crm_id: Option<CrmId>,
    /// The link's base (last agreed values), when linked: with the CRM's
    /// state it tells whether the merge needs per-field change times.
    pub base: Option<RecordFields>,
    /// The record's version when read: the push is booked as current only
    /// if the record has not changed since.
    pub version: i64,
}

/// What a push did for one record.
#[derive(Debug, Clone)]
pub struct PushedRecord {
    /// The outbox rows it completes.
    pub outbox_ids: Vec<uuid::Uuid>,
    /// The record.
    pub record: RecordId,
    /// Its CRM id (new or existing).
    pub crm_id: CrmId,
    /// The values the CRM now holds, in canonical form (their fingerprint
    /// recognises the echo).
    pub pushed: RecordFields,
    /// The link's new base (the pushed values, but for fields held in a
    /// `manual` conflict, which keep their old base).
    pub base: RecordFields,
    /// The fields this push wrote. Only these replace the link's base when
    /// the push is booked: a pull applied while the push was in flight
    /// moved the base of the others, and booking the push's older view of
    /// them would make the CRM's next edit of such a field look like a
    /// change on both sides (a conflict with ourselves under `manual`, the
    /// CRM's edit lost under `platform_wins`).
    pub written: Vec<CanonicalField>,
    /// When the CRM says it stored the write: a read older than that is
    /// stale (as after a pull), so it cannot put the pre-push values back.
    pub crm_modified_at: Option<DateTime<Utc>>,
    /// The record version those values came from.
    pub version: i64,
    /// Where its person lives, when that is another CRM record (a HubSpot
    /// lead's contact); `None` keeps what the link knows.
    pub person_crm_id: Option<CrmId>,
}

impl PushedRecord {
    /// The base to book over the link's `current` one (`None`: no link
    /// yet): the written fields take the pushed base, the rest stay.
    pub fn base_over(&self, current: Option<&RecordFields>) -> RecordFields {
        let Some(current) = current else {
            return self.base.clone();
        };
        let mut base = current.clone();
        for field in &self.written {
            base.set(*field, self.base.get(*field).unwrap_or(""));
        }
        base
    }
}

/// (outbox id, record id, fields, linked CRM id, link base, record version).
type PendingRow = (
    uuid::Uuid,
    uuid::Uuid,
    Json<RecordFields>,
    Option<String>,
    Option<Json<RecordFields>>,
    i64,
);

/// (record, connection, CRM id, CRM deletion time, last update, connection
/// status) of one link.
type LinkRow = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    String,
    String,
);

#[derive(sqlx::FromRow)]
struct RecordRowSql {
    id: uuid::Uuid,
    kind: String,
    fields: Json<RecordFields>,
    origin: String,
    origin_provider: Option<String>,
    origin_crm_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Store {
    /// Creates a platform record and queues its push to every active
    /// connection that syncs its kind. A second record with the same email
    /// is refused (unless the tenant allows duplicates).
    pub async fn create_platform_record(
        &self,
        tenant: TenantId,
        kind: RecordKind,
        fields: &RecordFields,
    ) -> Result<(RecordId, Vec<ConnectionId>), StoreError> {
        let mut tx = self.begin(tenant).await?;
        let dedupe_key = dedupe_key(&mut tx, tenant, fields).await?;
        if let Some(email) = &dedupe_key {
            let existing: Option<(uuid::Uuid,)> = on_db!(&mut tx, |c| sqlx::query_as(
                "SELECT id FROM records WHERE tenant_id = $1 AND kind = $2 AND dedupe_key = $3"
            )
            .bind(tenant.0)
            .bind(kind.as_str())
            .bind(email)
            .fetch_optional(c)
            .await)?;
            if let Some((id,)) = existing {
                return Err(StoreError::Conflict(format!(
                    "a {kind} with this email exists: {id}"
                )));
            }
        }
        let id = RecordId::new();
        let now = Utc::now();
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO records (id, tenant_id, kind, fields, dedupe_key, origin, version, created_at, updated_at, field_times)
             VALUES ($1, $2, $3, $4, $5, 'platform', 1, $6, $6, $7)"
        )
        .bind(id.0)
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(Json(fields))
        .bind(&dedupe_key)
        .bind(now)
        .bind(Json(changed_times(&RecordFields::new(), fields, FieldTimes::new(), now)))
        .execute(c)
        .await
        .map(|_| ())
        })?;
        let connections = queue_pushes(&mut tx, tenant, id, kind, now).await?;
        tx.commit().await?;
        Ok((id, connections))
    }

    /// Replaces a platform record's fields and queues its push; `None` when
    /// there is no such record.
    pub async fn update_platform_record(
        &self,
        tenant: TenantId,
        kind: RecordKind,
        id: RecordId,
        fields: &RecordFields,
    ) -> Result<Option<Vec<ConnectionId>>, StoreError> {
        Ok(self
            .patch_platform_record(tenant, kind, id, |_| Ok(fields.clone()))
            .await?
            .map(|(_, connections)| connections))
    }

    /// A PATCH in one transaction: reads the record (locked, so two patches
    /// of one record never lose each other's fields), lets `apply` compute
    /// the new fields (its error is a 400-style `Invalid`), writes them with
    /// per-field change times, queues the push and returns the new view with
    /// the active connections to push to; `None` when there is no record.
    pub async fn patch_platform_record<F>(
        &self,
        tenant: TenantId,
        kind: RecordKind,
        id: RecordId,
        apply: F,
    ) -> Result<Option<(RecordView, Vec<ConnectionId>)>, StoreError>
    where
        F: FnOnce(RecordFields) -> Result<RecordFields, String>,
    {
        let mut tx = self.begin(tenant).await?;
        let lock = match &tx {
            super::Tx::Postgres(_) => " FOR UPDATE OF r",
            super::Tx::Sqlite(_) => "",
        };
        let sql = format!(
            "SELECT r.fields, r.field_times, t.allow_duplicates FROM records r JOIN tenants t ON t.id = r.tenant_id
              WHERE r.tenant_id = $1 AND r.kind = $2 AND r.id = $3 AND r.deleted_at IS NULL{lock}"
        );
        let before: Option<(Json<RecordFields>, Json<FieldTimes>, bool)> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(kind.as_str())
                .bind(id.0)
                .fetch_optional(c)
                .await
        })?;
        let Some((old, times, allow_duplicates)) = before else {
            return Ok(None);
        };
        let old = old.0.renormalized();
        let fields = apply(old.clone()).map_err(StoreError::Invalid)?;
        let now = Utc::now();
        let times = changed_times(&old, &fields, times.0, now);
        let dedupe_key = if allow_duplicates {
            None
        } else {
            fields.normalized_email().map(str::to_string)
        };
        let row: RecordRowSql = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "UPDATE records SET fields = $1, dedupe_key = $2, version = version + 1, updated_at = $3, field_times = $7
              WHERE tenant_id = $4 AND kind = $5 AND id = $6
              RETURNING id, kind, fields, origin, origin_provider, origin_crm_id, created_at, updated_at"
        )
        .bind(Json(&fields))
        .bind(&dedupe_key)
        .bind(now)
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(id.0)
        .bind(Json(&times))
        .fetch_one(c)
        .await
        })
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(format!("another {kind} has this email"))
            }
            _ => StoreError::Database(e),
        })?;
        let connections = queue_pushes(&mut tx, tenant, id, kind, now).await?;
        let view = with_links(&mut tx, tenant, vec![row]).await?.pop();
        tx.commit().await?;
        Ok(view.map(|v| (v, connections)))
    }

    /// Deletes a platform record (soft) and queues the archive of its CRM
    /// records on every active or paused connection it is linked to; its
    /// pending upserts are dropped. Returns the active connections (to push
    /// now), or `None` when there is no such record.
    pub async fn delete_platform_record(
        &self,
        tenant: TenantId,
        kind: RecordKind,
        id: RecordId,
    ) -> Result<Option<Vec<ConnectionId>>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        let deleted: Option<(uuid::Uuid,)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "UPDATE records SET deleted_at = $1, dedupe_key = NULL, updated_at = $1, version = version + 1
              WHERE tenant_id = $2 AND kind = $3 AND id = $4 AND deleted_at IS NULL RETURNING id"
        )
        .bind(now)
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(id.0)
        .fetch_optional(c)
        .await
        })?;
        if deleted.is_none() {
            return Ok(None);
        }
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE outbox SET status = 'done', error = 'superseded by a delete', updated_at = $1
              WHERE tenant_id = $2 AND record_id = $3 AND status IN ('pending', 'parked') AND operation = 'upsert'"
        )
        .bind(now)
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        // Nothing of a deleted record is left to push: its parking ends.
        super::parked::resolve_deleted(&mut tx, tenant, id, now).await?;
        let linked: Vec<(uuid::Uuid, String)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT DISTINCT l.connection_id, c.status FROM record_links l JOIN connections c ON c.id = l.connection_id AND c.tenant_id = l.tenant_id
              WHERE l.tenant_id = $1 AND l.record_id = $2 AND l.crm_deleted_at IS NULL AND c.status IN ('active', 'paused')"
        )
        .bind(tenant.0)
        .bind(id.0)
        .fetch_all(c)
        .await
        })?;
        for (connection, _) in &linked {
            super::queue_outbox_operation(&mut tx, tenant, *connection, id.0, "delete", now)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(
            linked
                .into_iter()
                .filter(|(_, status)| status == "active")
                .map(|(c, _)| ConnectionId(c))
                .collect(),
        ))
    }

    /// One live record with its links.
    pub async fn record_view(
        &self,
        tenant: TenantId,
        kind: RecordKind,
        id: RecordId,
    ) -> Result<Option<RecordView>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<RecordRowSql> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_RECORD} WHERE r.tenant_id = $1 AND r.kind = $2 AND r.id = $3 AND r.deleted_at IS NULL"
        )))
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(id.0)
        .fetch_all(c)
        .await
        })?;
        let views = with_links(&mut tx, tenant, rows).await?;
        tx.commit().await?;
        Ok(views.into_iter().next())
    }

    /// One page of a tenant's live records of `kind`, oldest first (or
    /// newest first), after the `(created_at, id)` cursor, filtered.
    pub async fn list_records(
        &self,
        tenant: TenantId,
        kind: RecordKind,
        query: &RecordQuery,
    ) -> Result<Vec<RecordView>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let status_expr = match &tx {
            super::Tx::Postgres(_) => "r.fields->>'status'",
            super::Tx::Sqlite(_) => "json_extract(r.fields, '$.status')",
        };
        let (order, cmp) = if query.newest_first {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        let column = if query.by_updated {
            "r.updated_at"
        } else {
            "r.created_at"
        };
        let sql = format!(
            "{SELECT_RECORD}
              WHERE r.tenant_id = $1 AND r.kind = $2 AND r.deleted_at IS NULL
                AND ($3 IS NULL OR r.origin = $3)
                AND ($4 IS NULL OR {status_expr} = $4)
                AND ($5 IS NULL OR r.updated_at >= $5)
                AND ($6 IS NULL OR EXISTS (SELECT 1 FROM record_links l WHERE l.tenant_id = r.tenant_id AND l.record_id = r.id AND l.connection_id = $6))
                AND ($7 IS NULL OR ({column}, r.id) {cmp} ($7, $8))
                AND ($10 IS NULL OR EXISTS (SELECT 1 FROM record_links l JOIN connections c ON c.id = l.connection_id AND c.tenant_id = l.tenant_id
                                             WHERE l.tenant_id = r.tenant_id AND l.record_id = r.id AND c.provider = $10))
              ORDER BY {column} {order}, r.id {order} LIMIT $9"
        );
        let (after_at, after_id) = match query.after {
            Some((at, id)) => (Some(at), Some(id.0)),
            None => (None, None),
        };
        let rows: Vec<RecordRowSql> = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(tenant.0)
        .bind(kind.as_str())
        .bind(query.origin.map(Origin::as_str))
        .bind(query.status.as_deref())
        .bind(query.updated_since)
        .bind(query.connection.map(|c| c.0))
        .bind(after_at)
        .bind(after_id)
        .bind(query.limit)
        .bind(query.provider.map(crate::domain::ProviderKind::as_str))
        .fetch_all(c)
        .await)?;
        let views = with_links(&mut tx, tenant, rows).await?;
        tx.commit().await?;
        Ok(views)
    }

    /// Up to `limit` records waiting to be pushed to a connection, oldest
    /// first, one entry per record (its latest values).
    pub async fn pending_pushes(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        limit: i64,
    ) -> Result<Vec<PendingPush>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<PendingRow> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT o.id, o.record_id, r.fields,
                    (SELECT l.crm_id FROM record_links l
                      WHERE l.tenant_id = o.tenant_id AND l.record_id = o.record_id AND l.connection_id = o.connection_id
                        AND l.crm_object = $3 AND l.crm_deleted_at IS NULL LIMIT 1),
                    (SELECT l.base FROM record_links l
                      WHERE l.tenant_id = o.tenant_id AND l.record_id = o.record_id AND l.connection_id = o.connection_id
                        AND l.crm_object = $3 AND l.crm_deleted_at IS NULL LIMIT 1),
                    r.version
               FROM outbox o JOIN records r ON r.id = o.record_id AND r.tenant_id = o.tenant_id
              WHERE o.tenant_id = $1 AND o.connection_id = $2 AND o.status = 'pending' AND o.operation = 'upsert' AND r.deleted_at IS NULL
              ORDER BY o.created_at, o.id LIMIT $4"
        )
        .bind(tenant.0)
        .bind(connection.0)
        .bind(object.as_str())
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(
                |(outbox_id, record, fields, crm_id, base, version)| PendingPush {
                    outbox_id,
                    record: RecordId(record),
                    fields: fields.0.renormalized(),
                    crm_id: crm_id.map(CrmId),
                    base: base.map(|b| b.0.renormalized()),
                    version,
                },
            )
            .collect())
    }

    /// Records a push: links (new or existing) get the CRM id, the pushed
    /// values as base and their fingerprint (our echo), and the outbox rows
    /// are done — all in one transaction.
    pub async fn complete_pushes(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        pushed: &[PushedRecord],
    ) -> Result<(), StoreError> {
        if pushed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        // The same lock order as page writes (by CRM id): no deadlock.
        let mut pushed: Vec<&PushedRecord> = pushed.iter().collect();
        pushed.sort_by(|a, b| a.crm_id.as_str().cmp(b.crm_id.as_str()));
        let lock = match &tx {
            super::Tx::Postgres(_) => " FOR UPDATE",
            super::Tx::Sqlite(_) => "",
        };
        let sql = format!(
            "SELECT crm_id, base, crm_modified_at FROM record_links
              WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id IN ({})
              ORDER BY crm_id{lock}",
            super::in_list(4, pushed.len())
        );
        let current: Vec<(String, Json<RecordFields>, Option<DateTime<Utc>>)> =
            on_db!(&mut tx, |c| {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(tenant.0)
                    .bind(connection.0)
                    .bind(object.as_str());
                for p in &pushed {
                    query = query.bind(p.crm_id.as_str());
                }
                query.fetch_all(c).await
            })?;
        let current: std::collections::HashMap<String, (RecordFields, Option<DateTime<Utc>>)> =
            current
                .into_iter()
                .map(|(id, base, at)| (id, (base.0.renormalized(), at)))
                .collect();
        for p in &pushed {
            let fingerprint = p.pushed.fingerprint();
            let known = current.get(p.crm_id.as_str());
            let base = p.base_over(known.map(|(base, _)| base));
            // Never backwards: a pull may have seen a later state already.
            let crm_modified_at = known.and_then(|(_, at)| *at).max(p.crm_modified_at);
            on_db!(&mut tx, |c| {
                sqlx::query(
                "INSERT INTO record_links (id, tenant_id, record_id, connection_id, crm_object, crm_id, base, pushed_fingerprint, local_modified_at, created_at, updated_at, person_crm_id, crm_modified_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9, $10, $11)
                 ON CONFLICT (connection_id, crm_object, crm_id) DO UPDATE
                    SET base = excluded.base, pushed_fingerprint = excluded.pushed_fingerprint, crm_modified_at = excluded.crm_modified_at,
                        local_modified_at = excluded.local_modified_at, crm_deleted_at = NULL, updated_at = excluded.updated_at,
                        person_crm_id = COALESCE(excluded.person_crm_id, record_links.person_crm_id)"
            )
            .bind(uuid::Uuid::now_v7())
            .bind(tenant.0)
            .bind(p.record.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(p.crm_id.as_str())
            .bind(Json(&base))
            .bind(&fingerprint)
            .bind(now)
            .bind(p.person_crm_id.as_ref().map(CrmId::as_str))
            .bind(crm_modified_at)
            .execute(c)
            .await
            .map(|_| ())
            })?;
        }
        // Changed while the push was in flight (a pull, a platform edit):
        // what the CRM got is stale, so the present values go out again.
        let sql = format!(
            "SELECT id, version FROM records WHERE tenant_id = $1 AND id IN ({})",
            super::in_list(2, pushed.len())
        );
        let versions: Vec<(uuid::Uuid, i64)> = on_db!(&mut tx, |c| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(tenant.0);
            for p in &pushed {
                query = query.bind(p.record.0);
            }
            query.fetch_all(c).await
        })?;
        let versions: std::collections::HashMap<uuid::Uuid, i64> = versions.into_iter().collect();
        for p in &pushed {
            if versions.get(&p.record.0) != Some(&p.version) {
                super::queue_outbox(&mut tx, tenant, connection.0, p.record.0, now).await?;
            }
        }
        let done: Vec<uuid::Uuid> = pushed
            .iter()
            .flat_map(|p| p.outbox_ids.iter().copied())
            .collect();
        mark_outbox_done(&mut tx, tenant, &done, now).await?;
        // Pushed at last: what was parked of these records went out with it.
        let records: Vec<RecordId> = pushed.iter().map(|p| p.record).collect();
        super::parked::resolve_pushed(&mut tx, (tenant, connection), &records, now).await?;
        tx.commit().await
    }
}

impl Store {
    /// Marks links as being written by us until `until`: the echo of the
    /// write (our app's own event) can then be recognised even when it
    /// arrives before the push is booked. Booking sets the real time.
    pub async fn mark_pushing(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        crm_ids: &[CrmId],
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if crm_ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE record_links SET local_modified_at = $4
              WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id IN ({})",
            super::in_list(5, crm_ids.len())
        );
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(connection.0)
                .bind(object.as_str())
                .bind(until);
            for id in crm_ids {
                query = query.bind(id.as_str());
            }
            query.execute(c).await.map(|_| ())
        })?;
        tx.commit().await
    }
}

/// A platform delete waiting to archive a CRM record.
#[derive(Debug, Clone)]
pub struct PendingDelete {
    /// The outbox row.
    pub outbox_id: uuid::Uuid,
    /// The CRM record to archive; `None` when the link is gone or already
    /// a tombstone (the CRM deleted it too): nothing to archive.
    pub crm_id: Option<CrmId>,
}

impl Store {
    /// Up to `limit` pending deletes of a connection's object, oldest first.
    /// A delete whose link is gone already (the CRM deleted it too) comes
    /// back without work to do and is completed with the rest.
    pub async fn pending_deletes(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        limit: i64,
    ) -> Result<Vec<PendingDelete>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<(uuid::Uuid, Option<String>)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT o.id, l.crm_id FROM outbox o
               LEFT JOIN record_links l ON l.tenant_id = o.tenant_id AND l.record_id = o.record_id
                                  AND l.connection_id = o.connection_id AND l.crm_object = $3 AND l.crm_deleted_at IS NULL
              WHERE o.tenant_id = $1 AND o.connection_id = $2 AND o.status = 'pending' AND o.operation = 'delete'
              ORDER BY o.created_at, o.id LIMIT $4"
        )
        .bind(tenant.0)
        .bind(connection.0)
        .bind(object.as_str())
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(outbox_id, crm_id)| PendingDelete {
                outbox_id,
                crm_id: crm_id.map(CrmId),
            })
            .collect())
    }

    /// Books archived CRM records: their links become tombstones (which also
    /// makes the archive's own webhook a no-op) and the rows are done.
    pub async fn complete_deletes(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        done: &[PendingDelete],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        for crm_id in done.iter().filter_map(|d| d.crm_id.as_ref()) {
            super::records::tombstone_link(&mut tx, tenant, connection, object, crm_id, now)
                .await?;
        }
        let ids: Vec<uuid::Uuid> = done.iter().map(|d| d.outbox_id).collect();
        mark_outbox_done(&mut tx, tenant, &ids, now).await?;
        tx.commit().await
    }

    /// Completes outbox rows that need no CRM write (the CRM already holds
    /// the platform's values, or the record is held in a conflict).
    pub async fn complete_outbox(
        &self,
        tenant: TenantId,
        outbox_ids: &[uuid::Uuid],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        mark_outbox_done(&mut tx, tenant, outbox_ids, now).await?;
        tx.commit().await
    }
}

/// Marks outbox rows done, in one statement.
async fn mark_outbox_done(
    tx: &mut super::Tx,
    tenant: TenantId,
    outbox: &[uuid::Uuid],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if outbox.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE outbox SET status = 'done', attempts = attempts + 1, error = NULL, updated_at = $1
          WHERE tenant_id = $2 AND id IN ({})",
        super::in_list(3, outbox.len())
    );
    on_db!(tx, |c| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(now)
            .bind(tenant.0);
        for id in outbox {
            query = query.bind(id);
        }
        query.execute(c).await.map(|_| ())
    })?;
    Ok(())
}

/// `times` with every field that differs between `old` and `new` stamped
/// `now`: the platform side of `newest_wins`.
fn changed_times(
    old: &RecordFields,
    new: &RecordFields,
    mut times: FieldTimes,
    now: DateTime<Utc>,
) -> FieldTimes {
    for field in crate::domain::CanonicalField::ALL {
        if old.get(field) != new.get(field) {
            times.insert(field, now);
        }
    }
    times
}

/// The record's dedupe key: its normalised email, unless the tenant allows
/// duplicates (then none, and the unique index lets copies through).
pub(super) async fn dedupe_key(
    tx: &mut super::Tx,
    tenant: TenantId,
    fields: &RecordFields,
) -> Result<Option<String>, StoreError> {
    let (allow_duplicates,): (bool,) = on_db!(tx, |c| sqlx::query_as(
        "SELECT allow_duplicates FROM tenants WHERE id = $1"
    )
    .bind(tenant.0)
    .fetch_one(c)
    .await)?;
    Ok(if allow_duplicates {
        None
    } else {
        fields.normalized_email().map(str::to_string)
    })
}

/// The record columns a [`RecordView`] needs.
const SELECT_RECORD: &str = "SELECT r.id, r.kind, r.fields, r.origin, r.origin_provider, r.origin_crm_id, r.created_at, r.updated_at FROM records r";

/// Turns record rows into views with their links, in one query for all of
/// them (not one per record).
async fn with_links(
    tx: &mut super::Tx,
    tenant: TenantId,
    rows: Vec<RecordRowSql>,
) -> Result<Vec<RecordView>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT l.record_id, l.connection_id, l.crm_id, l.crm_deleted_at, l.updated_at, c.status, c.provider
           FROM record_links l JOIN connections c ON c.id = l.connection_id AND c.tenant_id = l.tenant_id
          WHERE l.tenant_id = $1 AND l.record_id IN ({}) ORDER BY l.created_at",
        super::in_list(2, rows.len())
    );
    let links: Vec<LinkRow> = on_db!(tx, |c| {
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(tenant.0);
        for row in &rows {
            query = query.bind(row.id);
        }
        query.fetch_all(c).await
    })?;
    let mut by_record: std::collections::HashMap<uuid::Uuid, Vec<LinkView>> =
        std::collections::HashMap::new();
    for (record, connection, crm_id, crm_deleted_at, updated_at, status, provider) in links {
        by_record.entry(record).or_default().push(LinkView {
            connection: ConnectionId(connection),
            provider: provider
                .parse()
                .map_err(|e: crate::domain::UnknownName| StoreError::Corrupt(e.to_string()))?,
            crm_id,
            crm_deleted_at,
            unlinked: status == "deleted",
            updated_at,
        });
    }
    let corrupt = |e: crate::domain::UnknownName| StoreError::Corrupt(e.to_string());
    rows.into_iter()
        .map(|row| {
            Ok(RecordView {
                id: RecordId(row.id),
                kind: row.kind.parse().map_err(corrupt)?,
                fields: row.fields.0.renormalized(),
                origin: row.origin.parse().map_err(corrupt)?,
                origin_provider: row.origin_provider,
                origin_crm_id: row.origin_crm_id,
                created_at: row.created_at,
                updated_at: row.updated_at,
                links: by_record.remove(&row.id).unwrap_or_default(),
            })
        })
        .collect()
}

/// Queues a push of `record` to each active or paused connection that syncs
/// `kind` (a paused connection's rows wait for its resume); returns the
/// active ones, whose push the caller enqueues now.
async fn queue_pushes(
    tx: &mut super::Tx,
    tenant: TenantId,
    record: RecordId,
    kind: RecordKind,
    now: DateTime<Utc>,
) -> Result<Vec<ConnectionId>, StoreError> {
    let connections: Vec<(uuid::Uuid, Json<ConnectionSettings>, String)> = on_db!(tx, |c| {
        sqlx::query_as(
        "SELECT id, settings, status FROM connections WHERE tenant_id = $1 AND status IN ('active', 'paused')"
    )
    .bind(tenant.0)
    .fetch_all(c)
    .await
    })?;
    let mut active = Vec::new();
    for (connection, settings, status) in connections {
        if !settings.0.objects.iter().any(|m| m.record_kind == kind) {
            continue;
        }
        super::queue_outbox(tx, tenant, connection, record.0, now).await?;
        if status == "active" {
            active.push(ConnectionId(connection));
        }
    }
    Ok(active)
}
