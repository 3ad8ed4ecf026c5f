//! HubSpot's Leads object as one platform lead: the lead (its stage, our
//! record id) and its primary contact (the person). HubSpot's leads guide:
//! a lead "must be associated with an existing contact", batch upsert,
//! batch read and search carry no associations, and the contacts of a lead
//! are read with `POST /crm/v4/associations/leads/contacts/batch/read`.
//!
//! Reads fold each lead's primary contact into it (association type 578,
//! "Lead to primary contact"; else the lowest associated contact id), so the
//! jobs see one record per lead, linked by the lead's id. A lead with no live
//! contact is left out, as if gone: its platform record is kept, not wiped.
//!
//! Writes split the properties: the person goes to the contact, the stage
//! and name to the lead. A new platform lead gets its contact first — found
//! by email (HubSpot keeps contact emails unique) or, without one, by a
//! unique `crmsync_lead_record_id` — and then the lead, created with its
//! contact association, unless a lead already carries our record id (then
//! it is updated): a retry after a crash finds both instead of making
//! seconds, as an upsert would.

use super::client::{HubspotClient, ReadSpec, ReservedRead, Update, Upserted, send};
use super::mapping::{self, HsObject};
use crate::domain::{CrmId, CrmObject};
use crate::providers::error::ProviderError;
use crate::sync::Incoming;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// "Lead to primary contact" (HubSpot's associations guide).
const LEAD_TO_PRIMARY_CONTACT: u64 = 578;
/// HubSpot's batch endpoints take at most 100 inputs (v4 included).
const BATCH: usize = 100;

type Properties = Map<String, Value>;

#[derive(Deserialize)]
struct AssociationsBody {
    #[serde(default)]
    results: Vec<AssociationResult>,
}

#[derive(Deserialize)]
struct AssociationResult {
    from: AssociationFrom,
    #[serde(default)]
    to: Vec<AssociationTo>,
}

