//! `POST /crm/v3/objects/{objectType}/search`: filter groups, one sort,
//! paging by offset, the 10,000-result cap, and the search index that sees
//! writes only after the configured lag (facts sheet §1.2; search guide).

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::gate::Caller;
use super::model::{IndexedView, ObjectType, PropertyDef, parse_time_ms, render};
use super::objects::{object_type, parse_body};
use super::state::lock;

/// Results any one query can reach ("limited to 10,000 total results").
pub const RESULT_CAP: usize = 10_000;
/// Largest page.
pub const MAX_PAGE: i64 = 200;
/// Filter limits in force since 2024-08-26 (search changelog): groups, per group, total.
pub const FILTER_LIMITS: (usize, usize, usize) = (5, 10, 25);

/// Search operators (spec `Filter.operator`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operator {
    /// Equal.
    Eq,
    /// Not equal.
    Neq,
    /// Less than.
    Lt,
    /// At most.
    Lte,
    /// Greater than.
    Gt,
    /// At least.
    Gte,
    /// `value ≤ x ≤ highValue`.
    Between,
    /// In `values`.
    In,
    /// Not in `values`.
    NotIn,
    /// Has any value.
    HasProperty,
    /// Has no value.
    NotHasProperty,
    /// A token of the value matches (`*` wildcards allowed).
    ContainsToken,
    /// No token matches.
    NotContainsToken,
}

/// One filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Property.
    pub property_name: String,
    /// Operator.
    pub operator: Operator,
    /// Operand.
    pub value: Option<Value>,
    /// Upper bound for BETWEEN.
    pub high_value: Option<Value>,
    /// Operands for IN / NOT_IN.
    pub values: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct FilterGroup {
    #[serde(default)]
    filters: Vec<Filter>,
}

/// A sort: the spec types it as a string (`"-createdate"` for descending);
/// clients also send `{propertyName, direction}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SortSpec {
    Text(String),
    Object {
        #[serde(rename = "propertyName")]
        property_name: String,
        direction: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchRequest {
    #[serde(default)]
    filter_groups: Vec<FilterGroup>,
    #[serde(default)]
    sorts: Vec<SortSpec>,
    #[serde(default)]
    properties: Vec<String>,
    limit: Option<i64>,
    after: Option<Value>,
    query: Option<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A comparable value of one property.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Number(f64),
    Text(String),
}

fn key_of(def: Option<&PropertyDef>, raw: &str) -> Key {
    match def {
        Some(d) if d.is_numeric() => {
            let n = if matches!(d.kind.as_str(), "datetime" | "date") {
                parse_time_ms(raw).map(|v| v as f64)
            } else {
                raw.trim().parse::<f64>().ok()
            };
            n.map(Key::Number)
                .unwrap_or_else(|| Key::Text(raw.to_lowercase()))
        }
        _ => Key::Text(raw.to_lowercase()),
    }
}

fn record_key(
    object: ObjectType,
    def: Option<&PropertyDef>,
    name: &str,
    id: u64,
    view: &IndexedView,
) -> Option<Key> {
    // Fast paths for the properties every delta sync sorts and filters on.
    if name == object.modified_property() {
        return Some(Key::Number(view.updated_ms as f64));
    }
    if name == object.created_property() {
        return Some(Key::Number(view.created_ms as f64));
    }
    if name == "hs_object_id" {
        return Some(Key::Number(id as f64));
    }
    view.values.get(name).map(|raw| key_of(def, raw))
}

fn tokens(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '@' | '.' | '-' | '_'))
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            if !rest.starts_with(part) {
                return false;
            }
            rest = &rest[part.len()..];
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

fn contains_token(raw: &str, wanted: &str) -> bool {
    let wanted = wanted.to_lowercase();
    if wanted.contains('*') {
        glob(&wanted, &raw.to_lowercase()) || tokens(raw).any(|t| glob(&wanted, &t))
    } else {
        raw.to_lowercase() == wanted || tokens(raw).any(|t| t == wanted)
    }
}

