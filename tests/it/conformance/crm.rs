//! The seam between the scenarios and one CRM: how a scenario acts as a
//! user of that CRM (create, edit, delete, merge, import), reads what the
//! CRM holds, and makes the CRM misbehave (index lag, faults, held answers)
//! — each through the provider's own sandbox over HTTP, never through
//! crmsync's adapter. A new provider adds one arm to each method.

use crate::fleet::Fleet;
use crate::support::PORTAL;
use crmsync::config::Settings;
use crmsync::domain::{CanonicalField, ProviderKind};
use crmsync::store::Credentials;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A provider under test.
#[derive(Debug, Clone, Copy)]
pub enum Crm {
    /// HubSpot: contacts ↔ platform leads.
    Hubspot,
}

/// A person as the CRM holds it: each text as stored ("" when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Normalised (trimmed, lowercase) email.
    pub email: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Job title.
    pub job_title: String,
    /// Company name.
    pub company: String,
}

/// The CRM's misbehaviour, as rates per API request in `[0, 1]` (garbage
/// bodies come from [`super::garbage::Garbler`], in front of any CRM).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Share answered with a 5xx.
    pub error_rate: f64,
    /// Share answered with a 429 though no budget is spent.
    pub rate_limit_rate: f64,
    /// Share that hang until the client gives up.
    pub timeout_rate: f64,
    /// Milliseconds added to every call (to slow a sync down enough to act
    /// in its middle).
    pub latency_ms: u64,
}

/// Faults the CRM injected so far, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// 429s.
    pub throttled: u64,
    /// 5xx answers.
    pub failed: u64,
    /// Calls left hanging.
    pub hung: u64,
}

/// The part of crmsync's settings that says how to reach a CRM's API.
pub struct ApiSettings<'a> {
    /// Where the API is.
    pub base_url: &'a mut String,
    /// How long crmsync waits for one answer, in seconds.
    pub request_timeout_secs: &'a mut u64,
}

/// HubSpot's contact property holding a platform field.
fn hubspot_property(field: CanonicalField) -> &'static str {
    match field {
        CanonicalField::Email => "email",
        CanonicalField::FirstName => "firstname",
        CanonicalField::LastName => "lastname",
        CanonicalField::Company => "company",
        CanonicalField::JobTitle => "jobtitle",
        CanonicalField::Phone => "phone",
        CanonicalField::Status => "hs_lead_status",
    }
}

/// HubSpot's write routes (as its counters and holds name them): creates
/// and patches by batch, deletes by batch archive.
const HUBSPOT_WRITES: [&str; 3] = [
    "POST /crm/v3/objects/{object_type}/batch/upsert",
    "POST /crm/v3/objects/{object_type}/batch/update",
    "POST /crm/v3/objects/{object_type}/batch/archive",
];

/// HubSpot's batch read: what a push reads before it writes.
const HUBSPOT_READ: &str = "POST /crm/v3/objects/{object_type}/batch/read";

impl Crm {
    /// The provider crmsync knows this CRM as.
    pub fn provider(self) -> ProviderKind {
        match self {
            Crm::Hubspot => ProviderKind::Hubspot,
        }
    }

    /// Every live person record of the synced object, by CRM id.
    pub async fn people(self, fleet: &Fleet) -> BTreeMap<String, Person> {
        match self {
            Crm::Hubspot => fleet
                .sandbox_contacts()
                .await
                .into_iter()
                .map(|(id, p)| {
                    let text = |field| {
                        p[hubspot_property(field)]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    };
                    let person = Person {
                        email: text(CanonicalField::Email).trim().to_lowercase(),
                        first_name: text(CanonicalField::FirstName),
                        last_name: text(CanonicalField::LastName),
                        job_title: text(CanonicalField::JobTitle),
                        company: text(CanonicalField::Company),
                    };
                    (id, person)
                })
                .collect(),
        }
    }

    /// Every live person as (CRM id, email), in the order of [`Self::people`].
    pub async fn emails(self, fleet: &Fleet) -> Vec<(String, String)> {
        self.people(fleet)
            .await
            .into_iter()
            .map(|(id, p)| (id, p.email))
            .collect()
    }

