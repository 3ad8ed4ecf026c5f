//! Connections: one CRM account of one tenant, with its credentials sealed
//! at rest (bound to the row's ids) and its sync settings.

use super::{Db, Store, StoreError, on_db};
use crate::domain::validate::DELTA_INTERVAL_SECS;
use crate::domain::{
    ConnectionId, ConnectionStatus, CrmObject, ProviderKind, RecordKind, TenantId,
    WebhookCredentialKind,
};
use crate::sync::ConflictStrategy;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

/// How crmsync authenticates to the CRM. Serialised only inside the sealed
/// column; `Debug` shows no token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Credentials {
    /// A HubSpot private-app token (`pat-…`): no expiry, no refresh.
    PrivateAppToken {
        /// The token.
        #[serde(serialize_with = "expose")]
        token: SecretString,
    },
    /// OAuth tokens, refreshed before `expires_at`.
    OAuth {
        /// The bearer token.
        #[serde(serialize_with = "expose")]
        access_token: SecretString,
        /// The refresh token.
        #[serde(serialize_with = "expose")]
        refresh_token: SecretString,
        /// When the access token expires.
        expires_at: DateTime<Utc>,
    },
    /// An API token sent as is (Pipedrive's `x-api-token`): no expiry, no
    /// refresh.
    ApiToken {
        /// The token.
        #[serde(serialize_with = "expose")]
        token: SecretString,
    },
    /// Server-to-server client credentials (Dynamics against the
    /// customer's Entra tenant): no refresh token; a new access token is
    /// minted when the last one expires.
    ClientCredentials {
        /// The application (client) id.
        client_id: String,
        /// The client secret.
        #[serde(serialize_with = "expose")]
        client_secret: SecretString,
        /// The last token minted, if any.
        #[serde(default, serialize_with = "expose_some")]
        access_token: Option<SecretString>,
        /// When it expires.
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
    },
}

impl Credentials {
    /// The token to send now, if the credentials hold one (an OAuth or
    /// minted token may have expired: the session checks).
    pub fn bearer(&self) -> Option<&SecretString> {
        match self {
            Credentials::PrivateAppToken { token } | Credentials::ApiToken { token } => Some(token),
            Credentials::OAuth { access_token, .. } => Some(access_token),
            Credentials::ClientCredentials { access_token, .. } => access_token.as_ref(),
        }
    }

    /// When the token to send expires (`None`: never, or none held yet).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Credentials::OAuth { expires_at, .. } => Some(*expires_at),
            Credentials::ClientCredentials { expires_at, .. } => *expires_at,
            Credentials::PrivateAppToken { .. } | Credentials::ApiToken { .. } => None,
        }
    }
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

fn expose_some<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::PrivateAppToken { .. } => f.write_str("PrivateAppToken(***)"),
            Credentials::OAuth { expires_at, .. } => {
                write!(f, "OAuth(***, expires_at: {expires_at})")
            }
            Credentials::ApiToken { .. } => f.write_str("ApiToken(***)"),
            Credentials::ClientCredentials { client_id, .. } => {
                write!(f, "ClientCredentials({client_id}, ***)")
            }
        }
    }
}

/// Which CRM object feeds which platform kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMapping {
    /// The CRM object.
    pub crm_object: CrmObject,
    /// The platform kind its records become.
    pub record_kind: RecordKind,
}

/// Per-connection settings (stored as JSON so they can grow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSettings {
    /// Synced objects (each provider's default: `providers::default_settings`).
    pub objects: Vec<ObjectMapping>,
    /// How conflicts are settled.
    #[serde(default)]
    pub strategy: ConflictStrategy,
}

impl ConnectionSettings {
    /// The platform kind `object` maps to, if it is synced.
    pub fn kind_of(&self, object: CrmObject) -> Option<RecordKind> {
        self.objects
            .iter()
            .find(|m| m.crm_object == object)
            .map(|m| m.record_kind)
    }
}

/// What `crmsync connect` creates.
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// Owner.
    pub tenant: TenantId,
    /// Which CRM.
    pub provider: ProviderKind,
    /// The CRM account (HubSpot portal id).
    pub external_account_id: String,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Sync settings.
    pub settings: ConnectionSettings,
    /// Seconds between scheduled deltas.
    pub delta_interval_secs: u64,
}