/// Whether one record passes one filter.
fn passes(
    object: ObjectType,
    defs: &std::collections::BTreeMap<String, PropertyDef>,
    id: u64,
    view: &IndexedView,
    filter: &Filter,
) -> bool {
    let def = defs.get(&filter.property_name);
    let current = record_key(object, def, &filter.property_name, id, view);
    let operand = |v: &Option<Value>| v.as_ref().map(|v| key_of(def, &text(v)));
    match filter.operator {
        Operator::HasProperty => current.is_some(),
        Operator::NotHasProperty => current.is_none(),
        Operator::Eq => current.is_some() && current == operand(&filter.value),
        Operator::Neq => current != operand(&filter.value),
        Operator::Lt => matches!((current, operand(&filter.value)), (Some(a), Some(b)) if a < b),
        Operator::Lte => matches!((current, operand(&filter.value)), (Some(a), Some(b)) if a <= b),
        Operator::Gt => matches!((current, operand(&filter.value)), (Some(a), Some(b)) if a > b),
        Operator::Gte => matches!((current, operand(&filter.value)), (Some(a), Some(b)) if a >= b),
        Operator::Between => {
            matches!((current, operand(&filter.value), operand(&filter.high_value)), (Some(a), Some(lo), Some(hi)) if lo <= a && a <= hi)
        }
        Operator::In | Operator::NotIn => {
            let found = current.is_some_and(|c| {
                filter
                    .values
                    .iter()
                    .flatten()
                    .any(|v| key_of(def, &text(v)) == c)
            });
            found == (filter.operator == Operator::In)
        }
        Operator::ContainsToken | Operator::NotContainsToken => {
            let raw = view.values.get(&filter.property_name);
            let wanted = filter.value.as_ref().map(text).unwrap_or_default();
            let found = raw.is_some_and(|r| contains_token(r, &wanted));
            found == (filter.operator == Operator::ContainsToken)
        }
    }
}

