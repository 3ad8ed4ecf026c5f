//! `/crm/v3/objects/{objectType}`: list, read, create, update, archive, the
//! batch endpoints, merge and GDPR delete (spec `crm-contacts/v3/contacts.json`,
//! `crm-leads/v3/leads.json`).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::Sandbox;
use super::associations::{self, AssociationError, AssociationInput};
use super::error::{ApiError, standard_error};
use super::gate::Caller;
use super::model::{Actor, Change, ObjectStore, ObjectType, WriteError, iso_ms};
use super::state::{Account, AccountData, lock, now_ms};

/// Most inputs a batch request may carry (facts sheet §1.2: "limited to 100").
pub const BATCH_LIMIT: usize = 100;
/// Most records a list page may return (facts sheet §1.3: believed 100, UNVERIFIED).
pub const LIST_LIMIT: usize = 100;

/// Parses a JSON body, answering HubSpot's 400 on anything malformed.
/// Every HubSpot request body is a JSON object; serde would otherwise read a
/// struct from an array too.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => serde_json::from_slice(body).map_err(ApiError::invalid_json),
        Some(_) => Err(ApiError::binding(
            1,
            1,
            "Cannot deserialize value: expected a JSON object",
        )),
    }
}

/// Query pairs in order; repeated keys kept (`properties=a&properties=b`).
pub fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// A list parameter given repeated or comma-separated.
pub fn query_list(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A single query parameter.
pub fn query_one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A boolean query parameter; `True` counts too, as HubSpot's Python client
/// sends Python booleans verbatim and HubSpot accepts them.
pub fn query_flag(pairs: &[(String, String)], key: &str) -> bool {
    query_one(pairs, key).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Resolves the `{objectType}` path segment.
pub fn object_type(raw: &str) -> Result<ObjectType, ApiError> {
    ObjectType::parse(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("Unable to infer object type from: {raw}"),
        )
    })
}

/// Maps a refused write to HubSpot's answer.
pub fn write_error(object: ObjectType, err: WriteError) -> ApiError {
    match err {
        WriteError::Invalid(failures) => ApiError::invalid_properties(&failures),
        WriteError::Duplicate {
            property,
            existing_id,
            ..
        } if property == "email" && object == ObjectType::Contacts => ApiError::conflict(format!(
            "Contact already exists. Existing ID: {existing_id}"
        )),
        WriteError::Duplicate {
            property,
            value,
            existing_id,
        } => ApiError::conflict(format!(
            "A {} with the unique value \"{value}\" for property \"{property}\" already exists. Existing ID: {existing_id}",
            object.upper_name().to_ascii_lowercase()
        )),
        WriteError::NotFound(id) => ApiError::not_found(format!("resource not found: {id}")),
    }
}

/// Input values checked against the store's definitions, as HubSpot's 400.
pub fn validated(
    store: &ObjectStore,
    input: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, ApiError> {
    store
        .validate(input)
        .map_err(|f| write_error(store.object, WriteError::Invalid(f)))
}

/// Runs a write under the account lock and, if it succeeded, emits the
/// webhooks of the changes it made once the lock is released. A write that
/// fails changes nothing (every handler validates before it mutates), so
/// there is nothing to emit.
pub fn write<T>(
    sandbox: &Sandbox,
    account: &Account,
    actor: Actor,
    f: impl FnOnce(&mut AccountData, i64, Instant) -> Result<(T, Vec<Change>), ApiError>,
) -> Result<T, ApiError> {
    let now = now_ms();
    let (out, changes) = {
        let mut data = lock(&account.data);
        f(&mut data, now, Instant::now())?
    };
    if !changes.is_empty() {
        if let Actor::Integration { .. } = actor {
            let mut counters = lock(&account.counters);
            for change in &changes {
                if let Change::PropertyChanged { name, .. } = change {
                    *counters.app_changed_values.entry(name.clone()).or_default() += 1;
                }
            }
        }
        sandbox.emit(account, actor, now, changes);
    }
    Ok(out)
}

fn properties_input(body: &Value) -> Result<Map<String, Value>, ApiError> {
    match body.get("properties") {
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ApiError::binding(1, 1, "properties must be an object of property names to values")),
        None => Err(ApiError::validation("Missing required field: properties")
            .with("errors", json!([{"message": "properties is required", "code": "REQUIRED_FIELD", "in": "properties"}]))),
    }
}

