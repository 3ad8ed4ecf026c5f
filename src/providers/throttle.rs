//! Which CRM answers are throttles. Each CRM throttles in its own words — a
//! 429 with a policy name (HubSpot), a 403 `REQUEST_LIMIT_EXCEEDED` without
//! `Retry-After` (Salesforce), a Cloudflare 403 page after ignored 429s
//! (Pipedrive) — so each adapter supplies a [`ThrottleClassifier`]; this
//! module runs it before any other reading of the answer, so that a
//! throttle becomes [`ProviderError::RateLimited`] (a deferral that cools
//! the budget down) and is never taken for refused credentials, which
//! would mark a healthy connection `needs_reauth`.

use super::error::ProviderError;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::Duration;

/// A non-2xx answer as an adapter's classifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// The raw body (a throttle page may not be JSON).
    pub body: &'a [u8],
}

impl Answer<'_> {
    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.body).unwrap_or(Value::Null)
    }

    /// A header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` in whole seconds, when given so.
    pub fn retry_after_secs(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// A throttle, as the adapter read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// How long the account's budget cools down before the next call.
    pub retry_after: Duration,
    /// Which limit the CRM says was hit (HubSpot's `policyName`,
    /// Salesforce's `REQUEST_LIMIT_EXCEEDED`), for logs and errors.
    pub policy: String,
}

impl From<Throttled> for ProviderError {
    fn from(throttled: Throttled) -> Self {
        ProviderError::RateLimited {
            retry_after: throttled.retry_after,
            policy: throttled.policy,
        }
    }
}

/// An adapter's reading of its CRM's throttle replies: `Some` for a
/// throttle, `None` for anything else (then the adapter's usual mapping
/// applies).
pub type ThrottleClassifier = fn(&Answer<'_>) -> Option<Throttled>;

/// The error for a non-2xx `answer`: a throttle when `throttle` says so,
/// else what `otherwise` maps it to (where a 401 or 403 may mean refused
/// credentials — only once it is known not to be a throttle).
pub fn classify(
    answer: &Answer<'_>,
    throttle: ThrottleClassifier,
    otherwise: impl FnOnce(&Answer<'_>) -> ProviderError,
) -> ProviderError {
    match throttle(answer) {
        Some(throttled) => throttled.into(),
        None => otherwise(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// The usual mapping of a status, as an adapter has it.
    fn by_status(answer: &Answer<'_>) -> ProviderError {
        match answer.status {
            401 | 403 => ProviderError::Unauthorized("refused".into()),
            s => ProviderError::Rejected {
                status: s,
                message: String::new(),
            },
        }
    }

    /// Salesforce's throttle: a 403 whose error code says so, no
    /// `Retry-After` (an example of what that adapter will supply).
    fn request_limit_exceeded(answer: &Answer<'_>) -> Option<Throttled> {
        let json = answer.json();
        let code = json
            .get(0)
            .and_then(|e| e.get("errorCode"))
            .and_then(Value::as_str);
        (answer.status == 403 && code == Some("REQUEST_LIMIT_EXCEEDED")).then(|| Throttled {
            retry_after: Duration::from_secs(300),
            policy: "REQUEST_LIMIT_EXCEEDED".into(),
        })
    }

    /// Pipedrive's: a 429, and the HTML 403 Cloudflare answers after them.
    fn cloudflare_block(answer: &Answer<'_>) -> Option<Throttled> {
        let html = answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html"));
        match answer.status {
            429 => Some(Throttled {
                retry_after: answer.retry_after_secs().unwrap_or(Duration::from_secs(2)),
                policy: "BURST".into(),
            }),
            403 if html => Some(Throttled {
                retry_after: Duration::from_secs(60),
                policy: "CLOUDFLARE".into(),
            }),
            _ => None,
        }
    }

    #[test]
    fn a_403_the_adapter_reads_as_a_throttle_is_never_unauthorized() {
        let headers = HeaderMap::new();
        let body = br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        let answer = Answer {
            status: 403,
            headers: &headers,
            body,
        };
        let e = classify(&answer, request_limit_exceeded, by_status);
        assert!(
            matches!(&e, ProviderError::RateLimited { policy, retry_after }
                if policy == "REQUEST_LIMIT_EXCEEDED" && *retry_after == Duration::from_secs(300)),
            "{e:?}"
        );
        assert!(e.is_retryable());
        // The same status with another code is refused credentials.
        let answer = Answer {
            body: br#"[{"errorCode":"INSUFFICIENT_ACCESS"}]"#,
            ..answer
        };
        assert!(matches!(
            classify(&answer, request_limit_exceeded, by_status),
            ProviderError::Unauthorized(_)
        ));
    }

    #[test]
    fn a_cloudflare_block_page_is_a_throttle_and_a_json_403_is_not() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/html; charset=UTF-8"),
        );
        let page = Answer {
            status: 403,
            headers: &headers,
            body: b"<html><title>Attention Required! | Cloudflare</title></html>",
        };
        assert!(matches!(
            classify(&page, cloudflare_block, by_status),
            ProviderError::RateLimited { .. }
        ));
        let json = HeaderMap::new();
        let refused = Answer {
            status: 403,
            headers: &json,
            body: br#"{"success":false,"error":"forbidden"}"#,
        };
        assert!(matches!(
            classify(&refused, cloudflare_block, by_status),
            ProviderError::Unauthorized(_)
        ));
    }
}
