//! Records waiting to be read after a webhook, per connection and object:
//! what lets one `ProcessWebhook` job read the changes of many deliveries in
//! one batch call, so webhook follow-ups cost the CRM's rate budget per
//! *batch*, not per delivery.
//!
//! Ingress adds each changed record to a Redis sorted set with a fresh,
//! increasing score (in its one intake script, `ingress::intake`). A job
//! claims its own records that are still waiting plus the oldest others, up
//! to a batch; after applying them it removes each one only if its score is
//! still the one it saw — a change that arrived meanwhile keeps the record
//! waiting for the next job. A job whose records are all gone has nothing to
//! do: another job read them *after* their events (the score proves it). A
//! crash between the read and the removal only means a second read.
//!
//! One job waiting is enough: the intake script marks "a job is waiting"
//! and only a delivery that sets the mark enqueues a job (or one that also
//! carries deletions, merges, erasures or echoes, which the set does not
//! hold). A job clears the mark when it starts, *before* it claims, so every
//! record marked waiting is either claimed by a job already started or
//! covered by one enqueued after the clear. A job that leaves records
//! waiting (more than a batch) enqueues its successor the same way.
//!
//! The embedded mode (SQLite queue) has no such set: each job reads its own.

use super::{Queue, QueueError, Storages};
use crate::domain::{ConnectionId, CrmId, CrmObject};
use std::collections::HashMap;
use std::time::Duration;

/// Waiting records are forgotten after this long (a deleted connection's).
pub(crate) const TTL: Duration = Duration::from_secs(78 * 3600);

/// How long "a job is waiting" is trusted: a job lost with its marker kept
/// delays the next delivery's job by at most this (the next delta heals
/// sooner at the default interval).
pub(crate) const JOB_WAITING_TTL: Duration = Duration::from_secs(30);

const RELEASE: &str = r"
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return redis.call('ZCARD', KEYS[1])";

/// The sorted set of records waiting to be read.
pub(crate) fn pending_key(namespace: &str, connection: ConnectionId, object: CrmObject) -> String {
    format!("{namespace}:webhook-pending:{connection}:{object}")
}

/// The counter that gives each delivery's marks a fresh score.
pub(crate) fn sequence_key(namespace: &str) -> String {
    format!("{namespace}:webhook-pending-seq")
}

/// Set while a `ProcessWebhook` job for the connection and object is queued
/// and not started: a delivery that only adds waiting records then needs no
/// job of its own, because that one will claim them.
pub(crate) fn job_waiting_key(
    namespace: &str,
    connection: ConnectionId,
    object: CrmObject,
) -> String {
    format!("{namespace}:webhook-job-waiting:{connection}:{object}")
}

/// What a job took: the records to read, with the scores it saw.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// Records to read, its own first.
    pub ids: Vec<CrmId>,
    scores: Vec<(CrmId, String)>,
}

impl Queue {
    fn pending_key(&self, connection: ConnectionId, object: CrmObject) -> String {
        pending_key(&self.settings.namespace, connection, object)
    }

    /// A `ProcessWebhook` job starting says no job is waiting any more, so
    /// that deliveries from now on enqueue one. It must do so before it
    /// claims: what arrived earlier is in the set when it claims.
    pub async fn webhook_job_started(
        &self,
        connection: ConnectionId,
        object: CrmObject,
    ) -> Result<(), QueueError> {
        let Storages::Redis { conn } = &self.storages else {
            return Ok(());
        };
        let mut conn = conn.clone();
        redis::cmd("DEL")
            .arg(job_waiting_key(
                &self.settings.namespace,
                connection,
                object,
            ))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| QueueError::Redis(e.to_string()))
    }

    /// Marks a job as waiting unless one already is: `true` means the caller
    /// must enqueue it. Without the set (embedded mode) always `true`.
    pub async fn mark_webhook_job_waiting(
        &self,
        connection: ConnectionId,
        object: CrmObject,
    ) -> Result<bool, QueueError> {
        let Storages::Redis { conn } = &self.storages else {
            return Ok(true);
        };
        let mut conn = conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(job_waiting_key(
                &self.settings.namespace,
                connection,
                object,
            ))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(JOB_WAITING_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(|e| QueueError::Redis(e.to_string()))?;
        Ok(set.is_some())
    }

    /// Forgets a waiting mark whose job could not be enqueued, so the next
    /// delivery enqueues one (best effort: the mark expires anyway).
    pub async fn clear_webhook_job_waiting(&self, connection: ConnectionId, object: CrmObject) {
        if self.webhook_job_started(connection, object).await.is_err() {
            tracing::warn!(connection.id = %connection, "webhook job mark not cleared; it expires");
        }
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

    /// Marks records waiting to be read, as a delivery would (a replayed
    /// parked record): the `ProcessWebhook` job queued next reads them.
    pub async fn mark_pending(
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
        let redis_error = |e: redis::RedisError| QueueError::Redis(e.to_string());
        let score: i64 = redis::cmd("INCR")
            .arg(sequence_key(&self.settings.namespace))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let key = self.pending_key(connection, object);
        let mut add = redis::cmd("ZADD");
        add.arg(&key);
        for id in ids {
            add.arg(score).arg(id.as_str());
        }
        let mut pipe = redis::pipe();
        pipe.add_command(add)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(TTL.as_secs())
            .ignore();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Releases a claim after its records were applied: each leaves the set
    /// unless a newer change re-marked it meanwhile. Answers how many
    /// records still wait (0 without the set).
    pub async fn release_pending(
        &self,
        connection: ConnectionId,
        object: CrmObject,
        claim: &Claim,
    ) -> Result<u64, QueueError> {
        let Storages::Redis { conn } = &self.storages else {
            return Ok(0);
        };
        if claim.scores.is_empty() {
            return Ok(0);
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
            .query_async::<u64>(&mut conn)
            .await
            .map_err(|e| QueueError::Redis(e.to_string()))
    }
}
