//! Lead ↔ contact associations: the edges HubSpot keeps between a lead
//! (`0-136`) and the contacts it belongs to, the inline `associations` of a
//! lead create, and `POST /crm/v4/associations/{from}/{to}/batch/read`
//! (shapes from HubSpot's public spec collection:
//! `PublicApiSpecs/CRM/Associations/Rollouts/130902/v4/associations.json`
//! and `PublicApiSpecs/CRM/Leads/Rollouts/424/v3/leads.json`).
//!
//! HubSpot's leads guide says a new lead "Must be associated with an existing
//! contact", so the sandbox refuses one without. Archiving either end hides an edge
//! from reads; restoring it shows the edge again (the edge itself is kept).

use std::collections::{BTreeMap, BTreeSet};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{ApiError, standard_error};
use super::gate::Caller;
use super::model::{ObjectStore, ObjectType};
use super::objects::{
    BATCH_LIMIT, batch_response, id_string, not_found_error, object_type, parse_body,
};
use super::state::{AccountData, lock, now_ms};

/// "Lead to primary contact" (HubSpot's associations doc, "Lead to object" table).
pub const LEAD_TO_PRIMARY_CONTACT: u32 = 578;
/// "Lead to contact" (same table): every lead-contact edge carries it.
pub const LEAD_TO_CONTACT: u32 = 608;
/// Contact → lead, primary. UNVERIFIED: only third-party notes give 579.
pub const CONTACT_TO_PRIMARY_LEAD: u32 = 579;
/// Contact → lead. UNVERIFIED: only third-party notes give 609.
pub const CONTACT_TO_LEAD: u32 = 609;

/// The association category of every type the sandbox knows.
pub const HUBSPOT_DEFINED: &str = "HUBSPOT_DEFINED";

/// Why an association request is refused. Every variant is a client error,
/// answered as HubSpot's 400 through [`ApiError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssociationError {
    /// A lead create carried no association to a live contact. The guide says
    /// a lead "Must be associated with an existing contact"; HubSpot's exact
    /// message for this refusal is UNVERIFIED.
    #[error(
        "A lead must be associated with an existing contact: give associations [{{\"to\":{{\"id\":\"<contactId>\"}},\"types\":[{{\"associationCategory\":\"HUBSPOT_DEFINED\",\"associationTypeId\":578}}]}}]"
    )]
    LeadWithoutContact,
    /// The `to.id` of an association names no live contact (message UNVERIFIED).
    #[error("Contact {0} does not exist or is archived, so it cannot be associated")]
    UnknownContact(String),
    /// An association type the sandbox does not model (only lead → contact exists here).
    #[error(
        "associationTypeId {type_id} ({category}) is not a lead-to-contact association type (578 or 608)"
    )]
    UnsupportedType {
        /// The category sent.
        category: String,
        /// The type id sent.
        type_id: i64,
    },
    /// Batch upsert would create a lead, but its input has no `associations`
    /// (spec `SimplePublicObjectBatchInputUpsert`), so the lead could never
    /// have its contact. Message UNVERIFIED.
    #[error(
        "Upsert cannot create a lead, as a lead must be associated with a contact and upsert inputs carry no associations; create these with POST /crm/v3/objects/leads: [{0}]"
    )]
    UpsertCannotCreateLead(String),
    /// `associations` is not a list of `{to:{id}, types:[...]}`.
    #[error("associations must be a list of {{to, types}} objects: {0}")]
    Malformed(String),
    /// A v4 pair the sandbox does not serve.
    #[error("Associations from {from} to {to} are not supported by the sandbox")]
    UnsupportedPair {
        /// `{fromObjectType}` as given.
        from: String,
        /// `{toObjectType}` as given.
        to: String,
    },
}

impl From<AssociationError> for ApiError {
    fn from(err: AssociationError) -> Self {
        let message = err.to_string();
        match err {
            AssociationError::Malformed(_) => ApiError::binding(1, 1, message),
            _ => ApiError::validation(message),
        }
    }
}

/// Every lead ↔ contact edge of one account, with a reverse index so
/// contact → leads reads need no scan.
#[derive(Debug, Default)]
pub struct Associations {
    /// Lead id → contact id → lead-to-contact type ids (578, 608).
    by_lead: BTreeMap<u64, BTreeMap<u64, BTreeSet<u32>>>,
    /// Contact id → lead ids (the reverse lookup).
    by_contact: BTreeMap<u64, BTreeSet<u64>>,
}

