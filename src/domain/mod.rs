//! Provider-agnostic vocabulary: identifiers, closed sets and the canonical
//! record fields that every provider maps to and from.

mod fields;
mod ids;
pub mod validate;

pub use fields::{CanonicalField, RecordFields};
pub use ids::{ConnectionId, CrmId, RecordId, RunId, TenantId};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Error for a name that is not one of a closed set, naming what was expected.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct UnknownName {
    what: &'static str,
    given: String,
    expected: &'static str,
}

macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name used in the database, the CLI and JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        given: s.to_string(),
                        expected: concat!($($text, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }
    };
}

closed_set!(
    /// The CRMs crmsync speaks to; adding one makes the compiler list every
    /// place that must learn about it.
    ProviderKind, "provider" { Hubspot => "hubspot" }
);

closed_set!(
    /// How a connection's own webhooks are verified; stored in the clear
    /// beside the sealed value (the kind is no secret): an HMAC signing
    /// secret (HubSpot private apps), Basic credentials crmsync chose
    /// (Pipedrive), a token echoed in each notification (Zoho channels), a
    /// key sent in a header (Dynamics service endpoints).
    WebhookCredentialKind, "webhook credential kind" {
        HmacSecret => "hmac_secret", Basic => "basic", ChannelToken => "channel_token", Key => "key"
    }
);

closed_set!(
    /// What a platform record is: the platform has leads and contacts.
    RecordKind, "record kind" { Lead => "lead", Contact => "contact" }
);

closed_set!(
    /// A CRM-side object type that a connection syncs.
    CrmObject, "CRM object" { Contacts => "contacts", Leads => "leads" }
);

closed_set!(
    /// Where a platform record was born; echo suppression must not rely on it,
    /// but operators ask.
    Origin, "origin" { Platform => "platform", Crm => "crm", Import => "import" }
);

closed_set!(
    /// Kinds of sync run recorded in `sync_runs`: the four that move data,
    /// and the periodic jobs' runs (no object; their counts are in
    /// `counts`), so an operator sees every job in one list.
    RunKind, "run kind" {
        FullSync => "full_sync", DeltaSync => "delta_sync", ProcessWebhook => "process_webhook",
        PushChanges => "push_changes", DetectConflicts => "detect_conflicts",
        HealthCheck => "health_check", RetryFailed => "retry_failed", CleanupLogs => "cleanup_logs"
    }
);

impl RunKind {
    /// Whether this kind moves records (full, delta, webhook, push) — what
    /// "the connection's last run" means — rather than a periodic job's.
    pub fn moves_records(self) -> bool {
        matches!(
            self,
            RunKind::FullSync | RunKind::DeltaSync | RunKind::ProcessWebhook | RunKind::PushChanges
        )
    }
}

closed_set!(
    /// Lifecycle of a sync run.
    RunStatus, "run status" { Running => "running", Succeeded => "succeeded", Failed => "failed" }
);

closed_set!(
    /// Whether a connection may be synced: `needs_reauth` stops jobs until an
    /// operator reconnects it; `deleted` keeps the row (its links stay as
    /// unlinked history) with its credentials erased.
    ConnectionStatus, "connection status" {
        Active => "active", Paused => "paused", NeedsReauth => "needs_reauth",
        Deleted => "deleted"
    }
);

/// Where a change feed stands, as its adapter serialises it (a delta
/// token, a replay id, a window): the core stores it and hands it back, but
/// never looks inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct FeedPosition(pub serde_json::Map<String, serde_json::Value>);

/// The delta cursor of a connection's `changes` feed: the last CRM change
/// applied, as (modified time, CRM id) — the watermark it moves forward by
/// (never back) and the sync's lag is reported from — and, for feeds that
/// resume from a token rather than a time, the adapter's position there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The CRM's last-modified time of the last applied record.
    pub modified_at: chrono::DateTime<chrono::Utc>,
    /// The CRM id of that record, compared numerically where ids are numbers.
    pub crm_id: CrmId,
    /// The feed's own position after that record, if it keeps one.
    #[serde(default)]
    pub position: Option<FeedPosition>,
}

impl Cursor {
    /// A watermark without a position of the feed's own.
    pub fn at(modified_at: chrono::DateTime<chrono::Utc>, crm_id: CrmId) -> Self {
        Self {
            modified_at,
            crm_id,
            position: None,
        }
    }

    /// Whether `self` stands at or past `other` (the watermark decides).
    pub fn reaches(&self, other: &Cursor) -> bool {
        (&self.modified_at, &self.crm_id) >= (&other.modified_at, &other.crm_id)
    }
}

/// A part of an object's records that a full sync lists on its own, so
/// that several of its pages are in flight at once (a CRM answers a list
/// call in 150–400 ms; one page at a time would leave most of the budget
/// unused). A CRM that can filter by id lists ranges of ids; one that cannot
/// lists the whole object as one chain of pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Partition {
    /// Every record, through the CRM's plain list.
    Whole,
    /// Records whose id is above `after` and at most `through`, in the
    /// CRM's id order (an open bound is `None`): the last partition is open
    /// upwards, so records created during the sync are listed too.
    Ids {
        /// Lower bound, exclusive.
        after: Option<CrmId>,
        /// Upper bound, inclusive.
        through: Option<CrmId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_sets_round_trip_and_name_the_choices_on_error() {
        for kind in RecordKind::ALL {
            assert_eq!(kind.as_str().parse::<RecordKind>().ok(), Some(*kind));
        }
        let err = "salesforce"
            .parse::<ProviderKind>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown provider \"salesforce\"; expected one of: hubspot")
        );
    }
}
