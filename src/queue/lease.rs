//! Fleet-wide leases: one holder at a time for work that must not run twice
//! at once, such as refreshing a connection's OAuth token (HubSpot may
//! rotate the refresh token, and 50 jobs refreshing together would make 50
//! calls). In Redis a lease is `SET NX PX` with a random token, released
//! only by its holder (compare and delete), and it expires by itself if the
//! holder dies. In the embedded mode one process holds them in memory.

use super::{Queue, QueueError, Storages};
use std::time::{Duration, Instant};

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A held lease; give it back with [`Queue::release`].
#[derive(Debug)]
pub struct Lease {
    key: String,
    token: String,
}

impl Queue {
    fn lease_key(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.settings.namespace)
    }

    /// Takes the lease `name` for at most `ttl`, unless someone holds it.
    pub async fn try_lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, QueueError> {
        let key = self.lease_key(name);
        let token = uuid::Uuid::new_v4().simple().to_string();
        match &self.storages {
            Storages::Redis { conn } => {
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| QueueError::Redis(e.to_string()))?;
                Ok(set.map(|_| Lease { key, token }))
            }
            Storages::Sqlite { .. } => {
                let mut leases = self
                    .local_leases
                    .lock()
                    .map_err(|_| QueueError::Sqlite("lease table poisoned".into()))?;
                let now = Instant::now();
                leases.retain(|_, (_, until)| *until > now);
                if leases.contains_key(&key) {
                    return Ok(None);
                }
                leases.insert(key.clone(), (token.clone(), now + ttl));
                Ok(Some(Lease { key, token }))
            }
        }
    }

    /// Gives a lease back (if it expired and someone else took it, theirs
    /// stays). Best effort: an unreleased lease expires.
    pub async fn release(&self, lease: Lease) {
        match &self.storages {
            Storages::Redis { conn } => {
                let mut conn = conn.clone();
                let released: Result<i64, _> = redis::Script::new(RELEASE)
                    .key(&lease.key)
                    .arg(&lease.token)
                    .invoke_async(&mut conn)
                    .await;
                if let Err(e) = released {
                    tracing::warn!(lease = %lease.key, error = %e, "lease not released; it expires");
                }
            }
            Storages::Sqlite { .. } => {
                if let Ok(mut leases) = self.local_leases.lock()
                    && leases
                        .get(&lease.key)
                        .is_some_and(|(t, _)| *t == lease.token)
                {
                    leases.remove(&lease.key);
                }
            }
        }
    }
}
