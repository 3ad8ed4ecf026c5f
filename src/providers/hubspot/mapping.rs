//! HubSpot properties ↔ canonical fields (`ARCHITECTURE.md` default table),
//! pure and tested on the API's documented object shape.

use crate::domain::{CanonicalField, CrmId, CrmObject, RecordFields};
use crate::providers::error::ProviderError;
use crate::sync::Incoming;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A CRM object as HubSpot returns it (`SimplePublicObject`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HsObject {
    /// The record id.
    pub id: String,
    /// Requested properties; absent ones may be `null`.
    #[serde(default)]
    pub properties: BTreeMap<String, Option<String>>,
    /// Last update time (ISO 8601).
    pub updated_at: Option<String>,
    /// Per-property change history, when asked for (newest first).
    #[serde(default)]
    pub properties_with_history: BTreeMap<String, Vec<HistoryEntry>>,
}

/// One entry of a property's history (`ValueWithTimestamp`): when each
/// field changed (`newest_wins` compares it) and who changed it (our own
/// write is not a CRM edit).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When the value was set.
    pub timestamp: String,
    /// `CRM_UI`, `INTEGRATION`, `IMPORT`, …
    #[serde(default)]
    pub source_type: Option<String>,
    /// For `INTEGRATION`: the app id.
    #[serde(default)]
    pub source_id: Option<String>,
}

/// Where the person's fields live: on a HubSpot contact. A platform lead
/// mapped to HubSpot's Leads object is the lead *and* its primary contact,
/// so these are the contact's properties for both objects; the client reads
/// and writes a lead's person on its contact (see `leads.rs`).
const PERSON_FIELDS: &[(CanonicalField, &str)] = &[
    (CanonicalField::Email, "email"),
    (CanonicalField::FirstName, "firstname"),
    (CanonicalField::LastName, "lastname"),
    (CanonicalField::Company, "company"),
    (CanonicalField::JobTitle, "jobtitle"),
    (CanonicalField::Phone, "phone"),
];

/// Where the status lives: a contact's lead status, a lead's stage.
fn status_property(object: CrmObject) -> &'static str {
    match object {
        CrmObject::Contacts => "hs_lead_status",
        CrmObject::Leads => LEAD_STAGE_PROPERTY,
    }
}

/// The lead's pipeline stage: the platform's status.
pub const LEAD_STAGE_PROPERTY: &str = "hs_pipeline_stage";
/// The lead's display name, which HubSpot requires on create: derived from
/// the person, written, never read back (it is not a platform field).
pub const LEAD_NAME_PROPERTY: &str = "hs_lead_name";
/// On a contact crmsync created for a platform lead that had no email: the
/// platform record id, unique, so that a retried create finds the contact
/// instead of making a second one. (A contact with an email is upserted by
/// its email, which HubSpot keeps unique.)
pub const LEAD_CONTACT_KEY_PROPERTY: &str = "crmsync_lead_record_id";

fn fields_of(object: CrmObject) -> impl Iterator<Item = (CanonicalField, &'static str)> {
    PERSON_FIELDS.iter().copied().chain(std::iter::once((
        CanonicalField::Status,
        status_property(object),
    )))
}

/// The property that search filters and sorts on for changes: contacts use
/// `lastmodifieddate`, every other object `hs_lastmodifieddate`.
pub fn modified_property(object: CrmObject) -> &'static str {
    match object {
        CrmObject::Contacts => "lastmodifieddate",
        CrmObject::Leads => "hs_lastmodifieddate",
    }
}

/// The mapped properties *on `object` itself* whose history `newest_wins`
/// reads and whose changes the webhooks subscribe to. For leads that is the
/// stage only; the person's properties are the contact's
/// ([`lead_person_properties`]).
pub fn field_properties(object: CrmObject) -> Vec<&'static str> {
    match object {
        CrmObject::Contacts => fields_of(object).map(|(_, p)| p).collect(),
        CrmObject::Leads => vec![LEAD_STAGE_PROPERTY],
    }
}

