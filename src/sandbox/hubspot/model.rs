//! The CRM data of one HubSpot account: object types, property definitions,
//! records with property history, unique-value indexes, merges and the
//! search index that lags behind writes.
//!
//! Everything here is synchronous and lock-free; callers hold the account's
//! mutex. Each write returns the [`Change`]s it made so the webhook layer can
//! emit events after the lock is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::error::PropertyFailure;
use crate::sandbox::history::{self, FieldHistory};
use crate::sandbox::search_lag::LaggingView;
use crate::sandbox::unique_index::UniqueIndex;

/// The CRM objects the sandbox serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectType {
    /// `contacts`, object type id `0-1`.
    Contacts,
    /// `leads`, object type id `0-136` (facts sheet §1.5: UNVERIFIED id).
    Leads,
}

impl ObjectType {
    /// Both types, for loops.
    pub const ALL: [ObjectType; 2] = [ObjectType::Contacts, ObjectType::Leads];

    /// Accepts the names HubSpot accepts in paths: plural, singular or type id.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => Some(Self::Contacts),
            "leads" | "lead" | "0-136" => Some(Self::Leads),
            _ => None,
        }
    }

    /// The path name (`contacts`).
    pub fn path_name(self) -> &'static str {
        match self {
            Self::Contacts => "contacts",
            Self::Leads => "leads",
        }
    }

    /// The object type id used by `object.*` webhook events.
    pub fn type_id(self) -> &'static str {
        match self {
            Self::Contacts => "0-1",
            Self::Leads => "0-136",
        }
    }

    /// The upper-case name HubSpot uses in messages ("Could not get some CONTACT objects").
    pub fn upper_name(self) -> &'static str {
        match self {
            Self::Contacts => "CONTACT",
            Self::Leads => "LEAD",
        }
    }

    /// The property holding the last-modified time (facts sheet §1.2: contacts use
    /// `lastmodifieddate`, every other object `hs_lastmodifieddate`).
    pub fn modified_property(self) -> &'static str {
        match self {
            Self::Contacts => "lastmodifieddate",
            Self::Leads => "hs_lastmodifieddate",
        }
    }

    /// The property holding the creation time.
    pub fn created_property(self) -> &'static str {
        match self {
            Self::Contacts => "createdate",
            Self::Leads => "hs_createdate",
        }
    }

    /// Properties returned when a request names none (facts sheet §1.2 for contacts).
    pub fn default_properties(self) -> &'static [&'static str] {
        match self {
            Self::Contacts => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            Self::Leads => &[
                "hs_createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
                "hs_lead_name",
            ],
        }
    }

    /// Properties always present in a response, asked for or not.
    pub fn system_properties(self) -> [&'static str; 3] {
        [
            self.created_property(),
            "hs_object_id",
            self.modified_property(),
        ]
    }

    /// Properties the free-text `query` of a search looks in.
    pub fn query_properties(self) -> &'static [&'static str] {
        match self {
            Self::Contacts => &["email", "firstname", "lastname", "phone", "company"],
            Self::Leads => &["hs_lead_name"],
        }
    }
}

