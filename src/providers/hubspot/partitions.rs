//! A full sync in id ranges: HubSpot's list endpoints cannot filter, but its
//! search can (`hs_object_id` with `GT` and `LTE`, sorted by it), so a full
//! sync reads several ranges at once, each page a fresh query from the last
//! id it saw (keyset paging: no `after` offset, so the search's 10,000-result
//! cap never applies however large a range is).
//!
//! Search counts against its own budget (five requests a second per
//! account, apart from the burst limit [doc: search guide]) and serves 200
//! records a page, so a partitioned full sync leaves the burst budget to
//! pushes and webhook reads.

use super::client::{HubspotClient, ListBody};
use crate::domain::{CrmId, CrmObject, Partition};
use crate::providers::error::ProviderError;
use crate::providers::types::Page;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

/// The id property every HubSpot object has (numeric, so ranges compare as
/// numbers).
const ID: &str = "hs_object_id";

/// A search answer's count and first result, for planning.
#[derive(Deserialize)]
struct Edge {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    results: Vec<EdgeObject>,
}

#[derive(Deserialize)]
struct EdgeObject {
    id: String,
}

fn numeric(id: &str) -> Result<u64, ProviderError> {
    id.parse().map_err(|_| {
        ProviderError::Unavailable(format!("HubSpot answered a non-numeric record id {id:?}"))
    })
}

/// Equal-width id ranges over `(lowest - 1, highest]`, at most `wanted` of
/// them and never narrower than one id; the last is open upwards. (Ids
/// that cluster put more records in some ranges than others; every range
/// still pages at the budget, only fewer run at once.)
pub fn split(lowest: u64, highest: u64, wanted: u32) -> Vec<Partition> {
    let below = lowest.saturating_sub(1);
    let span = highest.saturating_sub(below).max(1);
    let n = u64::from(wanted.max(1)).min(span);
    let width = span / n;
    (0..n)
        .map(|i| Partition::Ids {
            after: (i > 0).then(|| CrmId((below + i * width).to_string())),
            through: (i + 1 < n).then(|| CrmId((below + (i + 1) * width).to_string())),
        })
        .collect()
}

impl HubspotClient {
    /// How a full sync of `object` splits: [`split`] over the ids the
    /// search sees (two searches: the highest id with the count, then the
    /// lowest), or the whole list when one page holds everything.
    pub async fn partitions(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        wanted: u32,
        page: u32,
    ) -> Result<Vec<Partition>, ProviderError> {
        if wanted <= 1 {
            return Ok(vec![Partition::Whole]);
        }
        let highest = self.edge(portal, token, object, true).await?;
        let (Some(highest), total) = (highest.results.first(), highest.total) else {
            return Ok(vec![Partition::Whole]);
        };
        if total <= u64::from(page) {
            return Ok(vec![Partition::Whole]);
        }
        let highest = numeric(&highest.id)?;
        let lowest = self.edge(portal, token, object, false).await?;
        let lowest = match lowest.results.first() {
            Some(o) => numeric(&o.id)?,
            None => return Ok(vec![Partition::Whole]),
        };
        let pages = total.div_ceil(u64::from(page.max(1)));
        let wanted = u32::try_from(pages).unwrap_or(u32::MAX).min(wanted);
        Ok(split(lowest, highest, wanted))
    }

    /// The highest (or lowest) id and the object's count, by search.
    async fn edge(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        highest: bool,
    ) -> Result<Edge, ProviderError> {
        let body = json!({
            "filterGroups": [],
            "sorts": [if highest { format!("-{ID}") } else { ID.to_string() }],
            "properties": [ID],
            "limit": 1,
            "after": "0",
        });
        self.search(portal, token, object, &body).await
    }

    /// One page of `partition`: records above `after` (the last id a page
    /// of it returned) within its range, ascending by id. The next token is
    /// the last id returned, while the search says more follow.
    pub async fn partition_page(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        partition: &Partition,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, ProviderError> {
        let (lower, through) = match partition {
            Partition::Whole => return self.list_page(portal, token, object, after, limit).await,
            Partition::Ids { after, through } => (after, through),
        };
        // The token is always past the range's lower bound (it is an id the
        // range returned), so it replaces it.
        let above = after
            .map(str::to_owned)
            .or_else(|| lower.as_ref().map(|l| l.0.clone()));
        let mut filters: Vec<Value> = Vec::new();
        if let Some(above) = above {
            filters.push(json!({"propertyName": ID, "operator": "GT", "value": above}));
        }
        if let Some(through) = through {
            filters.push(json!({"propertyName": ID, "operator": "LTE", "value": through.as_str()}));
        }
        let filter_groups = if filters.is_empty() {
            json!([])
        } else {
            json!([{ "filters": filters }])
        };
        let body = json!({
            "filterGroups": filter_groups,
            "sorts": [ID],
            "properties": super::mapping::properties(object),
            "limit": limit,
            "after": "0",
        });
        let list: ListBody = self.search(portal, token, object, &body).await?;
        let more = list.has_next();
        let last = list.last_id();
        let mut page = self.page(portal, token, object, list).await?;
        page.next = if more { last } else { None };
        Ok(page)
    }

    /// One search call of `object` within the account's search budget.
    async fn search<T: serde::de::DeserializeOwned>(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        body: &Value,
    ) -> Result<T, ProviderError> {
        let request = self
            .http
            .post(self.url(&format!("/crm/v3/objects/{}/search", object.as_str())))
            .bearer_auth(token.expose_secret())
            .json(body);
        super::client::send(request, Some(&self.search_budget(portal))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bounds(p: &Partition) -> (Option<u64>, Option<u64>) {
        match p {
            Partition::Ids { after, through } => (
                after.as_ref().and_then(|a| a.0.parse().ok()),
                through.as_ref().and_then(|t| t.0.parse().ok()),
            ),
            Partition::Whole => panic!("split never answers Whole"),
        }
    }

    proptest! {
        /// Every id from the lowest up (and any created later, above the
        /// highest) falls in exactly one range, and there are at most
        /// `wanted` of them.
        #[test]
        fn ranges_cover_every_id_once(lowest in 1u64..1_000_000, extra in 0u64..1_000_000, wanted in 1u32..40, probe in 0u64..3_000_000) {
            let highest = lowest + extra;
            let parts = split(lowest, highest, wanted);
            prop_assert!(!parts.is_empty() && parts.len() <= wanted as usize);
            let id = lowest + probe % (extra + 1_000);
            let holding = parts.iter().filter(|p| {
                let (after, through) = bounds(p);
                after.is_none_or(|a| id > a) && through.is_none_or(|t| id <= t)
            }).count();
            prop_assert_eq!(holding, 1, "id {} in {:?}", id, parts);
        }
    }

    #[test]
    fn one_id_is_one_open_range() {
        assert_eq!(
            split(7, 7, 4),
            vec![Partition::Ids {
                after: None,
                through: None
            }]
        );
    }
}