/// A stored connection; credentials stay sealed until asked for.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    /// Its id.
    pub id: ConnectionId,
    /// Owner.
    pub tenant: TenantId,
    /// Which CRM.
    pub provider: ProviderKind,
    /// The CRM account id.
    pub external_account_id: String,
    /// Sync settings.
    pub settings: ConnectionSettings,
    /// Whether it may sync.
    pub status: ConnectionStatus,
    /// Why it is not active, for operators.
    pub status_reason: Option<String>,
    /// Seconds between scheduled deltas.
    pub delta_interval_secs: u64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Last change of its settings, status or credentials.
    pub updated_at: DateTime<Utc>,
    /// Where the account lives when the CRM has instances (Salesforce's
    /// `instance_url`, Zoho's `api_domain`, a Dynamics org URL).
    pub instance_url: Option<String>,
    /// crmsync's own identity in the account (an integration user, an app
    /// id): what marks a change as our echo.
    pub own_identity: Option<String>,
    /// What the adapter keeps about the account (field keys, the schema it
    /// ensured); a JSON object.
    pub provider_state: serde_json::Value,
    /// The CRM-side webhook subscription (channel id, expiry, webhook id);
    /// a JSON object.
    pub subscription: serde_json::Value,
    sealed: Vec<u8>,
    webhook_credential: Option<(WebhookCredentialKind, Vec<u8>)>,
}

