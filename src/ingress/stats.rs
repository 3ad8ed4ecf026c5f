//! Per-connection webhook stats for operators: events received, duplicates
//! dropped, deliveries rejected (bad signature), events dropped while the
//! connection was paused, and when the last one arrived.
//!
//! Production keeps them in a Redis hash per connection
//! (`{ns}:webhook-stats:{connection}`), written by every ingress replica and
//! read by the api; the embedded mode keeps them in the one process's memory.

use crate::domain::ConnectionId;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The counts of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCounts {
    /// Events accepted and enqueued.
    pub received: u64,
    /// Events dropped as already seen.
    pub duplicates: u64,
    /// Deliveries refused (signature, timestamp window).
    pub rejected: u64,
    /// Events dropped because the connection is paused.
    pub dropped_paused: u64,
    /// When the last event arrived (epoch ms), if ever.
    pub last_received_at_ms: Option<i64>,
}

impl WebhookCounts {
    fn add(&mut self, d: &WebhookCounts) {
        self.received += d.received;
        self.duplicates += d.duplicates;
        self.rejected += d.rejected;
        self.dropped_paused += d.dropped_paused;
        if d.last_received_at_ms.is_some() {
            self.last_received_at_ms = d.last_received_at_ms;
        }
    }
}

/// Where the stats live.
#[derive(Clone)]
pub enum WebhookStats {
    /// Shared by every replica.
    Redis {
        /// Connection.
        conn: redis::aio::ConnectionManager,
        /// Key prefix.
        namespace: String,
    },
    /// One process (embedded mode).
    Memory(Arc<Mutex<HashMap<ConnectionId, WebhookCounts>>>),
}

/// The Redis hash of one connection's counts (also written by the intake
/// script, `ingress::intake`).
pub(crate) fn redis_key(namespace: &str, connection: ConnectionId) -> String {
    format!("{namespace}:webhook-stats:{connection}")
}

type Shared = Arc<Mutex<HashMap<ConnectionId, WebhookCounts>>>;

impl WebhookStats {
    /// The process's in-memory stats: ingress and api of `crmsync dev` share
    /// them because they share the process.
    pub fn memory() -> Self {
        static SHARED: OnceLock<Shared> = OnceLock::new();
        WebhookStats::Memory(SHARED.get_or_init(Shared::default).clone())
    }

    /// Adds one delivery's counts for each connection; a failure to count is
    /// logged, never fatal (the events are already enqueued).
    pub async fn add(&self, deltas: &HashMap<ConnectionId, WebhookCounts>) {
        if deltas.is_empty() {
            return;
        }
        match self {
            WebhookStats::Redis { conn, namespace } => {
                let mut pipe = redis::pipe();
                for (connection, d) in deltas {
                    let key = redis_key(namespace, *connection);
                    for (field, n) in [
                        ("received", d.received),
                        ("duplicates", d.duplicates),
                        ("rejected", d.rejected),
                        ("dropped_paused", d.dropped_paused),
                    ] {
                        if n > 0 {
                            pipe.hincr(&key, field, n).ignore();
                        }
                    }
                    if let Some(at) = d.last_received_at_ms {
                        pipe.hset(&key, "last_received_at_ms", at).ignore();
                    }
                }
                let mut conn = conn.clone();
                if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                    tracing::warn!(error = %e, "webhook stats not counted");
                }
            }
            WebhookStats::Memory(map) => {
                if let Ok(mut map) = map.lock() {
                    for (connection, d) in deltas {
                        map.entry(*connection).or_default().add(d);
                    }
                }
            }
        }
    }

    /// One connection's counts (zeros when nothing arrived yet).
    pub async fn get(&self, connection: ConnectionId) -> Result<WebhookCounts, String> {
        match self {
            WebhookStats::Redis { conn, namespace } => {
                let mut conn = conn.clone();
                let map: HashMap<String, i64> = redis::cmd("HGETALL")
                    .arg(redis_key(namespace, connection))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let n = |k: &str| map.get(k).map_or(0, |v| u64::try_from(*v).unwrap_or(0));
                Ok(WebhookCounts {
                    received: n("received"),
                    duplicates: n("duplicates"),
                    rejected: n("rejected"),
                    dropped_paused: n("dropped_paused"),
                    last_received_at_ms: map.get("last_received_at_ms").copied(),
                })
            }
            WebhookStats::Memory(map) => Ok(map
                .lock()
                .map_err(|_| "stats lock poisoned".to_string())?
                .get(&connection)
                .copied()
                .unwrap_or_default()),
        }
    }
}