#[derive(Deserialize)]
struct AssociationFrom {
    id: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssociationTo {
    to_object_id: Value,
    #[serde(default)]
    association_types: Vec<AssociationType>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssociationType {
    type_id: u64,
}

/// An id HubSpot gives as a string or a number.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl HubspotClient {
    /// The associated records of `ids` (`from` → `to`), with their
    /// association type ids; ids with none are left out. `paid` when a
    /// reserved budget slot pays for the first call.
    async fn associations(
        &self,
        portal: &str,
        token: &SecretString,
        (from, to): (CrmObject, CrmObject),
        ids: &[CrmId],
        mut paid: bool,
    ) -> Result<BTreeMap<CrmId, Vec<(CrmId, Vec<u64>)>>, ProviderError> {
        let mut out = BTreeMap::new();
        for ids in ids.chunks(BATCH) {
            let body = json!({
                "inputs": ids.iter().map(|id| json!({"id": id.as_str()})).collect::<Vec<_>>(),
            });
            let request = self
                .http
                .post(self.url(&format!(
                    "/crm/v4/associations/{}/{}/batch/read",
                    from.as_str(),
                    to.as_str()
                )))
                .bearer_auth(token.expose_secret())
                .json(&body);
            let pacer = self.unless_paid(portal, &mut paid);
            // 207 with `errors` for ids without associations: not an error.
            let reply: AssociationsBody = send(request, Some(&pacer)).await?;
            for result in reply.results {
                let Some(from) = id_of(&result.from.id) else {
                    continue;
                };
                let targets = result
                    .to
                    .into_iter()
                    .filter_map(|t| {
                        let types = t.association_types.iter().map(|a| a.type_id).collect();
                        Some((CrmId(id_of(&t.to_object_id)?), types))
                    })
                    .collect();
                out.insert(CrmId(from), targets);
            }
        }
        Ok(out)
    }

    /// Each lead's primary contact: the one associated as primary (578),
    /// else the lowest associated contact id.
    pub async fn primary_contacts(
        &self,
        portal: &str,
        token: &SecretString,
        leads: &[CrmId],
    ) -> Result<BTreeMap<CrmId, CrmId>, ProviderError> {
        let edges = self
            .associations(
                portal,
                token,
                (CrmObject::Leads, CrmObject::Contacts),
                leads,
                false,
            )
            .await?;
        Ok(edges
            .into_iter()
            .filter_map(|(lead, contacts)| {
                let primary = contacts
                    .iter()
                    .find(|(_, types)| types.contains(&LEAD_TO_PRIMARY_CONTACT))
                    .or_else(|| contacts.iter().min_by_key(|(id, _)| numeric(id)))
                    .map(|(id, _)| id.clone())?;
                Some((lead, primary))
            })
            .collect())
    }

    /// The leads associated with `contacts`: a contact edit changes them.
    /// A `reserved` slot pays for the first call.
    pub async fn leads_of_contacts(
        &self,
        portal: &str,
        token: &SecretString,
        contacts: &[CrmId],
        reserved: Option<ReservedRead>,
    ) -> Result<Vec<CrmId>, ProviderError> {
        let edges = self
            .associations(
                portal,
                token,
                (CrmObject::Contacts, CrmObject::Leads),
                contacts,
                reserved.is_some(),
            )
            .await?;
        let leads: BTreeSet<CrmId> = edges
            .into_values()
            .flatten()
            .map(|(lead, _)| lead)
            .collect();
        Ok(leads.into_iter().collect())
    }

    /// The current state of the leads of `contacts` (each with its primary
    /// contact): what a contact's change means for the leads. A `reserved`
    /// slot pays for the first call.
    pub async fn read_leads_of_contacts(
        &self,
        portal: &str,
        token: &SecretString,
        contacts: &[CrmId],
        with_history: bool,
        reserved: Option<ReservedRead>,
    ) -> Result<Vec<Incoming>, ProviderError> {
        let leads = self
            .leads_of_contacts(portal, token, contacts, reserved)
            .await?;
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        self.batch_read(portal, token, CrmObject::Leads, &leads, with_history, None)
            .await
    }

    /// Folds each lead's primary contact into it and maps the result; leads
    /// without a live contact are left out.
    pub(super) async fn with_contacts(
        &self,
        portal: &str,
        token: &SecretString,
        leads: Vec<HsObject>,
        with_history: bool,
    ) -> Result<Vec<Incoming>, ProviderError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<CrmId> = leads.iter().map(|l| CrmId(l.id.clone())).collect();
        let primary = self.primary_contacts(portal, token, &ids).await?;
        let contact_ids: BTreeSet<&str> = primary.values().map(CrmId::as_str).collect();
        let keys: Vec<String> = contact_ids.into_iter().map(str::to_string).collect();
        let mut person = mapping::lead_person_properties();
        let history = if with_history {
            person.clone()
        } else {
            Vec::new()
        };
        person.push(mapping::modified_property(CrmObject::Contacts));
        let contacts = self
            .read_objects(
                portal,
                token,
                CrmObject::Contacts,
                ReadSpec {
                    keys: &keys,
                    id_property: None,
                    properties: &person,
                    history: &history,
                },
                false,
            )
            .await?;
        let contacts: BTreeMap<String, HsObject> =
            contacts.into_iter().map(|c| (c.id.clone(), c)).collect();
        let mut out = Vec::with_capacity(leads.len());
        for mut lead in leads {
            let contact = primary
                .get(&CrmId(lead.id.clone()))
                .and_then(|c| contacts.get(c.as_str()));
            let Some(contact) = contact else {
                tracing::warn!(lead.id = %lead.id, "HubSpot lead without a live contact: skipped");
                continue;
            };
            let person = CrmId(contact.id.clone());
            mapping::fold_contact_into_lead(&mut lead, contact.clone());
            let mut incoming = mapping::to_incoming(CrmObject::Leads, lead, self.settings.app_id)?;
            incoming.person_crm_id = Some(person);
            out.push(incoming);
        }
        Ok(out)
    }

