//! A connection's authenticated session: opens its credentials, refreshes an
//! OAuth token before it expires, and on a 401 refreshes once and retries —
//! a second refusal marks the connection as needing re-authorisation.
//!
//! Refreshing is single-flight across the fleet: the job that takes the
//! connection's refresh lease refreshes; every other job that needs a fresh
//! token meanwhile waits for the stored credentials to change and uses the
//! new token. So 50 jobs finding the token expired make one refresh call.

use super::{Deps, JobError};
use crate::domain::ConnectionStatus;
use crate::providers::{Provider, ProviderError};
use crate::store::{ConnectionRow, Credentials};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// Refresh this long before the access token expires.
const REFRESH_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
/// A refresh lease outlives any refresh call (the HTTP timeout is 30 s).
const REFRESH_LEASE: Duration = Duration::from_secs(45);
/// How long a job waits for another job's refresh before it retries later.
const REFRESH_WAIT: Duration = Duration::from_secs(20);

/// An active connection and a token that works for it.
#[derive(Debug)]
pub struct Session {
    /// The connection.
    pub connection: ConnectionRow,
    token: SecretString,
    /// The connection's CRM (see `jobs::crm` for the calls).
    pub(super) provider: Provider,
}

impl Session {
    /// Opens a session; refuses connections that are not active.
    pub async fn open(deps: &Deps, connection: ConnectionRow) -> Result<Self, JobError> {
        if connection.status != ConnectionStatus::Active {
            return Err(not_active(&connection));
        }
        let credentials = deps.store.credentials(&connection)?;
        let token = match (credentials.bearer(), credentials.expires_at()) {
            (Some(token), None) => token.clone(),
            (Some(token), Some(expires_at)) if expires_at - REFRESH_MARGIN > Utc::now() => {
                token.clone()
            }
            // Expired, about to, or never minted.
            _ => refresh(deps, &connection, None).await?,
        };
        let provider = deps.providers.get(connection.provider);
        Ok(Self {
            connection,
            token,
            provider,
        })
    }

    /// The CRM account id (a HubSpot portal id, say), which keys the rate
    /// budgets.
    pub fn account(&self) -> &str {
        &self.connection.external_account_id
    }

    /// The current access token.
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// After a 401: refreshes once (OAuth) so the caller can retry; a
    /// private-app token, or a refused refresh, marks the connection
    /// `needs_reauth` and returns the final error.
    pub async fn reauthorize(&mut self, deps: &Deps, refused: String) -> Result<(), JobError> {
        match deps.store.credentials(&self.connection)? {
            Credentials::OAuth { .. } | Credentials::ClientCredentials { .. } => {
                self.token = refresh(deps, &self.connection, Some(&self.token)).await?;
                Ok(())
            }
            Credentials::PrivateAppToken { .. } | Credentials::ApiToken { .. } => {
                Err(needs_reauth(deps, &self.connection, &refused).await)
            }
        }
    }

    /// Classifies the result of the retried call: a second 401 means the
    /// connection needs re-authorisation.
    pub async fn after_retry<T>(
        &self,
        deps: &Deps,
        result: Result<T, ProviderError>,
    ) -> Result<T, JobError> {
        match result {
            Err(ProviderError::Unauthorized(msg)) => {
                Err(needs_reauth(deps, &self.connection, &msg).await)
            }
            other => Ok(other?),
        }
    }
}

/// Nothing runs for a connection that is not active: why, for the run.
fn not_active(connection: &ConnectionRow) -> JobError {
    JobError::Permanent(format!(
        "connection {} is {}{}",
        connection.id,
        connection.status,
        connection
            .status_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    ))
}

