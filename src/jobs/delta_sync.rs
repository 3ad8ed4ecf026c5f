//! `DeltaSync`: pulls records changed since the cursor (`SYNC_ALGORITHMS.md`
//! §1). The window starts `overlap` before the cursor (the search index shows
//! changes late) and ends `guard` before now; it is read ascending by modified
//! time, and each page commits with the cursor of its last record.
//!
//! A search query pages through at most `search_result_cap` results. Before
//! that, the window restarts at the last timestamp seen; if one timestamp
//! alone fills the cap, that instant is paged by id instead and the window
//! continues just after it. Nothing is skipped; re-read records are counted
//! unchanged and write nothing.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmId, CrmObject, Cursor, RunId, RunKind, RunStatus, TenantId};
use crate::providers::hubspot::ChangeQuery;
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
    /// The window's lower bound so far.
    pub since: DateTime<Utc>,
    /// The crowded instant being paged by id, and the last id read there.
    pub instant: Option<(DateTime<Utc>, CrmId)>,
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
    let account = connection.external_account_id.clone();
    let until = Utc::now() - seconds(sync.guard_secs);
    let (mut since, mut instant) = match start {
        Some(r) => (r.since, r.instant),
        None => (cursor.modified_at - seconds(sync.overlap_secs), None),
    };
    let window_start = since;
    let limit = sync.delta_page_size;
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
        page_number: None,
        next_page_token: None,
        finishes_run: false,
        queue_pushes: true,
        refused: Vec::new(),
        cursor,
    };
    // Where a follow-up resumes if the time budget runs out: just behind the
    // last page applied, so every job run makes progress.
    let mut resume = DeltaResume {
        object,
        since,
        instant: instant.clone(),
    };
    progress.resume = Some(resume.clone());
    'windows: while since <= until {
        let query = match &instant {
            Some((at, after_id)) => ChangeQuery::Instant {
                at: *at,
                after_id: after_id.clone(),
            },
            None => ChangeQuery::Window { since, until },
        };
        let mut offset: Option<String> = None;
        let mut seen: u32 = 0;
        loop {
            if std::time::Instant::now() >= deadline {
                return Ok(Progress::MoreToRead(resume));
            }
            let after = offset.clone();
            let page = crate::with_auth!(session, deps, |token| deps.hubspot.search_changes(
                &account,
                token,
                object,
                &query,
                after.as_deref(),
                limit
            ))?;
            seen += u32::try_from(page.scanned).unwrap_or(u32::MAX);
            // The feed's own position (a lead's, not its contact's time).
            let last = page.last_position.clone();
            let records = super::change_times::with_change_times(
                session,
                deps,
                (connection.tenant, connection.id),
                object,
                page.records,
            )
            .await?;
            let write = page_write(
                records,
                last.clone().map(|(modified_at, crm_id)| Cursor {
                    modified_at,
                    crm_id,
                }),
            );
            let outcome = super::change_times::apply_checked(session, deps, write).await?;
            crate::telemetry::record_page("delta_sync", outcome.as_ref().map(|o| o.counts));
            if let Some((last_at, last_id)) = &last {
                resume = match &query {
                    ChangeQuery::Instant { at, .. } => DeltaResume {
                        object,
                        since,
                        instant: Some((*at, last_id.clone())),
                    },
                    // Progress within one timestamp can only be kept by id.
                    ChangeQuery::Window { .. } if *last_at == since => DeltaResume {
                        object,
                        since,
                        instant: Some((since, CrmId("0".into()))),
                    },
                    ChangeQuery::Window { .. } => DeltaResume {
                        object,
                        since: *last_at,
                        instant: None,
                    },
                };
                progress.resume = Some(resume.clone());
                progress.pages_applied += 1;
            }
            let Some((last_at, last_id)) = last else {
                if let ChangeQuery::Instant { at, .. } = &query {
                    since = *at + chrono::Duration::milliseconds(1);
                    instant = None;
                    continue 'windows;
                }
                break 'windows;
            };
            match (&page.next, &query) {
                (None, ChangeQuery::Instant { at, .. }) => {
                    // The crowded instant is done; go on just after it.
                    since = *at + chrono::Duration::milliseconds(1);
                    instant = None;
                    continue 'windows;
                }
                (None, ChangeQuery::Window { .. }) => break 'windows,
                (Some(next), _) if seen + limit <= sync.search_result_cap => {
                    offset = Some(next.clone())
                }
                (Some(_), ChangeQuery::Instant { at, .. }) => {
                    instant = Some((*at, last_id));
                    continue 'windows;
                }
                (Some(_), ChangeQuery::Window { .. }) => {
                    if last_at == since {
                        // One timestamp fills the whole cap: page it by id,
                        // from the start (ties need not have come in id order).
                        instant = Some((last_at, CrmId("0".into())));
                    } else {
                        since = last_at;
                    }
                    continue 'windows;
                }
            }
        }
    }
    if object == CrmObject::Leads {
        leads_of_changed_contacts(deps, session, &page_write, window_start, until).await?;
    }
    // The whole window up to `until` has been read: the cursor may stand at
    // its end (records that show up late there are re-read by the overlap),
    // so the lag reported is the sync's real delay, not the age of the last
    // change.
    let end = page_write(
        Vec::new(),
        Some(Cursor {
            modified_at: until,
            crm_id: CrmId("0".into()),
        }),
    );
    super::change_times::apply_checked(session, deps, end).await?;
    Ok(Progress::Caught)
}

