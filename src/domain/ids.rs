//! Identifier newtypes, so a tenant id can never be passed as a connection id.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7 keeps index inserts local).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A customer of the platform; every tenant-owned row carries one.
    TenantId
);
uuid_id!(
    /// One CRM account linked to one tenant.
    ConnectionId
);
uuid_id!(
    /// A platform lead or contact.
    RecordId
);
uuid_id!(
    /// One sync run (a full or delta sync of one CRM object).
    RunId
);

/// A record's id inside a CRM. HubSpot ids are decimal strings; they order
/// numerically so that "id greater than" paging agrees with the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CrmId(pub String);

impl CrmId {
    /// The id as the CRM spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CrmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for CrmId {
    fn cmp(&self, other: &Self) -> Ordering {
        // Numeric ids compare by length first, then lexically: "99" < "100".
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numeric(&self.0) && numeric(&other.0) {
            let (a, b) = (
                self.0.trim_start_matches('0'),
                other.0.trim_start_matches('0'),
            );
            a.len().cmp(&b.len()).then_with(|| a.cmp(b))
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl PartialOrd for CrmId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn numeric_crm_ids_order_like_numbers(a in 0u64..u64::MAX, b in 0u64..u64::MAX) {
            let (ia, ib) = (CrmId(a.to_string()), CrmId(b.to_string()));
            prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
        }
    }
}