/// A `connections` row as read.
#[derive(sqlx::FromRow)]
struct ConnectionRecord {
    id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    provider: String,
    external_account_id: String,
    /// Parsed in [`row`], so a row whose settings do not read fails alone
    /// rather than the whole statement that listed it.
    settings: Json<serde_json::Value>,
    status: String,
    status_reason: Option<String>,
    delta_interval_secs: i64,
    credentials: Vec<u8>,
    webhook_credential: Option<Vec<u8>>,
    webhook_credential_kind: Option<String>,
    instance_url: Option<String>,
    own_identity: Option<String>,
    provider_state: Json<serde_json::Value>,
    subscription: Json<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT id, tenant_id, provider, external_account_id, settings, status, status_reason, delta_interval_secs, credentials, webhook_credential, webhook_credential_kind, instance_url, own_identity, provider_state, subscription, created_at, updated_at FROM connections";

pub(super) fn webhook_binding(tenant: TenantId, id: ConnectionId) -> Vec<u8> {
    format!("crmsync:webhook-secret:{tenant}:{id}").into_bytes()
}

pub(super) fn binding(tenant: TenantId, id: ConnectionId) -> Vec<u8> {
    format!("crmsync:connection:{tenant}:{id}").into_bytes()
}

fn row(t: ConnectionRecord) -> Result<ConnectionRow, StoreError> {
    let corrupt = |e: crate::domain::UnknownName| StoreError::Corrupt(e.to_string());
    let webhook_credential = match (t.webhook_credential_kind, t.webhook_credential) {
        (Some(kind), Some(sealed)) => Some((kind.parse().map_err(corrupt)?, sealed)),
        _ => None,
    };
    Ok(ConnectionRow {
        id: ConnectionId(t.id),
        tenant: TenantId(t.tenant_id),
        provider: t.provider.parse().map_err(corrupt)?,
        external_account_id: t.external_account_id,
        settings: serde_json::from_value(t.settings.0)
            .map_err(|e| StoreError::Corrupt(format!("settings: {e}")))?,
        status: t.status.parse().map_err(corrupt)?,
        status_reason: t.status_reason,
        delta_interval_secs: u64::try_from(t.delta_interval_secs).unwrap_or(60),
        instance_url: t.instance_url,
        own_identity: t.own_identity,
        provider_state: t.provider_state.0,
        subscription: t.subscription.0,
        sealed: t.credentials,
        webhook_credential,
        created_at: t.created_at,
        updated_at: t.updated_at,
    })
}

/// The connection in `record`, or `None` — reported — when the row cannot
/// be read (a manual edit, a row written by a newer version, a bug): one
/// such row must not stop what every other connection's work needs, such
/// as the scheduler's fleet-wide periodic jobs or the webhook routes.
fn readable(record: ConnectionRecord) -> Option<ConnectionRow> {
    let (tenant, id) = (record.tenant_id, record.id);
    match row(record) {
        Ok(row) => Some(row),
        Err(e) => {
            report_unreadable(tenant, id, &e);
            None
        }
    }
}

/// Counts and logs a connection row that was skipped because it cannot be
/// read (names the ids, never the row's content).
fn report_unreadable(tenant: uuid::Uuid, connection: uuid::Uuid, error: &StoreError) {
    tracing::warn!(
        tenant.id = %tenant,
        connection.id = %connection,
        error = %error,
        "connection row cannot be read; skipped"
    );
    metrics::counter!("crmsync_store_bad_rows_total", "table" => "connections").increment(1);
}

/// A delta interval as stored: within [`DELTA_INTERVAL_SECS`] (the
/// database refuses others too), or the caller's mistake.
fn stored_interval(secs: u64) -> Result<i64, StoreError> {
    if DELTA_INTERVAL_SECS.contains(&secs) {
        i64::try_from(secs).map_err(|_| StoreError::Invalid("delta interval".into()))
    } else {
        Err(StoreError::Invalid(format!(
            "a delta interval must be {} to {} seconds, not {secs}",
            DELTA_INTERVAL_SECS.start(),
            DELTA_INTERVAL_SECS.end()
        )))
    }
}

/// Reports a connection whose stored delta interval is outside the range
/// (a row written past the database's check): the claim scheduled it at
/// the nearest bound instead of failing every tenant's claim.
fn report_out_of_range(tenant: uuid::Uuid, connection: uuid::Uuid, stored: i64) {
    tracing::warn!(
        tenant.id = %tenant,
        connection.id = %connection,
        delta_interval_secs = stored,
        "stored delta interval out of range; scheduled at the nearest bound"
    );
    metrics::counter!("crmsync_scheduler_bad_rows_total", "reason" => "delta_interval_out_of_range")
        .increment(1);
}

impl Store {
    /// Creates a connection, or — for an account the tenant already connected —
    /// replaces its credentials and reactivates it (a re-authorisation).
    pub async fn upsert_connection(&self, new: NewConnection) -> Result<ConnectionId, StoreError> {
        let existing: Option<(uuid::Uuid,)> = {
            let mut tx = self.begin(new.tenant).await?;
            let found = on_db!(&mut tx, |c| {
                sqlx::query_as(
                "SELECT id FROM connections WHERE tenant_id = $1 AND provider = $2 AND external_account_id = $3"
            )
            .bind(new.tenant.0)
            .bind(new.provider.as_str())
            .bind(&new.external_account_id)
            .fetch_optional(c)
            .await
            })?;
            tx.commit().await?;
            found
        };
        let id = existing.map_or_else(ConnectionId::new, |(id,)| ConnectionId(id));
        let plaintext =
            serde_json::to_vec(&new.credentials).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sealed = self.key()?.seal(&plaintext, &binding(new.tenant, id))?;
        let interval = stored_interval(new.delta_interval_secs)?;
        let now = Utc::now();
        let mut tx = self.begin(new.tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO connections (id, tenant_id, provider, external_account_id, credentials, settings, status, status_reason, delta_interval_secs, next_delta_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'active', NULL, $7, NULL, $8, $8)
             ON CONFLICT (tenant_id, provider, external_account_id) DO UPDATE
               SET credentials = excluded.credentials, status = 'active', status_reason = NULL, updated_at = excluded.updated_at"
        )
        .bind(id.0)
        .bind(new.tenant.0)
        .bind(new.provider.as_str())
        .bind(&new.external_account_id)
        .bind(&sealed)
        .bind(Json(&new.settings))
        .bind(interval)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await?;
        Ok(id)
    }

    /// Loads one connection of `tenant`.
    pub async fn connection(
        &self,
        tenant: TenantId,
        id: ConnectionId,
    ) -> Result<ConnectionRow, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let found: Option<ConnectionRecord> = on_db!(&mut tx, |c| sqlx::query_as(
            sqlx::AssertSqlSafe(format!("{SELECT} WHERE tenant_id = $1 AND id = $2"))
        )
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(c)
        .await)?;
        tx.commit().await?;
        row(found.ok_or_else(|| StoreError::NotFound(format!("connection {id}")))?)
    }

