//! Per-call latency: the time a real CRM takes to answer, so tests and
//! benchmarks see what production sees (HubSpot answers a list call in
//! 150–400 ms) rather than loopback's sub-millisecond replies.
//!
//! The rule: every API call waits `latency_ms` plus a jitter drawn uniformly
//! from `0..=jitter_ms` by the sandbox's seeded die. The jitter only adds, so
//! a call never answers sooner than `latency_ms`; with the same seed and the
//! same order of calls the same delays repeat.

use std::time::Duration;

use super::rng::SplitMix64;

/// The delay of one call under the rule above. Draws from `rng` only when
/// there is jitter, so a zero jitter leaves the fault dice's sequence as it
/// was before the knob existed.
pub fn call_delay(latency_ms: u64, jitter_ms: u64, rng: &mut SplitMix64) -> Duration {
    let jitter = if jitter_ms == 0 {
        0
    } else {
        rng.next_u64() % (jitter_ms.saturating_add(1)).max(1)
    };
    Duration::from_millis(latency_ms.saturating_add(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_knob_means_no_delay_and_no_draw() {
        let mut rng = SplitMix64::new(3);
        let mut untouched = SplitMix64::new(3);
        assert_eq!(call_delay(0, 0, &mut rng), Duration::ZERO);
        assert_eq!(rng.next_u64(), untouched.next_u64());
    }

    #[test]
    fn jitter_actually_varies_the_delay() {
        let mut rng = SplitMix64::new(9);
        let delays: std::collections::BTreeSet<Duration> =
            (0..200).map(|_| call_delay(200, 50, &mut rng)).collect();
        assert!(delays.len() > 20, "only {} distinct delays", delays.len());
    }

    proptest! {
        #[test]
        fn a_delay_is_never_below_the_latency_nor_above_latency_plus_jitter(
            latency in 0u64..10_000, jitter in 0u64..10_000, seed: u64,
        ) {
            let mut rng = SplitMix64::new(seed);
            for _ in 0..20 {
                let delay = call_delay(latency, jitter, &mut rng);
                prop_assert!(delay >= Duration::from_millis(latency));
                prop_assert!(delay <= Duration::from_millis(latency + jitter));
            }
        }

        #[test]
        fn the_same_seed_repeats_the_same_delays(latency in 0u64..1000, jitter in 0u64..1000, seed: u64) {
            let (mut a, mut b) = (SplitMix64::new(seed), SplitMix64::new(seed));
            for _ in 0..20 {
                prop_assert_eq!(call_delay(latency, jitter, &mut a), call_delay(latency, jitter, &mut b));
            }
        }
    }
}
