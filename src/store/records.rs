//! Platform records and their CRM links: applying one pulled page in one
//! transaction together with its run counts, paging state and cursor, so a
//! crash re-applies at most one page and a re-applied page changes nothing.

use super::runs::{RunUpdate, add_counts, advance_cursor};
use super::{Store, StoreError, Tx, on_db};
use crate::domain::{
    ConnectionId, CrmId, CrmObject, Cursor, Origin, ProviderKind, RecordFields, RecordId,
    RecordKind, RunId, TenantId,
};
use crate::sync::{
    ConflictStrategy, FieldConflict, FieldDecision, FieldTimes, Incoming, LinkState, LocalState,
    PullDecision, decide_pull, needs_history,
};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::HashMap;

/// One page of pulled CRM records and the bookkeeping that commits with it.
#[derive(Debug, Clone)]
pub struct PageWrite {
    /// Owner.
    pub tenant: TenantId,
    /// Source connection.
    pub connection: ConnectionId,
    /// Which provider (recorded as the origin of new records).
    pub provider: ProviderKind,
    /// Source CRM object.
    pub object: CrmObject,
    /// Platform kind its records become.
    pub kind: RecordKind,
    /// Conflict strategy of the connection.
    pub strategy: ConflictStrategy,
    /// The mapped records.
    pub items: Vec<Incoming>,
    /// The run the page belongs to.
    pub run: RunId,
    /// Full sync: which page of which partition this write is.
    pub full_sync_page: Option<FullSyncPage>,
    /// Delta: the cursor after this page (never moves back).
    pub cursor: Option<Cursor>,
    /// Whether a record the CRM is behind on goes to the outbox (a pull), or
    /// comes back as a [`PushTarget`] for the caller to write now (the read
    /// before a push).
    pub queue_pushes: bool,
    /// Records left out of this page, parked with the page's commit
    /// (`store::parked`): the cursor moves past them.
    pub refused: Vec<super::RefusedRecord>,
}

/// A full-sync page's place in its run: it commits only while its partition
/// has done exactly `number` pages (a duplicate job does nothing), and
/// moves the partition on to `next_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullSyncPage {
    /// The partition (`store::partitions`).
    pub partition: i32,
    /// The page's number within its partition, from 0.
    pub number: i64,
    /// The provider's token for the partition's next page.
    pub next_token: Option<String>,
    /// Whether this is the partition's last page.
    pub finishes_partition: bool,
}

/// A record the CRM must be brought to: the push side of a merge.
#[derive(Debug, Clone)]
pub struct PushTarget {
    /// The platform record.
    pub record: RecordId,
    /// Its CRM id.
    pub crm_id: CrmId,
    /// What the CRM holds now.
    pub current: RecordFields,
    /// What it must hold.
    pub target: RecordFields,
    /// The link's base once written.
    pub base: RecordFields,
    /// The record version the target came from.
    pub version: i64,
    /// Where its person lives in the CRM, when that is another record.
    pub person_crm_id: Option<CrmId>,
}

/// What one page did.
#[derive(Debug, Clone, Default)]
pub struct PageOutcome {
    /// The counts added to the run.
    pub counts: RunUpdate,
    /// Records queued for a push back to the CRM (the merge kept platform
    /// values); the caller enqueues `PushChanges`.
    pub pushes: i64,
    /// Conflicts held for an operator.
    pub conflicts: i64,
    /// With `queue_pushes` off: what to write to the CRM now.
    pub targets: Vec<PushTarget>,
    /// Records parked with this page instead of applied.
    pub parked: Vec<super::RefusedRecord>,
    /// Full sync: this page finished the run's last partition.
    pub finished_run: bool,
}

/// What [`Store::apply_page`] did.
#[derive(Debug, Clone)]
#[must_use = "a page that needs history was not applied"]
pub enum PageApplied {
    /// Committed.
    Applied(PageOutcome),
    /// The run had moved past this page already (another attempt of the
    /// same job committed it): nothing written.
    AlreadyApplied,
    /// Nothing written: under their locks, these records (read without
    /// property history) turned out to need it to be decided
    /// ([`crate::sync::needs_history`]). Read them again with history and
    /// apply the page again.
    NeedsHistory(Vec<CrmId>),
    /// Nothing written: the store refused this record's write (a value it
    /// cannot hold, a second record with one email). Park it and apply the
    /// page without it.
    Refused(super::RefusedRecord),
}