/// The contact properties that hold a lead's person.
pub fn lead_person_properties() -> Vec<&'static str> {
    PERSON_FIELDS.iter().map(|(_, p)| *p).collect()
}

/// The properties to request for `object` (for leads: the lead's own; the
/// contact's are [`lead_person_properties`]).
pub fn properties(object: CrmObject) -> Vec<&'static str> {
    let mut names = field_properties(object);
    names.push(modified_property(object));
    names.push("hs_object_id");
    names.push(RECORD_ID_PROPERTY);
    names
}

/// Splits a lead's properties to write into (the lead's, the contact's).
pub fn split_lead_properties(
    properties: serde_json::Map<String, serde_json::Value>,
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
) {
    properties.into_iter().partition(|(name, _)| {
        [
            LEAD_STAGE_PROPERTY,
            LEAD_NAME_PROPERTY,
            RECORD_ID_PROPERTY,
            SOURCE_SYSTEM_PROPERTY,
        ]
        .contains(&name.as_str())
    })
}

/// Folds a lead's primary contact into the lead as HubSpot returned it, so
/// that [`to_incoming`] maps one object: the person's properties and their
/// history come from the contact, and the record counts as modified when
/// either was.
pub fn fold_contact_into_lead(lead: &mut HsObject, contact: HsObject) {
    let HsObject {
        mut properties,
        mut properties_with_history,
        updated_at,
        ..
    } = contact;
    for name in lead_person_properties() {
        let value = properties.remove(name).flatten();
        lead.properties.insert(name.to_string(), value);
        match properties_with_history.remove(name) {
            Some(history) => {
                lead.properties_with_history
                    .insert(name.to_string(), history);
            }
            None => {
                lead.properties_with_history.remove(name);
            }
        }
    }
    let contact_modified = properties
        .get(modified_property(CrmObject::Contacts))
        .and_then(|v| v.as_deref())
        .or(updated_at.as_deref())
        .and_then(parse_time);
    let lead_property = modified_property(CrmObject::Leads);
    let lead_modified = lead
        .properties
        .get(lead_property)
        .and_then(|v| v.as_deref())
        .or(lead.updated_at.as_deref())
        .and_then(parse_time);
    if let Some(latest) = contact_modified.max(lead_modified) {
        lead.properties.insert(
            lead_property.to_string(),
            Some(latest.timestamp_millis().to_string()),
        );
    }
}

/// HubSpot status → platform status; values with no platform meaning are
/// left out rather than guessed. Contacts carry `hs_lead_status`; leads
/// their stage in HubSpot's default lead pipeline.
fn status_from_hubspot(object: CrmObject, value: &str) -> Option<&'static str> {
    match (object, value) {
        (CrmObject::Contacts, "NEW") | (CrmObject::Leads, "new-stage-id") => Some("new"),
        (CrmObject::Contacts, "ATTEMPTED_TO_CONTACT" | "CONNECTED")
        | (CrmObject::Leads, "attempting-stage-id" | "connected-stage-id") => Some("contacted"),
        (CrmObject::Contacts, "OPEN_DEAL") | (CrmObject::Leads, "qualified-stage-id") => {
            Some("qualified")
        }
        (CrmObject::Contacts, "UNQUALIFIED") | (CrmObject::Leads, "unqualified-stage-id") => {
            Some("unqualified")
        }
        _ => None,
    }
}

/// Parses HubSpot's timestamps: ISO 8601, or epoch milliseconds as a string.
pub fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(ms) = value.parse::<i64>() {
        return Utc.timestamp_millis_opt(ms).single();
    }
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The unique property holding the platform record id: the upsert key.
pub const RECORD_ID_PROPERTY: &str = "crmsync_record_id";
/// Marks where a record originated (`platform` | `crm`), for CRM users.
pub const SOURCE_SYSTEM_PROPERTY: &str = "crmsync_source_system";

