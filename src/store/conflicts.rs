//! Conflicts held for an operator (`manual`) and the audit of field changes.
//!
//! Resolving a conflict is a platform write: the record takes the chosen
//! value and the link's base takes the CRM's value as last seen, so the next
//! merge sees "only the platform changed" and pushes the choice (or, when the
//! CRM's value was chosen, finds both sides agreeing).

use super::{Store, StoreError, Tx, on_db};
use crate::domain::{CanonicalField, ConnectionId, RecordFields, RecordId, TenantId};
use crate::sync::FieldTimes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

/// One conflict as the api shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflictRow {
    /// Its id.
    pub id: uuid::Uuid,
    /// The connection it arose on.
    pub connection_id: ConnectionId,
    /// The platform record.
    pub record_id: RecordId,
    /// The CRM object and id.
    pub crm_object: String,
    /// The CRM record.
    pub crm_id: String,
    /// The field (api name).
    pub field: String,
    /// The last agreed value.
    pub base_value: Option<String>,
    /// The platform's value.
    pub platform_value: Option<String>,
    /// The CRM's value.
    pub crm_value: Option<String>,
    /// When the platform's field changed.
    pub platform_changed_at: Option<DateTime<Utc>>,
    /// When the CRM's field changed.
    pub crm_changed_at: Option<DateTime<Utc>>,
    /// `open` or `resolved`.
    pub status: String,
    /// How it ended: `platform`, `crm`, `value` (an operator) or `settled`
    /// (both sides came to agree by themselves).
    pub resolution: Option<String>,
    /// The value chosen.
    pub resolved_value: Option<String>,
    /// First seen.
    pub created_at: DateTime<Utc>,
    /// When resolved.
    pub resolved_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct ConflictSql {
    id: uuid::Uuid,
    connection_id: uuid::Uuid,
    record_id: uuid::Uuid,
    crm_object: String,
    crm_id: String,
    field: String,
    base_value: Option<String>,
    platform_value: Option<String>,
    crm_value: Option<String>,
    platform_changed_at: Option<DateTime<Utc>>,
    crm_changed_at: Option<DateTime<Utc>>,
    status: String,
    resolution: Option<String>,
    resolved_value: Option<String>,
    created_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

impl From<ConflictSql> for ConflictRow {
    fn from(c: ConflictSql) -> Self {
        Self {
            id: c.id,
            connection_id: ConnectionId(c.connection_id),
            record_id: RecordId(c.record_id),
            crm_object: c.crm_object,
            crm_id: c.crm_id,
            field: c.field,
            base_value: c.base_value,
            platform_value: c.platform_value,
            crm_value: c.crm_value,
            platform_changed_at: c.platform_changed_at,
            crm_changed_at: c.crm_changed_at,
            status: c.status,
            resolution: c.resolution,
            resolved_value: c.resolved_value,
            created_at: c.created_at,
            resolved_at: c.resolved_at,
        }
    }
}

const SELECT_CONFLICT: &str = "SELECT id, connection_id, record_id, crm_object, crm_id, field, base_value, platform_value, crm_value, platform_changed_at, crm_changed_at, status, resolution, resolved_value, created_at, resolved_at FROM conflicts";

/// What an operator chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the platform's present value (and push it).
    Platform,
    /// Take the CRM's value.
    Crm,
    /// Write this value to both sides (empty clears the field).
    Value(String),
}

impl Resolution {
    fn name(&self) -> &'static str {
        match self {
            Resolution::Platform => "platform",
            Resolution::Crm => "crm",
            Resolution::Value(_) => "value",
        }
    }
}

/// One audited field change.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// The connection whose sync made it.
    pub connection_id: ConnectionId,
    /// The field (api name).
    pub field: String,
    /// The rule that decided it (`crm_changed`, `platform_changed`,
    /// `platform_wins`, `crm_wins`, `newest_wins`, `manual`).
    pub rule: String,
    /// The value it replaced.
    pub old_value: Option<String>,
    /// The value it became.
    pub new_value: Option<String>,
    /// Where the value came from: `crm`, `platform` or `operator`.
    pub source: String,
    /// When.
    pub decided_at: DateTime<Utc>,
}

