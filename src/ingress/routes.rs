//! Where ingress finds, without the database, which connections a CRM account
//! belongs to, and whether it has seen an event before.
//!
//! Redis keys (under the queue namespace):
//! - `{ns}:routes:{provider}:{account}` — hash `connection id → tenant id`,
//!   rebuilt by [`publish`] (the CLI on connect, the scheduler every minute:
//!   Redis may lose it, the database is the truth);
//! - `{ns}:webhook-seen:{dedupe key}` — `SET NX` with a 78-hour TTL (HubSpot
//!   retries for up to 24 hours; the design asks for at least 76).
//!
//! The embedded mode (`crmsync dev`, SQLite) reads routes from the store and
//! keeps dedupe keys in memory: it is one process.

use crate::domain::{ConnectionId, ConnectionStatus, TenantId};
use crate::store::Store;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an event's dedupe key is remembered.
pub const DEDUPE_TTL: Duration = Duration::from_secs(78 * 3600);

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
    /// The (tenant, connection) pairs of active connections to `account`.
    pub async fn lookup(
        &self,
        provider: &str,
        account: u64,
    ) -> Result<Vec<(TenantId, ConnectionId)>, String> {
        match self {
            Routes::Redis { conn, namespace } => {
                let mut conn = conn.clone();
                let map: HashMap<String, String> = conn
                    .hgetall(format!("{namespace}:routes:{provider}:{account}"))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(map
                    .into_iter()
                    .filter_map(|(c, t)| Some((t.parse().ok()?, c.parse().ok()?)))
                    .collect())
            }
            Routes::Store(store) => {
                let mut out = Vec::new();
                for (tenant, id) in store
                    .connection_directory()
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let row = store
                        .connection(tenant, id)
                        .await
                        .map_err(|e| e.to_string())?;
                    if row.provider.as_str() == provider
                        && row.external_account_id == account.to_string()
                        && row.status == ConnectionStatus::Active
                    {
                        out.push((tenant, id));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Publishes every active connection's route to Redis, replacing each
/// account's previous set atomically. Returns how many routes were written.
pub async fn publish(
    store: &Store,
    conn: &redis::aio::ConnectionManager,
    namespace: &str,
) -> Result<usize, String> {
    let mut by_key: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut stale = Vec::new();
    for (tenant, id) in store
        .connection_directory()
        .await
        .map_err(|e| e.to_string())?
    {
        let row = store
            .connection(tenant, id)
            .await
            .map_err(|e| e.to_string())?;
        let key = format!(
            "{namespace}:routes:{}:{}",
            row.provider, row.external_account_id
        );
        if row.status == ConnectionStatus::Active {
            by_key
                .entry(key)
                .or_default()
                .push((id.to_string(), tenant.to_string()));
        } else {
            stale.push(key);
        }
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
    let mut conn = conn.clone();
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(written)
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

    /// Whether `key` is seen for the first time (and remembers it).
    pub async fn first_time(&self, key: &str) -> Result<bool, String> {
        match self {
            Dedupe::Redis { conn, namespace } => {
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(format!("{namespace}:webhook-seen:{key}"))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(DEDUPE_TTL.as_secs())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(set.is_some())
            }
            Dedupe::Memory(seen) => {
                let mut seen = seen
                    .lock()
                    .map_err(|_| "dedupe lock poisoned".to_string())?;
                let now = Instant::now();
                if seen.len() > 100_000 {
                    seen.retain(|_, at| now.duration_since(*at) < DEDUPE_TTL);
                }
                Ok(seen.insert(key.to_string(), now).is_none())
            }
        }
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