/// `GET /crm/v3/objects/{objectType}`.
pub async fn list(
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let pairs = query_pairs(&q);
    let limit = match query_one(&pairs, "limit") {
        None => 10,
        Some(raw) => raw
            .parse::<usize>()
            .map_err(|_| ApiError::validation(format!("Invalid limit: {raw}")))?,
    };
    if limit == 0 || limit > LIST_LIMIT {
        return Err(ApiError::validation(format!(
            "limit must be between 1 and {LIST_LIMIT}, got {limit}"
        )));
    }
    let after = match query_one(&pairs, "after") {
        None | Some("") => 0,
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| ApiError::validation(format!("Invalid after: {raw}")))?,
    };
    let archived = query_flag(&pairs, "archived");
    let properties = query_list(&pairs, "properties");
    let history = query_list(&pairs, "propertiesWithHistory");
    let mut data = lock(&caller.account.data);
    let store = data.store(object);
    let mut results = Vec::with_capacity(limit);
    let mut next = None;
    for (id, obj) in store.objects.range(after..) {
        if obj.archived_ms.is_some() != archived {
            continue;
        }
        if results.len() == limit {
            next = Some(*id);
            break;
        }
        results.push(obj.to_json(object, &properties, &history));
    }
    let mut body = json!({ "results": results });
    if let Some(next) = next {
        body["paging"] = json!({"next": {"after": next.to_string(), "link": format!("/crm/v3/objects/{}?after={next}&limit={limit}", object.path_name())}});
    }
    Ok(axum::Json(body).into_response())
}