    /// Opens a connection's own webhook credential, if it has one.
    pub fn webhook_credential(
        &self,
        connection: &ConnectionRow,
    ) -> Result<Option<WebhookCredential>, StoreError> {
        connection
            .webhook_credential
            .as_ref()
            .map(|(kind, sealed)| {
                open_webhook_credential(
                    self.key()?,
                    (connection.tenant, connection.id),
                    *kind,
                    sealed,
                )
            })
            .transpose()
    }

    /// Opens a connection's credentials.
    pub fn credentials(&self, connection: &ConnectionRow) -> Result<Credentials, StoreError> {
        let plain = self.key()?.open(
            &connection.sealed,
            &binding(connection.tenant, connection.id),
        )?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(format!("credentials: {e}")))
    }

    /// The tenant's connections (deleted ones left out), oldest first; a row
    /// that cannot be read is skipped and reported
    /// (`crmsync_store_bad_rows_total{table="connections"}`).
    pub async fn list_connections(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<ConnectionRow>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<ConnectionRecord> =
            on_db!(&mut tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT} WHERE tenant_id = $1 AND status <> 'deleted' ORDER BY created_at, id"
            )))
            .bind(tenant.0)
            .fetch_all(c)
            .await)?;
        tx.commit().await?;
        Ok(rows.into_iter().filter_map(readable).collect())
    }

    /// Every connection of every tenant (deleted ones included), oldest
    /// first; a row that cannot be read is skipped and reported, as by
    /// [`Self::list_connections`]. What the webhook routes are built from.
    pub async fn every_connection(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        let mut rows = Vec::new();
        for (tenant, id) in self.connection_directory().await? {
            match self.connection(tenant, id).await {
                Ok(row) => rows.push(row),
                Err(e @ StoreError::Corrupt(_)) => report_unreadable(tenant.0, id.0, &e),
                Err(e) => return Err(e),
            }
        }
        Ok(rows)
    }

    /// Changes a connection's sync settings and delta interval.
    pub async fn update_connection(
        &self,
        tenant: TenantId,
        id: ConnectionId,
        settings: &ConnectionSettings,
        delta_interval_secs: u64,
    ) -> Result<(), StoreError> {
        let interval = stored_interval(delta_interval_secs)?;
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE connections SET settings = $1, delta_interval_secs = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5"
        )
        .bind(Json(settings))
        .bind(interval)
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await
    }

    /// Deletes a connection: its credentials and webhook secret are erased,
    /// its pending pushes dropped, and the row stays (status `deleted`) so
    /// its links remain as unlinked history. Connecting the same account
    /// again revives it.
    pub async fn delete_connection(
        &self,
        tenant: TenantId,
        id: ConnectionId,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE connections SET status = 'deleted', status_reason = 'deleted by an operator', credentials = $1,
                    webhook_credential = NULL, webhook_credential_kind = NULL, subscription = '{}',
                    next_delta_at = NULL, updated_at = $2
              WHERE tenant_id = $3 AND id = $4"
        )
        .bind(Vec::<u8>::new())
        .bind(now)
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        on_db!(&mut tx, |c| sqlx::query(
            "UPDATE outbox SET status = 'done', error = 'connection deleted', updated_at = $1
              WHERE tenant_id = $2 AND connection_id = $3 AND status = 'pending'"
        )
        .bind(now)
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ()))?;
        tx.commit().await
    }

    /// Sets (or, with `None`, clears) the HMAC secret that signs this
    /// connection's webhooks (a customer's HubSpot private app has its own).
    pub async fn set_webhook_secret(
        &self,
        tenant: TenantId,
        id: ConnectionId,
        secret: Option<&SecretString>,
    ) -> Result<(), StoreError> {
        let credential = secret.map(|s| WebhookCredential::HmacSecret(s.clone()));
        self.set_webhook_credential(tenant, id, credential.as_ref())
            .await
    }

    /// Sets (or, with `None`, clears) what verifies this connection's own
    /// webhooks, sealed like the credentials; its kind is kept beside it.
    pub async fn set_webhook_credential(
        &self,
        tenant: TenantId,
        id: ConnectionId,
        credential: Option<&WebhookCredential>,
    ) -> Result<(), StoreError> {
        let (kind, sealed) = match credential {
            Some(c) => (
                Some(c.kind().as_str()),
                Some(
                    self.key()?
                        .seal(&c.plaintext()?, &webhook_binding(tenant, id))?,
                ),
            ),
            None => (None, None),
        };
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE connections SET webhook_credential = $1, webhook_credential_kind = $2, updated_at = $3
              WHERE tenant_id = $4 AND id = $5"
        )
        .bind(&sealed)
        .bind(kind)
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await
    }

    /// Replaces a connection's credentials (after an OAuth refresh).
    pub async fn update_credentials(
        &self,
        connection: &ConnectionRow,
        credentials: &Credentials,
    ) -> Result<(), StoreError> {
        let plaintext =
            serde_json::to_vec(credentials).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sealed = self
            .key()?
            .seal(&plaintext, &binding(connection.tenant, connection.id))?;
        let mut tx = self.begin(connection.tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE connections SET credentials = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4"
        )
        .bind(&sealed)
        .bind(Utc::now())
        .bind(connection.tenant.0)
        .bind(connection.id.0)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await
    }

    /// Marks a connection paused or needing re-authorisation, with a reason.
    pub async fn set_connection_status(
        &self,
        tenant: TenantId,
        id: ConnectionId,
        status: ConnectionStatus,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        on_db!(&mut tx, |c| {
            sqlx::query(
            "UPDATE connections SET status = $1, status_reason = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5"
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(id.0)
        .execute(c)
        .await
        .map(|_| ())
        })?;
        tx.commit().await
    }

    /// The tenants that have connections: what fleet-wide maintenance
    /// (health checks, cleanup) visits, one tenant at a time under RLS.
    pub async fn connected_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut tenants: Vec<TenantId> = self
            .connection_directory()
            .await?
            .into_iter()
            .map(|(tenant, _)| tenant)
            .collect();
        tenants.sort_by_key(|t| t.0);
        tenants.dedup();
        Ok(tenants)
    }

    /// Every connection of every tenant, as ids (an operator view).
    pub async fn connection_directory(&self) -> Result<Vec<(TenantId, ConnectionId)>, StoreError> {
        let rows: Vec<(uuid::Uuid, uuid::Uuid)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT tenant_id, connection_id FROM crmsync_connection_directory()",
                )
                .fetch_all(pool)
                .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_as("SELECT tenant_id, id FROM connections ORDER BY created_at, id")
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(t, c)| (TenantId(t), ConnectionId(c)))
            .collect())
    }

    /// Claims the connections whose delta is due at `now` and moves each one's
    /// next due time on by its interval, atomically: of several schedulers
    /// ticking at once, exactly one claims each due delta. One statement
    /// covers every tenant, so no row may fail it: an interval outside
    /// [`DELTA_INTERVAL_SECS`] is taken at the nearest bound (and reported),
    /// and a due time past the calendar's end skips that row alone.
    pub async fn claim_due_deltas(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(TenantId, ConnectionId)>, StoreError> {
        let (low, high) = (
            i64::try_from(*DELTA_INTERVAL_SECS.start()).unwrap_or(5),
            i64::try_from(*DELTA_INTERVAL_SECS.end()).unwrap_or(86_400),
        );
        let due: Vec<(uuid::Uuid, uuid::Uuid, i64)> = match &self.db {
            Db::Postgres(pool) => sqlx::query_as(
                "SELECT tenant_id, connection_id, interval_secs FROM crmsync_claim_due_deltas($1)",
            )
            .bind(now)
            .fetch_all(pool)
            .await?,
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                // SQLite stores what it is given: read the interval as an
                // integer whatever its type.
                let due: Vec<(uuid::Uuid, uuid::Uuid, i64)> = sqlx::query_as(
                    "SELECT tenant_id, id, CAST(delta_interval_secs AS INTEGER) FROM connections
                      WHERE status = 'active' AND (next_delta_at IS NULL OR next_delta_at <= $1)",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut claimed = Vec::with_capacity(due.len());
                for (tenant, id, secs) in due {
                    let step = chrono::TimeDelta::try_seconds(secs.clamp(low, high));
                    let Some(next) = step.and_then(|step| now.checked_add_signed(step)) else {
                        tracing::warn!(connection.id = %id, "no next delta time after {now}; skipped");
                        metrics::counter!("crmsync_scheduler_bad_rows_total", "reason" => "no_next_due_time")
                            .increment(1);
                        continue;
                    };
                    sqlx::query("UPDATE connections SET next_delta_at = $1 WHERE id = $2")
                        .bind(next)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    claimed.push((tenant, id, secs));
                }
                tx.commit().await?;
                claimed
            }
        };
        let rows: Vec<(uuid::Uuid, uuid::Uuid)> = due
            .into_iter()
            .map(|(tenant, connection, secs)| {
                if !(low..=high).contains(&secs) {
                    report_out_of_range(tenant, connection, secs);
                }
                (tenant, connection)
            })
            .collect();
        Ok(rows
            .into_iter()
            .map(|(t, c)| (TenantId(t), ConnectionId(c)))
            .collect())
    }
}

