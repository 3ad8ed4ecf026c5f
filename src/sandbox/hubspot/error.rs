//! HubSpot's error body, built in one place so every endpoint answers bad
//! input the way HubSpot does: `status`, `message`, `correlationId`,
//! `category`, and `errors[]` / `context` where HubSpot gives them
//! (spec: the `Error` schema shared by the CRM v3 documents).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::sandbox::rng::random_token;

/// An error answer: an HTTP status plus HubSpot's JSON error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body, already in HubSpot's shape.
    pub body: Value,
}

/// A fresh correlation id, as HubSpot returns on every error (a UUID).
pub fn correlation_id() -> String {
    random_token("")
}

impl ApiError {
    /// The common shape: `{status:"error", message, correlationId, category}`.
    pub fn new(status: StatusCode, category: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({
                "status": "error",
                "message": message.into(),
                "correlationId": correlation_id(),
                "category": category,
            }),
        }
    }

    /// Adds a field to the body (`context`, `errors`, `subCategory`, ...).
    pub fn with(mut self, key: &str, value: Value) -> Self {
        if let Value::Object(map) = &mut self.body {
            map.insert(key.to_string(), value);
        }
        self
    }

    /// 400 `VALIDATION_ERROR`, HubSpot's answer to most malformed requests.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    /// 400 for a body that is not JSON or not the expected shape. HubSpot's
    /// JSON-binding errors carry no `category`, only `status`, `message` and
    /// `correlationId` (real bodies quoted in hubspot-api-nodejs #128, #226).
    pub fn invalid_json(err: serde_json::Error) -> Self {
        Self::binding(err.line(), err.column(), err)
    }

    /// The binding-error shape for a problem found at a position of the body.
    pub fn binding(line: usize, column: usize, detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        let detail = detail
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string();
        Self {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "status": "error",
                "message": format!("Invalid input JSON on line {line}, column {column}: {detail}"),
                "correlationId": correlation_id(),
            }),
        }
    }

    /// 404 `OBJECT_NOT_FOUND` (HubSpot answers an unknown id with an empty-body 404
    /// on single reads; the facts sheet and SDK fixtures show this JSON body).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", message)
    }

    /// 409 `CONFLICT`, e.g. "Contact already exists. Existing ID: 123".
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    /// 401 for a missing or unknown credential.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        )
    }

    /// 401 for an OAuth access token past its lifetime.
    pub fn expired(seconds_ago: i64) -> Self {
        let minutes = seconds_ago / 60;
        let message = if minutes > 0 {
            format!("The OAuth token used to make this call expired {minutes} minute(s) ago.")
        } else {
            format!("The OAuth token used to make this call expired {seconds_ago} second(s) ago.")
        };
        Self::new(StatusCode::UNAUTHORIZED, "EXPIRED_AUTHENTICATION", message)
    }

    /// 429 with the rate-limit body (facts sheet §1.4: `errorType RATE_LIMIT`
    /// and `policyName`).
    pub fn rate_limited(policy: &str) -> Self {
        let message = format!(
            "You have reached your {} limit.",
            policy.to_ascii_lowercase()
        );
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITS", message);
        if let Value::Object(map) = &mut err.body {
            map.remove("category");
            map.insert("errorType".into(), json!("RATE_LIMIT"));
            map.insert("policyName".into(), json!(policy));
            map.insert("requestId".into(), json!(correlation_id()));
        }
        err
    }

    /// A 5xx injected by the fault knobs.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable (sandbox fault injection).",
        )
    }

    /// 400 for property values HubSpot rejects, with its nested list of
    /// per-property failures (`PROPERTY_DOESNT_EXIST`, `READ_ONLY_VALUE`,
    /// `INVALID_OPTION`), serialised into `message` as HubSpot does.
    pub fn invalid_properties(failures: &[PropertyFailure]) -> Self {
        let items: Vec<Value> = failures
            .iter()
            .map(|f| {
                json!({
                    "isValid": false,
                    "message": f.message,
                    "error": f.code,
                    "name": f.name,
                    "localizedErrorMessage": f.message,
                })
            })
            .collect();
        let list = serde_json::to_string(&items).unwrap_or_default();
        let errors: Vec<Value> = failures
            .iter()
            .map(|f| {
                json!({
                    "message": f.message,
                    "code": f.code,
                    "context": {"propertyName": [f.name]},
                })
            })
            .collect();
        Self::validation(format!("Property values were not valid: {list}"))
            .with("errors", Value::Array(errors))
    }
}

/// One property a write cannot set, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyFailure {
    /// The property's name.
    pub name: String,
    /// HubSpot's code: `PROPERTY_DOESNT_EXIST`, `READ_ONLY_VALUE`, `INVALID_OPTION`, ...
    pub code: &'static str,
    /// Human text.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        response.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/json;charset=utf-8"),
        );
        response
    }
}

/// Builds an object body from pairs, for the standard errors inside batch answers.
pub fn standard_error(
    status: &str,
    category: &str,
    message: &str,
    context: Map<String, Value>,
) -> Value {
    json!({
        "status": status,
        "category": category,
        "message": message,
        "context": context,
        "errors": [],
        "links": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_body_names_the_policy() {
        let err = ApiError::rate_limited("TEN_SECONDLY_ROLLING");
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.body["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(err.body["errorType"], "RATE_LIMIT");
        assert_eq!(
            err.body["message"],
            "You have reached your ten_secondly_rolling limit."
        );
    }

    #[test]
    fn invalid_properties_lists_each_failure() {
        let err = ApiError::invalid_properties(&[PropertyFailure {
            name: "nope".into(),
            code: "PROPERTY_DOESNT_EXIST",
            message: "Property \"nope\" does not exist".into(),
        }]);
        assert_eq!(err.body["category"], "VALIDATION_ERROR");
        assert!(
            err.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("PROPERTY_DOESNT_EXIST")
        );
        assert_eq!(err.body["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
    }
}
