//! A field both sides changed since the link's base needs its property
//! history: `newest_wins` decides it by the time each side changed *that
//! field* (a search page or a plain read carries only the record's modified
//! time, which an edit of another field may have moved past the platform's
//! edit), and every strategy must know whether the CRM's change is our own
//! push landing late — not a CRM edit, or `crm_wins` would undo the
//! platform's newer edit with it. So a record whose platform and CRM
//! versions both changed is read again with history (50 per call) before it
//! is applied. Few records are contested; the rest cost nothing more.

use super::{Deps, JobError, Session};
use crate::domain::{ConnectionId, CrmId, CrmObject, TenantId};
use crate::store::{PageApplied, PageOutcome, PageWrite, RefusedRecord};
use crate::sync::Incoming;
use std::collections::{BTreeMap, BTreeSet};

/// Tries at applying one page: a record read again with history is always
/// decidable, so the second try succeeds unless the CRM changed the set of
/// records in between; more than this is a fault worth retrying the job for.
const APPLY_TRIES: usize = 3;

/// Applies `write`; records that, under the store's locks, turn out to
/// need property history to be decided are read again with it and the page
/// applied again (`crate::sync::needs_history`). The pre-check in
/// [`with_change_times`] makes that rare; this makes it safe. Returns `None`
/// when another attempt of the same job had written the page already.
///
/// One bad record never blocks the page (`store::parked`): a record whose
/// values break the platform's rules is parked before the write, and one
/// the store refuses is parked after a second refusal (the first may be a
/// race with another writer that the retry resolves).
pub(crate) async fn apply_checked(
    session: &mut Session,
    deps: &Deps,
    mut write: PageWrite,
) -> Result<Option<PageOutcome>, JobError> {
    park_invalid(&mut write);
    let mut history_tries = 0;
    let mut refused_once: BTreeSet<CrmId> = BTreeSet::new();
    loop {
        match deps.store.apply_page(&write).await? {
            PageApplied::Applied(outcome) => {
                if !outcome.parked.is_empty() {
                    metrics::counter!("crmsync_parked_records_total", "provider" => write.provider.as_str(), "direction" => "pull")
                        .increment(outcome.parked.len() as u64);
                    tracing::warn!(
                        connection.id = %write.connection,
                        object = %write.object,
                        parked = outcome.parked.len(),
                        "CRM records parked: the platform refused them"
                    );
                }
                return Ok(Some(outcome));
            }
            PageApplied::AlreadyApplied => return Ok(None),
            PageApplied::Refused(refused) => {
                if refused_once.insert(refused.crm_id.clone()) {
                    continue;
                }
                write.items.retain(|item| item.crm_id != refused.crm_id);
                write.refused.push(refused);
            }
            PageApplied::NeedsHistory(ids) => {
                history_tries += 1;
                if history_tries >= APPLY_TRIES {
                    return Err(JobError::Transient {
                        message: format!(
                            "{} records still needed their history after {APPLY_TRIES} reads",
                            write.object
                        ),
                        retry_after: None,
                    });
                }
                metrics::counter!("crmsync_history_rereads_total").increment(ids.len() as u64);
                let items = std::mem::take(&mut write.items);
                let mut items =
                    reread_with_history(session, deps, write.object, items, &ids).await?;
                // Not returned by the read with history: gone from the CRM
                // since (its delete arrives by its own signal); not applied.
                let wanted: BTreeSet<&CrmId> = ids.iter().collect();
                items.retain(|item| item.history || !wanted.contains(&item.crm_id));
                write.items = items;
                // A re-read may bring fixed or newly broken values.
                park_invalid(&mut write);
            }
        }
    }
}

/// Moves the records whose values break the platform's rules
/// ([`crate::domain::validate`]) from the page's items to its refused.
fn park_invalid(write: &mut PageWrite) {
    let items = std::mem::take(&mut write.items);
    for item in items {
        match crate::domain::validate::check_fields(&item.fields) {
            Ok(()) => write.items.push(item),
            Err(problem) => write.refused.push(RefusedRecord {
                crm_id: item.crm_id.clone(),
                reason: format!("the platform refuses {problem}"),
            }),
        }
    }
}

/// `records`, with the contested ones replaced by reads that carry
/// per-field change times (where the CRM keeps them: otherwise the merge
/// compares the record's modified time).
pub(crate) async fn with_change_times(
    session: &mut Session,
    deps: &Deps,
    (tenant, connection): (TenantId, ConnectionId),
    object: CrmObject,
    records: Vec<Incoming>,
) -> Result<Vec<Incoming>, JobError> {
    if records.is_empty() || !session.provider().capabilities().field_times {
        return Ok(records);
    }
    let contested = deps
        .store
        .contested(tenant, connection, object, &records)
        .await?;
    reread_with_history(session, deps, object, records, &contested).await
}

/// `records` with those in `contested` replaced by reads with property
/// history (the push knows its contested records without asking the store).
pub(crate) async fn reread_with_history(
    session: &mut Session,
    deps: &Deps,
    object: CrmObject,
    mut records: Vec<Incoming>,
    contested: &[CrmId],
) -> Result<Vec<Incoming>, JobError> {
    if contested.is_empty() || !session.provider().capabilities().field_times {
        return Ok(records);
    }
    let detailed = session.read(deps, object, contested, true, None).await?;
    let mut detailed: BTreeMap<CrmId, Incoming> = detailed
        .into_iter()
        .map(|r| (r.crm_id.clone(), r))
        .collect();
    for record in &mut records {
        if let Some(fresh) = detailed.remove(&record.crm_id) {
            *record = fresh;
        }
    }
    Ok(records)
}
