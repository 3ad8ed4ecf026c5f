//! Finished jobs leave their payload and metadata in the queue (apalis keeps
//! them for inspection), so a busy fleet's Redis would grow without end.
//! The `cleanup_logs` job purges those finished before the
//! retention, in small batches: a scan of the done and dead sets with a
//! cursor, and one short script per batch — never one call over the whole
//! queue (apalis's own `vacuum` reads every payload in one script, which
//! would block Redis for seconds on a large queue).

use super::{Queue, QueueError, Storages};
use crate::jobs::JobKind;
use std::time::Duration;

/// Jobs looked at per batch.
const BATCH: usize = 500;

/// Deletes the finished jobs of one batch whose `done_at` (epoch seconds)
/// is at or before the cutoff: payload, result, metadata and set entry.
const PURGE: &str = r"
local cutoff = tonumber(ARGV[1])
local purged = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local meta = KEYS[3] .. ':' .. id
  local done_at = tonumber(redis.call('HGET', meta, 'done_at'))
  if done_at == nil or done_at <= cutoff then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3] .. ':result', id)
    redis.call('DEL', meta)
    redis.call('SREM', KEYS[1], id)
    purged = purged + 1
  end
end
return purged";

impl Queue {
    /// Purges the jobs of every kind that finished (done or given up)
    /// more than `retention` ago; returns how many.
    pub async fn purge_finished(&self, retention: Duration) -> Result<u64, QueueError> {
        let cutoff =
            chrono::Utc::now().timestamp() - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let mut purged = 0;
        for kind in JobKind::ALL {
            purged += match &self.storages {
                Storages::Redis { conn } => {
                    let config = self.settings.redis_config(*kind, 1);
                    let mut conn = conn.clone();
                    let mut total = 0;
                    for set in [config.done_jobs_set(), config.dead_jobs_set()] {
                        total += purge_set(
                            &mut conn,
                            &set,
                            &config.job_data_hash(),
                            &config.job_meta_hash(),
                            cutoff,
                        )
                        .await?;
                    }
                    total
                }
                Storages::Sqlite { pool } => {
                    purge_sqlite(pool, &self.settings.queue_name(*kind), cutoff).await?
                }
            };
        }
        Ok(purged)
    }
}

async fn purge_set(
    conn: &mut apalis_redis::ConnectionManager,
    set: &str,
    data: &str,
    meta: &str,
    cutoff: i64,
) -> Result<u64, QueueError> {
    let script = redis::Script::new(PURGE);
    let redis_error = |e: redis::RedisError| QueueError::Redis(e.to_string());
    let mut cursor: u64 = 0;
    let mut purged = 0;
    loop {
        let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(set)
            .arg(cursor)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        if !ids.is_empty() {
            let mut invocation = script.key(set);
            invocation.key(data).key(meta).arg(cutoff);
            for id in &ids {
                invocation.arg(id);
            }
            let n: u64 = invocation.invoke_async(conn).await.map_err(redis_error)?;
            purged += n;
        }
        if next == 0 {
            return Ok(purged);
        }
        cursor = next;
    }
}

async fn purge_sqlite(
    pool: &sqlx::SqlitePool,
    queue: &str,
    cutoff: i64,
) -> Result<u64, QueueError> {
    let mut purged = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM Jobs WHERE rowid IN (
               SELECT rowid FROM Jobs WHERE job_type = ?1
                 AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))
                 AND done_at IS NOT NULL AND done_at <= ?2 LIMIT ?3)",
        )
        .bind(queue)
        .bind(cutoff)
        .bind(BATCH as i64)
        .execute(pool)
        .await
        .map_err(|e| QueueError::Sqlite(e.to_string()))?
        .rows_affected();
        purged += deleted;
        if deleted < BATCH as u64 {
            return Ok(purged);
        }
    }
}
