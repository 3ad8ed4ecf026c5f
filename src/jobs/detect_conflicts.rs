//! `detect_conflicts`: the periodic anti-entropy sweep of one connection,
//! one job per active connection per `sync.detect_conflicts_interval_secs`,
//! so one slow CRM does not hold up the others. Each run is recorded as a
//! `detect_conflicts` sync run with counts `checked`, `drifted`,
//! `repaired` and `conflicts`. The sweep itself is [`sweep`].

use super::Session;
use super::periodic;
use super::{Deps, JobError};
use crate::domain::{ConnectionId, ConnectionStatus, RunKind, RunStatus, TenantId};
use crate::domain::{CrmId, CrmObject, RunId};
use crate::store::{PageOutcome, PageWrite, RunCounts, SweepCheckpoint};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Sweeps one connection for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectConflictsJob {
    /// Owner.
    pub tenant: TenantId,
    /// The connection swept.
    pub connection: ConnectionId,
    /// Start of the period (Unix seconds) it was scheduled for: its key.
    pub period_start: i64,
    /// Attempts made before this one.
    pub attempt: u32,
    /// Set for a deferral or a replay, so its key is new.
    #[serde(default)]
    pub rerun: Option<String>,
    /// Times `retry_failed` has re-driven this job's chain of failures.
    #[serde(default)]
    pub redrives: u32,
    /// A follow-up of a sweep that stopped at its deadline: it continues
    /// the passes in progress and starts none (a finished object waits for
    /// the next period instead of being swept again at once).
    #[serde(default)]
    pub continues: bool,
}

impl DetectConflictsJob {
    /// The scheduler's job for this connection and period.
    pub fn new(tenant: TenantId, connection: ConnectionId, period_start: i64) -> Self {
        Self {
            tenant,
            connection,
            period_start,
            attempt: 0,
            rerun: None,
            redrives: 0,
            continues: false,
        }
    }

    /// The job that continues a sweep this one cut short at its deadline.
    /// Its key carries a fresh `continue-…` rerun token, so it can never be
    /// taken for the period's own job (`detect_conflicts:{c}:{period}`)
    /// nor for another follow-up.
    pub fn follow_up(&self) -> Self {
        Self {
            attempt: 0,
            rerun: Some(periodic::rerun_token("continue")),
            continues: true,
            ..self.clone()
        }
    }
}

/// What one sweep found, reported as the run's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepCounts {
    /// CRM records read and compared with their link's base and platform
    /// record.
    pub checked: i64,
    /// Records whose CRM state differed from what the link had agreed: the
    /// merge updated or created a platform record, queued a push, held a
    /// conflict, or a held conflict was settled.
    pub drifted: i64,
    /// Drifted records brought back in line (all but the held conflicts).
    pub repaired: i64,
    /// Conflicting fields held for a decision (`manual`).
    pub conflicts: i64,
}

