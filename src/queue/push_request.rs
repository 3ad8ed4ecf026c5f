//! "A push is on its way": every committed outbox row is covered by a push
//! job that starts after the commit.
//!
//! A writer commits its outbox row, then calls [`Queue::request_push`]. That
//! sets the connection's *push-waiting* mark unless it is set, and only the
//! caller that set it enqueues a job (so a burst of writes shares one job).
//! A push job clears the mark as soon as it holds the connection's push
//! lease, before it reads the outbox. Hence, for any committed row:
//! - the writer set the mark: it enqueued a job, which reads the outbox
//!   after the row committed (a job that finds the lease held is deferred,
//!   not dropped, and reads it later);
//! - the mark was set already: it was set by an earlier writer whose job
//!   has not cleared it yet, so that job's reads come after this row's
//!   commit.
//!
//! The window-keyed job this replaces (one idempotency key per 100 ms) lost
//! rows: apalis schedules in whole seconds, so a window's job often ran
//! before its window closed, and a write later in the same window was
//! dropped as a duplicate of a job that had already read the outbox.
//!
//! The mark expires after [`PUSH_WAITING_TTL`], so a job lost to a crash
//! between setting the mark and enqueueing costs at most that long before
//! the next write enqueues again (and the delta's outbox sweep catches the
//! rest). An expired mark only ever means one job more.

use super::{Queue, QueueError, Storages};
use crate::domain::{ConnectionId, TenantId};
use crate::jobs::PushChangesJob;
use std::time::{Duration, Instant};

/// How long a push-waiting mark lives without its job starting.
pub const PUSH_WAITING_TTL: Duration = Duration::from_secs(2);

fn push_waiting_key(namespace: &str, connection: ConnectionId) -> String {
    format!("{namespace}:push-waiting:{connection}")
}

impl Queue {
    /// Makes sure a push job of `connection` starts after this call: call it
    /// after the transaction that queued outbox rows has committed. `why`
    /// names the cause in the job's trigger (`api`, `webhook`, `rest`, …).
    pub async fn request_push(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        why: &str,
    ) -> Result<(), QueueError> {
        if !self.set_push_waiting(connection).await? {
            return Ok(());
        }
        let job = PushChangesJob {
            tenant,
            connection,
            trigger: format!("{why}-{}", uuid::Uuid::now_v7().simple()),
            attempt: 0,
            redrives: 0,
        };
        if let Err(e) = self.push_push_changes_after(&job, Duration::ZERO).await {
            // No job carries the mark: let the next writer enqueue one.
            let _ = self.push_job_started(connection).await;
            return Err(e);
        }
        Ok(())
    }

    /// Clears the push-waiting mark: a push job calls it once it holds the
    /// connection's push lease and before it reads the outbox.
    pub async fn push_job_started(&self, connection: ConnectionId) -> Result<(), QueueError> {
        let key = push_waiting_key(&self.settings.namespace, connection);
        match &self.storages {
            Storages::Redis { conn } => {
                let mut conn = conn.clone();
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| QueueError::Redis(e.to_string()))?;
            }
            Storages::Sqlite { .. } => {
                self.local_marks()?.remove(&key);
            }
        }
        Ok(())
    }

    /// Sets the mark unless set; whether this call set it.
    async fn set_push_waiting(&self, connection: ConnectionId) -> Result<bool, QueueError> {
        let key = push_waiting_key(&self.settings.namespace, connection);
        match &self.storages {
            Storages::Redis { conn } => {
                let mut conn = conn.clone();
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(PUSH_WAITING_TTL.as_millis()).unwrap_or(u64::MAX))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| QueueError::Redis(e.to_string()))?;
                Ok(set.is_some())
            }
            // The embedded mode is one process: its marks live in memory.
            Storages::Sqlite { .. } => {
                let mut marks = self.local_marks()?;
                let now = Instant::now();
                if marks.get(&key).is_some_and(|until| *until > now) {
                    return Ok(false);
                }
                marks.insert(key, now + PUSH_WAITING_TTL);
                Ok(true)
            }
        }
    }

    fn local_marks(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>>, QueueError>
    {
        self.local_marks
            .lock()
            .map_err(|_| QueueError::Sqlite("push marks poisoned".into()))
    }
}
