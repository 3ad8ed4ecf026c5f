//! Replaying a dead letter: its job queued again as a fresh first attempt
//! (a new idempotency key, `attempt` 0). A full-sync page is not replayed on
//! its failed run: the connection's full sync starts again (or joins the one
//! running), which is idempotent and resumes nothing stale.

use super::{DeltaSyncJob, JobError, ProcessWebhookJob, PushChangesJob};
use crate::queue::Queue;
use crate::store::{DeadLetter, Store};
use std::time::Duration;

/// Queues the dead letter's job again.
pub async fn replay(store: &Store, queue: &Queue, dead: &DeadLetter) -> Result<(), JobError> {
    let again = format!("replay-{}", uuid::Uuid::now_v7());
    let malformed = |e: serde_json::Error| {
        JobError::Permanent(format!(
            "dead letter {} holds no {} job: {e}",
            dead.id, dead.job_kind
        ))
    };
    match dead.job_kind.as_str() {
        "full_sync" => {
            let job: super::FullSyncJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            super::full_sync::start(store, queue, job.tenant, job.connection).await?;
        }
        "delta_sync" => {
            let job: DeltaSyncJob = serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = DeltaSyncJob {
                trigger: format!("{}+{again}", job.trigger),
                attempt: 0,
                ..job
            };
            queue.push_delta_sync(&job).await?;
        }
        "process_webhook" => {
            let job: ProcessWebhookJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = ProcessWebhookJob {
                delivery: format!("{}+{again}", job.delivery),
                attempt: 0,
                ..job
            };
            queue
                .push_process_webhook_after(&job, Duration::ZERO)
                .await?;
        }
        "push_changes" => {
            let job: PushChangesJob =
                serde_json::from_value(dead.job.clone()).map_err(malformed)?;
            let job = PushChangesJob {
                trigger: format!("{}+{again}", job.trigger),
                attempt: 0,
                ..job
            };
            queue.push_push_changes_after(&job, Duration::ZERO).await?;
        }
        other => {
            return Err(JobError::Permanent(format!(
                "dead letter {} is of an unknown job kind {other}",
                dead.id
            )));
        }
    }
    Ok(())
}