impl Store {
    /// The tenant's conflicts, newest first: `status` `open` (default) or
    /// `resolved`, optionally of one connection, before a cursor id.
    pub async fn list_conflicts(
        &self,
        tenant: TenantId,
        status: &str,
        connection: Option<ConnectionId>,
        before: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<ConflictRow>, StoreError> {
        let mut sql = format!("{SELECT_CONFLICT} WHERE tenant_id = $1 AND status = $2");
        sql.push_str(&super::optional_filter(
            connection.is_some(),
            "connection_id = $3",
            3,
        ));
        sql.push_str(&super::optional_filter(before.is_some(), "id < $4", 4));
        sql.push_str(" ORDER BY id DESC LIMIT $5");
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<ConflictSql> = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            sql.clone()
        ))
        .bind(tenant.0)
        .bind(status)
        .bind(connection.map(|c| c.0))
        .bind(before)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        tx.commit().await?;
        Ok(rows.into_iter().map(ConflictRow::from).collect())
    }

    /// How many of the tenant's conflicts wait for a decision.
    pub async fn count_open_conflicts(&self, tenant: TenantId) -> Result<i64, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let (n,): (i64,) = on_db!(&mut tx, |c| sqlx::query_as(
            "SELECT COUNT(*) FROM conflicts WHERE tenant_id = $1 AND status = 'open'"
        )
        .bind(tenant.0)
        .fetch_one(c)
        .await)?;
        tx.commit().await?;
        Ok(n)
    }

    /// Resolves an open conflict (see the module doc); returns the resolved
    /// conflict. A conflict already resolved is a `Conflict` error; a
    /// chosen value its field's rule refuses is `Invalid`.
    pub async fn resolve_conflict(
        &self,
        tenant: TenantId,
        id: uuid::Uuid,
        resolution: &Resolution,
    ) -> Result<ConflictRow, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let found: Option<ConflictSql> = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            format!("{SELECT_CONFLICT} WHERE tenant_id = $1 AND id = $2")
        ))
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(c)
        .await)?;
        let conflict = found.ok_or_else(|| StoreError::NotFound(format!("conflict {id}")))?;
        if conflict.status != "open" {
            return Err(StoreError::Conflict(format!(
                "conflict {id} is already resolved"
            )));
        }
        let field: CanonicalField = conflict
            .field
            .parse()
            .map_err(|e: String| StoreError::Corrupt(e))?;
        // A chosen value is held to its field's rule, as an api write is:
        // `a@@b` would be stored and then refused by the CRM.
        if let Resolution::Value(v) = resolution {
            crate::domain::validate::check_value(field, v)
                .map_err(|problem| StoreError::Invalid(problem.to_string()))?;
        }
        let now = Utc::now();
        let record: Option<(Json<RecordFields>, Json<FieldTimes>)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "SELECT fields, field_times FROM records WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            )
            .bind(tenant.0)
            .bind(conflict.record_id)
            .fetch_optional(c)
            .await
        })?;
        let (fields, times) =
            record.ok_or_else(|| StoreError::NotFound(format!("record {}", conflict.record_id)))?;
        let mut fields = fields.0.renormalized();
        let before = fields.get(field).map(str::to_string);
        let chosen = match resolution {
            Resolution::Platform => before.clone(),
            Resolution::Crm => conflict.crm_value.clone(),
            Resolution::Value(v) => Some(v.clone()),
        };
        fields.set(field, chosen.as_deref().unwrap_or(""));
        let chosen = fields.get(field).map(str::to_string);
        if chosen != before {
            let mut times = times.0;
            times.insert(field, now);
            let dedupe_key = super::platform::dedupe_key(&mut tx, tenant, &fields).await?;
            on_db!(&mut tx, |c| {
                sqlx::query(
                "UPDATE records SET fields = $1, field_times = $2, dedupe_key = $3, version = version + 1, updated_at = $4
                  WHERE tenant_id = $5 AND id = $6"
            )
            .bind(Json(&fields))
            .bind(Json(&times))
            .bind(&dedupe_key)
            .bind(now)
            .bind(tenant.0)
            .bind(conflict.record_id)
            .execute(c)
            .await
            .map(|_| ())
            })?;
        }
        set_base_field(&mut tx, tenant, &conflict, field, now).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE conflicts SET status = 'resolved', resolution = $1, resolved_value = $2, resolved_at = $3, updated_at = $3
              WHERE tenant_id = $4 AND id = $5"
        )
        .bind(resolution.name())
        .bind(&chosen)
        .bind(now)
        .bind(tenant.0)
        .bind(id)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO field_changes (id, tenant_id, record_id, connection_id, field, rule, old_value, new_value, source, decided_at)
             VALUES ($1, $2, $3, $4, $5, 'manual', $6, $7, 'operator', $8)"
        )
        .bind(uuid::Uuid::now_v7())
        .bind(tenant.0)
        .bind(conflict.record_id)
        .bind(conflict.connection_id)
        .bind(field.as_str())
        .bind(&before)
        .bind(&chosen)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        if chosen != conflict.crm_value {
            super::queue_outbox(
                &mut tx,
                tenant,
                conflict.connection_id,
                conflict.record_id,
                now,
            )
            .await?;
        }
        let resolved: ConflictSql = on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(
            format!("{SELECT_CONFLICT} WHERE tenant_id = $1 AND id = $2")
        ))
        .bind(tenant.0)
        .bind(id)
        .fetch_one(c)
        .await)?;
        tx.commit().await?;
        Ok(resolved.into())
    }

    /// Why a record's fields changed: the audit, newest first.
    pub async fn field_changes(
        &self,
        tenant: TenantId,
        record: RecordId,
        limit: i64,
    ) -> Result<Vec<FieldChange>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        type Row = (
            uuid::Uuid,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT connection_id, field, rule, old_value, new_value, source, decided_at FROM field_changes
              WHERE tenant_id = $1 AND record_id = $2 ORDER BY decided_at DESC, id DESC LIMIT $3"
        )
        .bind(tenant.0)
        .bind(record.0)
        .bind(limit)
        .fetch_all(c)
        .await
        })?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(
                |(connection, field, rule, old_value, new_value, source, decided_at)| FieldChange {
                    connection_id: ConnectionId(connection),
                    field,
                    rule,
                    old_value,
                    new_value,
                    source,
                    decided_at,
                },
            )
            .collect())
    }
}

/// Sets one field of the conflict's link base to the CRM's value as last
/// seen: from then on only the platform side differs from the base.
async fn set_base_field(
    tx: &mut Tx,
    tenant: TenantId,
    conflict: &ConflictSql,
    field: CanonicalField,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let link: Option<(uuid::Uuid, Json<RecordFields>)> = on_db!(tx, |c| {
        sqlx::query_as(
        "SELECT id, base FROM record_links WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id = $4"
    )
    .bind(tenant.0)
    .bind(conflict.connection_id)
    .bind(&conflict.crm_object)
    .bind(&conflict.crm_id)
    .fetch_optional(c)
    .await
    })?;
    let Some((link, base)) = link else {
        return Ok(());
    };
    let mut base = base.0.renormalized();
    base.set(field, conflict.crm_value.as_deref().unwrap_or(""));
    on_db!(tx, |c| sqlx::query(
        "UPDATE record_links SET base = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4"
    )
    .bind(Json(&base))
    .bind(now)
    .bind(tenant.0)
    .bind(link)
    .execute(c)
    .await
    .map(|_| ()))?;
    Ok(())
}