/// An ISO-8601 UTC timestamp with milliseconds, HubSpot's format for
/// `createdAt`, `updatedAt` and datetime property values.
pub fn iso_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Parses a datetime filter or property value: epoch milliseconds or ISO-8601.
pub fn parse_time_ms(raw: &str) -> Option<i64> {
    if let Ok(ms) = raw.trim().parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One allowed value of an enumeration property.
#[derive(Debug, Clone)]
pub struct PropertyOption {
    /// Shown to users.
    pub label: String,
    /// Stored.
    pub value: String,
}

/// A property definition, as `/crm/v3/properties` serves it.
#[derive(Debug, Clone)]
pub struct PropertyDef {
    /// Internal name.
    pub name: String,
    /// Display name.
    pub label: String,
    /// `string|number|date|datetime|enumeration|bool|phone_number`.
    pub kind: String,
    /// `text|textarea|select|...`.
    pub field_type: String,
    /// Property group.
    pub group_name: String,
    /// Free text.
    pub description: String,
    /// Unique across records; usable as `idProperty`.
    pub has_unique_value: bool,
    /// HubSpot maintains it; writes are refused.
    pub read_only: bool,
    /// Built in rather than created through the API.
    pub hubspot_defined: bool,
    /// Allowed values of an enumeration.
    pub options: Vec<PropertyOption>,
    /// Epoch ms.
    pub created_ms: i64,
    /// Display order in HubSpot's UI.
    pub display_order: i64,
    /// Shown in forms.
    pub form_field: bool,
}

impl PropertyDef {
    fn builtin(name: &str, label: &str, kind: &str, field_type: &str, read_only: bool) -> Self {
        Self {
            name: name.into(),
            label: label.into(),
            kind: kind.into(),
            field_type: field_type.into(),
            group_name: "contactinformation".into(),
            description: String::new(),
            has_unique_value: false,
            read_only,
            hubspot_defined: true,
            options: Vec::new(),
            created_ms: 0,
            display_order: -1,
            form_field: !read_only,
        }
    }

    /// Whether values compare as numbers (numbers and times) rather than text.
    pub fn is_numeric(&self) -> bool {
        matches!(self.kind.as_str(), "number" | "datetime" | "date")
    }

    /// The JSON `Property` shape.
    pub fn to_json(&self) -> Value {
        let options: Vec<Value> = self
            .options
            .iter()
            .enumerate()
            .map(|(i, o)| json!({"label": o.label, "value": o.value, "displayOrder": i, "hidden": false}))
            .collect();
        let created = iso_ms(self.created_ms);
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.kind,
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group_name,
            "options": options,
            "displayOrder": self.display_order,
            "calculated": false,
            "externalOptions": false,
            "hasUniqueValue": self.has_unique_value,
            "hidden": false,
            "hubspotDefined": self.hubspot_defined,
            "formField": self.form_field,
            "archived": false,
            "createdAt": created,
            "updatedAt": created,
            "modificationMetadata": {
                "archivable": !self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
        })
    }
}

fn lead_status_options() -> Vec<PropertyOption> {
    [
        ("New", "NEW"),
        ("Open", "OPEN"),
        ("In Progress", "IN_PROGRESS"),
        ("Open Deal", "OPEN_DEAL"),
        ("Unqualified", "UNQUALIFIED"),
        ("Attempted to Contact", "ATTEMPTED_TO_CONTACT"),
        ("Connected", "CONNECTED"),
        ("Bad Timing", "BAD_TIMING"),
    ]
    .iter()
    .map(|(label, value)| PropertyOption {
        label: (*label).into(),
        value: (*value).into(),
    })
    .collect()
}

/// The built-in properties of each object type.
pub fn builtin_properties(object: ObjectType) -> Vec<PropertyDef> {
    let mut defs = match object {
        ObjectType::Contacts => vec![
            PropertyDef::builtin("email", "Email", "string", "text", false),
            PropertyDef::builtin("firstname", "First Name", "string", "text", false),
            PropertyDef::builtin("lastname", "Last Name", "string", "text", false),
            PropertyDef::builtin("company", "Company Name", "string", "text", false),
            PropertyDef::builtin("jobtitle", "Job Title", "string", "text", false),
            PropertyDef::builtin("phone", "Phone Number", "string", "phonenumber", false),
            PropertyDef::builtin("website", "Website URL", "string", "text", false),
            PropertyDef::builtin(
                "lifecyclestage",
                "Lifecycle Stage",
                "enumeration",
                "radio",
                false,
            ),
            PropertyDef {
                options: lead_status_options(),
                ..PropertyDef::builtin(
                    "hs_lead_status",
                    "Lead Status",
                    "enumeration",
                    "radio",
                    false,
                )
            },
            PropertyDef::builtin("createdate", "Create Date", "datetime", "date", true),
            PropertyDef::builtin(
                "lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                true,
            ),
            PropertyDef::builtin(
                "hs_merged_object_ids",
                "Merged Contact IDs",
                "enumeration",
                "checkbox",
                true,
            ),
        ],
        ObjectType::Leads => vec![
            PropertyDef::builtin("hs_lead_name", "Lead name", "string", "text", false),
            PropertyDef::builtin("hs_lead_type", "Lead type", "string", "text", false),
            PropertyDef::builtin("hs_lead_label", "Lead label", "string", "text", false),
            PropertyDef::builtin("hs_pipeline", "Pipeline", "string", "text", false),
            PropertyDef::builtin(
                "hs_pipeline_stage",
                "Pipeline stage",
                "string",
                "text",
                false,
            ),
            PropertyDef::builtin("hs_createdate", "Create Date", "datetime", "date", true),
            PropertyDef::builtin(
                "hs_lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                true,
            ),
        ],
    };
    defs.push(PropertyDef::builtin(
        "hs_object_id",
        "Record ID",
        "number",
        "number",
        true,
    ));
    if object == ObjectType::Leads {
        for def in &mut defs {
            def.group_name = "lead_information".into();
        }
    }
    if let Some(lifecycle) = defs.iter_mut().find(|d| d.name == "lifecyclestage") {
        lifecycle.options = [
            "subscriber",
            "lead",
            "marketingqualifiedlead",
            "salesqualifiedlead",
            "opportunity",
            "customer",
            "other",
        ]
        .iter()
        .map(|v| PropertyOption {
            label: (*v).into(),
            value: (*v).into(),
        })
        .collect();
    }
    defs
}