impl PageApplied {
    /// The outcome, when the page was written now.
    pub fn outcome(&self) -> Option<&PageOutcome> {
        match self {
            Self::Applied(outcome) => Some(outcome),
            _ => None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct LinkSql {
    id: uuid::Uuid,
    record_id: uuid::Uuid,
    base: Json<RecordFields>,
    pulled_fingerprint: Option<String>,
    pushed_fingerprint: Option<String>,
    crm_modified_at: Option<DateTime<Utc>>,
    person_crm_id: Option<String>,
    local_modified_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RecordSql {
    id: uuid::Uuid,
    fields: Json<RecordFields>,
    field_times: Json<FieldTimes>,
    version: i64,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The incoming records to read with property history: those both
    /// sides changed differently on some field since the link's base (only
    /// per-field change times say which side is newer, and whether the
    /// CRM's change is our own late write), and those with a push in flight
    /// or unbooked.
    pub async fn contested(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        items: &[Incoming],
    ) -> Result<Vec<CrmId>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT l.crm_id, l.base, r.fields, l.local_modified_at FROM record_links l JOIN records r ON r.id = l.record_id
              WHERE l.tenant_id = $1 AND l.connection_id = $2 AND l.crm_object = $3 AND l.crm_id IN ({})",
            super::in_list(4, items.len())
        );
        let mut tx = self.begin(tenant).await?;
        type Row = (
            String,
            Json<RecordFields>,
            Json<RecordFields>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = on_db!(&mut tx, |c| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(connection.0)
                .bind(object.as_str());
            for item in items {
                query = query.bind(item.crm_id.as_str());
            }
            query.fetch_all(c).await
        })?;
        tx.commit().await?;
        // A push mark still ahead means a push is in flight or died before
        // its booking: our write may be in the CRM while the base does not
        // know it, and a platform edit made after this check would turn it
        // into a two-sided change that only the history can settle.
        let now = Utc::now();
        let known: HashMap<String, (RecordFields, RecordFields, bool)> = rows
            .into_iter()
            .map(|(id, base, local, mark)| {
                let pushing = mark.is_some_and(|mark| mark > now);
                (id, (base.0.renormalized(), local.0.renormalized(), pushing))
            })
            .collect();
        Ok(items
            .iter()
            .filter(|item| {
                known
                    .get(item.crm_id.as_str())
                    .is_some_and(|(base, local, pushing)| {
                        *pushing || crate::sync::needs_change_times(base, local, &item.fields)
                    })
            })
            .map(|item| item.crm_id.clone())
            .collect())
    }

    /// Applies a page in one transaction, every decision made under the
    /// locks of the record and link it writes. A record read without
    /// history whose decision depends on it, as seen under those locks, is
    /// not guessed at: the whole page is rolled back and comes back as
    /// [`PageApplied::NeedsHistory`] (the jobs' `apply_checked` reads those
    /// again and retries).
    pub async fn apply_page(&self, page: &PageWrite) -> Result<PageApplied, StoreError> {
        let mut tx = self.begin(page.tenant).await?;
        if let Some(place) = &page.full_sync_page {
            // Lock the run row first (on Postgres; SQLite has one writer):
            // the run's pages commit one at a time, so of two partitions
            // finishing at once the second sees the first and ends the run.
            // Then claim the page: a concurrent duplicate waits on the lock
            // and then finds the page done.
            let running: Option<(uuid::Uuid,)> = on_db!(&mut tx, |c| {
                sqlx::query_as(
                "UPDATE sync_runs SET updated_at = $1 WHERE tenant_id = $2 AND id = $3 AND status = 'running' RETURNING id"
            )
            .bind(Utc::now())
            .bind(page.tenant.0)
            .bind(page.run.0)
            .fetch_optional(c)
            .await
            })?;
            if running.is_none()
                || !super::partitions::claim_page(
                    &mut tx,
                    page.tenant,
                    page.run,
                    place.partition,
                    place.number,
                )
                .await?
            {
                return Ok(PageApplied::AlreadyApplied);
            }
        }
        let (allow_duplicates,): (bool,) = on_db!(&mut tx, |c| sqlx::query_as(
            "SELECT allow_duplicates FROM tenants WHERE id = $1"
        )
        .bind(page.tenant.0)
        .fetch_one(c)
        .await)?;
        let mut counts = RunUpdate::default();
        let mut outcome = PageOutcome::default();
        let mut pushes = 0;
        // One lock order for every multi-record write (pages, pushes): by
        // CRM id. Jobs applying overlapping records then wait for each other
        // instead of deadlocking.
        let mut items: Vec<&Incoming> = page.items.iter().collect();
        items.sort_by(|a, b| a.crm_id.as_str().cmp(b.crm_id.as_str()));
        let mut needs_history = Vec::new();
        for item in items {
            counts.processed += 1;
            let applied = match apply_one(&mut tx, page, item, allow_duplicates, &mut outcome).await
            {
                Ok(applied) => applied,
                Err(e) => {
                    return match super::parked::refusal(&e) {
                        // Rolled back on drop: nothing of this page is written.
                        Some(reason) => Ok(PageApplied::Refused(super::RefusedRecord {
                            crm_id: item.crm_id.clone(),
                            reason,
                        })),
                        None => Err(e),
                    };
                }
            };
            match applied {
                Applied::NeedsHistory => needs_history.push(item.crm_id.clone()),
                Applied::Created => counts.created += 1,
                Applied::Updated => counts.updated += 1,
                Applied::Unchanged => counts.unchanged += 1,
                Applied::UpdatedNeedsPush => {
                    counts.updated += 1;
                    pushes += 1;
                }
                Applied::UnchangedNeedsPush => {
                    counts.unchanged += 1;
                    pushes += 1;
                }
            }
        }
        if !needs_history.is_empty() {
            // Rolled back on drop: nothing of this page is written.
            drop(tx);
            return Ok(PageApplied::NeedsHistory(needs_history));
        }
        // Parked records were read but not applied: the run counts them failed.
        counts.processed += page.refused.len() as i64;
        counts.failed += page.refused.len() as i64;
        let finished_run = match &page.full_sync_page {
            Some(place) => {
                super::partitions::page_done(
                    &mut tx,
                    page.tenant,
                    page.run,
                    place.partition,
                    place.next_token.as_deref(),
                    place.finishes_partition,
                )
                .await?
            }
            None => false,
        };
        add_counts(
            &mut tx,
            page.tenant,
            page.run,
            counts,
            page.full_sync_page.is_some(),
            finished_run,
        )
        .await?;
        let now = Utc::now();
        let owner = (page.tenant, page.connection);
        super::parked::park_pulled(&mut tx, owner, page.object, &page.refused, now).await?;
        let applied: Vec<&CrmId> = page.items.iter().map(|i| &i.crm_id).collect();
        super::parked::resolve_pulled(&mut tx, owner, page.object, &applied, now).await?;
        if let Some(cursor) = &page.cursor {
            advance_cursor(&mut tx, page.tenant, page.connection, page.object, cursor).await?;
        }
        tx.commit().await?;
        outcome.parked = page.refused.clone();
        outcome.finished_run = finished_run;
        outcome.counts = counts;
        outcome.pushes = pushes;
        Ok(PageApplied::Applied(outcome))
    }

    /// Records of a tenant's kind, as (id, fields), for tests and the api.
    pub async fn records(
        &self,
        tenant: TenantId,
        kind: RecordKind,
    ) -> Result<Vec<(RecordId, RecordFields)>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let rows: Vec<(uuid::Uuid, Json<RecordFields>)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT id, fields FROM records WHERE tenant_id = $1 AND kind = $2 AND deleted_at IS NULL ORDER BY id"
        )
        .bind(tenant.0)
        .bind(kind.as_str())
        .fetch_all(c)
        .await
        })?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(id, f)| (RecordId(id), f.0.renormalized()))
            .collect())
    }

    /// Of records our own app wrote (CRM id, the write's time in epoch ms),
    /// those whose link has no push booked at or after that time: their
    /// echo cannot be told from a change without reading them.
    pub async fn unbooked_writes(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        writes: &[(CrmId, i64)],
    ) -> Result<Vec<CrmId>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT crm_id, local_modified_at FROM record_links
              WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id IN ({})",
            super::in_list(4, writes.len())
        );
        let mut tx = self.begin(tenant).await?;
        let booked: Vec<(String, Option<DateTime<Utc>>)> = on_db!(&mut tx, |c| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(connection.0)
                .bind(object.as_str());
            for (id, _) in writes {
                query = query.bind(id.as_str());
            }
            query.fetch_all(c).await
        })?;
        tx.commit().await?;
        let booked: std::collections::HashMap<String, Option<DateTime<Utc>>> =
            booked.into_iter().collect();
        Ok(writes
            .iter()
            .filter(|(id, at)| {
                booked
                    .get(id.as_str())
                    .copied()
                    .flatten()
                    .is_none_or(|pushed| pushed.timestamp_millis() < *at)
            })
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// CRM ids linked on a connection's object, tombstones included, for
    /// tests and reconciliation.
    pub async fn linked_crm_ids(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
    ) -> Result<Vec<String>, StoreError> {
        self.crm_ids(tenant, connection, object, "").await
    }

    /// CRM ids linked on a connection's object whose CRM record is not
    /// deleted (no tombstone).
    pub async fn live_crm_ids(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
    ) -> Result<Vec<String>, StoreError> {
        self.crm_ids(tenant, connection, object, " AND crm_deleted_at IS NULL")
            .await
    }

    async fn crm_ids(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        live_only: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin(tenant).await?;
        let sql = format!(
            "SELECT crm_id FROM record_links WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3{live_only}"
        );
        let rows: Vec<(String,)> = on_db!(&mut tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(connection.0)
                .bind(object.as_str())
                .fetch_all(c)
                .await
        })?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

impl Store {
    /// Marks links as deleted in the CRM (tombstones): the platform record
    /// stays (default delete policy); a later restore clears the tombstone.
    pub async fn tombstone_links(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        crm_ids: &[CrmId],
    ) -> Result<(), StoreError> {
        if crm_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        for id in crm_ids {
            tombstone_link(&mut tx, tenant, connection, object, id, now).await?;
        }
        tx.commit().await
    }

    /// Privacy deletion of a person that lives in another CRM record (a
    /// HubSpot contact, for the leads whose person it was): the records
    /// linked through it are erased as by [`Store::erase_linked_records`].
    pub async fn erase_records_of_persons(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        persons: &[CrmId],
    ) -> Result<(), StoreError> {
        if persons.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT crm_id FROM record_links
              WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND person_crm_id IN ({})",
            super::in_list(4, persons.len())
        );
        let mut tx = self.begin(tenant).await?;
        let linked: Vec<(String,)> = on_db!(&mut tx, |c| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(tenant.0)
                .bind(connection.0)
                .bind(object.as_str());
            for person in persons {
                query = query.bind(person.as_str());
            }
            query.fetch_all(c).await
        })?;
        tx.commit().await?;
        let linked: Vec<CrmId> = linked.into_iter().map(|(id,)| CrmId(id)).collect();
        self.erase_linked_records(tenant, connection, object, &linked)
            .await
    }

    /// Privacy deletion: the linked platform records lose every personal
    /// field and are marked deleted; the link stays as an audited tombstone
    /// (ids and times only) that blocks re-creation by a late event.
    pub async fn erase_linked_records(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        crm_ids: &[CrmId],
    ) -> Result<(), StoreError> {
        if crm_ids.is_empty() {
            return Ok(());
        }
        let empty = Json(RecordFields::new());
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        for id in crm_ids {
            on_db!(&mut tx, |c| {
                sqlx::query(
                "UPDATE records SET fields = $1, dedupe_key = NULL, deleted_at = $2, updated_at = $2, version = version + 1
                  WHERE tenant_id = $3 AND id IN (SELECT record_id FROM record_links
                        WHERE tenant_id = $3 AND connection_id = $4 AND crm_object = $5 AND crm_id = $6)"
            )
            .bind(&empty)
            .bind(now)
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(id.as_str())
            .execute(c)
            .await
            .map(|_| ())
            })?;
            on_db!(&mut tx, |c| {
                sqlx::query(
                "UPDATE record_links SET base = $1, pulled_fingerprint = NULL, pushed_fingerprint = NULL, crm_deleted_at = $2, updated_at = $2
                  WHERE tenant_id = $3 AND connection_id = $4 AND crm_object = $5 AND crm_id = $6"
            )
            .bind(&empty)
            .bind(now)
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(id.as_str())
            .execute(c)
            .await
            .map(|_| ())
            })?;
        }
        tx.commit().await
    }

    /// A CRM merge: the link to the merged-away id now points at the
    /// survivor, or — when the survivor is linked already — becomes a
    /// tombstone (the survivor's state arrives as a change).
    pub async fn remap_link(
        &self,
        tenant: TenantId,
        connection: ConnectionId,
        object: CrmObject,
        from: &CrmId,
        to: &CrmId,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin(tenant).await?;
        let now = Utc::now();
        let survivor: Option<(uuid::Uuid,)> = on_db!(&mut tx, |c| {
            sqlx::query_as(
            "SELECT id FROM record_links WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id = $4"
        )
        .bind(tenant.0)
        .bind(connection.0)
        .bind(object.as_str())
        .bind(to.as_str())
        .fetch_optional(c)
        .await
        })?;
        let sql = if survivor.is_some() {
            "UPDATE record_links SET crm_deleted_at = $1, updated_at = $1
              WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND crm_id = $5 AND $6 = $6"
        } else {
            "UPDATE record_links SET crm_id = $6, updated_at = $1
              WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND crm_id = $5"
        };
        on_db!(&mut tx, |c| sqlx::query(sql)
            .bind(now)
            .bind(tenant.0)
            .bind(connection.0)
            .bind(object.as_str())
            .bind(from.as_str())
            .bind(to.as_str())
            .execute(c)
            .await
            .map(|_| ()))?;
        tx.commit().await
    }
}

