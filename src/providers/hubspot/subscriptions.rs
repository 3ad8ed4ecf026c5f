//! Webhook registration for our public app through HubSpot's Webhooks v3
//! management API (developer API key): the target URL, and the subscriptions
//! crmsync needs — creations, deletions, merges, restores, privacy deletions
//! and a change of each mapped property, for each synced object. Idempotent:
//! what exists is kept, what is paused is activated, what is missing is made.

use super::client::{HubspotClient, send};
use super::mapping;
use crate::domain::CrmObject;
use crate::providers::error::ProviderError;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

/// One subscription crmsync needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    /// `contact.creation`, `object.propertyChange`, …
    pub event_type: String,
    /// For `*.propertyChange`.
    pub property_name: Option<String>,
    /// For `object.*` (leads: `0-136`).
    pub object_type_id: Option<String>,
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.event_type)?;
        if let Some(t) = &self.object_type_id {
            write!(f, " ({t})")?;
        }
        if let Some(p) = &self.property_name {
            write!(f, " of {p}")?;
        }
        Ok(())
    }
}

/// The subscriptions that feed the sync of `objects`.
pub fn wanted(objects: &[CrmObject]) -> Vec<Wanted> {
    let mut out = Vec::new();
    for object in objects {
        let (prefix, type_id) = match object {
            CrmObject::Contacts => ("contact", None),
            CrmObject::Leads => ("object", Some("0-136".to_string())),
        };
        let mut events = vec!["creation", "deletion", "merge", "restore"];
        if *object == CrmObject::Contacts {
            events.push("privacyDeletion");
        }
        for event in events {
            out.push(Wanted {
                event_type: format!("{prefix}.{event}"),
                property_name: None,
                object_type_id: type_id.clone(),
            });
        }
        for property in mapping::field_properties(*object) {
            out.push(Wanted {
                event_type: format!("{prefix}.propertyChange"),
                property_name: Some(property.to_string()),
                object_type_id: type_id.clone(),
            });
        }
        // A lead's person lives on its contact: edits there change the lead.
        if *object == CrmObject::Leads {
            for property in mapping::lead_person_properties() {
                out.push(Wanted {
                    event_type: "contact.propertyChange".into(),
                    property_name: Some(property.to_string()),
                    object_type_id: None,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What registration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Subscriptions created.
    pub created: Vec<Wanted>,
    /// Paused subscriptions activated.
    pub activated: Vec<Wanted>,
    /// Subscriptions already in place.
    pub kept: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Existing {
    id: Value,
    event_type: String,
    property_name: Option<String>,
    object_type_id: Option<String>,
    #[serde(default)]
    active: bool,
}

#[derive(Deserialize)]
struct ExistingList {
    #[serde(default)]
    results: Vec<Existing>,
}

impl HubspotClient {
    fn developer_url(&self, app_id: u64, path: &str, key: &SecretString) -> String {
        format!(
            "{}?hapikey={}",
            self.url(&format!("/webhooks/v3/{app_id}{path}")),
            key.expose_secret()
        )
    }

    /// Points the app's webhooks at `target_url` and makes sure every
    /// subscription in `wanted` exists and is active.
    pub async fn register_webhooks(
        &self,
        app_id: u64,
        key: &SecretString,
        target_url: &str,
        max_concurrent_requests: u32,
        wanted: &[Wanted],
    ) -> Result<Registered, ProviderError> {
        let settings = json!({
            "targetUrl": target_url,
            "throttling": {"maxConcurrentRequests": max_concurrent_requests, "period": "SECONDLY"},
        });
        send::<Value>(
            self.http
                .put(self.developer_url(app_id, "/settings", key))
                .json(&settings),
            None,
        )
        .await?;
        let existing: ExistingList = send(
            self.http
                .get(self.developer_url(app_id, "/subscriptions", key)),
            None,
        )
        .await?;
        let mut done = Registered::default();
        for want in wanted {
            let found = existing.results.iter().find(|e| {
                e.event_type == want.event_type
                    && e.property_name == want.property_name
                    && (e.object_type_id == want.object_type_id || want.object_type_id.is_none())
            });
            match found {
                Some(e) if e.active => done.kept += 1,
                Some(e) => {
                    let id = match &e.id {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    send::<Value>(
                        self.http
                            .patch(self.developer_url(app_id, &format!("/subscriptions/{id}"), key))
                            .json(&json!({"active": true})),
                        None,
                    )
                    .await?;
                    done.activated.push(want.clone());
                }
                None => {
                    let mut body = json!({"eventType": want.event_type, "active": true});
                    if let Some(p) = &want.property_name {
                        body["propertyName"] = json!(p);
                    }
                    if let Some(t) = &want.object_type_id {
                        body["objectTypeId"] = json!(t);
                    }
                    send::<Value>(
                        self.http
                            .post(self.developer_url(app_id, "/subscriptions", key))
                            .json(&body),
                        None,
                    )
                    .await?;
                    done.created.push(want.clone());
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_need_lifecycle_events_and_one_property_change_per_mapped_field() {
        let w = wanted(&[CrmObject::Contacts]);
        assert!(w.iter().any(|s| s.event_type == "contact.privacyDeletion"));
        assert!(w.iter().any(|s| s.event_type == "contact.merge"));
        let changes: Vec<_> = w
            .iter()
            .filter(|s| s.event_type == "contact.propertyChange")
            .filter_map(|s| s.property_name.as_deref())
            .collect();
        assert_eq!(
            changes.len(),
            mapping::field_properties(CrmObject::Contacts).len()
        );
        assert!(changes.contains(&"email") && changes.contains(&"hs_lead_status"));
        // Never the modified-date property: HubSpot refuses it.
        assert!(!changes.contains(&"lastmodifieddate"));
    }

    #[test]
    fn leads_use_the_generic_object_events_and_their_contacts_person_changes() {
        let w = wanted(&[CrmObject::Leads]);
        let (lead, contact): (Vec<_>, Vec<_>) =
            w.iter().partition(|s| s.event_type.starts_with("object."));
        assert!(
            lead.iter()
                .all(|s| s.object_type_id.as_deref() == Some("0-136"))
        );
        assert!(
            lead.iter()
                .any(|s| s.property_name.as_deref() == Some("hs_pipeline_stage"))
        );
        assert!(lead.iter().any(|s| s.event_type == "object.deletion"));
        // The person is the contact's: its edits come as contact events.
        let person: Vec<_> = contact
            .iter()
            .map(|s| (s.event_type.as_str(), s.property_name.as_deref()))
            .collect();
        assert!(person.contains(&("contact.propertyChange", Some("email"))));
        assert!(person.contains(&("contact.propertyChange", Some("jobtitle"))));
        assert!(!person.iter().any(|(_, p)| *p == Some("hs_lead_status")));
    }
}