impl Associations {
    /// Records an edge of `type_id` (578 or 608). A primary edge also carries
    /// 608, as HubSpot lists the unlabeled type beside the primary one.
    pub fn associate(&mut self, lead: u64, contact: u64, type_id: u32) {
        let types = self
            .by_lead
            .entry(lead)
            .or_default()
            .entry(contact)
            .or_default();
        types.insert(type_id);
        types.insert(LEAD_TO_CONTACT);
        self.by_contact.entry(contact).or_default().insert(lead);
    }

    /// The contacts of a lead with the lead → contact types, archived or not.
    pub fn contacts_of(&self, lead: u64) -> Vec<(u64, BTreeSet<u32>)> {
        self.by_lead
            .get(&lead)
            .map(|m| m.iter().map(|(c, t)| (*c, t.clone())).collect())
            .unwrap_or_default()
    }

    /// The leads of a contact with the contact → lead types (579/609,
    /// UNVERIFIED), archived or not.
    pub fn leads_of(&self, contact: u64) -> Vec<(u64, BTreeSet<u32>)> {
        let Some(leads) = self.by_contact.get(&contact) else {
            return Vec::new();
        };
        leads
            .iter()
            .filter_map(|lead| {
                let types = self.by_lead.get(lead)?.get(&contact)?;
                let reversed = types
                    .iter()
                    .map(|t| match *t {
                        LEAD_TO_PRIMARY_CONTACT => CONTACT_TO_PRIMARY_LEAD,
                        _ => CONTACT_TO_LEAD,
                    })
                    .collect();
                Some((*lead, reversed))
            })
            .collect()
    }
}

/// The `to` of an inline association (`PublicObjectId`).
#[derive(Debug, Clone, Deserialize)]
pub struct AssociationTarget {
    /// The target record's id (a string in the spec; numbers are accepted).
    pub id: Value,
}

/// One entry of `types` (`AssociationSpec`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssociationSpec {
    /// `HUBSPOT_DEFINED`, `USER_DEFINED`, ...
    pub association_category: String,
    /// E.g. 578.
    pub association_type_id: i64,
}

/// One inline association of a create (`PublicAssociationsForObject`).
#[derive(Debug, Clone, Deserialize)]
pub struct AssociationInput {
    /// The associated record.
    pub to: AssociationTarget,
    /// The association types to create.
    pub types: Vec<AssociationSpec>,
}

/// Reads the optional `associations` of a create body; absent or `null` is empty.
pub fn parse_inline(body: &Value) -> Result<Vec<AssociationInput>, AssociationError> {
    match body.get("associations") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(raw) => serde_json::from_value(raw.clone())
            .map_err(|e| AssociationError::Malformed(e.to_string())),
    }
}

/// Whether `id` is a record of `store` that is not archived.
pub fn is_live(store: &ObjectStore, id: u64) -> bool {
    store
        .objects
        .get(&id)
        .is_some_and(|o| o.archived_ms.is_none())
}

/// Checks a lead's inline associations against the account and returns the
/// edges to record as `(contact id, type id)`. A lead with no edge to a live
/// contact is refused (HubSpot's guide: "Must be associated with an existing
/// contact").
pub fn lead_edges(
    data: &AccountData,
    inputs: &[AssociationInput],
) -> Result<Vec<(u64, u32)>, AssociationError> {
    let mut edges = Vec::new();
    for input in inputs {
        let key = id_string(&input.to.id);
        for spec in &input.types {
            let type_id = match (spec.association_category.as_str(), spec.association_type_id) {
                (HUBSPOT_DEFINED, 578) => LEAD_TO_PRIMARY_CONTACT,
                (HUBSPOT_DEFINED, 608) => LEAD_TO_CONTACT,
                (category, type_id) => {
                    return Err(AssociationError::UnsupportedType {
                        category: category.to_string(),
                        type_id,
                    });
                }
            };
            let contact = key
                .parse::<u64>()
                .ok()
                .filter(|id| is_live(&data.contacts, *id))
                .ok_or_else(|| AssociationError::UnknownContact(key.clone()))?;
            edges.push((contact, type_id));
        }
    }
    if edges.is_empty() {
        return Err(AssociationError::LeadWithoutContact);
    }
    Ok(edges)
}

/// `BatchInputPublicFetchAssociationsBatchRequest`.
#[derive(Deserialize)]
struct BatchReadInput {
    inputs: Vec<FetchInput>,
}

