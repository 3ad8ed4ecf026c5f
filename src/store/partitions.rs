//! A full sync's partitions (`sync_run_partitions`): each one a chain of
//! pages with its own token and page count, so several pages of one run are
//! in flight at once and each resumes alone after a kill. A page commits only
//! while its partition has done exactly that many pages (in the page's own
//! transaction, `records::apply_page`); the run succeeds with its last
//! partition.

use super::{Store, StoreError, Tx, on_db};
use crate::domain::{CrmId, Partition, RunId, TenantId};
use chrono::Utc;

/// One partition of a full-sync run, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    /// Its number within the run, from 0.
    pub number: i32,
    /// Which records it lists.
    pub partition: Partition,
    /// The provider's token for its next page.
    pub page_token: Option<String>,
    /// Its pages applied so far.
    pub pages_done: i64,
    /// Whether its last page is applied.
    pub finished: bool,
}

type Row = (
    i32,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    bool,
);

fn from_row(
    (number, by_ids, after, through, page_token, pages_done, finished): Row,
) -> PartitionRow {
    PartitionRow {
        number,
        partition: if by_ids {
            Partition::Ids {
                after: after.map(CrmId),
                through: through.map(CrmId),
            }
        } else {
            Partition::Whole
        },
        page_token,
        pages_done,
        finished,
    }
}

impl Store {
    /// The partitions of a run, by number (none before it is planned).
    pub async fn run_partitions(
        &self,
        tenant: TenantId,
        run: RunId,
    ) -> Result<Vec<PartitionRow>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows = partitions_of(&mut tx, tenant, run, None).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// One partition of a run (what a page job needs; not the whole plan).
    pub async fn run_partition(
        &self,
        tenant: TenantId,
        run: RunId,
        number: i32,
    ) -> Result<Option<PartitionRow>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let row = partitions_of(&mut tx, tenant, run, Some(number)).await?;
        tx.commit().await?;
        Ok(row.into_iter().next())
    }

    /// Plans a running run's partitions unless it has some: `planned`, or —
    /// for a run that paged before partitions existed — one whole-list
    /// partition that goes on from the run's own token and count. Returns
    /// the run's partitions either way (a concurrent planner's if it won),
    /// or none if the run is no longer running.
    pub async fn plan_partitions(
        &self,
        tenant: TenantId,
        run: RunId,
        planned: &[Partition],
    ) -> Result<Vec<PartitionRow>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        // Lock the run: two planners of one run take turns, the second
        // finds the first's plan.
        let claimed: Option<(Option<String>, i64)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
                "UPDATE sync_runs SET updated_at = $1 WHERE tenant_id = $2 AND id = $3 AND status = 'running'
                 RETURNING page_token, pages_done",
            )
            .bind(Utc::now())
            .bind(tenant.0)
            .bind(run.0)
            .fetch_optional(c)
            .await
        })?;
        let Some((run_token, run_pages)) = claimed else {
            tx.commit().await?;
            return Ok(Vec::new());
        };
        let existing = partitions_of(&mut tx, tenant, run, None).await?;
        if !existing.is_empty() {
            tx.commit().await?;
            return Ok(existing);
        }
        let legacy = [Partition::Whole];
        let (planned, token, pages) = if run_pages > 0 {
            (&legacy[..], run_token, run_pages)
        } else {
            (planned, None, 0)
        };
        let now = Utc::now();
        for (number, partition) in planned.iter().enumerate() {
            let (by_ids, after, through) = match partition {
                Partition::Whole => (false, None, None),
                Partition::Ids { after, through } => (
                    true,
                    after.as_ref().map(CrmId::as_str),
                    through.as_ref().map(CrmId::as_str),
                ),
            };
            let number = i32::try_from(number).unwrap_or(i32::MAX);
            on_db!(&mut tx, |c| {
                sqlx::query(
                    "INSERT INTO sync_run_partitions (tenant_id, run_id, partition, by_ids, ids_after, ids_through, page_token, pages_done, finished, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, FALSE, $9)",
                )
                .bind(tenant.0)
                .bind(run.0)
                .bind(number)
                .bind(by_ids)
                .bind(after)
                .bind(through)
                .bind(token.as_deref())
                .bind(pages)
                .bind(now)
                .execute(c)
                .await
                .map(|_| ())
            })?;
        }
        let rows = partitions_of(&mut tx, tenant, run, None).await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// A run's partitions by number, or only `number`.
async fn partitions_of(
    tx: &mut Tx,
    tenant: TenantId,
    run: RunId,
    number: Option<i32>,
) -> Result<Vec<PartitionRow>, StoreError> {
    let rows: Vec<Row> = on_db!(tx, |c| {
        sqlx::query_as(
            "SELECT partition, by_ids, ids_after, ids_through, page_token, pages_done, finished
               FROM sync_run_partitions
              WHERE tenant_id = $1 AND run_id = $2 AND ($3 IS NULL OR partition = $3)
              ORDER BY partition",
        )
        .bind(tenant.0)
        .bind(run.0)
        .bind(number)
        .fetch_all(c)
        .await
    })?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Claims page `number` of `partition` for the transaction: `false` when
/// the partition has moved past it (another attempt of the same job
/// committed it) or is finished. The caller holds the run's row lock.
pub(super) async fn claim_page(
    tx: &mut Tx,
    tenant: TenantId,
    run: RunId,
    partition: i32,
    number: i64,
) -> Result<bool, StoreError> {
    let claimed: Option<(i32,)> = on_db!(tx, |c| {
        sqlx::query_as(
            "UPDATE sync_run_partitions SET updated_at = $1
              WHERE tenant_id = $2 AND run_id = $3 AND partition = $4 AND pages_done = $5 AND NOT finished
              RETURNING partition",
        )
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(run.0)
        .bind(partition)
        .bind(number)
        .fetch_optional(c)
        .await
    })?;
    Ok(claimed.is_some())
}

/// Records a committed page of `partition`: its next token, one more page,
/// finished with its last. Returns whether every partition of the run is
/// now finished (the run is done). The caller holds the run's row lock, so
/// of two partitions finishing at once the second sees the first.
pub(super) async fn page_done(
    tx: &mut Tx,
    tenant: TenantId,
    run: RunId,
    partition: i32,
    next_token: Option<&str>,
    finishes: bool,
) -> Result<bool, StoreError> {
    on_db!(tx, |c| {
        sqlx::query(
            "UPDATE sync_run_partitions SET page_token = $1, pages_done = pages_done + 1, finished = $2, updated_at = $3
              WHERE tenant_id = $4 AND run_id = $5 AND partition = $6",
        )
        .bind(next_token)
        .bind(finishes)
        .bind(Utc::now())
        .bind(tenant.0)
        .bind(run.0)
        .bind(partition)
        .execute(c)
        .await
        .map(|_| ())
    })?;
    let (open,): (i64,) = on_db!(tx, |c| {
        sqlx::query_as(
            "SELECT COUNT(*) FROM sync_run_partitions WHERE tenant_id = $1 AND run_id = $2 AND NOT finished",
        )
        .bind(tenant.0)
        .bind(run.0)
        .fetch_one(c)
        .await
    })?;
    Ok(open == 0)
}
