//! HubSpot's change feed: CRM Search sorted by modified time, which pages
//! through at most `result_cap` results per query and shows changes late.
//!
//! Before a query reaches the cap, the window restarts at the last timestamp
//! seen; if one timestamp alone fills the cap, that instant is paged by id
//! instead and the window continues just after it. Nothing is skipped;
//! re-read records are counted unchanged by the core and write nothing.

use super::client::{ChangeQuery, HubspotClient};
use crate::domain::{CrmId, CrmObject, Cursor};
use crate::providers::ProviderError;
use crate::providers::types::{ChangePage, FeedLimits, FeedPosition, FeedRead};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The durable position: the window's lower bound, and the crowded instant
/// being paged by id with the last id read there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    since: DateTime<Utc>,
    #[serde(default)]
    instant: Option<(DateTime<Utc>, CrmId)>,
}

impl Position {
    fn encode(&self) -> FeedPosition {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => FeedPosition(map),
            // A struct of a time and an optional pair always encodes as an
            // object; an empty position would restart at the cursor.
            _ => FeedPosition::default(),
        }
    }

    fn decode(position: &FeedPosition) -> Result<Self, ProviderError> {
        serde_json::from_value(serde_json::Value::Object(position.0.clone())).map_err(|e| {
            ProviderError::Unavailable(format!("not a HubSpot change-feed position: {e}"))
        })
    }

    /// A fresh query here, unless the window is read to its end.
    fn read(self, until: DateTime<Utc>) -> Option<FeedRead> {
        (self.since <= until).then(|| FeedRead::at(self.encode()))
    }
}

/// The position of a feed read from `since` on.
pub(crate) fn position_since(since: DateTime<Utc>) -> FeedPosition {
    Position {
        since,
        instant: None,
    }
    .encode()
}

/// The first read at `position`, unless nothing is left before `until`.
pub(crate) fn open(
    position: &FeedPosition,
    until: DateTime<Utc>,
) -> Result<Option<FeedRead>, ProviderError> {
    Ok(Position::decode(position)?.read(until))
}

impl HubspotClient {
    /// One page of `object`'s change feed at `read`.
    pub(crate) async fn change_page(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        read: &FeedRead,
        limits: FeedLimits,
    ) -> Result<ChangePage, ProviderError> {
        let at = Position::decode(&read.position)?;
        let since = at.since;
        let query = match &at.instant {
            Some((at, after_id)) => ChangeQuery::Instant {
                at: *at,
                after_id: after_id.clone(),
            },
            None => ChangeQuery::Window {
                since,
                until: limits.until,
            },
        };
        let page = self
            .search_changes(
                portal,
                token,
                object,
                &query,
                read.page_token.as_deref(),
                limits.page_size,
            )
            .await?;
        let scanned = read
            .scanned
            .saturating_add(u32::try_from(page.scanned).unwrap_or(u32::MAX));
        let just_after = |at: DateTime<Utc>| Position {
            since: at + chrono::Duration::milliseconds(1),
            instant: None,
        };
        let Some((last_at, last_id)) = page.last_position.clone() else {
            // Nothing (more) here: a crowded instant is done, a window too.
            let next = match &query {
                ChangeQuery::Instant { at, .. } => just_after(*at).read(limits.until),
                ChangeQuery::Window { .. } => None,
            };
            return Ok(ChangePage {
                records: page.records,
                cursor: None,
                resume: None,
                next,
            });
        };
        let resume = match &query {
            ChangeQuery::Instant { at, .. } => Position {
                since,
                instant: Some((*at, last_id.clone())),
            },
            // Progress within one timestamp can only be kept by id.
            ChangeQuery::Window { .. } if last_at == since => Position {
                since,
                instant: Some((since, CrmId("0".into()))),
            },
            ChangeQuery::Window { .. } => Position {
                since: last_at,
                instant: None,
            },
        };
        let next = match (&page.next, &query) {
            // The crowded instant is done; go on just after it.
            (None, ChangeQuery::Instant { at, .. }) => just_after(*at).read(limits.until),
            (None, ChangeQuery::Window { .. }) => None,
            (Some(token), _) if scanned.saturating_add(limits.page_size) <= limits.result_cap => {
                Some(FeedRead {
                    position: read.position.clone(),
                    page_token: Some(token.clone()),
                    scanned,
                })
            }
            (Some(_), ChangeQuery::Instant { at, .. }) => Position {
                since,
                instant: Some((*at, last_id.clone())),
            }
            .read(limits.until),
            // One timestamp fills the whole cap: page it by id, from the
            // start (ties need not have come in id order).
            (Some(_), ChangeQuery::Window { .. }) if last_at == since => Position {
                since,
                instant: Some((last_at, CrmId("0".into()))),
            }
            .read(limits.until),
            (Some(_), ChangeQuery::Window { .. }) => Position {
                since: last_at,
                instant: None,
            }
            .read(limits.until),
        };
        Ok(ChangePage {
            records: page.records,
            cursor: Some(Cursor::at(last_at, last_id)),
            resume: Some(resume.encode()),
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The position a resumed job carries reads back as written (the
        /// job's JSON keeps `since` and `instant` as before the contract).
        #[test]
        fn a_position_survives_its_encoding(secs in 0i64..4_000_000_000, ms in 0u32..1000, id in proptest::option::of(0u64..u64::MAX)) {
            let since = DateTime::from_timestamp(secs, ms * 1_000_000).unwrap_or_default();
            let position = Position { since, instant: id.map(|id| (since, CrmId(id.to_string()))) };
            let encoded = position.encode();
            prop_assert!(encoded.0.contains_key("since"));
            prop_assert_eq!(Position::decode(&encoded).ok(), Some(position));
        }
    }

    #[test]
    fn a_window_past_its_end_is_not_read() {
        let until = Utc::now();
        let past = position_since(until + chrono::Duration::milliseconds(1));
        assert_eq!(open(&past, until).ok(), Some(None));
        assert!(open(&position_since(until), until).is_ok_and(|r| r.is_some()));
        let garbage = FeedPosition(serde_json::Map::new());
        assert!(open(&garbage, until).is_err());
    }
}
