//! `FullSync`: one page per job run, then the next page is enqueued, so no
//! job runs long and a killed one re-runs within the orphan window.
//!
//! Exactly-once effect: the run row counts the pages applied (`pages_done`).
//! Page `p` commits only while `pages_done = p` (in the same transaction as
//! its records), so a re-run of a committed page writes nothing; it only makes
//! sure page `p + 1` is queued (idempotency key `full_sync:{run}:{p+1}`), which
//! heals a crash between the commit and the enqueue.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmObject, RunId, RunKind, RunStatus, TenantId};
use crate::store::PageWrite;
use serde::{Deserialize, Serialize};

/// One page of a full sync of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullSyncJob {
    /// Owner.
    pub tenant: TenantId,
    /// Connection.
    pub connection: ConnectionId,
    /// CRM object.
    pub object: CrmObject,
    /// The run this page belongs to.
    pub run: RunId,
    /// Page number, from 0.
    pub page: i64,
    /// Retry number of this page (0 on the first try).
    #[serde(default)]
    pub attempt: u32,
    /// Times this page waited for the rate budget (not attempts).
    #[serde(default)]
    pub deferrals: u32,
    /// Times `RetryFailed` re-drove this job's chain of failures (carried by
    /// retries and follow-ups; at most `sync.retry_failed_max_redrives`).
    #[serde(default)]
    pub redrives: u32,
}

impl FullSyncJob {
    /// The key that makes enqueueing the same page twice a no-op.
    pub fn idempotency_key(&self) -> String {
        if self.deferrals == 0 {
            format!("full_sync:{}:{}:{}", self.run, self.page, self.attempt)
        } else {
            format!(
                "full_sync:{}:{}:{}:{}",
                self.run, self.page, self.attempt, self.deferrals
            )
        }
    }

    /// The job for the page after this one.
    pub fn next_page(&self) -> Self {
        Self {
            page: self.page + 1,
            attempt: 0,
            deferrals: 0,
            ..self.clone()
        }
    }
}

/// Runs one page.
pub async fn run(job: &FullSyncJob, deps: &Deps) -> Result<(), JobError> {
    let run = deps.store.run(job.tenant, job.run).await?;
    if run.status != RunStatus::Running {
        return Ok(());
    }
    if run.pages_done > job.page {
        // Committed by an earlier attempt: make sure the chain goes on.
        if run.pages_done == job.page + 1 {
            deps.queue.push_full_sync(&job.next_page()).await?;
        }
        return Ok(());
    }
    if run.pages_done < job.page {
        return Err(JobError::Transient {
            message: format!(
                "page {} of run {} is not committed yet",
                job.page - 1,
                job.run
            ),
            retry_after: None,
        });
    }
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let Some(kind) = connection.settings.kind_of(job.object) else {
        return Err(JobError::Permanent(format!(
            "connection {} does not sync {}",
            job.connection, job.object
        )));
    };
    let strategy = connection.settings.strategy;
    let provider = connection.provider;
    let mut session = Session::open(deps, connection).await?;
    let page_size = deps.settings.sync.full_page_size;
    let after = run.page_token.clone();
    // Pages take only free budget slots: webhook follow-ups and pushes first.
    session.in_background();
    let page = session
        .list_page(deps, job.object, after.as_deref(), page_size)
        .await?;
    let finishes = page.next.is_none();
    let records = super::change_times::with_change_times(
        &mut session,
        deps,
        (job.tenant, job.connection),
        job.object,
        page.records,
    )
    .await?;
    let write = PageWrite {
        tenant: job.tenant,
        connection: job.connection,
        provider,
        object: job.object,
        kind,
        strategy,
        items: records,
        run: job.run,
        page_number: Some(job.page),
        next_page_token: page.next,
        finishes_run: finishes,
        queue_pushes: true,
        refused: Vec::new(),
        cursor: None,
    };
    let outcome = super::change_times::apply_checked(&mut session, deps, write).await?;
    crate::telemetry::record_page("full_sync", outcome.as_ref().map(|o| o.counts));
    if outcome.as_ref().is_some_and(|o| o.pushes > 0) {
        deps.queue
            .request_push(job.tenant, job.connection, "full-sync")
            .await?;
    }
    if outcome.is_some() && !finishes {
        deps.queue.push_full_sync(&job.next_page()).await?;
    }
    if finishes && outcome.is_some() {
        tracing::info!(connection.id = %job.connection, run.id = %job.run, object = %job.object, "full sync finished");
    }
    Ok(())
}

/// Marks the run failed once retries are exhausted or the error is final.
pub async fn give_up(job: &FullSyncJob, deps: &Deps, error: &JobError) -> Result<(), JobError> {
    deps.store
        .finish_run(
            job.tenant,
            job.run,
            RunStatus::Failed,
            Some(&error.to_string()),
        )
        .await?;
    Ok(())
}

/// Starts a full sync of every synced object of a connection (or joins the
/// one already running) and enqueues the page each run is at: idempotent,
/// so asking twice never runs two full syncs of one object.
pub async fn start(
    store: &crate::store::Store,
    queue: &crate::queue::Queue,
    tenant: TenantId,
    connection: ConnectionId,
) -> Result<Vec<crate::store::RunRow>, JobError> {
    start_redriven(store, queue, tenant, connection, 0).await
}

/// [`start`] for `RetryFailed`: the pages carry the chain's re-drive count.
pub async fn start_redriven(
    store: &crate::store::Store,
    queue: &crate::queue::Queue,
    tenant: TenantId,
    connection: ConnectionId,
    redrives: u32,
) -> Result<Vec<crate::store::RunRow>, JobError> {
    let row = store.connection(tenant, connection).await?;
    let mut runs = Vec::new();
    for mapping in &row.settings.objects {
        let object = mapping.crm_object;
        let run = match store
            .running_run(tenant, connection, object, RunKind::FullSync)
            .await?
        {
            Some(run) => run,
            None => {
                store
                    .start_run(tenant, connection, object, RunKind::FullSync)
                    .await?
            }
        };
        let job = FullSyncJob {
            tenant,
            connection,
            object,
            run: run.id,
            page: run.pages_done,
            attempt: 0,
            deferrals: 0,
            redrives,
        };
        queue
            .push_full_sync(&job)
            .await
            .map_err(|e| JobError::Transient {
                message: e.to_string(),
                retry_after: None,
            })?;
        runs.push(run);
    }
    Ok(runs)
}