/// Makes one live link a tombstone (deleted in the CRM, or archived by us).
pub(super) async fn tombstone_link(
    tx: &mut Tx,
    tenant: TenantId,
    connection: ConnectionId,
    object: CrmObject,
    crm_id: &CrmId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    on_db!(tx, |c| {
        sqlx::query(
        "UPDATE record_links SET crm_deleted_at = $1, updated_at = $1
          WHERE tenant_id = $2 AND connection_id = $3 AND crm_object = $4 AND crm_id = $5 AND crm_deleted_at IS NULL"
    )
    .bind(now)
    .bind(tenant.0)
    .bind(connection.0)
    .bind(object.as_str())
    .bind(crm_id.as_str())
    .execute(c)
    .await
    .map(|_| ())
    })?;
    Ok(())
}

enum Applied {
    Created,
    Updated,
    Unchanged,
    /// Applied, and the platform side must be pushed back to the CRM.
    UpdatedNeedsPush,
    /// Nothing taken, but the CRM is behind the platform: push.
    UnchangedNeedsPush,
    /// Not decided: read without history, and the decision depends on it.
    NeedsHistory,
}

async fn apply_one(
    tx: &mut Tx,
    page: &PageWrite,
    item: &Incoming,
    allow_duplicates: bool,
    outcome: &mut PageOutcome,
) -> Result<Applied, StoreError> {
    let t = page.tenant.0;
    // The record and the link are locked until the page commits: a platform
    // write (api) or a push committing between this read and the write
    // below would otherwise be overwritten by a merge of what it replaced.
    // Record first, then link — the order of every other path that locks
    // both (conflict resolution, erasure) — so that none can deadlock.
    // (SQLite transactions are `BEGIN IMMEDIATE`: writers are serial.)
    let lock = match tx {
        Tx::Postgres(_) => " FOR UPDATE",
        Tx::Sqlite(_) => "",
    };
    let by_id = |id: uuid::Uuid| {
        (
            id,
            format!(
                "SELECT id, fields, field_times, version, updated_at, deleted_at FROM records WHERE tenant_id = $1 AND id = $2{lock}"
            ),
        )
    };
    // Which record the link points at (unlocked), then that record locked
    // by its primary key — one statement doing both (a join or a
    // subquery) got a generic plan that scanned the records table under
    // row-level security (the 20,000-contact full-sync test took 179 s
    // instead of 58 s).
    let linked_id: Option<(uuid::Uuid,)> = on_db!(tx, |c| {
        sqlx::query_as(
            "SELECT record_id FROM record_links WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id = $4",
        )
        .bind(t)
        .bind(page.connection.0)
        .bind(page.object.as_str())
        .bind(item.crm_id.as_str())
        .fetch_optional(c)
        .await
    })?;
    let linked: Option<RecordSql> = match linked_id {
        Some((id,)) => {
            let (id, sql) = by_id(id);
            on_db!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(t)
                .bind(id)
                .fetch_optional(c)
                .await)?
        }
        None => None,
    };
    let link_sql = format!(
        "SELECT id, record_id, base, pulled_fingerprint, pushed_fingerprint, crm_modified_at, person_crm_id, local_modified_at FROM record_links
          WHERE tenant_id = $1 AND connection_id = $2 AND crm_object = $3 AND crm_id = $4{lock}"
    );
    let link: Option<LinkSql> = on_db!(tx, |c| {
        sqlx::query_as(sqlx::AssertSqlSafe(link_sql.clone()))
            .bind(t)
            .bind(page.connection.0)
            .bind(page.object.as_str())
            .bind(item.crm_id.as_str())
            .fetch_optional(c)
            .await
    })?;
    // Whatever the decision below, the link follows the record's person
    // (a lead re-associated to another contact).
    if let (Some(l), Some(person)) = (&link, &item.person_crm_id)
        && l.person_crm_id.as_deref() != Some(person.as_str())
    {
        on_db!(tx, |c| {
            sqlx::query(
                "UPDATE record_links SET person_crm_id = $1 WHERE tenant_id = $2 AND id = $3",
            )
            .bind(person.as_str())
            .bind(t)
            .bind(l.id)
            .execute(c)
            .await
            .map(|_| ())
        })?;
    }
    let email = item.fields.normalized_email().map(str::to_string);
    // Which platform record this CRM record is: the one linked to its CRM
    // id, else the one whose id it carries (our own creation, its push not
    // booked yet), else the one with the same normalised email.
    let lookup = match (&link, item.platform_id, &email) {
        // Locked above already (unless the link appeared in between).
        (Some(l), _, _) if linked.as_ref().is_some_and(|r| r.id == l.record_id) => None,
        (Some(l), _, _) => Some(by_id(l.record_id)),
        (None, Some(platform), _) => Some(by_id(platform.0)),
        _ => None,
    };
    let mut local: Option<RecordSql> = match lookup {
        None if link.is_some() => linked,
        Some((id, sql)) => on_db!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(t)
            .bind(id)
            .fetch_optional(c)
            .await)?,
        None => None,
    };
    if local.is_none()
        && link.is_none()
        && !allow_duplicates
        && let Some(email) = &email
    {
        let sql = format!(
            "SELECT id, fields, field_times, version, updated_at, deleted_at FROM records WHERE tenant_id = $1 AND kind = $2 AND dedupe_key = $3{lock}"
        );
        local = on_db!(tx, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(t)
                .bind(page.kind.as_str())
                .bind(email)
                .fetch_optional(c)
                .await
        })?;
    }
    if local.as_ref().is_some_and(|r| r.deleted_at.is_some()) {
        // Deleted or erased on the platform: a CRM state never revives it.
        return Ok(Applied::Unchanged);
    }
    let link_state = match &link {
        Some(l) => Some(LinkState {
            base: l.base.0.clone().renormalized(),
            pulled_fingerprint: l.pulled_fingerprint.clone(),
            pushed_fingerprint: l.pushed_fingerprint.clone(),
            crm_modified_at: l.crm_modified_at,
            pushed_until: l.local_modified_at,
        }),
        // Our own creation, its push not booked (killed before it): the
        // values our app wrote there are this record's, not CRM edits.
        None if item
            .platform_id
            .is_some_and(|ours| local.as_ref().is_some_and(|r| r.id == ours.0)) =>
        {
            Some(LinkState::unbooked_creation(Utc::now()))
        }
        None => None,
    };
    let local_state = local.as_ref().map(|r| LocalState {
        fields: r.fields.0.clone().renormalized(),
        updated_at: r.updated_at,
        field_times: r.field_times.0.clone(),
    });
    // Decided here, under the record's and the link's locks, or not at all:
    // a platform edit or a booking that committed after the caller looked
    // can make a record contested that was not, and only history then
    // tells our own unbooked write from a CRM edit.
    if !item.history && needs_history(link_state.as_ref(), local_state.as_ref(), item) {
        return Ok(Applied::NeedsHistory);
    }
    let decision = decide_pull(
        link_state.as_ref(),
        local_state.as_ref(),
        item,
        page.strategy,
    );
    if decision == PullDecision::Echo {
        crate::telemetry::record_echoes(page.provider, 1);
        return Ok(Applied::Unchanged);
    }
    let PullDecision::Apply {
        local: merged,
        remote,
        base,
        record_changed,
        push,
        decisions,
        conflicts,
    } = decision
    else {
        return Ok(Applied::Unchanged);
    };
    let now = Utc::now();
    // Fields the CRM changed here take the CRM's time for that field.
    let crm_time = |field| {
        item.field_times
            .get(&field)
            .copied()
            .unwrap_or(item.modified_at)
    };
    let mut field_times = local_state
        .as_ref()
        .map(|l| l.field_times.clone())
        .unwrap_or_default();
    for (field, value) in merged.iter() {
        if local_state.as_ref().and_then(|l| l.fields.get(field)) != Some(value) {
            field_times.insert(field, crm_time(field));
        }
    }
    if let Some(l) = &local_state {
        for (field, _) in l.fields.iter() {
            if merged.get(field).is_none() {
                field_times.insert(field, crm_time(field));
            }
        }
    }
    let dedupe_key = if allow_duplicates {
        None
    } else {
        merged.normalized_email().map(str::to_string)
    };
    let mut version = 1;
    let (record_id, applied) = match &local {
        None => {
            let id = RecordId::new();
            on_db!(tx, |c| {
                sqlx::query(
                "INSERT INTO records (id, tenant_id, kind, fields, dedupe_key, origin, origin_provider, origin_crm_id, version, created_at, updated_at, field_times)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9, $10)"
            )
            .bind(id.0)
            .bind(t)
            .bind(page.kind.as_str())
            .bind(Json(&merged))
            .bind(&dedupe_key)
            .bind(Origin::Crm.as_str())
            .bind(page.provider.as_str())
            .bind(item.crm_id.as_str())
            .bind(now)
            .bind(Json(&field_times))
            .execute(c)
            .await
            .map(|_| ())
            })?;
            (id.0, Applied::Created)
        }
        Some(existing) => {
            version = existing.version;
            if record_changed {
                (version,) = on_db!(tx, |c| {
                    sqlx::query_as(
                    "UPDATE records SET fields = $1, dedupe_key = $2, version = version + 1, updated_at = $3, field_times = $6
                      WHERE tenant_id = $4 AND id = $5 RETURNING version"
                )
                .bind(Json(&merged))
                .bind(&dedupe_key)
                .bind(now)
                .bind(t)
                .bind(existing.id)
                .bind(Json(&field_times))
                .fetch_one(c)
                .await
                })?;
            }
            record_decisions(tx, page, existing.id, &decisions, now).await?;
            let applied = if record_changed || link.is_none() {
                Applied::Updated
            } else {
                Applied::Unchanged
            };
            (existing.id, applied)
        }
    };
    let fingerprint = item.fields.fingerprint();
    match &link {
        Some(l) => on_db!(tx, |c| {
            sqlx::query(
            "UPDATE record_links SET base = $1, pulled_fingerprint = $2, crm_modified_at = $3, crm_deleted_at = NULL, updated_at = $4
              WHERE tenant_id = $5 AND id = $6"
        )
        .bind(Json(&base))
        .bind(&fingerprint)
        .bind(item.modified_at)
        .bind(now)
        .bind(t)
        .bind(l.id)
        .execute(c)
        .await
        .map(|_| ())
        })?,
        None => on_db!(tx, |c| {
            sqlx::query(
            "INSERT INTO record_links (id, tenant_id, record_id, connection_id, crm_object, crm_id, base, pulled_fingerprint, crm_modified_at, created_at, updated_at, person_crm_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)"
        )
        .bind(uuid::Uuid::now_v7())
        .bind(t)
        .bind(record_id)
        .bind(page.connection.0)
        .bind(page.object.as_str())
        .bind(item.crm_id.as_str())
        .bind(Json(&base))
        .bind(&fingerprint)
        .bind(item.modified_at)
        .bind(now)
        .bind(item.person_crm_id.as_ref().map(CrmId::as_str))
        .execute(c)
        .await
        .map(|_| ())
        })?,
    };
    if page.strategy == ConflictStrategy::Manual || !conflicts.is_empty() {
        outcome.conflicts += conflicts.len() as i64;
        hold_conflicts(
            tx,
            page,
            item,
            record_id,
            &conflicts,
            local_state.as_ref(),
            now,
        )
        .await?;
    }
    if push {
        if !page.queue_pushes {
            outcome.targets.push(PushTarget {
                record: RecordId(record_id),
                crm_id: item.crm_id.clone(),
                current: item.fields.clone(),
                target: remote,
                base,
                version,
                person_crm_id: item.person_crm_id.clone(),
            });
            return Ok(applied);
        }
        // The merge kept platform values the CRM lacks: queue them (the
        // caller enqueues the push job).
        super::queue_outbox(tx, TenantId(t), page.connection.0, record_id, now).await?;
        return Ok(match applied {
            Applied::Created => Applied::Created,
            _ if record_changed => Applied::UpdatedNeedsPush,
            _ => Applied::UnchangedNeedsPush,
        });
    }
    Ok(applied)
}

