//! Records waiting to be read after a webhook, per connection and object:
//! what lets one `ProcessWebhook` job read the changes of many deliveries in
//! one batch call, so webhook follow-ups cost the CRM's rate budget per
//! *batch*, not per delivery.
//!
//! Ingress adds each changed record to a Redis sorted set with a fresh,
//! increasing score (one script call per connection and object). A job
//! claims its own records that are still waiting plus the oldest others, up
//! to a batch; after applying them it removes each one only if its score is
//! still the one it saw — a change that arrived meanwhile keeps the record
//! waiting for the next job. A job whose records are all gone has nothing to
//! do: another job read them *after* their events (the score proves it). A
//! crash between the read and the removal only means a second read.
//!
//! The embedded mode (SQLite queue) has no such set: each job reads its own.

use super::{Queue, QueueError, Storages};
use crate::domain::{ConnectionId, CrmId, CrmObject};
use std::collections::HashMap;
use std::time::Duration;

/// Waiting records are forgotten after this long (a deleted connection's).
const TTL: Duration = Duration::from_secs(78 * 3600);

const ADD: &str = r"
local score = redis.call('INCR', KEYS[2])
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], score, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], tonumber(KEYS[3]))
return score";

const RELEASE: &str = r"
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed";

/// What a job took: the records to read, with the scores it saw.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// Records to read, its own first.
    pub ids: Vec<CrmId>,
    scores: Vec<(CrmId, String)>,
}

impl Queue {
    fn pending_key(&self, connection: ConnectionId, object: CrmObject) -> String {
        format!(
            "{}:webhook-pending:{connection}:{object}",
            self.settings.namespace
        )
    }

    /// Marks records as waiting to be read (ingress, before it enqueues the
    /// job that names them).
    pub async fn add_pending(
        &self,
        connection: ConnectionId,
        object: CrmObject,
        ids: &[CrmId],
    ) -> Result<(), QueueError> {
        let Storages::Redis { conn } = &self.storages else {
            return Ok(());
        };
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = conn.clone();
        let mut script = redis::cmd("EVAL");
        script
            .arg(ADD)
            .arg(3)
            .arg(self.pending_key(connection, object))
            .arg(format!("{}:webhook-pending-seq", self.settings.namespace))
            .arg(TTL.as_secs());
        for id in ids {
            script.arg(id.as_str());
        }
        script
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| QueueError::Redis(e.to_string()))
    }

    /// Claims `own` records still waiting (those gone were read since their
    /// events) and the oldest other waiting ones, up to `cap` in all. Without
    /// the set (embedded mode), the claim is `own`.
    pub async fn claim_pending(
        &self,
        connection: ConnectionId,
        object: CrmObject,
        own: &[CrmId],
        cap: usize,
    ) -> Result<Claim, QueueError> {
        let Storages::Redis { conn } = &self.storages else {
            return Ok(Claim {
                ids: own.to_vec(),
                scores: Vec::new(),
            });
        };
        let key = self.pending_key(connection, object);
        let mut conn = conn.clone();
        let redis_error = |e: redis::RedisError| QueueError::Redis(e.to_string());
        let mut scores: Vec<(CrmId, String)> = Vec::new();
        if !own.is_empty() {
            let mut cmd = redis::cmd("ZMSCORE");
            cmd.arg(&key);
            for id in own {
                cmd.arg(id.as_str());
            }
            let found: Vec<Option<String>> =
                cmd.query_async(&mut conn).await.map_err(redis_error)?;
            for (id, score) in own.iter().zip(found) {
                if let Some(score) = score
                    && scores.len() < cap
                {
                    scores.push((id.clone(), score));
                }
            }
        }
        if scores.len() < cap {
            let oldest: Vec<(String, String)> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(cap as i64 - 1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let taken: HashMap<String, ()> = scores
                .iter()
                .map(|(id, _)| (id.as_str().to_string(), ()))
                .collect();
            for (id, score) in oldest {
                if scores.len() >= cap {
                    break;
                }
                if !taken.contains_key(&id) {
                    scores.push((CrmId(id), score));
                }
            }
        }
        Ok(Claim {
            ids: scores.iter().map(|(id, _)| id.clone()).collect(),
            scores,
        })
    }

    /// Releases a claim after its records were applied: each leaves the set
    /// unless a newer change re-marked it meanwhile.
    pub async fn release_pending(
        &self,
        connection: ConnectionId,
        object: CrmObject,
        claim: &Claim,
    ) -> Result<(), QueueError> {
        let Storages::Redis { conn } = &self.storages else {
            return Ok(());
        };
        if claim.scores.is_empty() {
            return Ok(());
        }
        let mut conn = conn.clone();
        let mut script = redis::cmd("EVAL");
        script
            .arg(RELEASE)
            .arg(1)
            .arg(self.pending_key(connection, object));
        for (id, score) in &claim.scores {
            script.arg(id.as_str()).arg(score);
        }
        script
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| QueueError::Redis(e.to_string()))
    }
}
