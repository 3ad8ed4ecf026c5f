//! The seam between the scenarios and one CRM: how a scenario acts as a
//! user of that CRM (create, edit, delete, merge) and reads what the CRM
//! holds — each through the provider's own sandbox over HTTP, never through
//! crmsync's adapter. A new provider adds one arm to each method.

use crate::fleet::Fleet;
use crate::support::PORTAL;
use reqwest::Method;
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
}
