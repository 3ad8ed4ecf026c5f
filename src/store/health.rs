//! Connection health checks: whether a connection's token was accepted and
//! its CRM reachable, kept as history (the newest shown on the connection).

use super::{Store, StoreError, on_db};
use crate::domain::{ConnectionId, TenantId};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One check as the api shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// When it ran.
    pub checked_at: DateTime<Utc>,
    /// Token accepted and CRM reachable.
    pub ok: bool,
    /// How long the check took, budget wait included.
    pub latency_ms: i64,
    /// Why it failed.
    pub error: Option<String>,
}

impl Store {
    /// Records a check.
    pub async fn record_health(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        check: &HealthCheck,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO connection_health (id, tenant_id, connection_id, checked_at, ok, latency_ms, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        .bind(uuid::Uuid::now_v7())
        .bind(tenant.0)
        .bind(connection.0)
        .bind(check.checked_at)
        .bind(check.ok)
        .bind(check.latency_ms)
        .bind(&check.error)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await
    }

    /// A connection's latest checks, newest first.
    pub async fn health_history(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        limit: i64,
    ) -> Result<Vec<HealthCheck>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<HealthCheck> = on_db!(&mut tx, |c| sqlx::query_as(
            "SELECT checked_at, ok, latency_ms, error FROM connection_health
              WHERE tenant_id = $1 AND connection_id = $2 ORDER BY checked_at DESC LIMIT $3"
        )
        .bind(tenant.0)
        .bind(connection.0)
        .bind(limit)
        .fetch_all(c)
        .await)?;
        tx.commit().await?;
        Ok(rows)
    }
}