/// Who made a change: decides `changeSource`/`sourceId` in webhooks and
/// `sourceType`/`sourceId` in property history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An app writing with its own token (OAuth or private app).
    Integration {
        /// The writing app.
        app_id: u64,
    },
    /// A person in HubSpot's UI (the control API acts as one).
    User {
        /// The user.
        user_id: u64,
    },
}

impl Actor {
    /// `changeSource` / `sourceType`.
    pub fn source_type(self) -> &'static str {
        match self {
            Actor::Integration { .. } => "INTEGRATION",
            Actor::User { .. } => "CRM_UI",
        }
    }

    /// `sourceId`: the app id, or `userId:N` (facts sheet §1.5, §1.6).
    pub fn source_id(self) -> String {
        match self {
            Actor::Integration { app_id } => app_id.to_string(),
            Actor::User { user_id } => format!("userId:{user_id}"),
        }
    }
}

/// One entry of a property's history (`ValueWithTimestamp`).
pub type HistoryEntry = history::Entry<Actor>;

/// A history entry in HubSpot's `ValueWithTimestamp` shape.
fn history_json(entry: &HistoryEntry) -> Value {
    let mut out = json!({
        "value": entry.value,
        "timestamp": iso_ms(entry.timestamp_ms),
        "sourceType": entry.actor.source_type(),
        "sourceId": entry.actor.source_id(),
    });
    if let Actor::User { user_id } = entry.actor {
        out["updatedByUserId"] = json!(user_id);
    }
    out
}

/// What search sees of a record: a copy taken when a write became indexed.
#[derive(Debug, Clone)]
pub struct IndexedView {
    /// Property values at that time.
    pub values: BTreeMap<String, String>,
    /// Creation time.
    pub created_ms: i64,
    /// Last modification time.
    pub updated_ms: i64,
}

/// One record with its current values and history.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Record id.
    pub id: u64,
    /// Current non-empty values, system properties included.
    pub values: BTreeMap<String, String>,
    /// Newest first.
    pub history: FieldHistory<Actor>,
    /// Epoch ms.
    pub created_ms: i64,
    /// Epoch ms.
    pub updated_ms: i64,
    /// Set while archived (restorable).
    pub archived_ms: Option<i64>,
    search: LaggingView<IndexedView>,
}

impl StoredObject {
    fn view(&self) -> Option<Arc<IndexedView>> {
        if self.archived_ms.is_some() {
            return None;
        }
        Some(Arc::new(IndexedView {
            values: self.values.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        }))
    }

    /// Queues the record's present state for the search index, visible after `lag`.
    fn reindex(&mut self, now: Instant, lag: Duration) {
        let view = self.view();
        self.search.publish(now, lag, view);
    }

    /// Sets (or, with "", clears) a value and records who did it in its history.
    fn set(&mut self, name: &str, value: &str, actor: Actor, now_ms: i64) {
        history::record(&mut self.history, name, value, actor, now_ms);
        if value.is_empty() {
            self.values.remove(name);
        } else {
            self.values.insert(name.to_string(), value.to_string());
        }
    }

    /// Moves the modification time (`updatedAt` and the object's modified property).
    fn touch(&mut self, object: ObjectType, now_ms: i64) {
        self.updated_ms = now_ms;
        self.values
            .insert(object.modified_property().into(), iso_ms(now_ms));
    }