impl SweepCounts {
    /// The counts by name, as the run shows them.
    pub fn counts(&self) -> RunCounts {
        [
            ("checked", self.checked),
            ("drifted", self.drifted),
            ("repaired", self.repaired),
            ("conflicts", self.conflicts),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The anti-entropy sweep of one connection within half the job timeout
/// (like a delta: a huge CRM never holds a worker past it); what is left
/// continues in a follow-up job from the checkpoint.
pub async fn sweep(job: &DetectConflictsJob, deps: &Deps) -> Result<SweepCounts, JobError> {
    let budget = Duration::from_secs(deps.settings.worker.job_timeout_secs) / 2;
    sweep_until(job, deps, Instant::now() + budget).await
}

/// [`sweep`] stopping at `deadline` (tests pass a past one to cut a sweep
/// after one page per object). Every object's pass reads at least one page
/// per job, so a sweep always progresses; when one stops with pages left,
/// the follow-up job is enqueued here.
pub async fn sweep_until(
    job: &DetectConflictsJob,
    deps: &Deps,
    deadline: Instant,
) -> Result<SweepCounts, JobError> {
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    let objects: Vec<CrmObject> = connection
        .settings
        .objects
        .iter()
        .map(|m| m.crm_object)
        .collect();
    // The period's job starts a pass of every object up front (or finds
    // the one in progress), so a follow-up continues each of them.
    let mut passes = Vec::new();
    for object in objects {
        let checkpoint = deps
            .store
            .sweep_checkpoint(job.tenant, job.connection, object, !job.continues)
            .await?;
        if let Some(checkpoint) = checkpoint {
            passes.push((object, checkpoint));
        }
    }
    let mut session = Session::open(deps, connection).await?;
    let mut found = SweepCounts::default();
    let mut unfinished = false;
    for (object, checkpoint) in passes {
        match sweep_object(
            job,
            deps,
            &mut session,
            object,
            checkpoint,
            deadline,
            &mut found,
        )
        .await?
        {
            Pass::Finished | Pass::TakenOver => {}
            Pass::Stopped => unfinished = true,
        }
    }
    if unfinished {
        deps.queue
            .push_periodic_after(&job.follow_up(), Duration::ZERO)
            .await?;
    }
    Ok(found)
}

/// How one object's pass ended in this job.
enum Pass {
    /// Every page read; unseen links tombstoned; the checkpoint closed.
    Finished,
    /// At the deadline with pages left: a follow-up continues.
    Stopped,
    /// Another job moved the checkpoint: it carries the pass on.
    TakenOver,
}

async fn sweep_object(
    job: &DetectConflictsJob,
    deps: &Deps,
    session: &mut Session,
    object: CrmObject,
    mut checkpoint: SweepCheckpoint,
    deadline: Instant,
    found: &mut SweepCounts,
) -> Result<Pass, JobError> {
    let connection = session.connection.clone();
    let Some(kind) = connection.settings.kind_of(object) else {
        return Err(JobError::Permanent(format!(
            "connection {} does not sync {object}",
            connection.id
        )));
    };
    let page_size = deps.settings.sync.full_page_size;
    let share = deps.settings.sync.detect_conflicts_budget_share;
    // Free slots only: webhook follow-ups, pushes and deltas go first.
    session.in_background();
    let requests = session.provider().list_page_requests(object, page_size);
    loop {
        // On top of background priority, the sweep's own pace: at most
        // `share` of the account's rate, whatever else is idle.
        session.pace_share(share, requests).await?;
        let after = checkpoint.page_token.clone();
        let page = session
            .list_page(deps, object, after.as_deref(), page_size)
            .await?;
        // Every record listed counts as seen, mapped or not (a lead without
        // a live contact is still there).
        let seen: Vec<CrmId> = page.listed;
        let records = super::change_times::with_change_times(
            session,
            deps,
            (job.tenant, job.connection),
            object,
            page.records,
        )
        .await?;
        let write = PageWrite {
            tenant: job.tenant,
            connection: job.connection,
            provider: connection.provider,
            object,
            kind,
            strategy: connection.settings.strategy,
            items: records,
            // The sweep's counts are its own (the periodic run records
            // them); a run id no row has makes the page add to none.
            run: RunId::new(),
            full_sync_page: None,
            queue_pushes: true,
            refused: Vec::new(),
            cursor: None,
        };
        // What the CRM holds, for the conflicts the merge leaves open.
        let read = write.items.clone();
        let outcome = super::change_times::apply_checked(session, deps, write).await?;
        crate::telemetry::record_page("detect_conflicts", outcome.as_ref().map(|o| o.counts));
        // A CRM state applied before that the platform has come to agree
        // with is skipped as unchanged by the merge, which then never gets
        // to close the conflict it held: close it here.
        let settled = deps
            .store
            .settle_agreed_conflicts(job.tenant, job.connection, object, &read)
            .await?;
        let page_counts = page_counts(page.scanned, outcome.as_ref(), settled);
        found.add(page_counts);
        if page_counts.repaired > 0 {
            metrics::counter!("crmsync_drift_repaired_total", "provider" => connection.provider.as_str(), "object" => object.as_str())
                .increment(page_counts.repaired.unsigned_abs());
        }
        if outcome.as_ref().is_some_and(|o| o.pushes > 0) {
            deps.queue
                .request_push(job.tenant, job.connection, "sweep")
                .await?;
        }
        let moved = deps
            .store
            .advance_sweep(
                job.tenant,
                job.connection,
                object,
                &checkpoint,
                &seen,
                page.next.as_deref(),
            )
            .await?;
        if !moved {
            return Ok(Pass::TakenOver);
        }
        checkpoint.page_token = page.next;
        if checkpoint.page_token.is_none() {
            // A complete pass: a link it did not see lost its CRM record
            // with no event (only now can that be concluded).
            let gone = deps
                .store
                .unswept_links(job.tenant, job.connection, object, &checkpoint)
                .await?;
            if !gone.is_empty() {
                tracing::info!(connection.id = %job.connection, %object, links = gone.len(), "sweep tombstones links whose CRM record is gone");
                deps.store
                    .tombstone_links(job.tenant, job.connection, object, &gone)
                    .await?;
            }
            deps.store
                .finish_sweep_pass(job.tenant, job.connection, object, &checkpoint)
                .await?;
            return Ok(Pass::Finished);
        }
        if Instant::now() >= deadline {
            return Ok(Pass::Stopped);
        }
    }
}

/// One page's share of the counts. The store reports per page, not per
/// record: a record both updated and pushed is in both figures, so the sum
/// may overcount; `drifted` is capped at the records read and `repaired` at
/// `drifted`.
fn page_counts(read: usize, outcome: Option<&PageOutcome>, settled: i64) -> SweepCounts {
    let checked = i64::try_from(read).unwrap_or(i64::MAX);
    let Some(o) = outcome else {
        return SweepCounts {
            checked,
            ..SweepCounts::default()
        };
    };
    let changed = o.counts.created + o.counts.updated;
    let drifted = (changed + o.pushes + o.conflicts + settled).min(checked);
    let repaired = (changed + o.pushes + settled).min(drifted);
    SweepCounts {
        checked,
        drifted,
        repaired,
        conflicts: o.conflicts,
    }
}

impl SweepCounts {
    fn add(&mut self, other: SweepCounts) {
        self.checked += other.checked;
        self.drifted += other.drifted;
        self.repaired += other.repaired;
        self.conflicts += other.conflicts;
    }
}

super::periodic::periodic_job!(DetectConflictsJob, DetectConflicts, per_connection, run);

/// Sweeps the connection if it is active and records the run: `succeeded`
/// with the sweep's counts, or `failed` with its error (each attempt is a
/// run, as for deltas; a deferral for the rate budget records none).
pub async fn run(job: &DetectConflictsJob, deps: &Deps) -> Result<(), JobError> {
    let connection = deps.store.connection(job.tenant, job.connection).await?;
    if connection.status != ConnectionStatus::Active {
        return Ok(());
    }
    let started = Utc::now();
    let result = sweep(job, deps).await;
    let (status, error, counts) = match &result {
        Ok(found) => (RunStatus::Succeeded, None, found.counts()),
        Err(JobError::Deferred { .. }) => return result.map(|_| ()),
        Err(e) => (
            RunStatus::Failed,
            Some(e.to_string()),
            SweepCounts::default().counts(),
        ),
    };
    deps.store
        .record_periodic_run(
            job.tenant,
            job.connection,
            RunKind::DetectConflicts,
            started,
            status,
            error.as_deref(),
            &counts,
        )
        .await?;
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunUpdate;

    fn outcome(created: i64, updated: i64, pushes: i64, conflicts: i64) -> PageOutcome {
        PageOutcome {
            counts: RunUpdate {
                created,
                updated,
                ..RunUpdate::default()
            },
            pushes,
            conflicts,
            ..PageOutcome::default()
        }
    }

    #[test]
    fn a_page_with_nothing_changed_checked_its_records_and_found_no_drift() {
        let found = page_counts(100, Some(&outcome(0, 0, 0, 0)), 0);
        assert_eq!(
            found,
            SweepCounts {
                checked: 100,
                ..SweepCounts::default()
            }
        );
        // A page another attempt had applied already counts as read only.
        assert_eq!(page_counts(3, None, 0).drifted, 0);
    }

    #[test]
    fn drift_is_what_the_merge_changed_pushed_or_held_and_never_more_than_was_read() {
        let found = page_counts(10, Some(&outcome(1, 2, 1, 1)), 1);
        assert_eq!(
            found,
            SweepCounts {
                checked: 10,
                drifted: 6,
                repaired: 5,
                conflicts: 1,
            }
        );
        // A record updated and pushed counts in both: capped at the page.
        let capped = page_counts(2, Some(&outcome(0, 2, 2, 0)), 0);
        assert_eq!((capped.drifted, capped.repaired), (2, 2));
    }
}
