//! `/crm/v3/properties/{objectType}`: list, read, create and update property
//! definitions (spec `crm-properties/v3/properties.json`), including
//! `hasUniqueValue` properties that writes then keep unique and that serve
//! as `idProperty`.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::gate::Caller;
use super::model::{PropertyDef, PropertyOption};
use super::objects::{object_type, parse_body};
use super::state::{lock, now_ms};

const TYPES: &[&str] = &[
    "bool",
    "date",
    "datetime",
    "enumeration",
    "number",
    "phone_number",
    "string",
];
const FIELD_TYPES: &[&str] = &[
    "booleancheckbox",
    "calculation_equation",
    "checkbox",
    "date",
    "file",
    "html",
    "number",
    "phonenumber",
    "radio",
    "select",
    "text",
    "textarea",
];

/// `GET /crm/v3/properties/{objectType}` → `{results}` (no paging).
pub async fn list(
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let mut data = lock(&caller.account.data);
    let results: Vec<Value> = data
        .store(object)
        .properties
        .values()
        .map(PropertyDef::to_json)
        .collect();
    Ok(axum::Json(json!({ "results": results })).into_response())
}

/// `GET /crm/v3/properties/{objectType}/{propertyName}`.
pub async fn get_one(
    Extension(caller): Extension<Caller>,
    Path((ot, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let mut data = lock(&caller.account.data);
    match data.store(object).properties.get(&name) {
        Some(def) => Ok(axum::Json(def.to_json()).into_response()),
        None => Err(ApiError::not_found(format!(
            "Unable to find property {name} for object type {}",
            object.type_id()
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OptionInput {
    label: String,
    value: String,
}

impl From<OptionInput> for PropertyOption {
    fn from(o: OptionInput) -> Self {
        Self {
            label: o.label,
            value: o.value,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PropertyCreate {
    name: Option<String>,
    label: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    field_type: Option<String>,
    group_name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    options: Vec<OptionInput>,
    #[serde(default)]
    has_unique_value: bool,
    #[serde(default)]
    form_field: bool,
    display_order: Option<i64>,
}

/// `POST /crm/v3/properties/{objectType}` → 201 with `Location`; 409
/// `OBJECT_ALREADY_EXISTS` for a taken name.
pub async fn create(
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let input: PropertyCreate = parse_body(&body)?;
    let mut missing = Vec::new();
    for (field, value) in [
        ("name", &input.name),
        ("label", &input.label),
        ("type", &input.kind),
        ("fieldType", &input.field_type),
        ("groupName", &input.group_name),
    ] {
        if value.as_deref().is_none_or(str::is_empty) {
            missing.push(field);
        }
    }
    if !missing.is_empty() {
        let errors: Vec<Value> = missing.iter().map(|f| json!({"message": format!("{f} is required"), "code": "REQUIRED_FIELD", "in": f})).collect();
        return Err(ApiError::validation(format!(
            "Missing required fields: {}",
            missing.join(", ")
        ))
        .with("errors", Value::Array(errors)));
    }
    let kind = input.kind.unwrap_or_default();
    let field_type = input.field_type.unwrap_or_default();
    if !TYPES.contains(&kind.as_str()) {
        return Err(ApiError::validation(format!(
            "Invalid type {kind}; expected one of {}",
            TYPES.join(", ")
        )));
    }
    if !FIELD_TYPES.contains(&field_type.as_str()) {
        return Err(ApiError::validation(format!(
            "Invalid fieldType {field_type}; expected one of {}",
            FIELD_TYPES.join(", ")
        )));
    }
    let name = input.name.unwrap_or_default();
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || name.starts_with("hs_")
    {
        return Err(ApiError::validation(format!(
            "Invalid property name {name}: use lowercase letters, digits and underscores, not starting with hs_"
        )));
    }
    let def = PropertyDef {
        name: name.clone(),
        label: input.label.unwrap_or_default(),
        kind,
        field_type,
        group_name: input.group_name.unwrap_or_default(),
        description: input.description,
        has_unique_value: input.has_unique_value,
        read_only: false,
        hubspot_defined: false,
        options: input
            .options
            .into_iter()
            .map(PropertyOption::from)
            .collect(),
        created_ms: now_ms(),
        display_order: input.display_order.unwrap_or(-1),
        form_field: input.form_field,
    };
    let json = def.to_json();
    let mut data = lock(&caller.account.data);
    if !data.store(object).add_property(def) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "OBJECT_ALREADY_EXISTS",
            format!("A property named '{name}' already exists."),
        ));
    }
    let mut response = (StatusCode::CREATED, axum::Json(json)).into_response();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/crm/v3/properties/{}/{name}", object.path_name()))
    {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PropertyUpdate {
    label: Option<String>,
    description: Option<String>,
    group_name: Option<String>,
    options: Option<Vec<OptionInput>>,
    display_order: Option<i64>,
    form_field: Option<bool>,
}

/// `PATCH /crm/v3/properties/{objectType}/{propertyName}` → the property
/// as changed: what an admin does in the settings, e.g. editing the
/// options of an enumeration (HubSpot lets users edit even built-in ones,
/// such as Lead Status). A value written before keeps its option; later
/// writes are held to the new options.
pub async fn update(
    Extension(caller): Extension<Caller>,
    Path((ot, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let input: PropertyUpdate = parse_body(&body)?;
    let mut data = lock(&caller.account.data);
    let Some(def) = data.store(object).properties.get_mut(&name) else {
        return Err(ApiError::not_found(format!(
            "Unable to find property {name} for object type {}",
            object.type_id()
        )));
    };
    if def.read_only {
        return Err(ApiError::validation(format!(
            "{name} is a read only property; its definition cannot be changed"
        )));
    }
    if let Some(label) = input.label {
        def.label = label;
    }
    if let Some(description) = input.description {
        def.description = description;
    }
    if let Some(group_name) = input.group_name {
        def.group_name = group_name;
    }
    if let Some(options) = input.options {
        def.options = options.into_iter().map(PropertyOption::from).collect();
    }
    if let Some(order) = input.display_order {
        def.display_order = order;
    }
    if let Some(form_field) = input.form_field {
        def.form_field = form_field;
    }
    Ok(axum::Json(def.to_json()).into_response())
}
