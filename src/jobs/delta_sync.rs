//! `DeltaSync`: pulls records changed since the cursor (`SYNC_ALGORITHMS.md`
//! §1). The window starts `overlap` before the cursor (a CRM's change feed
//! may show changes late) and ends `guard` before now; the provider's change
//! feed reads it page by page (how — a capped search narrowed by time and
//! id, a modified-since query, a delta token — is the adapter's), and each
//! page commits with the cursor of its last record. Re-read records are
//! counted unchanged and write nothing.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmId, CrmObject, Cursor, RunId, RunKind, RunStatus, TenantId};
use crate::providers::{FeedLimits, FeedPosition, FeedRead};
use crate::store::{ConnectionRow, PageWrite};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A delta sync of one connection (all its objects, or one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaSyncJob {
    /// Owner.
    pub tenant: TenantId,
    /// Connection.
    pub connection: ConnectionId,
    /// One object, or every synced object when `None`.
    pub object: Option<CrmObject>,
    /// What enqueued it (a scheduler tick, a CLI request): the idempotency key.
    pub trigger: String,
    /// Retry number (0 on the first try).
    #[serde(default)]
    pub attempt: u32,
    /// Where an earlier run of this delta stopped at its time budget; the
    /// follow-up resumes the same window there instead of re-reading the
    /// overlap from the cursor (which could never finish a huge window).
    #[serde(default)]
    pub resume: Option<DeltaResume>,
    /// Times `RetryFailed` re-drove this job's chain of failures (carried by
    /// retries and follow-ups; at most `sync.retry_failed_max_redrives`).
    #[serde(default)]
    pub redrives: u32,
}

/// A window position to resume at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaResume {
    /// The object being read.
    pub object: CrmObject,
    /// Where its change feed stands (the adapter's, opaque here; for
    /// HubSpot `since` and `instant`, beside `object` in the job's JSON).
    #[serde(flatten)]
    pub position: FeedPosition,
}

impl DeltaSyncJob {
    /// The key that makes enqueueing the same trigger twice a no-op.
    pub fn idempotency_key(&self) -> String {
        format!(
            "delta_sync:{}:{}:{}",
            self.connection, self.trigger, self.attempt
        )
    }
}

/// Where one job run stopped.
enum Progress {
    Caught,
    MoreToRead(DeltaResume),
}

/// What one delta job run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaOutcome {
    /// The runs it recorded (one per object read).
    pub runs: Vec<RunId>,
    /// Set when it stopped at its time budget with more to read: the caller
    /// enqueues [`DeltaSyncJob::follow_up`] with it.
    pub resume: Option<DeltaResume>,
}

impl DeltaOutcome {
    /// Whether the delta read everything up to now.
    pub fn caught_up(&self) -> bool {
        self.resume.is_none()
    }
}

impl DeltaSyncJob {
    /// The job that continues where this one stopped (that object only).
    pub fn follow_up(&self, resume: DeltaResume) -> Self {
        Self {
            object: Some(resume.object),
            trigger: format!("{}+{}", self.trigger, uuid::Uuid::now_v7()),
            attempt: 0,
            resume: Some(resume),
            ..self.clone()
        }
    }
}

/// What a delta attempt has done so far, kept by the caller so that it
/// survives an error or the job timeout dropping the attempt: a retry resumes
/// where the attempt stopped, and a run the attempt left open gets closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaProgress {
    /// Where the window stands after the last page applied.
    pub resume: Option<DeltaResume>,
    /// A run started and not yet finished.
    pub open_run: Option<RunId>,
    /// Pages applied by this attempt (progress, even if it then failed).
    pub pages_applied: u32,
}

/// Runs a delta sync within half the job timeout (so a huge backlog never
/// holds a worker slot past it), recording its progress in `progress`.
pub async fn run(
    job: &DeltaSyncJob,
    deps: &Deps,
    progress: &mut DeltaProgress,
) -> Result<DeltaOutcome, JobError> {
    let budget = std::time::Duration::from_secs(deps.settings.worker.job_timeout_secs) / 2;
    let deadline = std::time::Instant::now() + budget;
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let objects: Vec<CrmObject> = match job.object {
        Some(o) => vec![o],
        None => connection
            .settings
            .objects
            .iter()
            .map(|m| m.crm_object)
            .collect(),
    };
    let mut session = Session::open(deps, connection).await?;
    progress.resume = job.resume.clone();
    let mut runs = Vec::new();
    let mut resume_at = None;
    for object in objects {
        let Some(cursor) = deps
            .store
            .cursor(job.tenant, job.connection, object)
            .await?
        else {
            tracing::info!(connection.id = %job.connection, %object, "no cursor yet: waiting for the first full sync");
            continue;
        };
        let idle_since = Utc::now()
            - chrono::Duration::from_std(deps.settings.orphan_window()).unwrap_or_default();
        deps.store
            .close_abandoned_runs(
                job.tenant,
                job.connection,
                object,
                RunKind::DeltaSync,
                idle_since,
            )
            .await?;
        let run = deps
            .store
            .start_run(job.tenant, job.connection, object, RunKind::DeltaSync)
            .await?;
        runs.push(run.id);
        progress.open_run = Some(run.id);
        let pulled = pull(
            deps,
            &mut session,
            object,
            run.id,
            cursor,
            deadline,
            progress,
        )
        .await;
        match pulled {
            Ok(done) => {
                deps.store
                    .finish_run(job.tenant, run.id, RunStatus::Succeeded, None)
                    .await?;
                progress.open_run = None;
                if let Progress::MoreToRead(resume) = done {
                    // Resume this object first; any later objects follow then.
                    resume_at = Some(resume);
                    break;
                }
            }
            Err(e) => {
                deps.store
                    .finish_run(job.tenant, run.id, RunStatus::Failed, Some(&e.to_string()))
                    .await?;
                progress.open_run = None;
                return Err(e);
            }
        }
    }
    Ok(DeltaOutcome {
        runs,
        resume: resume_at,
    })
}

