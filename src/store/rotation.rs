//! Key rotation: every sealed credential and webhook secret that a previous
//! key of the ring sealed is re-sealed under the current key, one tenant at
//! a time under row-level security. Each row is replaced only if it still
//! holds what was read (compare-and-set): a value written meanwhile — a
//! token refresh — was sealed with the current key already.

use super::connections::{binding, webhook_binding};
use super::{Store, StoreError, on_db};
use crate::domain::{ConnectionId, TenantId};
use serde::Serialize;

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// Connections looked at.
    pub connections: u64,
    /// Sealed values re-encrypted under the current key.
    pub resealed: u64,
    /// Sealed values already under the current key.
    pub current: u64,
    /// Connections with a value no key of the ring opens: keep the old
    /// keys configured and find the missing one before dropping any.
    pub undecryptable: Vec<ConnectionId>,
}

type SealedRow = (uuid::Uuid, Vec<u8>, Option<Vec<u8>>);

impl Store {
    /// Re-seals every value a previous key sealed; `progress` hears the
    /// running totals after each tenant.
    pub async fn rotate_sealed(
        &self,
        mut progress: impl FnMut(&Rotation),
    ) -> Result<Rotation, StoreError> {
        let mut done = Rotation::default();
        for tenant in self.connected_tenants().await? {
            self.rotate_tenant(tenant, &mut done).await?;
            progress(&done);
        }
        Ok(done)
    }

    async fn rotate_tenant(&self, tenant: TenantId, done: &mut Rotation) -> Result<(), StoreError> {
        let ring = self.key()?;
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<SealedRow> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT id, credentials, webhook_credential FROM connections WHERE tenant_id = $1 ORDER BY id"
        )
        .bind(tenant.0)
        .fetch_all(c)
        .await
        })?;
        for (id, credentials, webhook_secret) in rows {
            let connection = ConnectionId(id);
            done.connections += 1;
            let mut broken = false;
            for (column, sealed, row_binding) in [
                (
                    "credentials",
                    Some(credentials),
                    binding(tenant, connection),
                ),
                (
                    "webhook_credential",
                    webhook_secret,
                    webhook_binding(tenant, connection),
                ),
            ] {
                // Erased credentials (a deleted connection) are empty.
                let Some(sealed) = sealed.filter(|s| !s.is_empty()) else {
                    continue;
                };
                match ring.open_telling(&sealed, &row_binding) {
                    Ok((_, true)) => done.current += 1,
                    Ok((plain, false)) => {
                        let resealed = ring.seal(&plain, &row_binding)?;
                        let sql = format!(
                            "UPDATE connections SET {column} = $1 WHERE tenant_id = $2 AND id = $3 AND {column} = $4"
                        );
                        let changed =
                            on_db!(&mut tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                                .bind(&resealed)
                                .bind(tenant.0)
                                .bind(id)
                                .bind(&sealed)
                                .execute(c)
                                .await
                                .map(|r| r.rows_affected()))?;
                        if changed > 0 {
                            done.resealed += 1;
                        } else {
                            done.current += 1;
                        }
                    }
                    Err(_) => broken = true,
                }
            }
            if broken {
                done.undecryptable.push(connection);
            }
        }
        tx.commit().await
    }
}