impl ConnectionRow {
    /// The sealed webhook credential and its kind, as published to Redis
    /// for ingress (which opens it with the same key and the route's ids).
    pub fn sealed_webhook_credential(&self) -> Option<(WebhookCredentialKind, &[u8])> {
        self.webhook_credential
            .as_ref()
            .map(|(kind, sealed)| (*kind, sealed.as_slice()))
    }

    /// Whether it has its own webhook secret (an HMAC secret).
    pub fn has_webhook_secret(&self) -> bool {
        matches!(
            self.webhook_credential,
            Some((WebhookCredentialKind::HmacSecret, _))
        )
    }
}

/// Opens the sealed webhook credential of connection `id` of `tenant`.
pub fn open_webhook_credential(
    key: &crate::secrets::KeyRing,
    (tenant, id): (TenantId, ConnectionId),
    kind: WebhookCredentialKind,
    sealed: &[u8],
) -> Result<WebhookCredential, StoreError> {
    let plain = key.open(sealed, &webhook_binding(tenant, id))?;
    WebhookCredential::from_plaintext(kind, plain)
}

/// What verifies a connection's own webhooks. `Debug` shows no secret.
#[derive(Clone)]
pub enum WebhookCredential {
    /// An HMAC signing secret.
    HmacSecret(SecretString),
    /// HTTP Basic credentials.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: SecretString,
    },
    /// A token the CRM echoes in each notification.
    ChannelToken(SecretString),
    /// A key the CRM sends in a header.
    Key(SecretString),
}