    /// Writes new platform leads: their contacts (found by email or our
    /// key), then the leads themselves (found by our record id, else created
    /// with the contact association). Returns each lead and its contact.
    pub(super) async fn create_leads(
        &self,
        portal: &str,
        token: &SecretString,
        inputs: &[(String, Properties)],
    ) -> Result<Vec<Upserted>, ProviderError> {
        let mut lead_parts = Vec::with_capacity(inputs.len());
        let mut contact_keys = Vec::with_capacity(inputs.len());
        let mut upserts: BTreeMap<(&'static str, String), Properties> = BTreeMap::new();
        for (our_id, properties) in inputs {
            let (lead, mut contact) = mapping::split_lead_properties(properties.clone());
            let email = contact
                .get("email")
                .and_then(Value::as_str)
                .map(|e| e.trim().to_lowercase())
                .filter(|e| !e.is_empty());
            let key = match email {
                Some(email) => ("email", email),
                None => {
                    contact.insert(
                        mapping::LEAD_CONTACT_KEY_PROPERTY.into(),
                        our_id.clone().into(),
                    );
                    (mapping::LEAD_CONTACT_KEY_PROPERTY, our_id.clone())
                }
            };
            // Two leads of one person share the contact (first one's values).
            upserts.entry(key.clone()).or_insert(contact);
            contact_keys.push(key);
            lead_parts.push((our_id.clone(), lead));
        }
        let body = json!({"inputs": upserts.iter().map(|((id_property, key), properties)| json!({
            "idProperty": id_property, "id": key, "properties": properties,
        })).collect::<Vec<_>>()});
        let request = self
            .http
            .post(self.url("/crm/v3/objects/contacts/batch/upsert"))
            .bearer_auth(token.expose_secret())
            .json(&body);
        send::<Value>(request, Some(&self.burst_budget(portal))).await?;
        let contacts = self.ids_by_keys(portal, token, &contact_keys).await?;
        // Leads that already carry our id (a retried push) are kept.
        let ours: Vec<String> = lead_parts.iter().map(|(id, _)| id.clone()).collect();
        let mut leads = self.leads_by_record_id(portal, token, &ours).await?;
        let mut creates = Vec::new();
        let mut updates = Vec::new();
        for ((our_id, properties), key) in lead_parts.iter().zip(&contact_keys) {
            if let Some(lead) = leads.get(our_id) {
                // An upsert: the lead exists (a retry, or a push that ran
                // alongside the one that created it), so it gets the values.
                updates.push((lead.clone(), properties.clone()));
                continue;
            }
            let Some(contact) = contacts.get(key) else {
                return Err(ProviderError::Unavailable(format!(
                    "the contact for platform lead {our_id} was written but cannot be read back"
                )));
            };
            let mut properties = properties.clone();
            properties.insert(mapping::RECORD_ID_PROPERTY.into(), our_id.clone().into());
            creates.push(json!({
                "properties": properties,
                "associations": [{
                    "to": {"id": contact.as_str()},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": LEAD_TO_PRIMARY_CONTACT}],
                }],
            }));
        }
        self.update_objects(portal, token, CrmObject::Leads, &updates)
            .await?;
        if !creates.is_empty() {
            for chunk in creates.chunks(BATCH) {
                let request = self
                    .http
                    .post(self.url("/crm/v3/objects/leads/batch/create"))
                    .bearer_auth(token.expose_secret())
                    .json(&json!({"inputs": chunk}));
                send::<Value>(request, Some(&self.burst_budget(portal))).await?;
            }
            leads = self.leads_by_record_id(portal, token, &ours).await?;
        }
        Ok(lead_parts
            .iter()
            .zip(&contact_keys)
            .filter_map(|((ours, _), key)| {
                Some(Upserted {
                    ours: ours.clone(),
                    crm_id: leads.get(ours)?.clone(),
                    person: contacts.get(key).cloned(),
                    // A lead's write spans the lead and its contact: no one time.
                    updated_at: None,
                })
            })
            .collect())
    }

    /// `our id → lead id` for leads carrying our record id.
    async fn leads_by_record_id(
        &self,
        portal: &str,
        token: &SecretString,
        ours: &[String],
    ) -> Result<BTreeMap<String, CrmId>, ProviderError> {
        let found = self
            .read_objects(
                portal,
                token,
                CrmObject::Leads,
                ReadSpec {
                    keys: ours,
                    id_property: Some(mapping::RECORD_ID_PROPERTY),
                    properties: &[mapping::RECORD_ID_PROPERTY],
                    history: &[],
                },
                false,
            )
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|lead| {
                let ours = lead
                    .properties
                    .get(mapping::RECORD_ID_PROPERTY)
                    .cloned()
                    .flatten()?;
                Some((ours, CrmId(lead.id)))
            })
            .collect())
    }

    /// Contact ids by the unique key each was upserted on.
    async fn ids_by_keys(
        &self,
        portal: &str,
        token: &SecretString,
        keys: &[(&'static str, String)],
    ) -> Result<BTreeMap<(&'static str, String), CrmId>, ProviderError> {
        let mut out = BTreeMap::new();
        for id_property in ["email", mapping::LEAD_CONTACT_KEY_PROPERTY] {
            let wanted: BTreeSet<String> = keys
                .iter()
                .filter(|(p, _)| *p == id_property)
                .map(|(_, k)| k.clone())
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let wanted: Vec<String> = wanted.into_iter().collect();
            let found = self
                .read_objects(
                    portal,
                    token,
                    CrmObject::Contacts,
                    ReadSpec {
                        keys: &wanted,
                        id_property: Some(id_property),
                        properties: &[id_property],
                        history: &[],
                    },
                    false,
                )
                .await?;
            for contact in found {
                if let Some(Some(key)) = contact.properties.get(id_property) {
                    let key = if id_property == "email" {
                        key.trim().to_lowercase()
                    } else {
                        key.clone()
                    };
                    out.insert((id_property, key), CrmId(contact.id));
                }
            }
        }
        Ok(out)
    }

    /// Patches linked leads: the stage and name on the lead, the person on
    /// its primary contact (looked up only where the caller did not know it).
    pub(super) async fn update_leads(
        &self,
        portal: &str,
        token: &SecretString,
        inputs: &[Update],
    ) -> Result<(), ProviderError> {
        let mut lead_updates = Vec::new();
        let mut person_updates = Vec::new();
        for update in inputs {
            let (own, person) = mapping::split_lead_properties(update.properties.clone());
            if !own.is_empty() {
                lead_updates.push((update.crm_id.clone(), own));
            }
            if !person.is_empty() {
                person_updates.push((update, person));
            }
        }
        if !person_updates.is_empty() {
            let unknown: Vec<CrmId> = person_updates
                .iter()
                .filter(|(u, _)| u.person.is_none())
                .map(|(u, _)| u.crm_id.clone())
                .collect();
            let looked_up = if unknown.is_empty() {
                BTreeMap::new()
            } else {
                self.primary_contacts(portal, token, &unknown).await?
            };
            // One update per contact (two leads of one person: the last wins).
            let contacts: BTreeMap<CrmId, Properties> = person_updates
                .into_iter()
                .filter_map(|(update, person)| {
                    let contact = update.person.as_ref().or(looked_up.get(&update.crm_id))?;
                    Some((contact.clone(), person))
                })
                .collect();
            let contacts: Vec<(CrmId, Properties)> = contacts.into_iter().collect();
            self.update_objects(portal, token, CrmObject::Contacts, &contacts)
                .await?;
        }
        self.update_objects(portal, token, CrmObject::Leads, &lead_updates)
            .await
            .map(|_| ())
    }
}

fn numeric(id: &CrmId) -> u64 {
    id.as_str().parse().unwrap_or(u64::MAX)
}