    /// What search sees at `now`.
    pub fn search_view(&mut self, now: Instant) -> Option<Arc<IndexedView>> {
        self.search.at(now)
    }

    /// The response JSON (`SimplePublicObject`): requested properties (null when
    /// unset), the system properties always, history when asked.
    pub fn to_json(
        &self,
        object: ObjectType,
        properties: &[String],
        with_history: &[String],
    ) -> Value {
        render(
            object,
            self.id,
            &self.values,
            self.created_ms,
            self.updated_ms,
            self.archived_ms,
            properties,
            Some((&self.history, with_history)),
        )
    }
}

/// A record's history and the properties whose history was asked for.
pub type HistoryRequest<'a> = (&'a FieldHistory<Actor>, &'a [String]);

/// Renders a record (live or indexed) in HubSpot's `SimplePublicObject` shape.
#[allow(clippy::too_many_arguments)]
pub fn render(
    object: ObjectType,
    id: u64,
    values: &BTreeMap<String, String>,
    created_ms: i64,
    updated_ms: i64,
    archived_ms: Option<i64>,
    properties: &[String],
    history: Option<HistoryRequest<'_>>,
) -> Value {
    let mut props = Map::new();
    let requested: Vec<&str> = if properties.is_empty() {
        object.default_properties().to_vec()
    } else {
        properties.iter().map(String::as_str).collect()
    };
    for name in requested.iter().copied().chain(object.system_properties()) {
        props.insert(
            name.to_string(),
            values.get(name).map(|v| json!(v)).unwrap_or(Value::Null),
        );
    }
    let mut out = json!({
        "id": id.to_string(),
        "properties": props,
        "createdAt": iso_ms(created_ms),
        "updatedAt": iso_ms(updated_ms),
        "archived": archived_ms.is_some(),
    });
    if let Some(at) = archived_ms {
        out["archivedAt"] = json!(iso_ms(at));
    }
    if let Some((all, wanted)) = history
        && !wanted.is_empty()
    {
        let mut map = Map::new();
        for name in wanted {
            let entries: Vec<Value> = all
                .get(name)
                .map(|h| h.iter().map(history_json).collect())
                .unwrap_or_default();
            map.insert(name.clone(), Value::Array(entries));
        }
        out["propertiesWithHistory"] = Value::Object(map);
    }
    out
}

/// A change one write made, for webhook events.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A record was created with these values.
    Created {
        /// Type.
        object: ObjectType,
        /// Id.
        id: u64,
        /// The values set at creation.
        values: Vec<(String, String)>,
    },
    /// One property changed.
    PropertyChanged {
        /// Type.
        object: ObjectType,
        /// Id.
        id: u64,
        /// Property name.
        name: String,
        /// New value ("" when cleared).
        value: String,
    },
    /// Archived.
    Deleted {
        /// Type.
        object: ObjectType,
        /// Id.
        id: u64,
    },
    /// Restored from the archive.
    Restored {
        /// Type.
        object: ObjectType,
        /// Id.
        id: u64,
    },
    /// Records merged into a survivor.
    Merged {
        /// Type.
        object: ObjectType,
        /// The id asked to survive.
        primary: u64,
        /// The ids absorbed (the survivor included, as HubSpot lists both).
        merged: Vec<u64>,
        /// The surviving id.
        new_id: u64,
        /// Properties copied from the absorbed record.
        moved: usize,
    },
    /// Permanently erased (GDPR).
    PrivacyDeleted {
        /// Type.
        object: ObjectType,
        /// Id.
        id: u64,
    },
}

/// A write that cannot proceed.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// Property values are invalid.
    Invalid(Vec<PropertyFailure>),
    /// A unique value is already held by another record.
    Duplicate {
        /// Property.
        property: String,
        /// Value.
        value: String,
        /// The record holding it.
        existing_id: u64,
    },
    /// No such record.
    NotFound(String),
}

/// All records of one type in one account.
#[derive(Debug)]
pub struct ObjectStore {
    /// The type.
    pub object: ObjectType,
    /// Definitions by name.
    pub properties: BTreeMap<String, PropertyDef>,
    /// Records by id, archived included.
    pub objects: BTreeMap<u64, StoredObject>,
    /// Unique property → normalised value → record id (live records only).
    unique: UniqueIndex<u64>,
    /// Absorbed id → survivor, so reads by an old id resolve (facts sheet §1.7:
    /// UNVERIFIED; we follow the common observation that they resolve).
    merged_into: HashMap<u64, u64>,
    /// Property values an app sent in updates that the record already held,
    /// by property: writes that change nothing, the mark of an echo write.
    pub app_unchanged_values: BTreeMap<String, u64>,
}