async fn pull(
    deps: &Deps,
    session: &mut Session,
    object: CrmObject,
    run: RunId,
    cursor: Cursor,
    deadline: std::time::Instant,
    progress: &mut DeltaProgress,
) -> Result<Progress, JobError> {
    // A retry or follow-up resumes where its predecessor stopped.
    let start = progress.resume.clone().filter(|r| r.object == object);
    let sync = &deps.settings.sync;
    let connection: ConnectionRow = session.connection.clone();
    let Some(kind) = connection.settings.kind_of(object) else {
        return Err(JobError::Permanent(format!(
            "connection {} does not sync {object}",
            connection.id
        )));
    };
    let until = Utc::now() - seconds(sync.guard_secs);
    let window_start = cursor.modified_at - seconds(sync.overlap_secs);
    // A retry resumes its window; a new delta starts where the feed's own
    // position stands, or (a feed read by time) `overlap` before the cursor.
    let position = match (start, cursor.position) {
        (Some(r), _) => r.position,
        (None, Some(position)) => position,
        (None, None) => session.provider().feed_since(window_start),
    };
    let limits = FeedLimits {
        page_size: sync.delta_page_size,
        result_cap: sync.search_result_cap,
        until,
    };
    // Every write of this pull: the page's records and the cursor after them.
    let page_write = |items: Vec<crate::sync::Incoming>, cursor: Option<Cursor>| PageWrite {
        tenant: connection.tenant,
        connection: connection.id,
        provider: connection.provider,
        object,
        kind,
        strategy: connection.settings.strategy,
        items,
        run,
        full_sync_page: None,
        queue_pushes: true,
        refused: Vec::new(),
        cursor,
    };
    // Where a follow-up resumes if the time budget runs out: just behind the
    // last page applied, so every job run makes progress.
    let mut resume = DeltaResume {
        object,
        position: position.clone(),
    };
    progress.resume = Some(resume.clone());
    let mut read = session
        .provider()
        .open_feed(&position, until)
        .map_err(JobError::from)?;
    while let Some(at) = read {
        if std::time::Instant::now() >= deadline {
            return Ok(Progress::MoreToRead(resume));
        }
        let page = session.change_page(deps, object, &at, limits).await?;
        let records = super::change_times::with_change_times(
            session,
            deps,
            (connection.tenant, connection.id),
            object,
            page.records,
        )
        .await?;
        let outcome =
            super::change_times::apply_checked(session, deps, page_write(records, page.cursor))
                .await?;
        crate::telemetry::record_page("delta_sync", outcome.as_ref().map(|o| o.counts));
        if let Some(position) = page.resume {
            resume = DeltaResume { object, position };
            progress.resume = Some(resume.clone());
            progress.pages_applied += 1;
        }
        read = page.next;
    }
    if let Some(persons) = session.provider().capabilities().person_of(object) {
        leads_of_changed_persons(deps, session, persons, &page_write, window_start, limits).await?;
    }
    // The whole window up to `until` has been read: the cursor may stand at
    // its end (records that show up late there are re-read by the overlap),
    // so the lag reported is the sync's real delay, not the age of the last
    // change.
    let end = page_write(Vec::new(), Some(Cursor::at(until, CrmId("0".into()))));
    super::change_times::apply_checked(session, deps, end).await?;
    Ok(Progress::Caught)
}

fn seconds(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// A lead whose person lives on another object (HubSpot Leads → Contacts)
/// does not change its modified time when its person is edited, so the
/// leads feed cannot show that edit: after the feed, the persons changed in
/// the same window are read through their own feed and their leads read
/// again (with their persons) and applied like any page — the unchanged
/// ones write nothing. No cursor moves: the window is the leads'.
async fn leads_of_changed_persons(
    deps: &Deps,
    session: &mut Session,
    persons: CrmObject,
    page_write: &impl Fn(Vec<crate::sync::Incoming>, Option<Cursor>) -> PageWrite,
    since: DateTime<Utc>,
    limits: FeedLimits,
) -> Result<(), JobError> {
    let position = session.provider().feed_since(since);
    let mut read: Option<FeedRead> = session
        .provider()
        .open_feed(&position, limits.until)
        .map_err(JobError::from)?;
    while let Some(at) = read {
        let page = session.change_page(deps, persons, &at, limits).await?;
        let changed: Vec<CrmId> = page.records.iter().map(|r| r.crm_id.clone()).collect();
        if !changed.is_empty() {
            let records = session
                .read_leads_of_persons(deps, &changed, false, None)
                .await?;
            let mut write = page_write(Vec::new(), None);
            write.items = super::change_times::with_change_times(
                session,
                deps,
                (write.tenant, write.connection),
                write.object,
                records,
            )
            .await?;
            let outcome = super::change_times::apply_checked(session, deps, write).await?;
            crate::telemetry::record_page("delta_sync", outcome.as_ref().map(|o| o.counts));
        }
        read = page.next;
    }
    Ok(())
}
