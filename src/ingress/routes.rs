//! Where ingress finds, without the database, which connections a CRM account
//! belongs to, and whether it has seen an event before.
//!
//! Redis keys (under the queue namespace):
//! - `{ns}:routes:{provider}:{account}` — hash `connection id → route JSON`
//!   (`{"tenant", "paused", "secret", "secretKind"}`; the secret is the
//!   connection's own webhook credential, still sealed, and its kind —
//!   routes published before kinds existed hold HMAC secrets), rebuilt by [`publish`] (the api and CLI
//!   when connections change, the scheduler every minute: Redis may lose it,
//!   the database is the truth);
//! - `{ns}:connection-routes:{provider}` — hash `connection id → route
//!   JSON` with the connection's `account` too: what the per-connection
//!   webhook route (`/webhooks/{provider}/{connection}`) looks up, replaced
//!   whole by [`publish`];
//! - `{ns}:webhook-seen:{hour}` — a hash of the dedupe keys of events that
//!   occurred in that hour (`HSETNX`), expiring 78 hours after the hour ends
//!   (HubSpot retries for up to 24 hours; the design asks for at least 76).
//!
//! The embedded mode (`crmsync dev`, SQLite) reads routes from the store and
//! keeps dedupe keys in memory: it is one process.

use crate::domain::{ConnectionId, ConnectionStatus, TenantId, WebhookCredentialKind};
use crate::store::{ConnectionRow, Store};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an event's dedupe key is remembered.
pub const DEDUPE_TTL: Duration = Duration::from_secs(78 * 3600);

/// Where one account's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Owner.
    pub tenant: TenantId,
    /// Connection.
    pub connection: ConnectionId,
    /// Paused (or waiting for re-authorisation): events are counted and
    /// dropped.
    pub paused: bool,
    /// The connection's own webhook credential (a HubSpot private app's
    /// secret, say), sealed, and its kind.
    pub sealed_credential: Option<(WebhookCredentialKind, Vec<u8>)>,
}

/// A route as published in Redis.
#[derive(Serialize, Deserialize)]
struct Published {
    tenant: TenantId,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default, rename = "secretKind")]
    secret_kind: Option<String>,
    /// The CRM account (in the per-connection hash only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
}

impl Route {
    fn of(row: &ConnectionRow) -> Option<Self> {
        let paused = match row.status {
            ConnectionStatus::Active => false,
            ConnectionStatus::Paused | ConnectionStatus::NeedsReauth => true,
            ConnectionStatus::Deleted => return None,
        };
        Some(Self {
            tenant: row.tenant,
            connection: row.id,
            paused,
            sealed_credential: row
                .sealed_webhook_credential()
                .map(|(kind, sealed)| (kind, sealed.to_vec())),
        })
    }

    fn to_json(&self) -> String {
        self.to_json_with(None)
    }

    fn to_json_with(&self, account: Option<&str>) -> String {
        serde_json::to_string(&Published {
            account: account.map(str::to_string),
            tenant: self.tenant,
            paused: self.paused,
            secret: self
                .sealed_credential
                .as_ref()
                .map(|(_, s)| STANDARD.encode(s)),
            secret_kind: self
                .sealed_credential
                .as_ref()
                .map(|(kind, _)| kind.as_str().to_string()),
        })
        .unwrap_or_default()
    }

    fn from_published(connection: &str, value: &str) -> Option<Self> {
        let connection = connection.parse().ok()?;
        // Routes published before secrets and pausing were a bare tenant id.
        if let Ok(tenant) = value.parse() {
            return Some(Self {
                tenant,
                connection,
                paused: false,
                sealed_credential: None,
            });
        }
        let p: Published = serde_json::from_str(value).ok()?;
        Some(Self {
            tenant: p.tenant,
            connection,
            paused: p.paused,
            sealed_credential: p.secret.and_then(|s| {
                let kind = match p.secret_kind {
                    Some(kind) => kind.parse().ok()?,
                    None => WebhookCredentialKind::HmacSecret,
                };
                Some((kind, STANDARD.decode(s).ok()?))
            }),
        })
    }
}

/// Route lookups.
#[derive(Clone)]
pub enum Routes {
    /// Production: published routes in Redis.
    Redis {
        /// Connection.
        conn: redis::aio::ConnectionManager,
        /// Key prefix.
        namespace: String,
    },
    /// Embedded: the store itself.
    Store(Store),
}

