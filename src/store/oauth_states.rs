//! OAuth states in flight: one row per authorize URL handed out, consumed
//! by the callback in one conditional update, so a state is used once
//! across every api process however many callbacks race with it.

use super::{Store, StoreError, on_db};
use crate::domain::{ProviderKind, TenantId};
use chrono::{DateTime, Utc};

/// How long a used or expired state's row is kept: a late replay still
/// finds it and is sent back to its redirect URI as `invalid_state`.
const KEPT_AFTER_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// A state the store handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOAuthState<'a> {
    /// The state's nonce (its row's id).
    pub nonce: uuid::Uuid,
    /// Who asked.
    pub tenant: TenantId,
    /// For which CRM.
    pub provider: ProviderKind,
    /// Where the user is sent back to, with `connectionId` or `error`.
    pub redirect_uri: &'a str,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// What consuming a state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// It was live and unused, and is used now: go on.
    Fresh {
        /// Where to send the user back to.
        redirect_uri: String,
    },
    /// It exists but was used already, expired, or is for another CRM.
    Refused {
        /// Where to send the user back to (with `invalid_state`).
        redirect_uri: String,
    },
    /// No such state for this tenant.
    Unknown,
}

impl Store {
    /// Records a state handed out (and forgets the tenant's states that
    /// expired more than a day ago).
    pub async fn insert_oauth_state(&self, state: &NewOAuthState<'_>) -> Result<(), StoreError> {
        let mut tx = self.begin(state.tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query("DELETE FROM oauth_states WHERE tenant_id = $1 AND expires_at < $2")
                .bind(state.tenant.0)
                .bind(state.created_at - KEPT_AFTER_EXPIRY)
                .execute(&mut *c)
                .await?;
            sqlx::query(
                "INSERT INTO oauth_states (id, tenant_id, provider, redirect_uri, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(state.nonce)
            .bind(state.tenant.0)
            .bind(state.provider.as_str())
            .bind(state.redirect_uri)
            .bind(state.created_at)
            .bind(state.expires_at)
            .execute(c)
            .await
            .map(|_| ())
        })?;
        tx.commit().await
    }

    /// Uses a state once: marks it used at `now` if it is the tenant's, for
    /// `provider`, unused and not expired — one conditional update, so of
    /// two racing callbacks one wins.
    pub async fn consume_oauth_state(
        &self,
        tenant: TenantId,
        nonce: uuid::Uuid,
        provider: ProviderKind,
        now: DateTime<Utc>,
    ) -> Result<Consumed, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let used: Option<(String,)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "UPDATE oauth_states SET consumed_at = $1
                  WHERE tenant_id = $2 AND id = $3 AND provider = $4
                    AND consumed_at IS NULL AND expires_at > $1
                  RETURNING redirect_uri",
            )
            .bind(now)
            .bind(tenant.0)
            .bind(nonce)
            .bind(provider.as_str())
            .fetch_optional(&mut *c)
            .await
        })?;
        let found = match used {
            Some((redirect_uri,)) => Consumed::Fresh { redirect_uri },
            None => {
                let any: Option<(String,)> = on_db!(&mut tx, |c| {
                    sqlx::query_as(
                        "SELECT redirect_uri FROM oauth_states WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant.0)
                    .bind(nonce)
                    .fetch_optional(c)
                    .await
                })?;
                any.map_or(Consumed::Unknown, |(redirect_uri,)| Consumed::Refused {
                    redirect_uri,
                })
            }
        };
        tx.commit().await?;
        Ok(found)
    }
}