fn status_to_hubspot(object: CrmObject, value: &str) -> Option<&'static str> {
    match (object, value) {
        (CrmObject::Contacts, "new") => Some("NEW"),
        (CrmObject::Contacts, "contacted") => Some("ATTEMPTED_TO_CONTACT"),
        (CrmObject::Contacts, "qualified") => Some("OPEN_DEAL"),
        (CrmObject::Contacts, "unqualified") => Some("UNQUALIFIED"),
        (CrmObject::Leads, "new") => Some("new-stage-id"),
        (CrmObject::Leads, "contacted") => Some("attempting-stage-id"),
        (CrmObject::Leads, "qualified") => Some("qualified-stage-id"),
        (CrmObject::Leads, "unqualified") => Some("unqualified-stage-id"),
        _ => None,
    }
}

/// A lead's name as HubSpot shows it: the person's name, else the email.
fn lead_name(fields: &RecordFields) -> String {
    let name = [CanonicalField::FirstName, CanonicalField::LastName]
        .iter()
        .filter_map(|f| fields.get(*f))
        .filter(|v| !v.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !name.is_empty() {
        return name;
    }
    fields
        .get(CanonicalField::Email)
        .filter(|e| !e.is_empty())
        .map_or_else(|| "Lead".to_string(), str::to_string)
}

/// Canonical fields → HubSpot properties to write. Absent fields are written
/// empty (which clears them), so the CRM ends up holding exactly `fields` —
/// except a lead's stage: every HubSpot lead has one, so an absent status
/// leaves it as it is.
pub fn to_properties(
    object: CrmObject,
    fields: &RecordFields,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (field, property) in fields_of(object) {
        let value = match (field, fields.get(field)) {
            (CanonicalField::Status, Some(v)) => status_to_hubspot(object, v).unwrap_or(""),
            (_, Some(v)) => v,
            (_, None) => "",
        };
        if object == CrmObject::Leads && field == CanonicalField::Status && value.is_empty() {
            continue;
        }
        out.insert(
            (property).to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    if object == CrmObject::Leads {
        out.insert(LEAD_NAME_PROPERTY.into(), lead_name(fields).into());
    }
    out
}

/// Only the properties whose written value differs between what the CRM
/// holds (`current`) and what it must hold (`target`): a push never
/// rewrites a field it does not change, so a concurrent CRM edit of another
/// field survives.
pub fn patch_properties(
    object: CrmObject,
    current: &RecordFields,
    target: &RecordFields,
) -> serde_json::Map<String, serde_json::Value> {
    let now = to_properties(object, current);
    to_properties(object, target)
        .into_iter()
        .filter(|(name, value)| now.get(name) != Some(value))
        .collect()
}

/// What the CRM will hold after [`to_properties`], read back as canonical
/// fields: the pushed fingerprint is taken over this, so our own write is
/// recognised when it comes back.
pub fn round_trip(object: CrmObject, fields: &RecordFields) -> RecordFields {
    let written = to_properties(object, fields);
    let mut out = RecordFields::new();
    for (field, property) in fields_of(object) {
        let Some(value) = written.get(property).and_then(|v| v.as_str()) else {
            continue;
        };
        if field == CanonicalField::Status {
            if let Some(status) = status_from_hubspot(object, value) {
                out.set(field, status);
            }
        } else {
            out.set(field, value);
        }
    }
    out
}

/// Maps one HubSpot object to an [`Incoming`] record; `own_app` (our app id)
/// recognises our own writes in the property history.
pub fn to_incoming(
    object: CrmObject,
    raw: HsObject,
    own_app: Option<u64>,
) -> Result<Incoming, ProviderError> {
    let mut fields = RecordFields::new();
    for (field, property) in fields_of(object) {
        if let Some(Some(value)) = raw.properties.get(property) {
            if field == CanonicalField::Status {
                if let Some(status) = status_from_hubspot(object, value) {
                    fields.set(field, status);
                }
            } else {
                fields.set(field, value);
            }
        }
    }
    let modified = raw
        .properties
        .get(modified_property(object))
        .and_then(|v| v.as_deref())
        .or(raw.updated_at.as_deref())
        .and_then(parse_time)
        .ok_or_else(|| {
            ProviderError::Unavailable(format!(
                "HubSpot {} {} has no readable modified time",
                object, raw.id
            ))
        })?;
    let platform_id = raw
        .properties
        .get(RECORD_ID_PROPERTY)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok());
    let mut field_times = crate::sync::FieldTimes::new();
    let mut own_writes = std::collections::BTreeSet::new();
    let own_app = own_app.map(|id| id.to_string());
    for (field, property) in fields_of(object) {
        let latest = raw
            .properties_with_history
            .get(property)
            .into_iter()
            .flatten()
            .filter_map(|entry| parse_time(&entry.timestamp).map(|at| (at, entry)))
            .max_by_key(|(at, _)| *at);
        if let Some((at, entry)) = latest {
            field_times.insert(field, at);
            if entry.source_type.as_deref() == Some("INTEGRATION")
                && own_app.is_some()
                && entry.source_id == own_app
            {
                own_writes.insert(field);
            }
        }
    }
    Ok(Incoming {
        crm_id: CrmId(raw.id),
        modified_at: modified,
        fields,
        platform_id,
        field_times,
        own_writes,
        // The reader says whether it asked for history (`HubspotClient`).
        history: false,
        person_crm_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_documented_contact_maps_to_a_platform_lead() {
        // The shape of `SimplePublicObject` in HubSpot's contacts spec.
        let raw: HsObject = serde_json::from_value(json!({
            "id": "512",
            "properties": {
                "email": " Ada@Example.COM ", "firstname": "Ada", "lastname": null,
                "company": "", "hs_lead_status": "CONNECTED",
                "lastmodifieddate": "2026-11-20T10:11:12.345Z", "hs_object_id": "512"
            },
            "createdAt": "2026-11-01T00:00:00Z", "updatedAt": "2026-11-20T10:11:12.345Z", "archived": false
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let incoming =
            to_incoming(CrmObject::Contacts, raw, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(incoming.crm_id.as_str(), "512");
        assert_eq!(
            incoming.fields.get(CanonicalField::Email),
            Some("ada@example.com")
        );
        assert_eq!(incoming.fields.get(CanonicalField::LastName), None);
        assert_eq!(incoming.fields.get(CanonicalField::Company), None);
        assert_eq!(
            incoming.fields.get(CanonicalField::Status),
            Some("contacted")
        );
        assert_eq!(incoming.modified_at.timestamp_millis(), 1_795_169_472_345);
    }

    #[test]
    fn a_field_last_written_by_our_own_app_is_marked_as_our_write() {
        let raw: HsObject = serde_json::from_value(json!({
            "id": "7",
            "properties": {"firstname": "Ada", "company": "Acme", "jobtitle": "CTO", "lastmodifieddate": "2026-11-20T10:00:00Z"},
            "propertiesWithHistory": {
                "firstname": [{"value": "Ada", "timestamp": "2026-11-20T09:00:00Z", "sourceType": "CRM_UI", "sourceId": "userId:1"}],
                "company": [
                    {"value": "Acme", "timestamp": "2026-11-20T10:00:00Z", "sourceType": "INTEGRATION", "sourceId": "42"},
                    {"value": "Old", "timestamp": "2026-11-19T10:00:00Z", "sourceType": "CRM_UI", "sourceId": "userId:1"}
                ],
                "jobtitle": [{"value": "CTO", "timestamp": "2026-11-20T10:00:00Z", "sourceType": "INTEGRATION", "sourceId": "99"}]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let ours = to_incoming(CrmObject::Contacts, raw.clone(), Some(42))
            .unwrap_or_else(|e| panic!("{e}"));
        // Another app's write is a CRM edit like a user's.
        assert_eq!(
            ours.own_writes.iter().copied().collect::<Vec<_>>(),
            vec![CanonicalField::Company]
        );
        let unknown = to_incoming(CrmObject::Contacts, raw, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(unknown.own_writes.is_empty());
    }

    #[test]
    fn property_history_gives_each_field_its_own_change_time() {
        let raw: HsObject = serde_json::from_value(json!({
            "id": "7",
            "properties": {"firstname": "Ada", "company": "Acme", "lastmodifieddate": "2026-11-20T10:00:00Z"},
            "propertiesWithHistory": {
                "firstname": [
                    {"value": "Ada", "timestamp": "2026-11-20T09:00:00Z", "sourceType": "CRM_UI"},
                    {"value": "A", "timestamp": "2026-11-19T09:00:00Z", "sourceType": "CRM_UI"}
                ],
                "company": [{"value": "Acme", "timestamp": "2026-11-20T10:00:00Z", "sourceType": "INTEGRATION"}]
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let incoming =
            to_incoming(CrmObject::Contacts, raw, None).unwrap_or_else(|e| panic!("{e}"));
        let time = |f| incoming.field_times.get(&f).map(|t| t.to_rfc3339());
        assert_eq!(
            time(CanonicalField::FirstName).as_deref(),
            Some("2026-11-20T09:00:00+00:00")
        );
        assert_eq!(
            time(CanonicalField::Company).as_deref(),
            Some("2026-11-20T10:00:00+00:00")
        );
        assert_eq!(time(CanonicalField::Email), None);
    }

    #[test]
    fn a_record_without_a_modified_time_is_an_error_not_a_guess() {
        let raw: HsObject = serde_json::from_value(json!({"id": "1", "properties": {}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(to_incoming(CrmObject::Contacts, raw, None).is_err());
    }

    /// A contact's properties as HubSpot would hold them after a write.
    fn written_object(
        object: CrmObject,
        props: serde_json::Map<String, serde_json::Value>,
    ) -> HsObject {
        let mut echoed = props;
        echoed.insert(
            modified_property(object).into(),
            json!("2026-11-20T10:00:00Z"),
        );
        serde_json::from_value(json!({"id": "1", "properties": echoed}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    proptest::proptest! {
        #[test]
        fn a_pushed_record_reads_back_as_what_was_pushed(
            name in "[A-Za-z ]{0,12}", email in "[a-z]{1,8}@[a-z]{1,8}\\.io",
            status in proptest::sample::select(vec!["new", "contacted", "qualified", "unqualified", ""]),
            leads in proptest::bool::ANY,
        ) {
            let object = if leads { CrmObject::Leads } else { CrmObject::Contacts };
            let fields = RecordFields::new()
                .with(CanonicalField::Email, &email)
                .with(CanonicalField::FirstName, &name)
                .with(CanonicalField::Status, status);
            // Read back through the inbound mapping, the values are the same:
            // the fingerprint of our write matches its echo. A lead's write
            // lands on two objects, read back folded into one.
            let props = to_properties(object, &fields);
            let raw = if leads {
                let (lead, person) = split_lead_properties(props);
                let mut raw = written_object(CrmObject::Leads, lead);
                fold_contact_into_lead(&mut raw, written_object(CrmObject::Contacts, person));
                raw
            } else {
                written_object(object, props)
            };
            let back = to_incoming(object, raw, None).unwrap_or_else(|e| panic!("{e}"));
            proptest::prop_assert_eq!(&back.fields, &fields);
            proptest::prop_assert_eq!(round_trip(object, &fields).fingerprint(), back.fields.fingerprint());
        }
    }

    #[test]
    fn a_lead_takes_its_person_from_the_contact_and_its_status_from_the_stage() {
        let mut lead: HsObject = serde_json::from_value(json!({
            "id": "900",
            "properties": {
                "hs_pipeline_stage": "connected-stage-id", "hs_lead_name": "Old name",
                "hs_lastmodifieddate": "2026-11-20T10:00:00Z", "crmsync_record_id": null
            },
            "propertiesWithHistory": {"hs_pipeline_stage": [{"value": "connected-stage-id", "timestamp": "2026-11-20T10:00:00Z"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let contact: HsObject = serde_json::from_value(json!({
            "id": "51",
            "properties": {"email": "ada@example.com", "firstname": "Ada", "jobtitle": "CTO",
                "hs_lead_status": "UNQUALIFIED", "lastmodifieddate": "2026-11-21T08:00:00Z"},
            "propertiesWithHistory": {"jobtitle": [{"value": "CTO", "timestamp": "2026-11-21T08:00:00Z"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        fold_contact_into_lead(&mut lead, contact);
        let incoming = to_incoming(CrmObject::Leads, lead, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(incoming.crm_id.as_str(), "900", "the link is the lead's");
        assert_eq!(incoming.fields.get(CanonicalField::FirstName), Some("Ada"));
        assert_eq!(incoming.fields.get(CanonicalField::JobTitle), Some("CTO"));
        assert_eq!(
            incoming.fields.get(CanonicalField::Status),
            Some("contacted"),
            "the lead's stage, not the contact's lead status"
        );
        assert_eq!(
            incoming.modified_at.to_rfc3339(),
            "2026-11-21T08:00:00+00:00",
            "a contact edit makes the lead newer"
        );
        assert!(incoming.field_times.contains_key(&CanonicalField::JobTitle));
        assert!(incoming.field_times.contains_key(&CanonicalField::Status));
    }

    #[test]
    fn a_lead_write_names_the_lead_and_keeps_a_missing_status_off_the_stage() {
        let fields = RecordFields::new()
            .with(CanonicalField::Email, "ada@example.com")
            .with(CanonicalField::LastName, "Lovelace");
        let (lead, contact) = split_lead_properties(to_properties(CrmObject::Leads, &fields));
        assert_eq!(lead.get(LEAD_NAME_PROPERTY), Some(&json!("Lovelace")));
        assert!(!lead.contains_key(LEAD_STAGE_PROPERTY), "{lead:?}");
        assert_eq!(contact.get("email"), Some(&json!("ada@example.com")));
        assert_eq!(contact.get("firstname"), Some(&json!("")));
        assert!(!contact.contains_key("hs_lead_status"), "{contact:?}");
        let renamed = fields.clone().with(CanonicalField::FirstName, "Ada");
        let patch = patch_properties(CrmObject::Leads, &fields, &renamed);
        assert_eq!(patch.get(LEAD_NAME_PROPERTY), Some(&json!("Ada Lovelace")));
        assert_eq!(patch.get("firstname"), Some(&json!("Ada")));
        assert_eq!(patch.len(), 2, "{patch:?}");
        let anonymous = RecordFields::new().with(CanonicalField::Status, "qualified");
        let props = to_properties(CrmObject::Leads, &anonymous);
        assert_eq!(props.get(LEAD_NAME_PROPERTY), Some(&json!("Lead")));
        assert_eq!(
            props.get(LEAD_STAGE_PROPERTY),
            Some(&json!("qualified-stage-id"))
        );
    }

    #[test]
    fn a_patch_carries_only_the_changed_properties() {
        let current = RecordFields::new()
            .with(CanonicalField::Email, "a@x.io")
            .with(CanonicalField::Phone, "1");
        let target = current
            .clone()
            .with(CanonicalField::Phone, "")
            .with(CanonicalField::Company, "Acme");
        let patch = patch_properties(CrmObject::Contacts, &current, &target);
        assert_eq!(patch.len(), 2, "{patch:?}");
        assert_eq!(patch.get("phone"), Some(&json!("")));
        assert_eq!(patch.get("company"), Some(&json!("Acme")));
        assert!(patch_properties(CrmObject::Contacts, &target, &target).is_empty());
    }

    #[test]
    fn leads_search_on_hs_lastmodifieddate() {
        assert!(properties(CrmObject::Leads).contains(&"hs_lastmodifieddate"));
        assert_eq!(modified_property(CrmObject::Contacts), "lastmodifieddate");
    }
}
