//! HubSpot CRM v3 over HTTP: list, search, batch read, account details and
//! OAuth refresh, each paced by the account's budgets and classified into
//! [`ProviderError`] here, at the boundary.

use super::mapping::{self, HsObject};
use crate::config::HubspotSettings;
use crate::domain::{CrmId, CrmObject};
use crate::providers::error::ProviderError;
pub use crate::providers::types::{Page, RefreshedTokens, ReservedRead, Update, Upserted};
use crate::ratelimit::{Budget, BudgetError, BudgetSpec, Budgets, Priority, WindowLimit};
use crate::sync::Incoming;
use chrono::{DateTime, Utc};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A search for records changed in a window, ascending by modified time
/// (ties by id), or — to page one crowded instant — by id at one timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeQuery {
    /// `modified ≥ since` and `modified ≤ until`, sorted by modified time.
    Window {
        /// Lower bound (inclusive).
        since: DateTime<Utc>,
        /// Upper bound (inclusive).
        until: DateTime<Utc>,
    },
    /// `modified = at` and `id > after_id`, sorted by id.
    Instant {
        /// The crowded timestamp.
        at: DateTime<Utc>,
        /// Only ids above this one.
        after_id: CrmId,
    },
}

/// A HubSpot API client for one deployment (shared by all connections).
#[derive(Debug, Clone)]
pub struct HubspotClient {
    pub(super) http: reqwest::Client,
    pub(super) settings: Arc<HubspotSettings>,
    budgets: Arc<Budgets>,
    priority: Priority,
    /// (portal, object) whose crmsync properties exist: ensured once per
    /// process, not once per push (each repeat would be a 409).
    ensured: Arc<std::sync::Mutex<std::collections::HashSet<(String, CrmObject)>>>,
}

/// A budget as one client uses it: which budget, at which priority.
#[derive(Debug, Clone)]
pub(super) struct Pacer {
    budget: Arc<Budget>,
    priority: Priority,
    /// The first try's slot was reserved ahead (`reserve_read`).
    prepaid: bool,
}

impl From<BudgetError> for ProviderError {
    fn from(e: BudgetError) -> Self {
        match e {
            BudgetError::WaitTooLong { retry_after, .. } => ProviderError::RateLimited {
                retry_after,
                policy: "CRMSYNC_BUDGET".into(),
            },
            BudgetError::Unavailable(message) => ProviderError::Unavailable(message),
        }
    }
}

/// The name of an account's burst budget (its daily count kept with it).
pub(crate) fn burst_budget_name(portal: &str) -> String {
    format!("hubspot:{portal}:burst")
}

/// The budget an operator watches for a portal: the burst budget most
/// calls draw on, with the limits crmsync is configured to.
pub(crate) fn watched_budget(
    settings: &HubspotSettings,
    portal: &str,
) -> crate::providers::WatchedBudget {
    let mut limits = serde_json::Map::new();
    limits.insert("requestsPer10s".into(), settings.requests_per_10s.into());
    limits.insert("requestsPerDay".into(), settings.requests_per_day.into());
    crate::providers::WatchedBudget {
        name: burst_budget_name(portal),
        window: BURST_WINDOW,
        limits,
    }
}

/// The rolling window of HubSpot's burst limit (`TEN_SECONDLY_ROLLING`).
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// HubSpot's batch endpoints take at most 100 records.
const BATCH: usize = 100;
/// …and 50 when property history is asked for.
const HISTORY_BATCH: usize = 50;

/// What [`HubspotClient::read_objects`] reads.
pub(super) struct ReadSpec<'a> {
    /// Record ids, or values of `id_property`.
    pub keys: &'a [String],
    /// A unique property the keys are values of.
    pub id_property: Option<&'a str>,
    /// Properties to return.
    pub properties: &'a [&'a str],
    /// Properties whose history to return (50 records per call then).
    pub history: &'a [&'a str],
}

/// A list or search answer.
#[derive(Deserialize)]
pub(super) struct ListBody {
    #[serde(default)]
    results: Vec<HsObject>,
    paging: Option<Paging>,
}

impl ListBody {
    /// Whether the CRM says another page follows.
    pub(super) fn has_next(&self) -> bool {
        self.paging.as_ref().is_some_and(|p| p.next.is_some())
    }