fn normalise_unique(property: &str, value: &str) -> String {
    if property == "email" {
        value.trim().to_ascii_lowercase()
    } else {
        value.to_string()
    }
}

impl ObjectStore {
    /// An empty store with the built-in properties.
    pub fn new(object: ObjectType) -> Self {
        let properties: BTreeMap<String, PropertyDef> = builtin_properties(object)
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let mut unique = UniqueIndex::new(normalise_unique);
        if object == ObjectType::Contacts {
            // HubSpot deduplicates contacts by email (409 "Contact already exists").
            unique.track("email", []);
        }
        Self {
            object,
            properties,
            objects: BTreeMap::new(),
            unique,
            merged_into: HashMap::new(),
            app_unchanged_values: BTreeMap::new(),
        }
    }

    /// Whether `name` can serve as `idProperty` (email for contacts, or a property with unique values).
    pub fn is_id_property(&self, name: &str) -> bool {
        name == "hs_object_id" || self.unique.tracks(name)
    }

    /// Adds a property definition; false when the name is taken.
    pub fn add_property(&mut self, def: PropertyDef) -> bool {
        if self.properties.contains_key(&def.name) {
            return false;
        }
        if def.has_unique_value {
            let live = self
                .objects
                .values()
                .filter(|o| o.archived_ms.is_none())
                .map(|o| (o.id, &o.values));
            self.unique.track(&def.name, live);
        }
        self.properties.insert(def.name.clone(), def);
        true
    }

    /// Resolves an id through merges.
    pub fn resolve(&self, id: u64) -> u64 {
        let mut current = id;
        for _ in 0..16 {
            match self.merged_into.get(&current) {
                Some(&next) => current = next,
                None => break,
            }
        }
        current
    }

    /// Finds a record id by `idProperty` (or by id when `id_property` is None).
    pub fn find(&self, key: &str, id_property: Option<&str>) -> Option<u64> {
        match id_property {
            None | Some("hs_object_id") => key
                .trim()
                .parse::<u64>()
                .ok()
                .map(|id| self.resolve(id))
                .filter(|id| self.objects.contains_key(id)),
            Some(prop) => self.unique.holder(prop, key).copied(),
        }
    }