fn seconds(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// A HubSpot lead's person lives on its contact, and a contact's edit leaves
/// the lead's modified time alone, so the leads feed cannot show it: after
/// the feed, the contacts changed in the same window are searched and their
/// leads read again (with their contacts) and applied like any page — the
/// unchanged ones write nothing. A window with more changed contacts than
/// one search can page restarts at the last time seen.
async fn leads_of_changed_contacts(
    deps: &Deps,
    session: &mut Session,
    page_write: &impl Fn(Vec<crate::sync::Incoming>, Option<Cursor>) -> PageWrite,
    mut since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(), JobError> {
    let sync = &deps.settings.sync;
    let limit = sync.delta_page_size;
    let account = session.account().to_string();
    loop {
        let query = ChangeQuery::Window { since, until };
        let mut offset: Option<String> = None;
        let mut seen: u32 = 0;
        let mut last_at = None;
        loop {
            let after = offset.clone();
            let page = crate::with_auth!(session, deps, |token| deps.hubspot.search_changes(
                &account,
                token,
                CrmObject::Contacts,
                &query,
                after.as_deref(),
                limit
            ))?;
            seen += u32::try_from(page.scanned).unwrap_or(u32::MAX);
            let contacts: Vec<CrmId> = page.records.iter().map(|r| r.crm_id.clone()).collect();
            if !contacts.is_empty() {
                let records = crate::with_auth!(session, deps, |token| deps
                    .hubspot
                    .read_leads_of_contacts(&account, token, &contacts, false, None))?;
                let mut write = page_write(Vec::new(), None);
                write.items = super::change_times::with_change_times(
                    session,
                    deps,
                    (write.tenant, write.connection),
                    CrmObject::Leads,
                    records,
                )
                .await?;
                let outcome = super::change_times::apply_checked(session, deps, write).await?;
                crate::telemetry::record_page("delta_sync", outcome.as_ref().map(|o| o.counts));
            }
            last_at = page.last_position.map(|(at, _)| at).or(last_at);
            match page.next {
                None => return Ok(()),
                Some(next) if seen + limit <= sync.search_result_cap => offset = Some(next),
                Some(_) => break,
            }
        }
        match last_at {
            Some(at) if at > since => since = at,
            _ => {
                tracing::warn!(%since, "more changed contacts at one instant than a search can page: run `crmsync sync CONNECTION --full` to bring their leads");
                return Ok(());
            }
        }
    }
}