impl Routes {
    /// The route of one connection of `provider` and its CRM account;
    /// `None` for a connection that does not exist or was deleted.
    pub async fn lookup_connection(
        &self,
        provider: &str,
        connection: ConnectionId,
    ) -> Result<Option<(String, Route)>, String> {
        match self {
            Routes::Redis { conn, namespace } => {
                let mut conn = conn.clone();
                let value: Option<String> = redis::cmd("HGET")
                    .arg(format!("{namespace}:connection-routes:{provider}"))
                    .arg(connection.to_string())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(value.and_then(|v| {
                    let account = serde_json::from_str::<Published>(&v).ok()?.account?;
                    Some((account, Route::from_published(&connection.to_string(), &v)?))
                }))
            }
            Routes::Store(store) => {
                let directory = store
                    .connection_directory()
                    .await
                    .map_err(|e| e.to_string())?;
                let Some((tenant, id)) = directory.into_iter().find(|(_, id)| *id == connection)
                else {
                    return Ok(None);
                };
                let row = store
                    .connection(tenant, id)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((row.provider.as_str() == provider)
                    .then(|| Route::of(&row).map(|r| (row.external_account_id.clone(), r)))
                    .flatten())
            }
        }
    }

    /// The routes (active and paused connections) of `account`.
    pub async fn lookup(&self, provider: &str, account: &str) -> Result<Vec<Route>, String> {
        let mut found = self.lookup_many(provider, &[account.to_string()]).await?;
        Ok(found.pop().unwrap_or_default())
    }

    /// The routes of each of `accounts`, in order, in one round trip (one
    /// Redis pipeline, or one pass over the store's connections): a delivery
    /// naming many accounts costs one lookup, not one per account.
    pub async fn lookup_many(
        &self,
        provider: &str,
        accounts: &[String],
    ) -> Result<Vec<Vec<Route>>, String> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Routes::Redis { conn, namespace } => {
                let mut pipe = redis::pipe();
                for account in accounts {
                    pipe.hgetall(format!("{namespace}:routes:{provider}:{account}"));
                }
                let mut conn = conn.clone();
                let maps: Vec<HashMap<String, String>> = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(maps
                    .iter()
                    .map(|map| {
                        map.iter()
                            .filter_map(|(c, v)| Route::from_published(c, v))
                            .collect()
                    })
                    .collect())
            }
            Routes::Store(store) => {
                let mut by_account: HashMap<String, Vec<Route>> = HashMap::new();
                for row in store.every_connection().await.map_err(|e| e.to_string())? {
                    if row.provider.as_str() == provider
                        && let Some(route) = Route::of(&row)
                    {
                        by_account
                            .entry(row.external_account_id.clone())
                            .or_default()
                            .push(route);
                    }
                }
                Ok(accounts
                    .iter()
                    .map(|a| by_account.remove(a).unwrap_or_default())
                    .collect())
            }
        }
    }
}

/// Publishes every connection's route to Redis, replacing each account's
/// previous set atomically. Returns how many routes were written.
pub async fn publish(
    store: &Store,
    conn: &redis::aio::ConnectionManager,
    namespace: &str,
) -> Result<usize, String> {
    let mut by_key: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut by_connection: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut stale = Vec::new();
    for row in store.every_connection().await.map_err(|e| e.to_string())? {
        let id = row.id;
        let key = format!(
            "{namespace}:routes:{}:{}",
            row.provider, row.external_account_id
        );
        match Route::of(&row) {
            Some(route) => {
                by_connection
                    .entry(format!("{namespace}:connection-routes:{}", row.provider))
                    .or_default()
                    .push((
                        id.to_string(),
                        route.to_json_with(Some(&row.external_account_id)),
                    ));
                by_key
                    .entry(key)
                    .or_default()
                    .push((id.to_string(), route.to_json()));
            }
            None => stale.push(key),
        }
    }
    // Every provider's per-connection hash is replaced whole, so a deleted
    // connection leaves it.
    for provider in crate::domain::ProviderKind::ALL {
        by_connection
            .entry(format!("{namespace}:connection-routes:{provider}"))
            .or_default();
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for key in stale.iter().filter(|k| !by_key.contains_key(*k)) {
        pipe.del(key).ignore();
    }
    let mut written = 0;
    for (key, entries) in &by_key {
        pipe.del(key).ignore();
        pipe.hset_multiple(key, entries).ignore();
        written += entries.len();
    }
    for (key, entries) in &by_connection {
        pipe.del(key).ignore();
        if !entries.is_empty() {
            pipe.hset_multiple(key, entries).ignore();
        }
    }
    let mut conn = conn.clone();
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(written)
}

/// The Redis hash remembering the events that occurred in one hour (since
/// the epoch), written by `ingress::intake`.
pub(crate) fn seen_bucket_key(namespace: &str, hour: i64) -> String {
    format!("{namespace}:webhook-seen:{hour}")
}

/// Event dedupe.
#[derive(Clone)]
pub enum Dedupe {
    /// Production: `SET NX EX` in Redis, shared by every ingress replica.
    Redis {
        /// Connection.
        conn: redis::aio::ConnectionManager,
        /// Key prefix.
        namespace: String,
    },
    /// Embedded: one process's memory.
    Memory(Arc<Mutex<HashMap<String, Instant>>>),
}

impl Dedupe {
    /// An empty in-memory dedupe.
    pub fn memory() -> Self {
        Dedupe::Memory(Arc::default())
    }

    /// Readiness: Redis answers.
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            Dedupe::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Dedupe::Memory(_) => Ok(()),
        }
    }
}
