//! HubSpot's throttle replies ([`crate::providers::throttle`]): a 429 whose
//! `policyName` names the limit (`TEN_SECONDLY_ROLLING`, `DAILY`). Any other
//! status is not a throttle: a 403 from HubSpot is refused access.

use crate::providers::throttle::{Answer, Throttled};
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::Duration;

/// HubSpot's [`crate::providers::throttle::ThrottleClassifier`].
pub fn classify(answer: &Answer<'_>) -> Option<Throttled> {
    (answer.status == 429).then(|| from_429(answer.headers, &answer.json()))
}

/// What a 429 asks: `Retry-After` if given; else the window the limit rolls
/// over (`X-HubSpot-RateLimit-Interval-Milliseconds`, for the ten-second
/// limit), else the policy's (an hour for `DAILY`: HubSpot's day ends at
/// the account's midnight, which the response does not say).
pub(super) fn from_429(headers: &HeaderMap, body: &Value) -> Throttled {
    let policy = body
        .get("policyName")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN")
        .to_string();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let retry_after = header("retry-after")
        .map(Duration::from_secs)
        .or_else(|| {
            (policy == "TEN_SECONDLY_ROLLING")
                .then(|| {
                    header("x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis)
                })
                .flatten()
        })
        .unwrap_or(match policy.as_str() {
            "DAILY" => Duration::from_secs(3600),
            "TEN_SECONDLY_ROLLING" => Duration::from_secs(10),
            _ => Duration::from_secs(1),
        });
    Throttled {
        retry_after,
        policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status,
            headers,
            body,
        }
    }

    #[test]
    fn a_429_waits_for_retry_after_else_the_interval_else_the_policys_window() {
        let none = HeaderMap::new();
        let seconds = br#"{"policyName":"TEN_SECONDLY_ROLLING"}"#;
        let daily = br#"{"policyName":"DAILY"}"#;
        let wait = |a: &Answer<'_>| classify(a).map(|t| (t.retry_after, t.policy));
        assert_eq!(
            wait(&answer(429, &none, seconds)),
            Some((Duration::from_secs(10), "TEN_SECONDLY_ROLLING".into()))
        );
        assert_eq!(
            wait(&answer(429, &none, daily)),
            Some((Duration::from_secs(3600), "DAILY".into()))
        );
        assert_eq!(
            wait(&answer(429, &none, b"not json")),
            Some((Duration::from_secs(1), "UNKNOWN".into()))
        );
        let mut interval = HeaderMap::new();
        interval.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            HeaderValue::from_static("7000"),
        );
        assert_eq!(
            wait(&answer(429, &interval, seconds)).map(|w| w.0),
            Some(Duration::from_millis(7000))
        );
        // The interval is the ten-second limit's, not the day's.
        assert_eq!(
            wait(&answer(429, &interval, daily)).map(|w| w.0),
            Some(Duration::from_secs(3600))
        );
        let mut retry = interval.clone();
        retry.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(
            wait(&answer(429, &retry, seconds)).map(|w| w.0),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn nothing_but_a_429_is_a_hubspot_throttle() {
        let none = HeaderMap::new();
        for status in [400, 401, 403, 423, 477, 500, 503] {
            assert_eq!(classify(&answer(status, &none, b"{}")), None, "{status}");
        }
    }
}