/// Writes the audit of every field a merge changed: which rule, old and new
/// value, and which side it came from.
async fn record_decisions(
    tx: &mut Tx,
    page: &PageWrite,
    record: uuid::Uuid,
    decisions: &[FieldDecision],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for d in decisions {
        // The side the value came from: a platform value went to the CRM.
        let (source, old) = if d.value != d.platform_before {
            ("crm", &d.platform_before)
        } else {
            ("platform", &d.crm_before)
        };
        on_db!(tx, |c| {
            sqlx::query(
            "INSERT INTO field_changes (id, tenant_id, record_id, connection_id, field, rule, old_value, new_value, source, decided_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )
        .bind(uuid::Uuid::now_v7())
        .bind(page.tenant.0)
        .bind(record)
        .bind(page.connection.0)
        .bind(d.field.as_str())
        .bind(d.rule.as_str())
        .bind(old)
        .bind(&d.value)
        .bind(source)
        .bind(now)
        .execute(c)
        .await
        .map(|_| ())
        })?;
    }
    Ok(())
}

/// Holds `manual` conflicts (one open row per field, refreshed when seen
/// again) and closes open ones the sides have since settled by themselves.
async fn hold_conflicts(
    tx: &mut Tx,
    page: &PageWrite,
    item: &Incoming,
    record: uuid::Uuid,
    conflicts: &[FieldConflict],
    local: Option<&LocalState>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let held: Vec<&str> = conflicts.iter().map(|c| c.field.as_str()).collect();
    let open: Vec<(uuid::Uuid, String)> = on_db!(tx, |c| {
        sqlx::query_as(
        "SELECT id, field FROM conflicts WHERE tenant_id = $1 AND connection_id = $2 AND record_id = $3 AND status = 'open'"
    )
    .bind(page.tenant.0)
    .bind(page.connection.0)
    .bind(record)
    .fetch_all(c)
    .await
    })?;
    for (id, field) in &open {
        if !held.contains(&field.as_str()) {
            on_db!(tx, |c| {
                sqlx::query(
                "UPDATE conflicts SET status = 'resolved', resolution = 'settled', resolved_at = $1, updated_at = $1 WHERE tenant_id = $2 AND id = $3"
            )
            .bind(now)
            .bind(page.tenant.0)
            .bind(id)
            .execute(c)
            .await
            .map(|_| ())
            })?;
        }
    }
    for conflict in conflicts {
        let platform_at = local.map(|l| {
            l.field_times
                .get(&conflict.field)
                .copied()
                .unwrap_or(l.updated_at)
        });
        let crm_at = item
            .field_times
            .get(&conflict.field)
            .copied()
            .unwrap_or(item.modified_at);
        let existing = open
            .iter()
            .find(|(_, f)| f == conflict.field.as_str())
            .map(|(id, _)| *id);
        match existing {
            Some(id) => on_db!(tx, |c| {
                sqlx::query(
                "UPDATE conflicts SET base_value = $1, platform_value = $2, crm_value = $3, platform_changed_at = $4,
                        crm_changed_at = $5, crm_id = $6, updated_at = $7
                  WHERE tenant_id = $8 AND id = $9"
            )
            .bind(&conflict.base)
            .bind(&conflict.platform)
            .bind(&conflict.crm)
            .bind(platform_at)
            .bind(crm_at)
            .bind(item.crm_id.as_str())
            .bind(now)
            .bind(page.tenant.0)
            .bind(id)
            .execute(c)
            .await
            .map(|_| ())
            })?,
            None => on_db!(tx, |c| {
                sqlx::query(
                "INSERT INTO conflicts (id, tenant_id, connection_id, record_id, crm_object, crm_id, field, base_value,
                                        platform_value, crm_value, platform_changed_at, crm_changed_at, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'open', $13, $13)"
            )
            .bind(uuid::Uuid::now_v7())
            .bind(page.tenant.0)
            .bind(page.connection.0)
            .bind(record)
            .bind(page.object.as_str())
            .bind(item.crm_id.as_str())
            .bind(conflict.field.as_str())
            .bind(&conflict.base)
            .bind(&conflict.platform)
            .bind(&conflict.crm)
            .bind(platform_at)
            .bind(crm_at)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
            })?,
        }
    }
    Ok(())
}
