//! Retention: sync history past its age is deleted in small batches, each
//! its own short transaction, so the tables are never locked for long and a
//! busy fleet keeps writing meanwhile. What is deleted: finished sync runs
//! (never a connection's latest of a kind and object), the field-change
//! audit, outbox rows already pushed, resolved conflicts, replayed dead
//! letters and health checks. Records, links, cursors and open work are never touched.

use super::{Store, StoreError, on_db};
use crate::domain::{ConnectionId, TenantId};
use chrono::{DateTime, Utc};

/// Rows deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    /// `sync_runs`.
    pub sync_runs: u64,
    /// `field_changes`.
    pub field_changes: u64,
    /// `outbox` (done).
    pub outbox: u64,
    /// `conflicts` (resolved).
    pub conflicts: u64,
    /// `dead_letters` (replayed).
    pub dead_letters: u64,
    /// `connection_health` (checks).
    pub health_checks: u64,
}

impl Purged {
    /// The counts by name, as a `cleanup_logs` run shows them.
    pub fn counts(&self) -> super::RunCounts {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        [
            ("syncRuns", self.sync_runs),
            ("fieldChanges", self.field_changes),
            ("outbox", self.outbox),
            ("conflicts", self.conflicts),
            ("deadLetters", self.dead_letters),
            ("healthChecks", self.health_checks),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), as_i64(v)))
        .collect()
    }

    /// Adds another tenant's counts.
    pub fn add(&mut self, other: Purged) {
        self.sync_runs += other.sync_runs;
        self.field_changes += other.field_changes;
        self.outbox += other.outbox;
        self.conflicts += other.conflicts;
        self.dead_letters += other.dead_letters;
        self.health_checks += other.health_checks;
    }
}

/// One table's purge: the ids to delete (`$1` tenant, `$2` cutoff, `$3`
/// batch size, `$4` one connection or NULL for all) and the count it adds
/// to.
struct Purge {
    table: &'static str,
    ids: &'static str,
    count: fn(&mut Purged) -> &mut u64,
}

const PURGES: [Purge; 6] = [
    Purge {
        table: "sync_runs",
        // A periodic job's run has no object (NULL): compared as ''.
        ids: "SELECT r.id FROM sync_runs r WHERE r.tenant_id = $1 AND r.status <> 'running' AND r.finished_at < $2
           AND ($4 IS NULL OR r.connection_id = $4)
           AND EXISTS (SELECT 1 FROM sync_runs n WHERE n.tenant_id = $1 AND n.connection_id = r.connection_id
                        AND COALESCE(n.crm_object, '') = COALESCE(r.crm_object, '') AND n.kind = r.kind
                        AND n.started_at > r.started_at)
         LIMIT $3",
        count: |p| &mut p.sync_runs,
    },
    Purge {
        table: "field_changes",
        ids: "SELECT id FROM field_changes WHERE tenant_id = $1 AND decided_at < $2 AND ($4 IS NULL OR connection_id = $4) LIMIT $3",
        count: |p| &mut p.field_changes,
    },
    Purge {
        table: "outbox",
        ids: "SELECT id FROM outbox WHERE tenant_id = $1 AND status = 'done' AND updated_at < $2 AND ($4 IS NULL OR connection_id = $4) LIMIT $3",
        count: |p| &mut p.outbox,
    },
    Purge {
        table: "conflicts",
        ids: "SELECT id FROM conflicts WHERE tenant_id = $1 AND status = 'resolved' AND resolved_at < $2 AND ($4 IS NULL OR connection_id = $4) LIMIT $3",
        count: |p| &mut p.conflicts,
    },
    Purge {
        table: "dead_letters",
        ids: "SELECT id FROM dead_letters WHERE tenant_id = $1 AND replayed_at < $2 AND ($4 IS NULL OR connection_id = $4) LIMIT $3",
        count: |p| &mut p.dead_letters,
    },
    Purge {
        table: "connection_health",
        ids: "SELECT id FROM connection_health WHERE tenant_id = $1 AND checked_at < $2 AND ($4 IS NULL OR connection_id = $4) LIMIT $3",
        count: |p| &mut p.health_checks,
    },
];

impl Store {
    /// Deletes one tenant's history older than `before`, `batch` rows per
    /// transaction.
    pub async fn purge_history(
        &self,
        tenant: TenantId,
        before: DateTime<Utc>,
        batch: i64,
    ) -> Result<Purged, StoreError> {
        self.purge(tenant, None, before, batch).await
    }

    /// Deletes one connection's history older than `before`: what the
    /// `cleanup_logs` job does per connection, so that its run on each
    /// connection reports what went there.
    pub async fn purge_connection_history(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        before: DateTime<Utc>,
        batch: i64,
    ) -> Result<Purged, StoreError> {
        self.purge(tenant, Some(connection), before, batch).await
    }

    async fn purge(
        &self,
        tenant: TenantId,
        connection: Option<ConnectionId>,
        before: DateTime<Utc>,
        batch: i64,
    ) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        for purge in &PURGES {
            let sql = format!("DELETE FROM {} WHERE id IN ({})", purge.table, purge.ids);
            let mut deleted = 0;
            loop {
                let mut tx = self.begin(tenant).await?;
                let n = on_db!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(tenant.0)
                    .bind(before)
                    .bind(batch)
                    .bind(connection.map(|c| c.0))
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))?;
                tx.commit().await?;
                deleted += n;
                if n < u64::try_from(batch).unwrap_or(0) {
                    break;
                }
            }
            *(purge.count)(&mut purged) = deleted;
        }
        Ok(purged)
    }
}
