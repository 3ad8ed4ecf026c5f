//! `FullSync`: a run lists its object in partitions (id ranges where the CRM
//! can filter by id, else the whole list), each a chain of one page per job
//! run, so several pages are in flight at once — a CRM answers a list call
//! in 150–400 ms, and one page at a time would leave most of the budget
//! unused — while no job runs long and a killed one re-runs within the
//! orphan window.
//!
//! The first job of a run (no partition) plans: it asks the provider how to
//! split, stores the plan once (`store::partitions`), and enqueues each
//! partition's next page; asked again (a restart, a re-drive) it only
//! enqueues them again, which heals any chain a crash cut.
//!
//! Exactly-once effect: each partition counts the pages applied. Page `p`
//! of a partition commits only while it has done `p` pages (in the same
//! transaction as its records), so a re-run of a committed page writes
//! nothing; it only makes sure page `p + 1` is queued (idempotency key
//! `full_sync:{run}:p{partition}:{p+1}`), which heals a crash between the
//! commit and the enqueue. The run succeeds with its last partition.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmObject, RunId, RunKind, RunStatus, TenantId};
use crate::store::{FullSyncPage, PageWrite, PartitionRow};
use serde::{Deserialize, Serialize};

/// One page of a full sync of one object (or, without a partition, the
/// run's plan).
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
    /// The partition this page is of; `None`: plan the run's partitions
    /// (or find its plan) and enqueue each one's next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Page number within the partition, from 0 (a plan job: the run's
    /// pages so far, which only keeps its idempotency key fresh).
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
        let page = match self.partition {
            Some(partition) => format!("p{partition}:{}", self.page),
            None => self.page.to_string(),
        };
        if self.deferrals == 0 {
            format!("full_sync:{}:{page}:{}", self.run, self.attempt)
        } else {
            format!(
                "full_sync:{}:{page}:{}:{}",
                self.run, self.attempt, self.deferrals
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

    /// The job for the next page of `partition`.
    fn page_of(&self, partition: &PartitionRow) -> Self {
        Self {
            partition: Some(partition.number),
            page: partition.pages_done,
            attempt: 0,
            deferrals: 0,
            ..self.clone()
        }
    }
}

/// Runs one page, or plans the run.
pub async fn run(job: &FullSyncJob, deps: &Deps) -> Result<(), JobError> {
    let run = deps.store.run(job.tenant, job.run).await?;
    if run.status != RunStatus::Running {
        return Ok(());
    }
    let Some(number) = job.partition else {
        return plan(job, deps, run.pages_done).await;
    };
    let Some(partition) = deps
        .store
        .run_partition(job.tenant, job.run, number)
        .await?
    else {
        return Err(JobError::Permanent(format!(
            "run {} has no partition {number}",
            job.run
        )));
    };
    if partition.finished || partition.pages_done > job.page {
        // Committed by an earlier attempt: make sure the chain goes on.
        if !partition.finished && partition.pages_done == job.page + 1 {
            deps.queue.push_full_sync(&job.next_page()).await?;
        }
        return Ok(());
    }
    if partition.pages_done < job.page {
        return Err(JobError::Transient {
            message: format!(
                "page {} of partition {number} of run {} is not committed yet",
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
    // Pages take only free budget slots: webhook follow-ups and pushes first.
    session.in_background();
    let page = session
        .partition_page(
            deps,
            job.object,
            &partition.partition,
            partition.page_token.as_deref(),
            deps.settings.sync.full_page_size,
        )
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
        full_sync_page: Some(FullSyncPage {
            partition: number,
            number: job.page,
            next_token: page.next,
            finishes_partition: finishes,
        }),
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
    if outcome.as_ref().is_some_and(|o| o.finished_run) {
        tracing::info!(connection.id = %job.connection, run.id = %job.run, object = %job.object, "full sync finished");
    }
    Ok(())
}

/// Plans the run's partitions (once: a plan already stored is kept) and
/// enqueues the next page of each unfinished one.
async fn plan(job: &FullSyncJob, deps: &Deps, pages_done: i64) -> Result<(), JobError> {
    let mut partitions = deps.store.run_partitions(job.tenant, job.run).await?;
    if partitions.is_empty() {
        let planned = if pages_done > 0 {
            // A run that paged before partitions existed goes on from its
            // own token (the store makes it one whole-list partition).
            Vec::new()
        } else {
            let connection = deps.store.connection(job.tenant, job.connection).await?;
            let mut session = Session::open(deps, connection).await?;
            session.in_background();
            let sync = &deps.settings.sync;
            session
                .partitions(
                    deps,
                    job.object,
                    sync.full_sync_partitions,
                    sync.full_page_size,
                )
                .await?
        };
        partitions = deps
            .store
            .plan_partitions(job.tenant, job.run, &planned)
            .await?;
        if !partitions.is_empty() {
            tracing::info!(run.id = %job.run, object = %job.object, partitions = partitions.len(), "full sync planned");
        }
    }
    for partition in partitions.iter().filter(|p| !p.finished) {
        deps.queue.push_full_sync(&job.page_of(partition)).await?;
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
/// one already running) and enqueues the pages each run is at: idempotent,
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
        // The plan job: it enqueues each partition's next page.
        let job = FullSyncJob {
            tenant,
            connection,
            object,
            run: run.id,
            partition: None,
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
