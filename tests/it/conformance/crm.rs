//! The seam between the scenarios and one CRM: how a scenario acts as a
//! user of that CRM (create, edit, delete, merge) and reads what the CRM
//! holds — each through the provider's own sandbox over HTTP, never through
//! crmsync's adapter. A new provider adds one arm to each method.

use crate::fleet::Fleet;
use crate::support::PORTAL;
use crmsync::store::Credentials;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;
use std::collections::BTreeMap;

/// A provider under test.
#[derive(Debug, Clone, Copy)]
pub enum Crm {
    /// HubSpot: contacts ↔ platform leads.
    Hubspot,
}

/// A person as the CRM holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Normalised (trimmed, lowercase) email.
    pub email: String,
    /// First name.
    pub first_name: String,
}

impl Crm {
    /// Every live person record of the synced object, by CRM id.
    pub async fn people(self, fleet: &Fleet) -> BTreeMap<String, Person> {
        match self {
            Crm::Hubspot => fleet
                .sandbox_contacts()
                .await
                .into_iter()
                .map(|(id, p)| {
                    let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    let email = text("email").trim().to_lowercase();
                    (
                        id,
                        Person {
                            email,
                            first_name: text("firstname"),
                        },
                    )
                })
                .collect(),
        }
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
        match self {
            Crm::Hubspot => {
                let path = format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{id}");
                let body = json!({"properties": {"firstname": first_name}});
                let edited = fleet
                    .sandbox
                    .control(Method::PATCH, &path, Some(body))
                    .await;
                assert!(edited.status.is_success(), "{:?}", edited.body);
            }
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
