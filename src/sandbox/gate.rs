//! The parts of a CRM API's front door every emulated CRM shares: the
//! per-call latency, the injected faults (5xx, spurious throttles, hangs),
//! cool-downs a throttle asks for, and answers counted by status class.
//! Each CRM supplies its own authentication, budgets and the bodies of its
//! refusals ([`GateReplies`]: HubSpot's 429 JSON names a `policyName`;
//! Pipedrive's throttle body differs and its Cloudflare front answers 403).

use std::time::{Duration, Instant};

use axum::response::Response;

use super::faults::{Faults, RequestFault};

/// How a CRM words the refusals the fault knobs inject.
pub trait GateReplies {
    /// The answer to an injected server error.
    fn unavailable(&self) -> Response;
    /// The answer to an injected throttle, telling the client to come back
    /// after `retry_after`.
    fn throttled(&self, retry_after: Duration) -> Response;
    /// The answer a hung call finally gets (the client has given up by then).
    fn timed_out(&self) -> Response;
}

/// How long an injected hang lasts: longer than any sane client timeout.
pub const HANG: Duration = Duration::from_secs(120);

/// How long an injected throttle asks the client to wait.
pub const INJECTED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Waits the call's latency, then rolls the fault dice: `None` to serve the
/// call, or the CRM's answer to the injected fault (a hang has already
/// waited [`HANG`]). `injected` hears of the fault *before* it is answered:
/// a client gives up on a hang long before its answer, and the server then
/// drops the call — whatever is counted after the hang is never counted.
pub async fn inject(
    faults: &Faults,
    replies: &impl GateReplies,
    injected: impl FnOnce(RequestFault),
) -> Option<Response> {
    let (fault, latency) = faults.roll_request();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if fault == RequestFault::None {
        return None;
    }
    injected(fault);
    Some(match fault {
        RequestFault::None | RequestFault::ServerError => replies.unavailable(),
        RequestFault::RateLimited => replies.throttled(INJECTED_RETRY_AFTER),
        RequestFault::Timeout => {
            tokio::time::sleep(HANG).await;
            replies.timed_out()
        }
    })
}

/// Waits one call's latency, for calls outside the gated API (OAuth and
/// the like) that see no faults.
pub async fn delay(faults: &Faults) {
    let latency = faults.roll_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Requests arriving this soon after a throttle went out were already in
/// flight: they do not count as ignoring its cool-down.
pub const COOL_DOWN_GRACE: Duration = Duration::from_millis(500);

/// The wait a throttle asked for: when it was answered and until when a
/// client should send nothing more on that budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoolDown {
    /// When the throttle went out.
    pub answered: Instant,
    /// When the client may call again.
    pub until: Instant,
}

impl CoolDown {
    /// A cool-down of `wait` starting at `now`.
    pub fn starting(now: Instant, wait: Duration) -> Self {
        Self {
            answered: now,
            until: now + wait,
        }
    }

    /// Whether a request arriving at `arrived` ignores the cool-down (it
    /// came after the grace and before the end).
    pub fn ignored_by(&self, arrived: Instant) -> bool {
        arrived >= self.answered + COOL_DOWN_GRACE && arrived < self.until
    }
}

/// The class an answer is counted under: `2xx`, `4xx`, `429`, `5xx`, `other`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        429 => "429",
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_count_apart_from_other_client_errors() {
        assert_eq!(status_class(429), "429");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(302), "other");
    }

    #[test]
    fn only_requests_after_the_grace_and_before_the_end_ignore_a_cool_down() {
        let t0 = Instant::now();
        let cool = CoolDown::starting(t0, Duration::from_secs(10));
        assert!(!cool.ignored_by(t0 + Duration::from_millis(499)));
        assert!(cool.ignored_by(t0 + COOL_DOWN_GRACE));
        assert!(cool.ignored_by(t0 + Duration::from_millis(9_999)));
        assert!(!cool.ignored_by(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_cool_down_shorter_than_the_grace_is_never_ignored() {
        let t0 = Instant::now();
        let cool = CoolDown::starting(t0, Duration::from_millis(300));
        assert!((0..1000).all(|ms| !cool.ignored_by(t0 + Duration::from_millis(ms))));
    }

    struct Plain;
    impl GateReplies for Plain {
        fn unavailable(&self) -> Response {
            axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        fn throttled(&self, _: Duration) -> Response {
            axum::http::StatusCode::TOO_MANY_REQUESTS.into_response()
        }
        fn timed_out(&self) -> Response {
            axum::http::StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
    use axum::response::IntoResponse;

    #[tokio::test]
    async fn injected_faults_get_the_crms_own_answers() {
        use super::super::faults::FaultSettings;
        let faults = Faults::new(
            FaultSettings {
                rate_limit_rate: 1.0,
                ..Default::default()
            },
            1,
        );
        let mut seen = None;
        let answer = inject(&faults, &Plain, |f| seen = Some(f)).await.unwrap();
        assert_eq!(seen, Some(RequestFault::RateLimited));
        assert_eq!(answer.status(), 429);
        faults.set(FaultSettings::default());
        assert!(
            inject(&faults, &Plain, |_| panic!("no fault"))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_hang_is_counted_though_the_client_gives_up_before_its_answer() {
        use super::super::faults::FaultSettings;
        let faults = Faults::new(
            FaultSettings {
                timeout_rate: 1.0,
                ..Default::default()
            },
            1,
        );
        let counted = std::sync::atomic::AtomicBool::new(false);
        // The client's timeout drops the call mid-hang, as hyper does when
        // the connection closes.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            inject(&faults, &Plain, |f| {
                assert_eq!(f, RequestFault::Timeout);
                counted.store(true, std::sync::atomic::Ordering::SeqCst);
            }),
        )
        .await;
        assert!(gave_up.is_err(), "a hang does not answer in time");
        assert!(counted.load(std::sync::atomic::Ordering::SeqCst));
    }
}