/// `GET /crm/v3/objects/{objectType}/{id}` (by id or `idProperty`).
pub async fn get_one(
    Extension(caller): Extension<Caller>,
    Path((ot, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let pairs = query_pairs(&q);
    let id_property = query_one(&pairs, "idProperty");
    let archived = query_flag(&pairs, "archived");
    let mut data = lock(&caller.account.data);
    let store = data.store(object);
    check_id_property(store, id_property)?;
    let found = store
        .find(&key, id_property)
        .and_then(|id| store.objects.get(&id))
        .filter(|o| o.archived_ms.is_some() == archived);
    match found {
        Some(obj) => Ok(axum::Json(obj.to_json(
            object,
            &query_list(&pairs, "properties"),
            &query_list(&pairs, "propertiesWithHistory"),
        ))
        .into_response()),
        None => Err(ApiError::not_found(format!("resource not found: {key}"))),
    }
}

fn check_id_property(store: &ObjectStore, id_property: Option<&str>) -> Result<(), ApiError> {
    match id_property {
        Some(p) if !store.is_id_property(p) => Err(ApiError::validation(format!(
            "Property \"{p}\" is not a unique identifier property and cannot be used as idProperty"
        ))),
        _ => Ok(()),
    }
}

/// `POST /crm/v3/objects/{objectType}`.
pub async fn create(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let body: Value = parse_body(&body)?;
    let input = properties_input(&body)?;
    let links = inline_associations(object, &body)?;
    create_as(&sb, &caller.account, caller.actor, object, input, &links)
        .map(|v| (StatusCode::CREATED, axum::Json(v)).into_response())
}

/// The inline `associations` of a create body. Only leads' are read (a lead
/// must name its contact); contacts' are accepted and ignored, as the sandbox
/// models no contact → company/deal edges.
pub fn inline_associations(
    object: ObjectType,
    body: &Value,
) -> Result<Vec<AssociationInput>, ApiError> {
    match object {
        ObjectType::Leads => Ok(associations::parse_inline(body)?),
        ObjectType::Contacts => Ok(Vec::new()),
    }
}

/// Creates one record as `actor` (shared with the control API's user
/// actions). A lead's `links` must reach a live contact; the edges are
/// recorded with the lead.
pub fn create_as(
    sb: &Sandbox,
    account: &Account,
    actor: Actor,
    object: ObjectType,
    input: Map<String, Value>,
    links: &[AssociationInput],
) -> Result<Value, ApiError> {
    let lag = sb.state.index_lag();
    write(sb, account, actor, |data, now, clock| {
        let values = validated(data.store(object), &input)?;
        let edges = edges_for(data, object, links)?;
        let id = data.allocate_id();
        let store = data.store(object);
        let change = store
            .create(id, values, actor, now, clock, lag)
            .map_err(|e| write_error(object, e))?;
        let out = store.objects[&id].to_json(object, &[], &[]);
        record_edges(data, id, &edges);
        Ok((out, vec![change]))
    })
}

/// The checked lead → contact edges of a new record (none for contacts).
fn edges_for(
    data: &AccountData,
    object: ObjectType,
    links: &[AssociationInput],
) -> Result<Vec<(u64, u32)>, ApiError> {
    match object {
        ObjectType::Leads => Ok(associations::lead_edges(data, links)?),
        ObjectType::Contacts => Ok(Vec::new()),
    }
}

fn record_edges(data: &mut AccountData, lead: u64, edges: &[(u64, u32)]) {
    for (contact, type_id) in edges {
        data.associations.associate(lead, *contact, *type_id);
    }
}

/// `PATCH /crm/v3/objects/{objectType}/{id}`.
pub async fn update(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path((ot, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let body: Value = parse_body(&body)?;
    let input = properties_input(&body)?;
    let pairs = query_pairs(&q);
    update_as(
        &sb,
        &caller.account,
        caller.actor,
        object,
        &key,
        query_one(&pairs, "idProperty"),
        input,
    )
    .map(|v| axum::Json(v).into_response())
}

/// Updates one record as `actor`.
pub fn update_as(
    sb: &Sandbox,
    account: &Account,
    actor: Actor,
    object: ObjectType,
    key: &str,
    id_property: Option<&str>,
    input: Map<String, Value>,
) -> Result<Value, ApiError> {
    let lag = sb.state.index_lag();
    write(sb, account, actor, |data, now, clock| {
        let store = data.store(object);
        check_id_property(store, id_property)?;
        let id = store
            .find(key, id_property)
            .filter(|id| {
                store
                    .objects
                    .get(id)
                    .is_some_and(|o| o.archived_ms.is_none())
            })
            .ok_or_else(|| ApiError::not_found(format!("resource not found: {key}")))?;
        let values = validated(store, &input)?;
        let changes = store
            .update(id, values, actor, now, clock, lag)
            .map_err(|e| write_error(object, e))?;
        let names: Vec<String> = input.keys().cloned().collect();
        Ok((store.objects[&id].to_json(object, &names, &[]), changes))
    })
}

/// `DELETE /crm/v3/objects/{objectType}/{id}` → 204, also for an id already gone.
pub async fn archive(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path((ot, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    archive_as(&sb, &caller.account, caller.actor, object, &[key])?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Archives records as `actor`; unknown or already archived ids are skipped.
pub fn archive_as(
    sb: &Sandbox,
    account: &Account,
    actor: Actor,
    object: ObjectType,
    keys: &[String],
) -> Result<(), ApiError> {
    let lag = sb.state.index_lag();
    write(sb, account, actor, |data, now, clock| {
        let store = data.store(object);
        let ids: Vec<u64> = keys.iter().filter_map(|k| store.find(k, None)).collect();
        let changes = ids
            .into_iter()
            .filter_map(|id| store.archive(id, now, clock, lag))
            .collect();
        Ok(((), changes))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchRead {
    inputs: Vec<IdInput>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    properties_with_history: Vec<String>,
    id_property: Option<String>,
}

#[derive(Deserialize)]
struct IdInput {
    id: Value,
}

/// A batch body: anything with `inputs`.
trait Batch: DeserializeOwned {
    fn len(&self) -> usize;
}

/// The shared start of every batch endpoint: the object type, the body, and
/// the 100-input limit (facts sheet §1.2; HubSpot's wording is undocumented).
fn batch_body<T: Batch>(ot: &str, body: &Bytes) -> Result<(ObjectType, T), ApiError> {
    let object = object_type(ot)?;
    let batch: T = parse_body(body)?;
    let len = batch.len();
    if len > BATCH_LIMIT {
        return Err(ApiError::validation(format!(
            "Batch input size {len} is larger than the maximum allowed batch size of {BATCH_LIMIT}"
        )));
    }
    Ok((object, batch))
}

impl Batch for BatchRead {
    fn len(&self) -> usize {
        self.inputs.len()
    }
}

/// A JSON id (string or number) as the string HubSpot keys records by.
pub(super) fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// 400 when one batch names the same record twice (real body quoted in
/// rudder-transformer's fixtures: "Duplicate IDs found in batch input").
fn no_duplicate_ids<'a>(keys: impl Iterator<Item = &'a Value>) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    let mut duplicates: Vec<String> = Vec::new();
    for key in keys {
        let key = id_string(key);
        if !seen.insert(key.clone()) && !duplicates.contains(&key) {
            duplicates.push(key);
        }
    }
    if duplicates.is_empty() {
        return Ok(());
    }
    Err(ApiError::validation(format!(
        "Duplicate IDs found in batch input: [{}]. IDs must be unique",
        duplicates.join(", ")
    ))
    .with("context", json!({"ids": duplicates})))
}

/// Batch reads with history are capped lower (PipedreamHQ/pipedream #8462 quotes the message).
const HISTORY_BATCH_LIMIT: usize = 50;

/// The `BatchResponse…` envelope: 200/201 when every input succeeded, 207 with
/// `numErrors` and `errors[]` otherwise. Shared with the v4 associations read.
pub fn batch_response(
    ok_status: StatusCode,
    results: Vec<Value>,
    errors: Vec<Value>,
    started: i64,
) -> Response {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "requestedAt": iso_ms(started),
        "startedAt": iso_ms(started),
        "completedAt": iso_ms(now_ms()),
    });
    if errors.is_empty() {
        (ok_status, axum::Json(body)).into_response()
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        (StatusCode::MULTI_STATUS, axum::Json(body)).into_response()
    }
}

/// The `OBJECT_NOT_FOUND` error of a batch that named missing records.
pub(super) fn not_found_error(object: ObjectType, action: &str, ids: Vec<String>) -> Value {
    let mut ctx = Map::new();
    ctx.insert("ids".into(), json!(ids));
    standard_error(
        "error",
        "OBJECT_NOT_FOUND",
        &format!(
            "Could not {action} some {} objects, they may be deleted or not exist. Check that ids are valid.",
            object.upper_name()
        ),
        ctx,
    )
}

/// `POST .../batch/read`.
pub async fn batch_read(
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (object, req): (_, BatchRead) = batch_body(&ot, &body)?;
    if !req.properties_with_history.is_empty() && req.inputs.len() > HISTORY_BATCH_LIMIT {
        return Err(ApiError::validation(format!(
            "The maximum number of inputs supported in a batch request for property histories is {HISTORY_BATCH_LIMIT}. Please reduce the number of items and try again"
        )));
    }
    let archived = query_flag(&query_pairs(&q), "archived");
    let mut data = lock(&caller.account.data);
    let store = data.store(object);
    check_id_property(store, req.id_property.as_deref())?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &req.inputs {
        let key = id_string(&input.id);
        match store
            .find(&key, req.id_property.as_deref())
            .and_then(|id| store.objects.get(&id))
            .filter(|o| o.archived_ms.is_some() == archived)
        {
            // Read through a merged-away id: HubSpot reports the survivor's id.
            Some(obj) => {
                results.push(obj.to_json(object, &req.properties, &req.properties_with_history))
            }
            None => missing.push(key),
        }
    }
    let errors = if missing.is_empty() {
        vec![]
    } else {
        vec![not_found_error(object, "get", missing)]
    };
    Ok(batch_response(StatusCode::OK, results, errors, started))
}

#[derive(Deserialize)]
struct BatchCreate {
    inputs: Vec<Value>,
}

impl Batch for BatchCreate {
    fn len(&self) -> usize {
        self.inputs.len()
    }
}

/// `POST .../batch/create`: every input is validated first (one invalid input
/// fails the request with 400); unique-value clashes fail only their input (207).
pub async fn batch_create(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (object, req): (_, BatchCreate) = batch_body(&ot, &body)?;
    let inputs = req
        .inputs
        .iter()
        .map(|input| {
            Ok((
                properties_input(input)?,
                inline_associations(object, input)?,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let lag = sb.state.index_lag();
    let (results, errors) = write(&sb, &caller.account, caller.actor, |data, now, clock| {
        // Every input is checked (properties and a lead's contact) before any is created.
        let validated = inputs
            .iter()
            .map(|(input, links)| {
                Ok((
                    validated(data.store(object), input)?,
                    edges_for(data, object, links)?,
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let (mut results, mut errors, mut changes) = (vec![], vec![], vec![]);
        for (values, edges) in validated {
            let id = data.allocate_id();
            let store = data.store(object);
            match store.create(id, values, caller.actor, now, clock, lag) {
                Ok(change) => {
                    results.push(store.objects[&id].to_json(object, &[], &[]));
                    changes.push(change);
                    record_edges(data, id, &edges);
                }
                Err(e) => errors.push(conflict_item(object, e)),
            }
        }
        Ok(((results, errors), changes))
    })?;
    Ok(batch_response(
        StatusCode::CREATED,
        results,
        errors,
        started,
    ))
}

fn conflict_item(object: ObjectType, err: WriteError) -> Value {
    let existing = match &err {
        WriteError::Duplicate { existing_id, .. } => Some(*existing_id),
        _ => None,
    };
    let api = write_error(object, err);
    let mut ctx = Map::new();
    if let Some(id) = existing {
        ctx.insert("existingId".into(), json!([id.to_string()]));
    }
    standard_error(
        "error",
        api.body["category"].as_str().unwrap_or("CONFLICT"),
        api.body["message"].as_str().unwrap_or(""),
        ctx,
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchUpdateInput {
    id: Value,
    id_property: Option<String>,
    properties: Map<String, Value>,
}

#[derive(Deserialize)]
struct BatchUpdate {
    inputs: Vec<BatchUpdateInput>,
}

impl Batch for BatchUpdate {
    fn len(&self) -> usize {
        self.inputs.len()
    }
}

/// `POST .../batch/update`: unknown ids fail their input (207).
pub async fn batch_update(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (object, req): (_, BatchUpdate) = batch_body(&ot, &body)?;
    no_duplicate_ids(req.inputs.iter().map(|i| &i.id))?;
    let lag = sb.state.index_lag();
    let (results, errors) = write(&sb, &caller.account, caller.actor, |data, now, clock| {
        let store = data.store(object);
        let mut checked = Vec::new();
        for input in &req.inputs {
            check_id_property(store, input.id_property.as_deref())?;
            checked.push((input, validated(store, &input.properties)?));
        }
        let (mut results, mut errors, mut changes, mut missing) = (vec![], vec![], vec![], vec![]);
        for (input, values) in checked {
            let key = id_string(&input.id);
            let Some(id) = store.find(&key, input.id_property.as_deref()) else {
                missing.push(key);
                continue;
            };
            match store.update(id, values, caller.actor, now, clock, lag) {
                Ok(c) => {
                    changes.extend(c);
                    let names: Vec<String> = input.properties.keys().cloned().collect();
                    results.push(store.objects[&id].to_json(object, &names, &[]));
                }
                Err(WriteError::NotFound(_)) => missing.push(key),
                Err(e) => errors.push(conflict_item(object, e)),
            }
        }
        if !missing.is_empty() {
            errors.push(not_found_error(object, "update", missing));
        }
        Ok(((results, errors), changes))
    })?;
    Ok(batch_response(StatusCode::OK, results, errors, started))
}

/// `POST .../batch/upsert`: by `idProperty` (a unique property); creates the
/// record with that property set to `id` when none holds it. Each result says
/// whether it is `new`. Upsert inputs carry no `associations` (spec
/// `SimplePublicObjectBatchInputUpsert`), so a lead it would create could have
/// no contact: such a request is refused whole with 400 (nothing is written);
/// upserts that only update existing leads go through.
pub async fn batch_upsert(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (object, req): (_, BatchUpdate) = batch_body(&ot, &body)?;
    no_duplicate_ids(req.inputs.iter().map(|i| &i.id))?;
    let lag = sb.state.index_lag();
    let (results, errors) = write(&sb, &caller.account, caller.actor, |data, now, clock| {
        let mut checked = Vec::new();
        for input in &req.inputs {
            let store = data.store(object);
            let id_property = input
                .id_property
                .clone()
                .ok_or_else(|| ApiError::validation("idProperty is required for upsert"))?;
            if id_property == "hs_object_id" || !store.is_id_property(&id_property) {
                return Err(ApiError::validation(format!(
                    "Unable to perform update/upsert by non-unique {} property {id_property}",
                    object.type_id()
                )));
            }
            checked.push((
                id_string(&input.id),
                id_property,
                validated(store, &input.properties)?,
            ));
        }
        if object == ObjectType::Leads {
            let store = data.store(object);
            let would_create: Vec<String> = checked
                .iter()
                .filter(|(key, id_property, _)| store.find(key, Some(id_property)).is_none())
                .map(|(key, _, _)| key.clone())
                .collect();
            if !would_create.is_empty() {
                return Err(
                    AssociationError::UpsertCannotCreateLead(would_create.join(", ")).into(),
                );
            }
        }
        let (mut results, mut errors, mut changes) = (vec![], vec![], vec![]);
        for (key, id_property, mut values) in checked {
            let outcome = match data.store(object).find(&key, Some(&id_property)) {
                Some(id) => data
                    .store(object)
                    .update(id, values, caller.actor, now, clock, lag)
                    .map(|c| (id, c, false)),
                None => {
                    values.insert(id_property, key);
                    let id = data.allocate_id();
                    data.store(object)
                        .create(id, values, caller.actor, now, clock, lag)
                        .map(|c| (id, vec![c], true))
                }
            };
            match outcome {
                Ok((id, c, new)) => {
                    changes.extend(c);
                    let mut out = data.store(object).objects[&id].to_json(object, &[], &[]);
                    out["new"] = json!(new);
                    results.push(out);
                }
                Err(e) => errors.push(conflict_item(object, e)),
            }
        }
        Ok(((results, errors), changes))
    })?;
    Ok(batch_response(StatusCode::OK, results, errors, started))
}

#[derive(Deserialize)]
struct BatchArchive {
    inputs: Vec<IdInput>,
}

impl Batch for BatchArchive {
    fn len(&self) -> usize {
        self.inputs.len()
    }
}

/// `POST .../batch/archive` → 204.
pub async fn batch_archive(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (object, req): (_, BatchArchive) = batch_body(&ot, &body)?;
    let keys: Vec<String> = req.inputs.iter().map(|i| id_string(&i.id)).collect();
    archive_as(&sb, &caller.account, caller.actor, object, &keys)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PublicMergeInput`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeInput {
    /// Survivor.
    pub primary_object_id: Value,
    /// Absorbed.
    pub object_id_to_merge: Value,
}

/// `POST /crm/v3/objects/contacts/merge` → the surviving record.
pub async fn merge(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let input: MergeInput = parse_body(&body)?;
    merge_as(&sb, &caller.account, caller.actor, object, &input)
        .map(|v| axum::Json(v).into_response())
}

/// Merges as `actor`.
pub fn merge_as(
    sb: &Sandbox,
    account: &Account,
    actor: Actor,
    object: ObjectType,
    input: &MergeInput,
) -> Result<Value, ApiError> {
    if object != ObjectType::Contacts {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "Merge is not supported for this object type",
        ));
    }
    let record_id = |v: &Value, field: &str| {
        id_string(v)
            .parse::<u64>()
            .map_err(|_| ApiError::validation(format!("{field} must be a record id")))
    };
    let primary = record_id(&input.primary_object_id, "primaryObjectId")?;
    let absorbed = record_id(&input.object_id_to_merge, "objectIdToMerge")?;
    let lag = sb.state.index_lag();
    write(sb, account, actor, |data, now, clock| {
        let store = data.store(object);
        let (p, a) = (store.resolve(primary), store.resolve(absorbed));
        let change = store
            .merge(p, a, actor, now, clock, lag)
            .map_err(|e| match e {
                WriteError::NotFound(id) => ApiError::validation(format!(
                    "Object {id} could not be merged: it does not exist or was already merged"
                )),
                other => write_error(object, other),
            })?;
        Ok((store.objects[&p].to_json(object, &[], &[]), vec![change]))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GdprInput {
    object_id: Value,
    id_property: Option<String>,
}

/// `POST /crm/v3/objects/contacts/gdpr-delete` → 204; the record is erased for good.
pub async fn gdpr_delete(
    State(sb): State<Sandbox>,
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let input: GdprInput = parse_body(&body)?;
    let key = id_string(&input.object_id);
    let erased = write(&sb, &caller.account, caller.actor, |data, _now, _clock| {
        let store = data.store(object);
        let change = store
            .find(&key, input.id_property.as_deref())
            .and_then(|id| store.erase(id));
        Ok((change.is_some(), change.into_iter().collect()))
    })?;
    if erased || input.id_property.as_deref() == Some("email") {
        // An unknown email is blocklisted rather than refused (facts sheet §1.2).
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("resource not found: {key}")))
    }
}