/// `PublicFetchAssociationsBatchRequest`. Its `after` is accepted (unknown
/// fields are ignored) and has no effect: the sandbox never pages associations.
#[derive(Deserialize)]
struct FetchInput {
    id: Value,
}

fn type_json(type_id: u32) -> Value {
    let label = match type_id {
        LEAD_TO_PRIMARY_CONTACT | CONTACT_TO_PRIMARY_LEAD => json!("Primary"),
        _ => Value::Null,
    };
    json!({"category": HUBSPOT_DEFINED, "typeId": type_id, "label": label})
}

/// `POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/read`
/// for leads → contacts and contacts → leads. Ids of unknown or archived
/// records, and of records with no live association, are reported in
/// `errors` with a 207, as the other batch endpoints do for missing ids.
/// `toObjectId` is a string, as in the spec's `MultiAssociatedObjectWithLabel`.
pub async fn batch_read(
    Extension(caller): Extension<Caller>,
    Path((from_raw, to_raw)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let from = object_type(&from_raw)?;
    let to = object_type(&to_raw)?;
    if from == to {
        return Err(AssociationError::UnsupportedPair {
            from: from_raw,
            to: to_raw,
        }
        .into());
    }
    let req: BatchReadInput = parse_body(&body)?;
    // No batch size is documented for v4; the sandbox uses the CRM's 100 (UNVERIFIED).
    if req.inputs.len() > BATCH_LIMIT {
        return Err(ApiError::validation(format!(
            "Batch input size {} is larger than the maximum allowed batch size of {BATCH_LIMIT}",
            req.inputs.len()
        )));
    }
    let data = lock(&caller.account.data);
    let (from_store, to_store) = match from {
        ObjectType::Leads => (&data.leads, &data.contacts),
        ObjectType::Contacts => (&data.contacts, &data.leads),
    };
    let (mut results, mut unknown, mut unassociated) = (vec![], vec![], vec![]);
    for input in &req.inputs {
        let key = id_string(&input.id);
        let Some(id) = key
            .parse::<u64>()
            .ok()
            .filter(|id| is_live(from_store, *id))
        else {
            unknown.push(key);
            continue;
        };
        let edges = match from {
            ObjectType::Leads => data.associations.contacts_of(id),
            ObjectType::Contacts => data.associations.leads_of(id),
        };
        let targets: Vec<Value> = edges
            .into_iter()
            .filter(|(other, _)| is_live(to_store, *other))
            .map(|(other, types)| {
                json!({
                    "toObjectId": other.to_string(),
                    "associationTypes": types.into_iter().map(type_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        if targets.is_empty() {
            unassociated.push(key);
        } else {
            results.push(json!({"from": {"id": key}, "to": targets}));
        }
    }
    let mut errors = Vec::new();
    if !unknown.is_empty() {
        errors.push(not_found_error(from, "get", unknown));
    }
    for key in unassociated {
        // HubSpot's wording and subCategory for "no associations" are UNVERIFIED.
        let mut ctx = Map::new();
        ctx.insert("fromObjectId".into(), json!([key]));
        let mut err = standard_error(
            "error",
            "VALIDATION_ERROR",
            &format!(
                "No {} is associated with {} {key}.",
                to.upper_name().to_ascii_lowercase(),
                from.upper_name().to_ascii_lowercase()
            ),
            ctx,
        );
        err["subCategory"] = json!("crm.associations.NO_ASSOCIATIONS_FOUND");
        errors.push(err);
    }
    Ok(batch_response(StatusCode::OK, results, errors, started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_edge_carries_both_types_and_reverses() {
        let mut a = Associations::default();
        a.associate(1, 2, LEAD_TO_PRIMARY_CONTACT);
        assert_eq!(
            a.contacts_of(1),
            vec![(
                2,
                BTreeSet::from([LEAD_TO_PRIMARY_CONTACT, LEAD_TO_CONTACT])
            )]
        );
        assert_eq!(
            a.leads_of(2),
            vec![(
                1,
                BTreeSet::from([CONTACT_TO_PRIMARY_LEAD, CONTACT_TO_LEAD])
            )]
        );
        assert!(a.leads_of(3).is_empty());
    }

    #[test]
    fn malformed_associations_are_a_binding_error() {
        let err = parse_inline(&json!({"associations": {"to": 1}}));
        assert!(matches!(err, Err(AssociationError::Malformed(_))));
        assert!(
            parse_inline(&json!({}))
                .map(|v| v.is_empty())
                .unwrap_or(false)
        );
    }
}
