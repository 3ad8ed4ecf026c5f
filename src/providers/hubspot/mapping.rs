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

/// One entry of a property's history (`ValueWithTimestamp`); only the time
/// is used: `newest_wins` compares when each field changed.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryEntry {
    /// When the value was set.
    pub timestamp: String,
}

const FIELDS: &[(CanonicalField, &str)] = &[
    (CanonicalField::Email, "email"),
    (CanonicalField::FirstName, "firstname"),
    (CanonicalField::LastName, "lastname"),
    (CanonicalField::Company, "company"),
    (CanonicalField::JobTitle, "jobtitle"),
    (CanonicalField::Phone, "phone"),
    (CanonicalField::Status, "hs_lead_status"),
];

/// The property that search filters and sorts on for changes: contacts use
/// `lastmodifieddate`, every other object `hs_lastmodifieddate`.
pub fn modified_property(object: CrmObject) -> &'static str {
    match object {
        CrmObject::Contacts => "lastmodifieddate",
        CrmObject::Leads => "hs_lastmodifieddate",
    }
}

/// The mapped properties whose history `newest_wins` reads.
pub fn field_properties() -> Vec<&'static str> {
    FIELDS.iter().map(|(_, p)| *p).collect()
}

/// The properties to request for `object`.
pub fn properties(object: CrmObject) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FIELDS.iter().map(|(_, p)| *p).collect();
    names.push(modified_property(object));
    names.push("hs_object_id");
    names.push(RECORD_ID_PROPERTY);
    names
}

/// HubSpot lead status → platform status; values with no platform meaning
/// are left out rather than guessed.
fn status_from_hubspot(value: &str) -> Option<&'static str> {
    match value {
        "NEW" => Some("new"),
        "ATTEMPTED_TO_CONTACT" | "CONNECTED" => Some("contacted"),
        "OPEN_DEAL" => Some("qualified"),
        "UNQUALIFIED" => Some("unqualified"),
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

fn status_to_hubspot(value: &str) -> Option<&'static str> {
    match value {
        "new" => Some("NEW"),
        "contacted" => Some("ATTEMPTED_TO_CONTACT"),
        "qualified" => Some("OPEN_DEAL"),
        "unqualified" => Some("UNQUALIFIED"),
        _ => None,
    }
}

/// Canonical fields → HubSpot properties to write. Absent fields are written
/// empty (which clears them), so the CRM ends up holding exactly `fields`.
pub fn to_properties(fields: &RecordFields) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (field, property) in FIELDS {
        let value = match (field, fields.get(*field)) {
            (CanonicalField::Status, Some(v)) => status_to_hubspot(v).unwrap_or(""),
            (_, Some(v)) => v,
            (_, None) => "",
        };
        out.insert(
            (*property).to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    out
}

/// Only the properties whose written value differs between what the CRM
/// holds (`current`) and what it must hold (`target`): a push never
/// rewrites a field it does not change, so a concurrent CRM edit of another
/// field survives.
pub fn patch_properties(
    current: &RecordFields,
    target: &RecordFields,
) -> serde_json::Map<String, serde_json::Value> {
    let now = to_properties(current);
    to_properties(target)
        .into_iter()
        .filter(|(name, value)| now.get(name) != Some(value))
        .collect()
}

/// What the CRM will hold after [`to_properties`], read back as canonical
/// fields: the pushed fingerprint is taken over this, so our own write is
/// recognised when it comes back.
pub fn round_trip(fields: &RecordFields) -> RecordFields {
    let mut out = RecordFields::new();
    for (property_field, property) in FIELDS {
        let written = to_properties(fields);
        let value = written
            .get(*property)
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if *property_field == CanonicalField::Status {
            if let Some(status) = status_from_hubspot(value) {
                out.set(*property_field, status);
            }
        } else {
            out.set(*property_field, value);
        }
    }
    out
}

/// Maps one HubSpot object to an [`Incoming`] record.
pub fn to_incoming(object: CrmObject, raw: HsObject) -> Result<Incoming, ProviderError> {
    let mut fields = RecordFields::new();
    for (field, property) in FIELDS {
        if let Some(Some(value)) = raw.properties.get(*property) {
            if *field == CanonicalField::Status {
                if let Some(status) = status_from_hubspot(value) {
                    fields.set(*field, status);
                }
            } else {
                fields.set(*field, value);
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
    for (field, property) in FIELDS {
        let latest = raw
            .properties_with_history
            .get(*property)
            .into_iter()
            .flatten()
            .filter_map(|entry| parse_time(&entry.timestamp))
            .max();
        if let Some(at) = latest {
            field_times.insert(*field, at);
        }
    }
    Ok(Incoming {
        crm_id: CrmId(raw.id),
        modified_at: modified,
        fields,
        platform_id,
        field_times,
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
        let incoming = to_incoming(CrmObject::Contacts, raw).unwrap_or_else(|e| panic!("{e}"));
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
        let incoming = to_incoming(CrmObject::Contacts, raw).unwrap_or_else(|e| panic!("{e}"));
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
        assert!(to_incoming(CrmObject::Contacts, raw).is_err());
    }

    proptest::proptest! {
        #[test]
        fn a_pushed_record_reads_back_as_what_was_pushed(
            name in "[A-Za-z ]{0,12}", email in "[a-z]{1,8}@[a-z]{1,8}\\.io",
            status in proptest::sample::select(vec!["new", "contacted", "qualified", "unqualified", ""]),
        ) {
            let fields = RecordFields::new()
                .with(CanonicalField::Email, &email)
                .with(CanonicalField::FirstName, &name)
                .with(CanonicalField::Status, status);
            // Read back through the inbound mapping, the values are the same:
            // the fingerprint of our write matches its echo.
            let props = to_properties(&fields);
            let mut echoed = serde_json::Map::new();
            for (k, v) in props {
                echoed.insert(k, v);
            }
            echoed.insert("lastmodifieddate".into(), json!("2026-11-20T10:00:00Z"));
            let raw: HsObject = serde_json::from_value(json!({"id": "1", "properties": echoed})).unwrap_or_else(|e| panic!("{e}"));
            let back = to_incoming(CrmObject::Contacts, raw).unwrap_or_else(|e| panic!("{e}"));
            proptest::prop_assert_eq!(&back.fields, &fields);
            proptest::prop_assert_eq!(round_trip(&fields).fingerprint(), back.fields.fingerprint());
        }
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
        let patch = patch_properties(&current, &target);
        assert_eq!(patch.len(), 2, "{patch:?}");
        assert_eq!(patch.get("phone"), Some(&json!("")));
        assert_eq!(patch.get("company"), Some(&json!("Acme")));
        assert!(patch_properties(&target, &target).is_empty());
    }

    #[test]
    fn leads_search_on_hs_lastmodifieddate() {
        assert!(properties(CrmObject::Leads).contains(&"hs_lastmodifieddate"));
        assert_eq!(modified_property(CrmObject::Contacts), "lastmodifieddate");
    }
}
