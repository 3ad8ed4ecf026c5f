//! What every adapter hands the core and takes from it: pages of mapped
//! records, change-feed positions the core stores but never reads, writes
//! and their results. Nothing here is one CRM's shape.

use crate::domain::{CrmId, CrmObject, Cursor};
pub use crate::domain::{FeedPosition, Partition};
use crate::sync::Incoming;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;
use std::time::Duration;

/// One page of records and the token for the next.
#[derive(Debug, Clone)]
pub struct Page {
    /// Mapped records.
    pub records: Vec<Incoming>,
    /// The token for the next page; `None` at the end.
    pub next: Option<String>,
    /// Where the page ends in the feed it was read from: the last record's
    /// own modified time and id, as the CRM sorted it. (A HubSpot lead read
    /// with its contact may count as modified later than its place in the
    /// leads feed; a cursor must follow the feed.)
    pub last_position: Option<(DateTime<Utc>, CrmId)>,
    /// How many records the CRM returned (records that cannot be mapped,
    /// such as a lead without a person, are read but left out of `records`).
    pub scanned: usize,
    /// The ids of every record the CRM returned, mapped or not: a sweep that
    /// concludes deletions from what the list did not show must not take a
    /// record left out of `records` for a deleted one.
    pub listed: Vec<CrmId>,
}

/// Tokens from an OAuth refresh or code exchange.
#[derive(Debug, Clone)]
pub struct RefreshedTokens {
    /// New access token.
    pub access_token: SecretString,
    /// New (or the same) refresh token.
    pub refresh_token: SecretString,
    /// Lifetime of the access token.
    pub expires_in: Duration,
}

/// A record written by an idempotent create (an upsert on our record id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Upserted {
    /// Our record id (the upsert key).
    pub ours: String,
    /// The CRM record's id.
    pub crm_id: CrmId,
    /// For a lead whose person lives on another object: that record.
    pub person: Option<CrmId>,
    /// When the CRM says it stored this write, when it said: booked as the
    /// link's CRM time, so that a read taken before the write (a retried
    /// upsert's first attempt, say) is stale and cannot put older values
    /// back.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A patch of one linked record.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The record's CRM id.
    pub crm_id: CrmId,
    /// For a lead whose person lives on another object, that record when
    /// known (from the read just before): saves looking it up.
    pub person: Option<CrmId>,
    /// The CRM fields to write, as the adapter names them.
    pub properties: serde_json::Map<String, Value>,
}

/// A budget slot taken ahead for one read, so the caller can decide *what*
/// to read at the last moment.
#[derive(Debug)]
pub struct ReservedRead(());

impl ReservedRead {
    /// Only an adapter that took the slot makes one.
    pub(crate) fn new() -> Self {
        Self(())
    }
}

/// A change-feed read in progress within one job run: the durable position
/// plus what only this run can use (a page token, records read so far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRead {
    /// The durable part.
    pub position: FeedPosition,
    /// The CRM's token for the next page of the same query.
    pub page_token: Option<String>,
    /// Records the query has returned so far (for CRMs that cap a query).
    pub scanned: u32,
}

impl FeedRead {
    /// A fresh query at `position`.
    pub fn at(position: FeedPosition) -> Self {
        Self {
            position,
            page_token: None,
            scanned: 0,
        }
    }
}

/// One page of a change feed.
#[derive(Debug, Clone)]
pub struct ChangePage {
    /// The records changed, mapped.
    pub records: Vec<Incoming>,
    /// The cursor to commit with this page (its last record's place in the
    /// feed); `None` when the page is empty.
    pub cursor: Option<Cursor>,
    /// Where a later run resumes once this page is applied; `None` when the
    /// page moved nothing.
    pub resume: Option<FeedPosition>,
    /// The next read of this run; `None` when the feed is read up to the
    /// window's end.
    pub next: Option<FeedRead>,
}

/// What the core asks of one change-feed read.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// Records per page.
    pub page_size: u32,
    /// Most results one query pages through (a capped search); the adapter
    /// narrows the query before it.
    pub result_cap: u32,
    /// The window's end: nothing modified after it is read.
    pub until: DateTime<Utc>,
}

/// How a CRM differs in kind: the core branches on these, never on the
/// provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Per-field change times can be read (`newest_wins` then compares
    /// fields; otherwise it compares the record's modified time).
    pub field_times: bool,
    /// For a synced object whose person lives on another object (HubSpot
    /// Leads → Contacts, Pipedrive Leads → Persons): that object. A person's
    /// edit does not touch the lead's modified time, so the core reads the
    /// person feed too.
    pub person_object: Option<(CrmObject, CrmObject)>,
    /// Most records one batch write or read takes.
    pub batch_size: usize,
    /// Most records one read with per-field change times takes.
    pub history_batch_size: usize,
    /// Most records one page of the object's plain list holds (a
    /// [`Partition::Ids`] page may hold more, up to the CRM's search limit).
    pub list_page_max: u32,
    /// Most records one [`Partition::Ids`] page holds.
    pub partition_page_max: u32,
}

impl Capabilities {
    /// The object holding `object`'s person, if another one does.
    pub fn person_of(&self, object: CrmObject) -> Option<CrmObject> {
        self.person_object
            .filter(|(of, _)| *of == object)
            .map(|(_, person)| person)
    }

    /// The object whose leads have their person on `object`, if any.
    pub fn leads_with_person_on(&self, object: CrmObject) -> Option<CrmObject> {
        self.person_object
            .filter(|(_, person)| *person == object)
            .map(|(leads, _)| leads)
    }
}