    /// Checks input values against the definitions; returns them as strings.
    pub fn validate(
        &self,
        input: &Map<String, Value>,
    ) -> Result<BTreeMap<String, String>, Vec<PropertyFailure>> {
        let mut out = BTreeMap::new();
        let mut failures = Vec::new();
        for (name, raw) in input {
            let value = match raw {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            let Some(def) = self.properties.get(name) else {
                failures.push(PropertyFailure {
                    name: name.clone(),
                    code: "PROPERTY_DOESNT_EXIST",
                    message: format!("Property \"{name}\" does not exist"),
                });
                continue;
            };
            if def.read_only {
                failures.push(PropertyFailure {
                    name: name.clone(),
                    code: "READ_ONLY_VALUE",
                    message: format!(
                        "\"{name}\" is a read only property; its value cannot be set."
                    ),
                });
                continue;
            }
            if !value.is_empty() {
                if def.kind == "enumeration"
                    && def.field_type != "checkbox"
                    && !def.options.iter().any(|o| o.value == value)
                {
                    let allowed: Vec<&str> = def.options.iter().map(|o| o.value.as_str()).collect();
                    failures.push(PropertyFailure {
                        name: name.clone(),
                        code: "INVALID_OPTION",
                        message: format!(
                            "{value} was not one of the allowed options: [{}]",
                            allowed.join(", ")
                        ),
                    });
                    continue;
                }
                if def.kind == "number" && value.parse::<f64>().is_err() {
                    failures.push(PropertyFailure {
                        name: name.clone(),
                        code: "INVALID_INTEGER",
                        message: format!("{value} is not a valid number"),
                    });
                    continue;
                }
                if name == "email"
                    && self.object == ObjectType::Contacts
                    && !looks_like_email(&value)
                {
                    failures.push(PropertyFailure {
                        name: name.clone(),
                        code: "INVALID_EMAIL",
                        message: format!("Email address {value} is invalid"),
                    });
                    continue;
                }
            }
            out.insert(name.clone(), value);
        }
        if failures.is_empty() {
            Ok(out)
        } else {
            Err(failures)
        }
    }

    /// The record holding a unique value other than `except`, if any.
    pub fn unique_conflict(
        &self,
        values: &BTreeMap<String, String>,
        except: Option<u64>,
    ) -> Option<WriteError> {
        self.unique
            .clash(values, except.as_ref())
            .map(|clash| WriteError::Duplicate {
                property: clash.property,
                value: clash.value,
                existing_id: clash.holder,
            })
    }

    fn unindex_unique(&mut self, id: u64) {
        if let Some(obj) = self.objects.get(&id) {
            self.unique.remove(&id, &obj.values);
        }
    }

    fn index_unique(&mut self, id: u64) {
        if let Some(obj) = self.objects.get(&id)
            && obj.archived_ms.is_none()
        {
            self.unique.insert(&id, &obj.values);
        }
    }

    /// Creates a record with validated values.
    pub fn create(
        &mut self,
        id: u64,
        values: BTreeMap<String, String>,
        actor: Actor,
        now_ms: i64,
        clock: Instant,
        lag: Duration,
    ) -> Result<Change, WriteError> {
        if let Some(conflict) = self.unique_conflict(&values, None) {
            return Err(conflict);
        }
        let mut obj = StoredObject {
            id,
            values: BTreeMap::new(),
            history: HashMap::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
            archived_ms: None,
            search: LaggingView::default(),
        };
        let mut set = Vec::new();
        for (name, value) in values {
            if value.is_empty() {
                continue;
            }
            obj.set(&name, &value, actor, now_ms);
            set.push((name, value));
        }
        obj.values.insert("hs_object_id".into(), id.to_string());
        obj.values
            .insert(self.object.created_property().into(), iso_ms(now_ms));
        obj.touch(self.object, now_ms);
        obj.reindex(clock, lag);
        self.objects.insert(id, obj);
        self.index_unique(id);
        Ok(Change::Created {
            object: self.object,
            id,
            values: set,
        })
    }

    /// Updates a live record; only values that differ are changed and reported.
    pub fn update(
        &mut self,
        id: u64,
        values: BTreeMap<String, String>,
        actor: Actor,
        now_ms: i64,
        clock: Instant,
        lag: Duration,
    ) -> Result<Vec<Change>, WriteError> {
        let live = self
            .objects
            .get(&id)
            .is_some_and(|o| o.archived_ms.is_none());
        if !live {
            return Err(WriteError::NotFound(id.to_string()));
        }
        if let Some(conflict) = self.unique_conflict(&values, Some(id)) {
            return Err(conflict);
        }
        self.unindex_unique(id);
        let object = self.object;
        let mut changes = Vec::new();
        if let Some(obj) = self.objects.get_mut(&id) {
            for (name, value) in values {
                let current = obj.values.get(&name).cloned().unwrap_or_default();
                if current == value {
                    if matches!(actor, Actor::Integration { .. }) {
                        *self.app_unchanged_values.entry(name).or_default() += 1;
                    }
                    continue;
                }
                obj.set(&name, &value, actor, now_ms);
                changes.push(Change::PropertyChanged {
                    object,
                    id,
                    name,
                    value,
                });
            }
            if !changes.is_empty() {
                obj.touch(object, now_ms);
                obj.reindex(clock, lag);
            }
        }
        self.index_unique(id);
        Ok(changes)
    }

    /// Changes a live record's values the way a formula field, a
    /// calculated rollup or a search-index miss looks from outside: the
    /// values move, but neither `updatedAt` nor the modified property does,
    /// the search index keeps its old copy, each history entry is stamped
    /// with the record's unchanged modification time (so no property's
    /// time passes it), and no change is reported — so no webhook fires and
    /// no delta (a search by modified time) can see it. Returns how many
    /// values changed.
    pub fn silent_update(
        &mut self,
        id: u64,
        values: BTreeMap<String, String>,
        actor: Actor,
    ) -> Result<usize, WriteError> {
        let live = self
            .objects
            .get(&id)
            .is_some_and(|o| o.archived_ms.is_none());
        if !live {
            return Err(WriteError::NotFound(id.to_string()));
        }
        if let Some(conflict) = self.unique_conflict(&values, Some(id)) {
            return Err(conflict);
        }
        self.unindex_unique(id);
        let mut changed = 0;
        if let Some(obj) = self.objects.get_mut(&id) {
            let at = obj.updated_ms;
            for (name, value) in values {
                if obj.values.get(&name).map_or("", String::as_str) == value {
                    continue;
                }
                obj.set(&name, &value, actor, at);
                changed += 1;
            }
        }
        self.index_unique(id);
        Ok(changed)
    }

    /// Archives a live record (restorable); archiving an archived or unknown id is a no-op.
    pub fn archive(
        &mut self,
        id: u64,
        now_ms: i64,
        clock: Instant,
        lag: Duration,
    ) -> Option<Change> {
        let live = self
            .objects
            .get(&id)
            .is_some_and(|o| o.archived_ms.is_none());
        if !live {
            return None;
        }
        self.unindex_unique(id);
        let obj = self.objects.get_mut(&id)?;
        obj.archived_ms = Some(now_ms);
        obj.updated_ms = now_ms;
        obj.reindex(clock, lag);
        Some(Change::Deleted {
            object: self.object,
            id,
        })
    }

    /// Restores an archived record, unless its unique values are now taken.
    pub fn restore(
        &mut self,
        id: u64,
        now_ms: i64,
        clock: Instant,
        lag: Duration,
    ) -> Result<Change, WriteError> {
        let values = match self.objects.get(&id) {
            Some(obj) if obj.archived_ms.is_some() => obj.values.clone(),
            _ => return Err(WriteError::NotFound(id.to_string())),
        };
        if let Some(conflict) = self.unique_conflict(&values, Some(id)) {
            return Err(conflict);
        }
        if let Some(obj) = self.objects.get_mut(&id) {
            obj.archived_ms = None;
            obj.touch(self.object, now_ms);
            obj.reindex(clock, lag);
        }
        self.index_unique(id);
        Ok(Change::Restored {
            object: self.object,
            id,
        })
    }

    /// Merges `absorbed` into `primary`: the primary keeps its values and takes the
    /// absorbed record's values for properties it lacks; the absorbed id then
    /// resolves to the primary.
    pub fn merge(
        &mut self,
        primary: u64,
        absorbed: u64,
        actor: Actor,
        now_ms: i64,
        clock: Instant,
        lag: Duration,
    ) -> Result<Change, WriteError> {
        let live = |s: &Self, id: u64| s.objects.get(&id).is_some_and(|o| o.archived_ms.is_none());
        if !live(self, primary) {
            return Err(WriteError::NotFound(primary.to_string()));
        }
        if !live(self, absorbed) || primary == absorbed {
            return Err(WriteError::NotFound(absorbed.to_string()));
        }
        self.unindex_unique(absorbed);
        self.unindex_unique(primary);
        let system = self.object.system_properties();
        let taken = self
            .objects
            .remove(&absorbed)
            .map(|o| o.values)
            .unwrap_or_default();
        let mut moved = 0;
        if let Some(obj) = self.objects.get_mut(&primary) {
            for (name, value) in taken {
                if system.contains(&name.as_str())
                    || name == "hs_merged_object_ids"
                    || obj.values.contains_key(&name)
                {
                    continue;
                }
                obj.set(&name, &value, actor, now_ms);
                moved += 1;
            }
            let mut merged_ids: Vec<String> = obj
                .values
                .get("hs_merged_object_ids")
                .map(|s| s.split(';').map(String::from).collect())
                .unwrap_or_default();
            merged_ids.push(absorbed.to_string());
            obj.values
                .insert("hs_merged_object_ids".into(), merged_ids.join(";"));
            obj.touch(self.object, now_ms);
            obj.reindex(clock, lag);
        }
        self.merged_into.insert(absorbed, primary);
        self.index_unique(primary);
        Ok(Change::Merged {
            object: self.object,
            primary,
            merged: vec![absorbed, primary],
            new_id: primary,
            moved,
        })
    }

    /// Erases a record for good (GDPR delete); no restore.
    pub fn erase(&mut self, id: u64) -> Option<Change> {
        self.unindex_unique(id);
        self.objects.remove(&id)?;
        Some(Change::PrivacyDeleted {
            object: self.object,
            id,
        })
    }
}

fn looks_like_email(value: &str) -> bool {
    let trimmed = value.trim();
    match trimmed.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !trimmed.contains(' ')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const USER: Actor = Actor::User { user_id: 7 };

    #[test]
    fn contact_emails_are_unique_case_insensitively() {
        let mut store = ObjectStore::new(ObjectType::Contacts);
        let t = Instant::now();
        store
            .create(
                1,
                values(&[("email", "A@x.io")]),
                USER,
                1,
                t,
                Duration::ZERO,
            )
            .unwrap();
        let err = store
            .create(
                2,
                values(&[("email", "a@X.io")]),
                USER,
                2,
                t,
                Duration::ZERO,
            )
            .unwrap_err();
        assert_eq!(
            err,
            WriteError::Duplicate {
                property: "email".into(),
                value: "a@X.io".into(),
                existing_id: 1
            }
        );
    }

    #[test]
    fn update_reports_only_changed_values_and_bumps_modified_time() {
        let mut store = ObjectStore::new(ObjectType::Contacts);
        let t = Instant::now();
        store
            .create(
                1,
                values(&[("email", "a@x.io"), ("firstname", "Ann")]),
                USER,
                1000,
                t,
                Duration::ZERO,
            )
            .unwrap();
        let changes = store
            .update(
                1,
                values(&[("email", "a@x.io"), ("firstname", "Anna")]),
                USER,
                2000,
                t,
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(store.objects[&1].values["lastmodifieddate"], iso_ms(2000));
        assert!(
            store
                .update(
                    1,
                    values(&[("firstname", "Anna")]),
                    USER,
                    3000,
                    t,
                    Duration::ZERO
                )
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.objects[&1].updated_ms, 2000);
        assert!(
            store.app_unchanged_values.is_empty(),
            "a person's no-op edit is not an app's echo"
        );
        let app = Actor::Integration { app_id: 7 };
        store
            .update(
                1,
                values(&[("firstname", "Anna"), ("lastname", "Lee")]),
                app,
                4000,
                t,
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(
            store.app_unchanged_values,
            BTreeMap::from([("firstname".to_string(), 1)]),
            "an app re-sending a value the record holds is tallied"
        );
    }

    #[test]
    fn search_sees_a_write_only_after_the_lag() {
        let mut store = ObjectStore::new(ObjectType::Contacts);
        let t = Instant::now();
        store
            .create(
                1,
                values(&[("email", "a@x.io")]),
                USER,
                1,
                t,
                Duration::from_millis(500),
            )
            .unwrap();
        let obj = store.objects.get_mut(&1).unwrap();
        assert!(obj.search_view(t).is_none());
        assert!(obj.search_view(t + Duration::from_millis(500)).is_some());
    }

    #[test]
    fn merged_ids_resolve_to_the_survivor() {
        let mut store = ObjectStore::new(ObjectType::Contacts);
        let t = Instant::now();
        store
            .create(
                1,
                values(&[("email", "a@x.io")]),
                USER,
                1,
                t,
                Duration::ZERO,
            )
            .unwrap();
        store
            .create(
                2,
                values(&[("email", "b@x.io"), ("phone", "123")]),
                USER,
                1,
                t,
                Duration::ZERO,
            )
            .unwrap();
        let change = store.merge(1, 2, USER, 5, t, Duration::ZERO).unwrap();
        assert!(matches!(
            change,
            Change::Merged {
                new_id: 1,
                moved: 1,
                ..
            }
        ));
        assert_eq!(store.find("2", None), Some(1));
        assert_eq!(store.objects[&1].values["phone"], "123");
        assert_eq!(store.find("b@x.io", Some("email")), None);
    }

    #[test]
    fn unknown_and_read_only_properties_are_refused() {
        let store = ObjectStore::new(ObjectType::Contacts);
        let mut input = Map::new();
        input.insert("nope".into(), json!("x"));
        input.insert("hs_object_id".into(), json!("5"));
        input.insert("hs_lead_status".into(), json!("WHATEVER"));
        let failures = store.validate(&input).unwrap_err();
        let codes: Vec<&str> = failures.iter().map(|f| f.code).collect();
        assert_eq!(
            codes,
            vec!["INVALID_OPTION", "READ_ONLY_VALUE", "PROPERTY_DOESNT_EXIST"]
        );
    }
}