impl std::fmt::Debug for WebhookCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookCredential({}, ***)", self.kind().as_str())
    }
}

/// The sealed form of Basic credentials.
#[derive(Serialize, Deserialize)]
struct BasicPlain {
    user: String,
    password: String,
}

impl WebhookCredential {
    /// Its kind.
    pub fn kind(&self) -> WebhookCredentialKind {
        match self {
            WebhookCredential::HmacSecret(_) => WebhookCredentialKind::HmacSecret,
            WebhookCredential::Basic { .. } => WebhookCredentialKind::Basic,
            WebhookCredential::ChannelToken(_) => WebhookCredentialKind::ChannelToken,
            WebhookCredential::Key(_) => WebhookCredentialKind::Key,
        }
    }

    /// What is sealed: the secret itself (as HMAC secrets always were), or
    /// JSON for Basic credentials.
    fn plaintext(&self) -> Result<Vec<u8>, StoreError> {
        match self {
            WebhookCredential::HmacSecret(s)
            | WebhookCredential::ChannelToken(s)
            | WebhookCredential::Key(s) => Ok(s.expose_secret().as_bytes().to_vec()),
            WebhookCredential::Basic { user, password } => serde_json::to_vec(&BasicPlain {
                user: user.clone(),
                password: password.expose_secret().to_string(),
            })
            .map_err(|e| StoreError::Invalid(e.to_string())),
        }
    }

    fn from_plaintext(kind: WebhookCredentialKind, plain: Vec<u8>) -> Result<Self, StoreError> {
        let text = || {
            String::from_utf8(plain.clone())
                .map(SecretString::from)
                .map_err(|_| StoreError::Corrupt("webhook credential is not UTF-8".into()))
        };
        Ok(match kind {
            WebhookCredentialKind::HmacSecret => WebhookCredential::HmacSecret(text()?),
            WebhookCredentialKind::ChannelToken => WebhookCredential::ChannelToken(text()?),
            WebhookCredentialKind::Key => WebhookCredential::Key(text()?),
            WebhookCredentialKind::Basic => {
                let basic: BasicPlain = serde_json::from_slice(&plain)
                    .map_err(|e| StoreError::Corrupt(format!("webhook credential: {e}")))?;
                WebhookCredential::Basic {
                    user: basic.user,
                    password: SecretString::from(basic.password),
                }
            }
        })
    }
}