    /// The last record's id.
    pub(super) fn last_id(&self) -> Option<String> {
        self.results.last().map(|o| o.id.clone())
    }
}

#[derive(Deserialize)]
struct Paging {
    next: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    after: String,
}

impl HubspotClient {
    /// Builds a client; `budgets` is shared by every client in the process.
    pub fn new(settings: HubspotSettings, budgets: Arc<Budgets>) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("crmsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            settings: Arc::new(settings),
            budgets,
            priority: Priority::Interactive,
            ensured: Arc::default(),
        })
    }

    /// The same client for background work (full-sync pages): its calls
    /// take only free budget slots, so interactive work is served first.
    pub fn background(&self) -> Self {
        Self {
            priority: Priority::Background,
            ..self.clone()
        }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.api_base_url.trim_end_matches('/'))
    }

    /// The account's burst budget (its daily budget counted with it).
    pub(super) fn burst_budget(&self, portal: &str) -> Pacer {
        let spec = BudgetSpec {
            limit: WindowLimit {
                requests: self.settings.requests_per_10s,
                window: BURST_WINDOW,
            },
            daily_limit: self.settings.requests_per_day,
            share: 1.0,
            kind: "burst",
        };
        Pacer {
            budget: self.budgets.get(&burst_budget_name(portal), spec),
            priority: self.priority,
            prepaid: false,
        }
    }

    /// The burst budget for the next call, unless a slot reserved earlier
    /// pays for it (`paid`, which only the first call uses).
    pub(super) fn unless_paid(&self, portal: &str, paid: &mut bool) -> Pacer {
        let mut pacer = self.burst_budget(portal);
        pacer.prepaid = std::mem::take(paid);
        pacer
    }

    /// Waits for `requests` slots of the account's `sweep` budget (one per
    /// request the caller is about to make): the burst limit
    /// at `share` of crmsync's part of it, paced fleet-wide like every
    /// budget, taking only free slots. The `detect_conflicts` sweep asks it
    /// before each of its list calls (which then take their burst slot as
    /// usual), so the sweep never uses more than `share` of the account's
    /// rate however much of the budget is free. `share` is read when the
    /// budget is first made (it is a start-up setting).
    pub async fn pace_share(
        &self,
        portal: &str,
        share: f64,
        requests: u32,
    ) -> Result<(), ProviderError> {
        let spec = BudgetSpec {
            limit: WindowLimit {
                requests: self.settings.requests_per_10s,
                window: BURST_WINDOW,
            },
            // The burst budget counts the day's requests, these among them.
            daily_limit: 0,
            share,
            kind: "sweep",
        };
        let budget = self.budgets.get(&format!("hubspot:{portal}:sweep"), spec);
        for _ in 0..requests.max(1) {
            budget.acquire(Priority::Background).await?;
        }
        Ok(())
    }

    /// The account's search budget (HubSpot counts search apart).
    pub(super) fn search_budget(&self, portal: &str) -> Pacer {
        let spec = BudgetSpec {
            limit: WindowLimit {
                requests: self.settings.search_requests_per_second,
                window: Duration::from_secs(1),
            },
            daily_limit: 0,
            share: 1.0,
            kind: "search",
        };
        Pacer {
            budget: self.budgets.get(&format!("hubspot:{portal}:search"), spec),
            priority: self.priority,
            prepaid: false,
        }
    }

    /// The portal (account) id the token belongs to (before a connection
    /// exists, so no account budget is known yet).
    pub async fn portal_id(&self, token: &SecretString) -> Result<u64, ProviderError> {
        self.account_details(token, None).await
    }

    /// A connection's health: the portal its token belongs to, asked within
    /// the account's budget.
    pub async fn check_account(
        &self,
        portal: &str,
        token: &SecretString,
    ) -> Result<u64, ProviderError> {
        self.account_details(token, Some(&self.burst_budget(portal)))
            .await
    }

    async fn account_details(
        &self,
        token: &SecretString,
        budget: Option<&Pacer>,
    ) -> Result<u64, ProviderError> {
        let request = self
            .http
            .get(self.url("/account-info/v3/details"))
            .bearer_auth(token.expose_secret());
        let body: Value = send(request, budget).await?;
        body.get("portalId")
            .and_then(Value::as_u64)
            .ok_or_else(|| ProviderError::Unavailable("account details without a portalId".into()))
    }

    /// Requests one [`Self::list_page`] call of up to `limit` records makes
    /// (at most 100): a leads page also reads its leads' contact
    /// associations and those contacts, one batch of 100 each. What a caller
    /// pacing its own share of the budget counts per page.
    pub fn list_page_requests(object: CrmObject, limit: u32) -> u32 {
        match object {
            CrmObject::Contacts => 1,
            CrmObject::Leads => 1 + 2 * limit.div_ceil(BATCH as u32).max(1),
        }
    }

    /// One page of every record of `object`, `limit` per page, from `after`.
    pub async fn list_page(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, ProviderError> {
        let mut query = vec![
            ("limit".to_string(), limit.to_string()),
            (
                "properties".to_string(),
                mapping::properties(object).join(","),
            ),
            ("archived".to_string(), "false".to_string()),
        ];
        if let Some(after) = after {
            query.push(("after".into(), after.into()));
        }
        let request = self
            .http
            .request(
                Method::GET,
                self.url(&format!("/crm/v3/objects/{}", object.as_str())),
            )
            .query(&query)
            .bearer_auth(token.expose_secret());
        let body: ListBody = send(request, Some(&self.burst_budget(portal))).await?;
        self.page(portal, token, object, body).await
    }

    /// One page of records changed per `query`, from offset `after`.
    pub async fn search_changes(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        query: &ChangeQuery,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, ProviderError> {
        let modified = mapping::modified_property(object);
        let ms = |t: &DateTime<Utc>| t.timestamp_millis().to_string();
        let (filters, sort) = match query {
            ChangeQuery::Window { since, until } => (
                json!([
                    {"propertyName": modified, "operator": "GTE", "value": ms(since)},
                    {"propertyName": modified, "operator": "LTE", "value": ms(until)},
                ]),
                modified,
            ),
            ChangeQuery::Instant { at, after_id } => (
                json!([
                    {"propertyName": modified, "operator": "EQ", "value": ms(at)},
                    {"propertyName": "hs_object_id", "operator": "GT", "value": after_id.as_str()},
                ]),
                "hs_object_id",
            ),
        };
        // The shapes HubSpot's search document gives
        // (`PublicObjectSearchRequest`): `sorts` holds property names
        // (ascending; a `-` prefix would sort descending), and `after` is
        // required — "0" on the first page.
        let body = json!({
            "filterGroups": [{"filters": filters}],
            "sorts": [sort],
            "properties": mapping::properties(object),
            "limit": limit,
            "after": after.unwrap_or("0"),
        });
        let request = self
            .http
            .post(self.url(&format!("/crm/v3/objects/{}/search", object.as_str())))
            .bearer_auth(token.expose_secret())
            .json(&body);
        let body: ListBody = send(request, Some(&self.search_budget(portal))).await?;
        self.page(portal, token, object, body).await
    }

    /// Waits for a slot of the account's request budget for one batch read,
    /// so the caller can decide *what* to read at the last moment: records
    /// that arrive while it waits join the read instead of costing another.
    pub async fn reserve_read(&self, portal: &str) -> Result<ReservedRead, ProviderError> {
        let pacer = self.burst_budget(portal);
        pacer.budget.acquire(pacer.priority).await?;
        Ok(ReservedRead::new())
    }

    /// Current state of up to 100 records by id (missing ids are left out).
    /// With `with_history`, each mapped property's change history comes too
    /// (for `newest_wins`); HubSpot takes 50 ids per call then, so a batch of
    /// 100 costs two calls. A `reserved` slot pays for the first call.
    pub async fn batch_read(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        ids: &[CrmId],
        with_history: bool,
        reserved: Option<ReservedRead>,
    ) -> Result<Vec<Incoming>, ProviderError> {
        let keys: Vec<String> = ids.iter().map(|id| id.as_str().to_string()).collect();
        let history = if with_history {
            mapping::field_properties(object)
        } else {
            Vec::new()
        };
        let read = ReadSpec {
            keys: &keys,
            id_property: None,
            properties: &mapping::properties(object),
            history: &history,
        };
        let raw = self
            .read_objects(portal, token, object, read, reserved.is_some())
            .await?;
        let mut records = match object {
            CrmObject::Contacts => raw
                .into_iter()
                .map(|o| mapping::to_incoming(object, o, self.settings.app_id))
                .collect::<Result<Vec<_>, _>>()?,
            CrmObject::Leads => self.with_contacts(portal, token, raw, with_history).await?,
        };
        for record in &mut records {
            record.history = with_history;
        }
        Ok(records)
    }

    /// Reads records of `object` by id (or by a unique `id_property`) with
    /// the given properties and, optionally, their history; `paid` when a
    /// reserved budget slot pays for the first call. Missing keys are left
    /// out.
    pub(super) async fn read_objects(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        read: ReadSpec<'_>,
        mut paid: bool,
    ) -> Result<Vec<HsObject>, ProviderError> {
        let chunk = if read.history.is_empty() {
            BATCH
        } else {
            HISTORY_BATCH
        };
        let mut out = Vec::with_capacity(read.keys.len());
        for keys in read.keys.chunks(chunk) {
            // HubSpot's document lists `propertiesWithHistory` as required:
            // sent empty when no history is wanted.
            let mut body = json!({
                "inputs": keys.iter().map(|k| json!({"id": k})).collect::<Vec<_>>(),
                "properties": read.properties,
                "propertiesWithHistory": read.history,
            });
            if let Some(id_property) = read.id_property {
                body["idProperty"] = json!(id_property);
            }
            let request = self
                .http
                .post(self.url(&format!("/crm/v3/objects/{}/batch/read", object.as_str())))
                .query(&[("archived", "false")])
                .bearer_auth(token.expose_secret())
                .json(&body);
            let pacer = self.unless_paid(portal, &mut paid);
            let reply: ListBody = send(request, Some(&pacer)).await?;
            out.extend(reply.results);
        }
        Ok(out)
    }

    /// Archives records by CRM id, up to 100 per call (a platform delete).
    /// Ids already gone are not an error: the outcome is the same.
    pub async fn batch_archive(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        ids: &[CrmId],
    ) -> Result<(), ProviderError> {
        for ids in ids.chunks(BATCH) {
            let body = json!({
                "inputs": ids.iter().map(|id| json!({"id": id.as_str()})).collect::<Vec<_>>(),
            });
            let request = self
                .http
                .post(self.url(&format!(
                    "/crm/v3/objects/{}/batch/archive",
                    object.as_str()
                )))
                .bearer_auth(token.expose_secret())
                .json(&body);
            send::<Value>(request, Some(&self.burst_budget(portal))).await?;
        }
        Ok(())
    }

    /// Creates crmsync's properties on `object` if they are missing: the
    /// unique `crmsync_record_id` (the upsert key) and `crmsync_source_system`
    /// — and, for leads, the contact's unique `crmsync_lead_record_id`.
    pub async fn ensure_properties(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
    ) -> Result<(), ProviderError> {
        let key = (portal.to_string(), object);
        if self.ensured.lock().is_ok_and(|set| set.contains(&key)) {
            return Ok(());
        }
        let mut wanted = vec![
            (
                object,
                mapping::RECORD_ID_PROPERTY,
                "crmsync record id",
                true,
            ),
            (
                object,
                mapping::SOURCE_SYSTEM_PROPERTY,
                "Source system",
                false,
            ),
        ];
        if object == CrmObject::Leads {
            wanted.push((
                CrmObject::Contacts,
                mapping::LEAD_CONTACT_KEY_PROPERTY,
                "crmsync lead record id",
                true,
            ));
        }
        // What exists already: one read per object, so that a new process
        // (or a restarted one) creates nothing twice and answers no 409s.
        let mut existing: std::collections::HashSet<(CrmObject, String)> = Default::default();
        let mut objects: Vec<CrmObject> = wanted.iter().map(|w| w.0).collect();
        objects.dedup();
        for object in objects {
            let request = self
                .http
                .get(self.url(&format!("/crm/v3/properties/{}", object.as_str())))
                .bearer_auth(token.expose_secret());
            let listed: Value = send(request, Some(&self.burst_budget(portal))).await?;
            for property in listed["results"].as_array().into_iter().flatten() {
                if let Some(name) = property["name"].as_str() {
                    existing.insert((object, name.to_string()));
                }
            }
        }
        for (object, name, label, unique) in wanted {
            if existing.contains(&(object, name.to_string())) {
                continue;
            }
            let group = match object {
                CrmObject::Contacts => "contactinformation",
                CrmObject::Leads => "lead_information",
            };
            let body = json!({
                "name": name, "label": label, "groupName": group, "type": "string",
                "fieldType": "text", "hasUniqueValue": unique, "formField": false,
                "description": "Set by crmsync",
            });
            let request = self
                .http
                .post(self.url(&format!("/crm/v3/properties/{}", object.as_str())))
                .bearer_auth(token.expose_secret())
                .json(&body);
            match send::<Value>(request, Some(&self.burst_budget(portal))).await {
                Ok(_) => {}
                // 409: it exists already (created by an earlier push).
                Err(ProviderError::Rejected { status: 409, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Ok(mut set) = self.ensured.lock() {
            set.insert(key);
        }
        Ok(())
    }

    /// Writes records that originated on the platform by upsert on
    /// `crmsync_record_id` (a retry after a crash cannot create a second
    /// record), and returns what each became.
    pub async fn batch_upsert(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        inputs: &[(String, serde_json::Map<String, Value>)],
    ) -> Result<Vec<Upserted>, ProviderError> {
        if object == CrmObject::Leads {
            return self.create_leads(portal, token, inputs).await;
        }
        let body = json!({"inputs": inputs.iter().map(|(our_id, properties)| json!({
            "idProperty": mapping::RECORD_ID_PROPERTY, "id": our_id, "properties": properties,
        })).collect::<Vec<_>>()});
        let request = self
            .http
            .post(self.url(&format!("/crm/v3/objects/{}/batch/upsert", object.as_str())))
            .bearer_auth(token.expose_secret())
            .json(&body);
        let reply: ListBody = send(request, Some(&self.burst_budget(portal))).await?;
        let mut ids = Vec::new();
        for result in reply.results {
            match result
                .properties
                .get(mapping::RECORD_ID_PROPERTY)
                .cloned()
                .flatten()
            {
                Some(ours) => ids.push(Upserted {
                    ours,
                    updated_at: result.updated_at.as_deref().and_then(mapping::parse_time),
                    crm_id: CrmId(result.id),
                    person: None,
                }),
                None => return self.ids_by_record_id(portal, token, object, inputs).await,
            }
        }
        Ok(ids)
    }

    /// `our id → CRM id` by a batch read on the unique property.
    async fn ids_by_record_id(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        inputs: &[(String, serde_json::Map<String, Value>)],
    ) -> Result<Vec<Upserted>, ProviderError> {
        let body = json!({
            "idProperty": mapping::RECORD_ID_PROPERTY,
            "inputs": inputs.iter().map(|(id, _)| json!({"id": id})).collect::<Vec<_>>(),
            "properties": [mapping::RECORD_ID_PROPERTY],
            "propertiesWithHistory": [],
        });
        let request = self
            .http
            .post(self.url(&format!("/crm/v3/objects/{}/batch/read", object.as_str())))
            .bearer_auth(token.expose_secret())
            .json(&body);
        let reply: ListBody = send(request, Some(&self.burst_budget(portal))).await?;
        Ok(reply
            .results
            .into_iter()
            .filter_map(|r| {
                Some(Upserted {
                    ours: r
                        .properties
                        .get(mapping::RECORD_ID_PROPERTY)
                        .cloned()
                        .flatten()?,
                    crm_id: CrmId(r.id),
                    person: None,
                    // A read's time, not the write's: unknown.
                    updated_at: None,
                })
            })
            .collect())
    }

    /// Patches records that are already linked, by CRM id (a lead's person
    /// lands on its contact).
    pub async fn batch_update(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        inputs: &[Update],
    ) -> Result<Vec<(CrmId, DateTime<Utc>)>, ProviderError> {
        match object {
            CrmObject::Contacts => {
                let inputs: Vec<(CrmId, serde_json::Map<String, Value>)> = inputs
                    .iter()
                    .map(|u| (u.crm_id.clone(), u.properties.clone()))
                    .collect();
                self.update_objects(portal, token, object, &inputs).await
            }
            // A lead's write spans the lead and its contact: no one time.
            CrmObject::Leads => self
                .update_leads(portal, token, inputs)
                .await
                .map(|()| Vec::new()),
        }
    }

    /// `batch/update` of `object`, 100 per call; returns when HubSpot says
    /// each record was updated (`updatedAt`), so that a read taken before
    /// the write can be told apart from one taken after it.
    pub(super) async fn update_objects(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        inputs: &[(CrmId, serde_json::Map<String, Value>)],
    ) -> Result<Vec<(CrmId, DateTime<Utc>)>, ProviderError> {
        let mut updated = Vec::with_capacity(inputs.len());
        for inputs in inputs.chunks(BATCH) {
            let body = json!({"inputs": inputs.iter().map(|(id, properties)| json!({"id": id.as_str(), "properties": properties})).collect::<Vec<_>>()});
            let request = self
                .http
                .post(self.url(&format!("/crm/v3/objects/{}/batch/update", object.as_str())))
                .bearer_auth(token.expose_secret())
                .json(&body);
            let body: Value = send(request, Some(&self.burst_budget(portal))).await?;
            for result in body["results"].as_array().into_iter().flatten() {
                if let (Some(id), Some(at)) = (
                    result["id"].as_str(),
                    result["updatedAt"].as_str().and_then(mapping::parse_time),
                ) {
                    updated.push((CrmId(id.to_string()), at));
                }
            }
        }
        Ok(updated)
    }

    /// A POST of `form` (URL-encoded) to HubSpot's OAuth v3 token endpoint.
    pub(super) fn token_request(&self, form: String) -> RequestBuilder {
        self.http
            .post(self.url("/oauth/v3/token"))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
    }

    /// Exchanges a refresh token (OAuth v3 token endpoint).
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        let (Some(client_id), Some(secret)) =
            (&self.settings.client_id, &self.settings.client_secret)
        else {
            return Err(ProviderError::Unauthorized(
                "OAuth refresh needs CRMSYNC__HUBSPOT__CLIENT_ID and CRMSYNC__HUBSPOT__CLIENT_SECRET".into(),
            ));
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = self.token_request(body);
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            refresh_token: Option<String>,
            expires_in: u64,
        }
        let tokens: TokenBody = match send(request, None).await {
            // The token endpoint answers 400 for a revoked or unknown refresh token.
            Err(ProviderError::Rejected { message, .. }) => {
                return Err(ProviderError::Unauthorized(message));
            }
            other => other?,
        };
        Ok(RefreshedTokens {
            access_token: SecretString::from(tokens.access_token),
            refresh_token: tokens
                .refresh_token
                .map_or_else(|| refresh_token.clone(), SecretString::from),
            expires_in: Duration::from_secs(tokens.expires_in),
        })
    }
}

impl HubspotClient {
    /// Maps a list or search reply (leads with their contacts).
    pub(super) async fn page(
        &self,
        portal: &str,
        token: &SecretString,
        object: CrmObject,
        body: ListBody,
    ) -> Result<Page, ProviderError> {
        let next = body.paging.and_then(|p| p.next).map(|n| n.after);
        let scanned = body.results.len();
        let listed = body.results.iter().map(|o| CrmId(o.id.clone())).collect();
        let last_position = body.results.last().and_then(|o| {
            let at = o
                .properties
                .get(mapping::modified_property(object))
                .and_then(|v| v.as_deref())
                .or(o.updated_at.as_deref())
                .and_then(mapping::parse_time)?;
            Some((at, CrmId(o.id.clone())))
        });
        let records = match object {
            CrmObject::Contacts => body
                .results
                .into_iter()
                .map(|o| mapping::to_incoming(object, o, self.settings.app_id))
                .collect::<Result<Vec<_>, _>>()?,
            CrmObject::Leads => {
                self.with_contacts(portal, token, body.results, false)
                    .await?
            }
        };
        Ok(Page {
            records,
            next,
            last_position,
            scanned,
            listed,
        })
    }
}

/// Sends with a short in-process retry for flaky answers (5xx, timeouts,
/// cut connections: two more tries after ~100 ms and ~300 ms, jittered), so
/// one hiccup does not fail a whole page job; anything else — and a third
/// failure — goes back to the job's own retry with backoff.
pub(super) async fn send<T: serde::de::DeserializeOwned>(
    request: RequestBuilder,
    budget: Option<&Pacer>,
) -> Result<T, ProviderError> {
    use backon::{ExponentialBuilder, Retryable};
    // A slot paid ahead covers the first try only; retries take their own.
    let prepaid = std::sync::atomic::AtomicBool::new(budget.is_some_and(|p| p.prepaid));
    let attempt = || async {
        let request = request
            .try_clone()
            .ok_or_else(|| ProviderError::Transport("request cannot be retried".into()))?;
        send_once(request, budget, &prepaid).await
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_factor(3.0)
                .with_max_times(2)
                .with_jitter(),
        )
        .when(|e: &ProviderError| {
            matches!(
                e,
                ProviderError::Unavailable(_) | ProviderError::Transport(_)
            )
        })
        .await
}

/// Sends once after taking the budget (or, for a slot paid ahead, after
/// any cool-down that began since); classifies the answer.
async fn send_once<T: serde::de::DeserializeOwned>(
    request: RequestBuilder,
    budget: Option<&Pacer>,
    prepaid: &std::sync::atomic::AtomicBool,
) -> Result<T, ProviderError> {
    if let Some(pacer) = budget {
        if prepaid.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let waited = pacer
                .budget
                .honour_cool_down(std::time::Instant::now())
                .await?;
            if waited {
                pacer.budget.acquire(pacer.priority).await?;
            }
        } else {
            pacer.budget.acquire(pacer.priority).await?;
        }
    }
    let response = request.send().await.map_err(|e| {
        // Without the URL: a query string may carry a key (`hapikey`).
        let e = e.without_url();
        metrics::counter!("crmsync_crm_requests_total", "provider" => "hubspot", "status" => if e.is_timeout() { "timeout" } else { "transport" })
            .increment(1);
        if e.is_timeout() {
            ProviderError::Unavailable(format!("timed out: {e}"))
        } else {
            ProviderError::Transport(e.to_string())
        }
    })?;
    let status = response.status();
    let class = match status.as_u16() {
        429 => "429",
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    };
    metrics::counter!("crmsync_crm_requests_total", "provider" => "hubspot", "status" => class)
        .increment(1);
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ProviderError::Unavailable(format!("body cut short: {e}")))?;
    if status.is_success() {
        // 204 No Content (archive) reads as JSON `null`.
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        return serde_json::from_slice(body)
            .map_err(|e| ProviderError::Unavailable(format!("unreadable response body: {e}")));
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = body.get("message").and_then(Value::as_str).map_or_else(
        || String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        str::to_string,
    );
    let error = classify(status, &headers, &body, message);
    if let (ProviderError::RateLimited { retry_after, .. }, Some(pacer)) = (&error, budget) {
        pacer.budget.cool_down(*retry_after).await;
    }
    Err(error)
}

/// Maps a non-2xx answer to a [`ProviderError`].
fn classify(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    message: String,
) -> ProviderError {
    match status.as_u16() {
        429 => super::throttle::from_429(headers, body).into(),
        401 | 403 => ProviderError::Unauthorized(message),
        404 => ProviderError::NotFound(message),
        408 | 423 | 477 => ProviderError::Unavailable(format!("{status}: {message}")),
        s if s >= 500 => ProviderError::Unavailable(format!("{status}: {message}")),
        s => ProviderError::Rejected { status: s, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn a_leads_page_costs_its_list_and_the_reads_of_its_contacts() {
        assert_eq!(
            HubspotClient::list_page_requests(CrmObject::Contacts, 100),
            1
        );
        assert_eq!(HubspotClient::list_page_requests(CrmObject::Leads, 100), 3);
        assert_eq!(HubspotClient::list_page_requests(CrmObject::Leads, 5), 3);
    }

    #[test]
    fn rate_limits_use_retry_after_or_the_policy_window() {
        let body = json!({"policyName": "TEN_SECONDLY_ROLLING"});
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            &body,
            String::new(),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(10)));
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("3"));
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            &body,
            String::new(),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
    }

    #[test]
    fn client_errors_are_final_and_server_errors_are_retried() {
        let none = HeaderMap::new();
        assert!(!classify(StatusCode::BAD_REQUEST, &none, &Value::Null, "x".into()).is_retryable());
        assert!(
            !classify(StatusCode::UNAUTHORIZED, &none, &Value::Null, "x".into()).is_retryable()
        );
        assert!(classify(StatusCode::BAD_GATEWAY, &none, &Value::Null, "x".into()).is_retryable());
    }
}
