//! Fault knobs every sandbox CRM honours: they turn a well-behaved emulator
//! into the unreliable network and service that production meets.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

use super::latency::call_delay;
use super::rng::SplitMix64;
use std::time::Duration;

/// The knobs, settable by flags at start-up and by the control API at run
/// time. Rates are probabilities in `[0, 1]` applied per API request (or per
/// webhook batch for the webhook knobs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Share of API requests answered with a 5xx.
    pub error_rate: f64,
    /// Share of API requests answered with a 429 although the budget allows them.
    pub rate_limit_rate: f64,
    /// Share of API requests that hang until the client gives up.
    pub timeout_rate: f64,
    /// Latency added to every API request, in milliseconds.
    pub latency_ms: u64,
    /// Up to this many milliseconds more per request, drawn by the seeded
    /// die (see [`super::latency`]).
    pub latency_jitter_ms: u64,
    /// Share of webhook batches delivered twice.
    pub webhook_duplicate_rate: f64,
    /// Share of webhook batches whose events are shuffled and held back a little,
    /// so they arrive out of order.
    pub webhook_reorder_rate: f64,
    /// Share of webhook batches never delivered.
    pub webhook_drop_rate: f64,
}

impl FaultSettings {
    /// Checks every rate is a probability, naming the first knob that is not.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("errorRate", self.error_rate),
            ("rateLimitRate", self.rate_limit_rate),
            ("timeoutRate", self.timeout_rate),
            ("webhookDuplicateRate", self.webhook_duplicate_rate),
            ("webhookReorderRate", self.webhook_reorder_rate),
            ("webhookDropRate", self.webhook_drop_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{name} must be between 0 and 1, got {value}"));
            }
        }
        Ok(())
    }
}

/// What the dice decided for one API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    /// Serve it normally.
    None,
    /// Answer 5xx.
    ServerError,
    /// Answer 429.
    RateLimited,
    /// Never answer in useful time.
    Timeout,
}

/// What the dice decided for one webhook batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryFault {
    /// Do not deliver it at all.
    pub drop: bool,
    /// Deliver it twice.
    pub duplicate: bool,
    /// Shuffle and delay it.
    pub reorder: bool,
}

/// The live knobs plus a seeded die, shared by a sandbox's handlers.
#[derive(Debug)]
pub struct Faults {
    inner: Mutex<(FaultSettings, SplitMix64)>,
}

impl Faults {
    /// Knobs as given, dice seeded so that a run can be replayed.
    pub fn new(settings: FaultSettings, seed: u64) -> Self {
        Self {
            inner: Mutex::new((settings, SplitMix64::new(seed ^ 0xFA17))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (FaultSettings, SplitMix64)> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The knobs now in force.
    pub fn settings(&self) -> FaultSettings {
        self.lock().0.clone()
    }

    /// Replaces the knobs.
    pub fn set(&self, settings: FaultSettings) {
        self.lock().0 = settings;
    }

    /// Rolls for one API request: its fault and how long to wait before answering.
    pub fn roll_request(&self) -> (RequestFault, Duration) {
        let mut guard = self.lock();
        let (settings, rng) = &mut *guard;
        let latency = call_delay(settings.latency_ms, settings.latency_jitter_ms, rng);
        let fault = if settings.error_rate > 0.0 && rng.next_f64() < settings.error_rate {
            RequestFault::ServerError
        } else if settings.rate_limit_rate > 0.0 && rng.next_f64() < settings.rate_limit_rate {
            RequestFault::RateLimited
        } else if settings.timeout_rate > 0.0 && rng.next_f64() < settings.timeout_rate {
            RequestFault::Timeout
        } else {
            RequestFault::None
        };
        (fault, latency)
    }

    /// The latency of one call that faults do not apply to (OAuth and
    /// other calls outside the CRM API's gate).
    pub fn roll_latency(&self) -> Duration {
        let mut guard = self.lock();
        let (settings, rng) = &mut *guard;
        call_delay(settings.latency_ms, settings.latency_jitter_ms, rng)
    }

    /// Rolls for one webhook batch.
    pub fn roll_delivery(&self) -> DeliveryFault {
        let mut guard = self.lock();
        let (settings, rng) = &mut *guard;
        let mut hit = |rate: f64| rate > 0.0 && rng.next_f64() < rate;
        DeliveryFault {
            drop: hit(settings.webhook_drop_rate),
            duplicate: hit(settings.webhook_duplicate_rate),
            reorder: hit(settings.webhook_reorder_rate),
        }
    }

    /// A random permutation for reordering a batch.
    pub fn shuffle<T>(&self, items: &mut [T]) {
        let mut guard = self.lock();
        for i in (1..items.len()).rev() {
            let j = guard.1.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_rejected_by_name() {
        let bad = FaultSettings {
            webhook_drop_rate: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("webhookDropRate"));
    }

    #[test]
    fn a_full_error_rate_fails_every_request() {
        let faults = Faults::new(
            FaultSettings {
                error_rate: 1.0,
                ..Default::default()
            },
            1,
        );
        assert!((0..50).all(|_| faults.roll_request().0 == RequestFault::ServerError));
    }

    #[test]
    fn no_knobs_means_no_faults() {
        let faults = Faults::new(FaultSettings::default(), 1);
        assert!((0..50).all(|_| faults.roll_request().0 == RequestFault::None));
        assert_eq!(faults.roll_delivery(), DeliveryFault::default());
    }
}