/// A token fresher than `refused`: another job's refresh, or our own under
/// the connection's refresh lease.
async fn refresh(
    deps: &Deps,
    connection: &ConnectionRow,
    refused: Option<&SecretString>,
) -> Result<SecretString, JobError> {
    let lease_name = format!("oauth-refresh:{}", connection.id);
    let deadline = std::time::Instant::now() + REFRESH_WAIT;
    loop {
        if let Some(token) = stored_fresh_token(deps, connection, refused).await? {
            return Ok(token);
        }
        if let Some(lease) = deps.queue.try_lease(&lease_name, REFRESH_LEASE).await? {
            // Checked again under the lease: a refresh may have just ended.
            let refreshed = match stored_fresh_token(deps, connection, refused).await {
                Ok(Some(token)) => Ok(token),
                Ok(None) => refresh_now(deps, connection).await,
                Err(e) => Err(e),
            };
            deps.queue.release(lease).await;
            return refreshed;
        }
        if std::time::Instant::now() >= deadline {
            return Err(JobError::Transient {
                message: format!(
                    "another worker is still refreshing connection {}'s token",
                    connection.id
                ),
                retry_after: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stored access token if it is valid for a while and is not the one
/// the CRM refused; an error if the connection stopped being active (a
/// refresh elsewhere was refused).
async fn stored_fresh_token(
    deps: &Deps,
    connection: &ConnectionRow,
    refused: Option<&SecretString>,
) -> Result<Option<SecretString>, JobError> {
    let row = deps
        .store
        .connection(connection.tenant, connection.id)
        .await?;
    if row.status != ConnectionStatus::Active {
        return Err(not_active(&row));
    }
    let credentials = deps.store.credentials(&row)?;
    Ok(match (credentials.bearer(), credentials.expires_at()) {
        (Some(token), Some(expires_at))
            if expires_at - REFRESH_MARGIN > Utc::now()
                && refused.is_none_or(|r| r.expose_secret() != token.expose_secret()) =>
        {
            Some(token.clone())
        }
        _ => None,
    })
}

/// Calls the CRM's token endpoint with the stored refresh token and stores
/// what it gives (the caller holds the refresh lease).
async fn refresh_now(deps: &Deps, connection: &ConnectionRow) -> Result<SecretString, JobError> {
    let row = deps
        .store
        .connection(connection.tenant, connection.id)
        .await?;
    let provider = deps.providers.get(connection.provider);
    let stored = deps.store.credentials(&row)?;
    let fresh = match &stored {
        Credentials::OAuth { refresh_token, .. } => provider.refresh(refresh_token).await,
        Credentials::ClientCredentials {
            client_id,
            client_secret,
            ..
        } => {
            provider
                .mint(row.instance_url.as_deref(), client_id, client_secret)
                .await
        }
        Credentials::PrivateAppToken { .. } | Credentials::ApiToken { .. } => {
            return Err(JobError::Permanent(format!(
                "connection {} has a token that cannot be refreshed",
                connection.id
            )));
        }
    };
    match fresh {
        Ok(tokens) => {
            let expires_at =
                Utc::now() + chrono::Duration::from_std(tokens.expires_in).unwrap_or_default();
            let credentials = match stored {
                Credentials::ClientCredentials {
                    client_id,
                    client_secret,
                    ..
                } => Credentials::ClientCredentials {
                    client_id,
                    client_secret,
                    access_token: Some(tokens.access_token.clone()),
                    expires_at: Some(expires_at),
                },
                _ => Credentials::OAuth {
                    access_token: tokens.access_token.clone(),
                    refresh_token: tokens.refresh_token,
                    expires_at,
                },
            };
            deps.store
                .update_credentials(connection, &credentials)
                .await?;
            tracing::info!(connection.id = %connection.id, "refreshed OAuth access token");
            Ok(tokens.access_token)
        }
        Err(ProviderError::Unauthorized(msg)) => Err(needs_reauth(deps, connection, &msg).await),
        Err(e) => Err(e.into()),
    }
}

async fn needs_reauth(deps: &Deps, connection: &ConnectionRow, why: &str) -> JobError {
    let reason =
        format!("the CRM refused the credentials ({why}); reconnect with `crmsync connect`");
    if let Err(e) = deps
        .store
        .set_connection_status(
            connection.tenant,
            connection.id,
            ConnectionStatus::NeedsReauth,
            Some(&reason),
        )
        .await
    {
        return e.into();
    }
    tracing::warn!(connection.id = %connection.id, "connection needs re-authorisation");
    JobError::Permanent(format!(
        "connection {} needs re-authorisation: {reason}",
        connection.id
    ))
}
