//! What the api accepts before a handler runs: JSON bodies (an object, each
//! type error named by its field), query strings (the same), the body size
//! limit, and the problem+json shape of every refusal, routing ones
//! included.

use super::{Api, Problem};
use crate::domain::validate::{DELTA_INTERVAL_SECS, LIST_LIMIT};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The largest request body the api reads (a record is at most a few KB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The rule a numeric field follows, for people (`None`: not a number).
fn number_rule(field: &str) -> Option<String> {
    match field {
        "deltaIntervalSecs" => Some(format!(
            "must be an integer from {} to {} (seconds)",
            DELTA_INTERVAL_SECS.start(),
            DELTA_INTERVAL_SECS.end()
        )),
        "limit" => Some(format!(
            "must be an integer from {} to {}",
            LIST_LIMIT.start(),
            LIST_LIMIT.end()
        )),
        "portalId" => Some("must be a positive integer (the CRM account's id)".into()),
        _ => None,
    }
}

/// A field refused because it is outside its documented range.
pub fn out_of_range(field: &str) -> Problem {
    Problem::field(
        field,
        number_rule(field).unwrap_or_else(|| "is out of range".into()),
    )
}

/// The field a serde error is about: its path, or the name in an "unknown
/// field `x`" message (reported on the parent).
fn field_of(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let path = path.to_string();
    if !path.is_empty() && path != "." {
        return Some(path);
    }
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name.to_string())
}

fn refusal(path: &serde_path_to_error::Path, message: String, what: &str) -> Problem {
    match field_of(path, &message) {
        Some(field) => {
            let detail = if message.starts_with("unknown field") {
                format!("is not a known {what}")
            } else {
                number_rule(&field).unwrap_or(message)
            };
            Problem::field(&field, detail)
        }
        None => Problem::new(
            StatusCode::BAD_REQUEST,
            format!("invalid {what}: {message}"),
        ),
    }
}

/// Parses a JSON object body (an empty body is `{}`): anything but an
/// object is refused, and a field of the wrong type or unknown is named.
pub fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let body: &[u8] = match start {
        None => b"{}",
        Some(i) if body[i] == b'{' => body,
        Some(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid JSON body: expected a JSON object",
            ));
        }
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let message = e.inner().to_string();
        if e.inner().is_data() {
            refusal(e.path(), message, "body field")
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {message}"),
            )
        }
    })?;
    de.end()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// Query parameters, each type error or unknown parameter a 400 naming it.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Api> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &Api) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Params)
            .map_err(|e| refusal(e.path(), e.inner().to_string(), "query parameter"))
    }
}

/// A `limit` query parameter: its default, or refused outside its range.
pub fn list_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(50),
        Some(l) if LIST_LIMIT.contains(&l) => Ok(l),
        Some(_) => Err(out_of_range("limit")),
    }
}

/// A number field that may be left out but not `null`.
pub fn number<T: Copy>(
    field: &str,
    value: Option<Option<T>>,
    in_range: impl Fn(T) -> bool,
) -> Result<Option<T>, Problem> {
    match value {
        None => Ok(None),
        Some(Some(v)) if in_range(v) => Ok(Some(v)),
        Some(_) => Err(out_of_range(field)),
    }
}

/// `GET` of a path the api does not serve.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint {}", uri.path()),
    )
}

/// A served path asked with a method it does not take (axum adds `Allow`).
pub async fn method_not_allowed(method: axum::http::Method) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here"),
    )
}

/// Turns any error answer that is not problem+json yet (an extractor's
/// plain-text rejection, the body limit's 413) into one, keeping its status
/// and headers: every api error has one shape.
pub async fn problem_json(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A body declared too large is refused before a byte of it is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut head, body) = response.into_parts();
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is larger than {MAX_BODY_BYTES} bytes")
    } else {
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        String::from_utf8_lossy(&text).trim().to_string()
    };
    let mut problem = Problem::new(status, detail).into_response();
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    std::mem::swap(problem.headers_mut(), &mut head.headers);
    problem
}