fn check_filters(groups: &[FilterGroup]) -> Result<(), ApiError> {
    let (max_groups, max_per_group, max_total) = FILTER_LIMITS;
    let total: usize = groups.iter().map(|g| g.filters.len()).sum();
    if groups.len() > max_groups
        || groups.iter().any(|g| g.filters.len() > max_per_group)
        || total > max_total
    {
        return Err(ApiError::validation(format!(
            "Too many filters: at most {max_groups} filterGroups, {max_per_group} filters per group and {max_total} filters in total are allowed (got {} groups, {total} filters).",
            groups.len()
        )));
    }
    for filter in groups.iter().flat_map(|g| &g.filters) {
        let problem = match filter.operator {
            Operator::Between if filter.high_value.is_none() || filter.value.is_none() => {
                Some("operator BETWEEN requires a highValue")
            }
            Operator::In | Operator::NotIn
                if filter.values.as_ref().is_none_or(|v| v.is_empty()) =>
            {
                Some("operator IN requires values")
            }
            Operator::Eq
            | Operator::Neq
            | Operator::Lt
            | Operator::Lte
            | Operator::Gt
            | Operator::Gte
            | Operator::ContainsToken
            | Operator::NotContainsToken
                if filter.value.is_none() =>
            {
                Some("operator requires a value")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(ApiError::binding(
                1,
                1,
                format!("Cannot construct instance of `Filter`, problem: {problem}"),
            ));
        }
    }
    Ok(())
}

/// The handler.
pub async fn search(
    Extension(caller): Extension<Caller>,
    Path(ot): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_type(&ot)?;
    let req: SearchRequest = parse_body(&body)?;
    check_filters(&req.filter_groups)?;
    let limit = req.limit.unwrap_or(10);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let after = match &req.after {
        None | Some(Value::Null) => 0,
        Some(v) => {
            let raw = text(v);
            if raw.is_empty() {
                0
            } else {
                raw.parse::<usize>()
                    .map_err(|_| ApiError::validation(format!("Invalid after: {raw}")))?
            }
        }
    };
    if after >= RESULT_CAP {
        // "Attempting to page beyond 10,000 will result in a 400 error." (search guide)
        return Err(ApiError::validation(format!(
            "Paging beyond {RESULT_CAP} results is not supported: after={after}"
        )));
    }
    if req.sorts.len() > 1 {
        return Err(ApiError::validation("Only one sort is supported"));
    }
    if req.query.as_ref().is_some_and(|q| q.len() > 3000) {
        return Err(ApiError::validation(
            "query must be at most 3000 characters",
        ));
    }
    let (sort_property, descending) = match req.sorts.first() {
        None => ("hs_object_id".to_string(), false),
        Some(SortSpec::Text(s)) => match s.strip_prefix('-') {
            Some(name) => (name.to_string(), true),
            None => (s.clone(), false),
        },
        Some(SortSpec::Object {
            property_name,
            direction,
        }) => (
            property_name.clone(),
            direction
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case("DESCENDING")),
        ),
    };
    let query = req
        .query
        .as_ref()
        .map(|q| q.trim().to_lowercase())
        .filter(|q| !q.is_empty());

    let now = Instant::now();
    let mut data = lock(&caller.account.data);
    let store = data.store(object);
    // Borrow the definitions beside the records (disjoint fields), no copy per search.
    let defs = &store.properties;
    let sort_def = defs.get(&sort_property);
    let mut matches: Vec<(Option<Key>, u64, Arc<IndexedView>)> = Vec::new();
    for (id, obj) in store.objects.iter_mut() {
        let Some(view) = obj.search_view(now) else {
            continue;
        };
        let group_ok = req.filter_groups.is_empty()
            || req.filter_groups.iter().any(|g| {
                g.filters
                    .iter()
                    .all(|f| passes(object, defs, *id, &view, f))
            });
        if !group_ok {
            continue;
        }
        if let Some(q) = &query
            && !object.query_properties().iter().any(|p| {
                view.values
                    .get(*p)
                    .is_some_and(|v| v.to_lowercase().contains(q.as_str()))
            })
        {
            continue;
        }
        matches.push((
            record_key(object, sort_def, &sort_property, *id, &view),
            *id,
            view,
        ));
    }
    drop(data);
    // Records without the sort property go last; equal keys keep id order (undocumented; deterministic).
    matches.sort_by(|a, b| {
        let by_key = match (&a.0, &b.0) {
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(y).unwrap_or(Ordering::Equal);
                if descending { o.reverse() } else { o }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_key.then(a.1.cmp(&b.1))
    });
    let total = matches.len();
    let end = (after + limit as usize).min(total);
    let results: Vec<Value> = matches
        .get(after..end)
        .unwrap_or_default()
        .iter()
        .map(|(_, id, view)| {
            render(
                object,
                *id,
                &view.values,
                view.created_ms,
                view.updated_ms,
                None,
                &req.properties,
                None,
            )
        })
        .collect();
    let mut body = json!({ "total": total, "results": results });
    if end < total {
        body["paging"] =
            json!({"next": {"after": end.to_string(), "link": format!("?after={end}")}});
    }
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_token_matches_words_and_wildcards() {
        assert!(contains_token("ann.lee@example.com", "example"));
        assert!(contains_token("ann.lee@example.com", "*@example.com"));
        assert!(!contains_token("ann.lee@example.com", "exam"));
        assert!(contains_token("Big Biz Ltd", "biz"));
    }

    #[test]
    fn datetime_keys_compare_epoch_ms_and_iso_alike() {
        let def = PropertyDef {
            kind: "datetime".into(),
            ..super::super::model::builtin_properties(ObjectType::Contacts).remove(0)
        };
        assert_eq!(
            key_of(Some(&def), "1700000000000"),
            key_of(Some(&def), "2023-11-14T22:13:20.000Z")
        );
    }
}