    /// A CRM user creates a person; answers its CRM id.
    pub async fn create(self, fleet: &Fleet, email: &str, first_name: &str) -> String {
        match self {
            Crm::Hubspot => {
                let created = fleet
                    .sandbox
                    .post_control(
                        &format!("/_sandbox/accounts/{PORTAL}/objects/contacts"),
                        json!({"properties": {"email": email, "firstname": first_name}}),
                    )
                    .await;
                assert!(created.status.is_success(), "{:?}", created.body);
                created.body["id"].as_str().expect("id").to_string()
            }
        }
    }

    /// A CRM user edits a person's first name.
    pub async fn edit(self, fleet: &Fleet, id: &str, first_name: &str) {
        self.edit_fields(fleet, id, &[(CanonicalField::FirstName, first_name)])
            .await;
    }

    /// A CRM user sets fields of a person to values as given: the CRM
    /// takes what its own rules allow, whatever the platform's are.
    pub async fn edit_fields(self, fleet: &Fleet, id: &str, fields: &[(CanonicalField, &str)]) {
        match self {
            Crm::Hubspot => {
                let properties: serde_json::Map<String, Value> = fields
                    .iter()
                    .map(|(f, v)| (hubspot_property(*f).to_string(), json!(v)))
                    .collect();
                let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}");
                let body = json!({ "properties": properties });
                let edited = fleet
                    .sandbox
                    .control(Method::PATCH, &path, Some(body))
                    .await;
                assert!(edited.status.is_success(), "{:?}", edited.body);
            }
        }
    }

    /// A CRM user's import sets the first name of every person in `ids`
    /// in one instant (one modification time for all): each becomes
    /// `"{first_name} #{id}"`, so every record really changes.
    pub async fn import_first_names(self, fleet: &Fleet, ids: &[String], first_name: &str) {
        match self {
            Crm::Hubspot => {
                let ids: Vec<u64> = ids
                    .iter()
                    .map(|id| id.parse().expect("numeric id"))
                    .collect();
                let reply = fleet
                    .sandbox
                    .post_control(
                        &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/bulk-update"),
                        json!({"ids": ids, "properties": {"firstname": first_name}, "suffixWithId": true}),
                    )
                    .await;
                assert!(reply.status.is_success(), "{:?}", reply.body);
                assert_eq!(
                    reply.body["updated"].as_u64(),
                    Some(ids.len() as u64),
                    "every record changed: {:?}",
                    reply.body
                );
            }
        }
    }

    /// The most results the CRM's change feed (what a delta reads) gives
    /// for one query; more changes than this need the query narrowed.
    pub fn result_cap(self) -> usize {
        match self {
            Crm::Hubspot => crmsync::sandbox::hubspot::search::RESULT_CAP,
        }
    }

    /// Sets how long a write takes to show in the CRM's change feed.
    pub async fn set_index_lag(self, fleet: &Fleet, lag: Duration) {
        match self {
            Crm::Hubspot => {
                let lag = u64::try_from(lag.as_millis()).expect("a lag in range");
                let set = fleet
                    .sandbox
                    .put_control(
                        "/_sandbox/settings",
                        json!({"indexLagMs": lag, "tokenTtlSecs": 1_800}),
                    )
                    .await;
                assert!(set.status.is_success(), "{:?}", set.body);
            }
        }
    }

    /// Whether the CRM's change feed already shows person `id` with
    /// `first_name` (its index has caught up with that edit).
    pub async fn feed_shows(self, fleet: &Fleet, id: &str, first_name: &str) -> bool {
        match self {
            Crm::Hubspot => {
                let found = fleet
                    .sandbox
                    .post(
                        "/crm/v3/objects/contacts/search",
                        json!({
                            "filterGroups": [{"filters": [
                                {"propertyName": "hs_object_id", "operator": "EQ", "value": id}
                            ]}],
                            "properties": ["firstname"],
                        }),
                    )
                    .await;
                assert!(found.status.is_success(), "{:?}", found.body);
                found.body["results"][0]["properties"]["firstname"] == first_name
            }
        }
    }

    /// Sets the CRM's faults (all off with `Faults::default()`).
    pub async fn set_faults(self, fleet: &Fleet, faults: Faults) {
        match self {
            Crm::Hubspot => {
                let knobs = json!({
                    "errorRate": faults.error_rate,
                    "rateLimitRate": faults.rate_limit_rate,
                    "timeoutRate": faults.timeout_rate,
                    "latencyMs": faults.latency_ms,
                });
                let reply = fleet.sandbox.put_control("/_sandbox/faults", knobs).await;
                assert!(reply.status.is_success(), "{:?}", reply.body);
            }
        }
    }

    /// The faults the CRM injected so far.
    pub async fn injected(self, fleet: &Fleet) -> Injected {
        match self {
            Crm::Hubspot => {
                let counters = fleet.sandbox.counters().await;
                let count = |v: &Value| v.as_u64().unwrap_or(0);
                // 5xx and hangs are counted together; a hang is never
                // answered in time to be counted by status.
                let failed = count(&counters["responses"]["5xx"]);
                Injected {
                    throttled: count(&counters["rateLimited"]["INJECTED"]),
                    failed,
                    hung: count(&counters["faultsInjected"]).saturating_sub(failed),
                }
            }
        }
    }

    /// Where crmsync's `settings` say this CRM's API is, and how long they
    /// wait for it (to put a proxy in front, or give up sooner).
    pub fn api_settings(self, settings: &mut Settings) -> ApiSettings<'_> {
        match self {
            Crm::Hubspot => ApiSettings {
                base_url: &mut settings.hubspot.api_base_url,
                request_timeout_secs: &mut settings.hubspot.request_timeout_secs,
            },
        }
    }

    /// Holds the answer of the CRM's next write of each kind (create,
    /// update, delete) after carrying the write out, until [`Self::release`]:
    /// the write is in the CRM, its writer has not heard so.
    pub async fn hold_next_write(self, fleet: &Fleet) {
        match self {
            Crm::Hubspot => {
                for route in HUBSPOT_WRITES {
                    hubspot_hold(fleet, route).await;
                }
            }
        }
    }

    /// Holds the answer of the CRM's next batch read by id (what a push
    /// reads before it writes), until [`Self::release`].
    pub async fn hold_next_read(self, fleet: &Fleet) {
        match self {
            Crm::Hubspot => hubspot_hold(fleet, HUBSPOT_READ).await,
        }
    }

    /// How many answers the CRM holds now.
    pub async fn held(self, fleet: &Fleet) -> u64 {
        match self {
            Crm::Hubspot => {
                let path = format!("/_sandbox/accounts/{PORTAL}/holds");
                let holds = fleet.sandbox.control(Method::GET, &path, None).await;
                holds.body["waiting"].as_u64().unwrap_or(0)
            }
        }
    }

    /// Lets every held answer go and disarms the holds not used yet.
    pub async fn release(self, fleet: &Fleet) {
        match self {
            Crm::Hubspot => {
                let path = format!("/_sandbox/accounts/{PORTAL}/holds/release");
                let released = fleet.sandbox.post_control(&path, json!({})).await;
                assert_eq!(released.status, reqwest::StatusCode::NO_CONTENT);
            }
        }
    }

    /// An email the platform accepts (its HTML rule) and the CRM refuses.
    pub fn refused_email(self) -> &'static str {
        match self {
            // HubSpot wants a dot in the domain and refuses the whole
            // batch that holds it.
            Crm::Hubspot => "a@b",
        }
    }

    /// A CRM user deletes a person.
    pub async fn delete(self, fleet: &Fleet, id: &str) {
        match self {
            Crm::Hubspot => {
                let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}");
                let deleted = fleet.sandbox.control(Method::DELETE, &path, None).await;
                assert!(deleted.status.is_success(), "{:?}", deleted.body);
            }
        }
    }

    /// A CRM user merges `loser` into `survivor`; answers the id that
    /// survives (a CRM may give the merged record a new id).
    pub async fn merge(self, fleet: &Fleet, loser: &str, survivor: &str) -> String {
        match self {
            Crm::Hubspot => {
                let merged = fleet
                    .sandbox
                    .post_control(
                        &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/merge"),
                        json!({"primaryObjectId": survivor, "objectIdToMerge": loser}),
                    )
                    .await;
                assert!(merged.status.is_success(), "{:?}", merged.body);
                merged.body["id"].as_str().expect("id").to_string()
            }
        }
    }

    /// Requests that wrote to the CRM so far (creates, updates, deletes):
    /// what echo writes would add to.
    pub async fn writes(self, fleet: &Fleet) -> u64 {
        match self {
            Crm::Hubspot => {
                let counters = fleet.sandbox.counters().await;
                counters["requests"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(route, _)| {
                                !route.starts_with("GET")
                                    && !route.contains("/search")
                                    && !route.contains("batch/read")
                                    && !route.contains("/oauth")
                            })
                            .filter_map(|(_, n)| n.as_u64())
                            .sum()
                    })
                    .unwrap_or(0)
            }
        }
    }

    /// The fleet's connection is (re)connected with OAuth tokens from the
    /// CRM's own consent and token endpoints; answers (access, refresh).
    /// Call before workers start (the fleet is rewired with the app's
    /// client id and secret).
    pub async fn connect_with_oauth(self, fleet: &mut Fleet) -> (String, String) {
        match self {
            Crm::Hubspot => {
                let (id, secret) = ("sandbox-client-id", "sandbox-client-secret");
                fleet
                    .rewire(|s| {
                        s.hubspot.client_id = Some(id.into());
                        s.hubspot.client_secret = Some(SecretString::from(secret));
                    })
                    .await;
                let (access, refresh, expires_in) = fleet.sandbox.oauth_tokens(id, secret).await;
                let credentials = Credentials::OAuth {
                    access_token: SecretString::from(access.clone()),
                    refresh_token: SecretString::from(refresh.clone()),
                    expires_at: chrono::Utc::now()
                        + chrono::Duration::seconds(i64::try_from(expires_in).unwrap_or(0)),
                };
                let (connection, _) = crmsync::cli::connect_hubspot_token(
                    &fleet.settings,
                    &fleet.store,
                    fleet.tenant,
                    credentials,
                    None,
                )
                .await
                .expect("connect with OAuth tokens");
                assert_eq!(
                    connection, fleet.connection,
                    "the same account, re-authorised"
                );
                (access, refresh)
            }
        }
    }

    /// The CRM expires an access token before its stated lifetime.
    pub async fn expire(self, fleet: &Fleet, access_token: &str) {
        match self {
            Crm::Hubspot => fleet.sandbox.expire_token(access_token).await,
        }
    }

    /// The customer revokes crmsync's access (uninstalls the app).
    pub async fn revoke(self, fleet: &Fleet, refresh_token: &str) {
        match self {
            Crm::Hubspot => {
                fleet
                    .sandbox
                    .token_endpoint(
                        "/oauth/v3/token/revoke",
                        &[
                            ("client_id", "sandbox-client-id"),
                            ("client_secret", "sandbox-client-secret"),
                            ("token", refresh_token),
                        ],
                    )
                    .await;
            }
        }
    }

    /// Whether the CRM takes `token` now.
    pub async fn takes(self, fleet: &Fleet, token: &str) -> bool {
        match self {
            Crm::Hubspot => fleet.sandbox.status_with(token).await.is_success(),
        }
    }
}

/// Holds the next answer of HubSpot's `route`.
async fn hubspot_hold(fleet: &Fleet, route: &str) {
    let armed = fleet
        .sandbox
        .post_control(
            &format!("/_sandbox/accounts/{PORTAL}/holds"),
            json!({"route": route, "count": 1}),
        )
        .await;
    assert_eq!(
        armed.status,
        reqwest::StatusCode::NO_CONTENT,
        "{:?}",
        armed.body
    );
}
