//! Tenants: the platform's customers. Each gets an API token, shown once and
//! stored only as a hash.

use super::{Db, Store, StoreError, on_db};
use crate::domain::TenantId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use sha2::{Digest, Sha256};

/// The tenant that commands use when none is named.
pub const DEFAULT_TENANT: &str = "default";

/// A tenant just created, with the token that is never shown again.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Its id.
    pub id: TenantId,
    /// Its name.
    pub name: String,
    /// Its API token (`cst_…`), for the platform API.
    pub token: String,
}

impl Store {
    /// Creates a tenant; a duplicate name is refused with a clear error.
    pub async fn create_tenant(&self, name: &str) -> Result<NewTenant, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(StoreError::Invalid(
                "a tenant name must have 1 to 200 characters".into(),
            ));
        }
        if self.find_tenant(name).await?.is_some() {
            return Err(StoreError::Invalid(format!(
                "a tenant named {name:?} already exists"
            )));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Invalid(format!("no randomness: {e}")))?;
        let token = format!("cst_{}", URL_SAFE_NO_PAD.encode(secret));
        let hash = Sha256::digest(token.as_bytes()).to_vec();
        let id = TenantId::new();
        let mut tx = self.begin(id).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO tenants (id, name, api_token_hash, allow_duplicates, created_at) VALUES ($1, $2, $3, $4, $5)"
        )
        .bind(id.0)
        .bind(name)
        .bind(&hash)
        .bind(false)
        .bind(Utc::now())
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await?;
        Ok(NewTenant {
            id,
            name: name.to_string(),
            token,
        })
    }

    /// Finds a tenant by name or id (across tenants: an operator lookup).
    pub async fn find_tenant(&self, name_or_id: &str) -> Result<Option<TenantId>, StoreError> {
        let found: Option<(uuid::Uuid,)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT t FROM crmsync_tenant_lookup($1) AS t WHERE t IS NOT NULL")
                    .bind(name_or_id)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Sqlite(pool) => {
                let by_id = name_or_id.parse::<uuid::Uuid>().ok();
                sqlx::query_as(
                    "SELECT id FROM tenants WHERE name = $1 OR id = $2 ORDER BY (name = $1) DESC LIMIT 1",
                )
                .bind(name_or_id)
                .bind(by_id)
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(found.map(|(id,)| TenantId(id)))
    }

    /// Replaces a tenant's API token with a new one (the old stops working).
    pub async fn issue_token(&self, tenant: TenantId) -> Result<String, StoreError> {
        let (token, hash) = new_token()?;
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| sqlx::query(
            "UPDATE tenants SET api_token_hash = $1 WHERE id = $2"
        )
        .bind(&hash)
        .bind(tenant.0)
        .execute(c)
        .await
        .map(|_| ()))?;
        tx.commit().await?;
        Ok(token)
    }

    /// The tenant an API token belongs to (compared by hash, through the
    /// unique index on it: one row at most, in the same time for any token;
    /// cross-tenant by nature: the caller does not know its tenant yet).
    pub async fn tenant_by_token(&self, token: &str) -> Result<Option<TenantId>, StoreError> {
        let hash = Sha256::digest(token.as_bytes()).to_vec();
        let found: Option<(Option<uuid::Uuid>,)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT crmsync_tenant_by_token($1)")
                    .bind(&hash)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_as("SELECT id FROM tenants WHERE api_token_hash = $1 LIMIT 1")
                    .bind(&hash)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(found.and_then(|(id,)| id).map(TenantId))
    }

    /// The named tenant, or the default one (created on first use).
    pub async fn resolve_tenant(&self, name_or_id: Option<&str>) -> Result<TenantId, StoreError> {
        match name_or_id {
            Some(n) => self.find_tenant(n).await?.ok_or_else(|| {
                StoreError::NotFound(format!(
                    "tenant {n:?} (create it with `crmsync tenant create {n}`)"
                ))
            }),
            None => match self.find_tenant(DEFAULT_TENANT).await? {
                Some(id) => Ok(id),
                None => match self.create_tenant(DEFAULT_TENANT).await {
                    Ok(t) => Ok(t.id),
                    // Another process created it between our lookup and insert.
                    Err(_) => self
                        .find_tenant(DEFAULT_TENANT)
                        .await?
                        .ok_or_else(|| StoreError::NotFound("default tenant".into())),
                },
            },
        }
    }
}

/// A fresh API token (`cst_` + 32 random bytes) and its stored hash.
fn new_token() -> Result<(String, Vec<u8>), StoreError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| StoreError::Invalid(format!("no randomness: {e}")))?;
    let token = format!("cst_{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = Sha256::digest(token.as_bytes()).to_vec();
    Ok((token, hash))
}
