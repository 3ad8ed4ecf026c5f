//! The webhook delivery engine every emulated CRM shares: events gather in
//! one queue per destination into batches (up to a size, within a short
//! window), at most N requests are in flight per queue, failed attempts are
//! retried on a schedule, and the fault knobs drop, duplicate or reorder
//! whole batches.
//!
//! What differs between CRMs is a [`Destination`]: where a batch goes, how
//! it is wrapped and authenticated (HubSpot: a signed JSON array; Pipedrive:
//! one event per POST with Basic auth, so `max_batch` 1; Zoho: a
//! notification carrying its channel token), and how many retries it gets
//! and how far apart ([`RetrySchedule`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use super::faults::Faults;
use super::rng::SplitMix64;
use super::{lock, now_ms};

/// Retries after a failed attempt: `base × 2^n`, capped at `max`, each
/// spread by ±`jitter` (a share) as real CRMs randomise their retry times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySchedule {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Spread around each delay, a share in `[0, 1)`.
    pub jitter: f64,
}

impl RetrySchedule {
    /// The wait after failed attempt number `attempt` (0 for the first),
    /// given a uniform draw `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let spread = (1.0 - self.jitter) + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        exp.min(self.max).mul_f64(spread)
    }
}

/// How the engine batches and sends, per CRM (and per sandbox start-up).
#[derive(Debug, Clone)]
pub struct DeliveryTuning {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Most events in one request.
    pub max_batch: usize,
    /// How long events gather before a batch leaves.
    pub batch_window: Duration,
    /// Retries and their spacing.
    pub retries: RetrySchedule,
}

/// What the webhook engine did for one account.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCounters {
    /// Events generated (before batching).
    pub events: u64,
    /// HTTP requests sent (every attempt).
    pub attempts: u64,
    /// Batches acknowledged with a 2xx.
    pub delivered_batches: u64,
    /// Events in acknowledged batches.
    pub delivered_events: u64,
    /// Attempts that failed (non-2xx, timeout, connection error).
    pub failed_attempts: u64,
    /// Batches abandoned after the last retry.
    pub abandoned_batches: u64,
    /// Batches dropped by the fault knobs.
    pub dropped_batches: u64,
    /// Batches sent twice by the fault knobs.
    pub duplicated_batches: u64,
    /// Batches shuffled and delayed by the fault knobs.
    pub reordered_batches: u64,
    /// Events with no target URL to go to.
    pub undeliverable_events: u64,
}

/// One CRM's side of a delivery: where a batch goes and what it looks like.
pub trait Destination: Send + Sync + 'static {
    /// The CRM's account the events belong to (looked up again for each
    /// batch, so a reset sandbox counts into its new account).
    type Account: Send + Sync + 'static;

    /// The account, or `None` when it no longer exists (nothing is sent).
    fn account(&self) -> Option<Arc<Self::Account>>;

    /// Updates the account's webhook counters.
    fn count(&self, account: &Self::Account, update: impl FnOnce(&mut WebhookCounters));

    /// The sandbox's fault knobs.
    fn faults(&self) -> &Faults;

    /// The request for attempt number `attempt` (0 first) at delivering
    /// `batch`, wrapped and signed the CRM's way; `None` when the target is
    /// gone (the batch's events count as undeliverable). The engine adds the
    /// timeout.
    fn request(
        &self,
        client: &reqwest::Client,
        batch: &mut [Value],
        attempt: u32,
    ) -> Option<reqwest::RequestBuilder>;
}

struct Queue {
    events: mpsc::UnboundedSender<Value>,
}

/// The engine: one batching queue per key (HubSpot: app and account).
pub struct WebhookEngine<K> {
    client: reqwest::Client,
    /// Delivery behaviour.
    pub tuning: DeliveryTuning,
    queues: Mutex<HashMap<K, Queue>>,
}

impl<K> std::fmt::Debug for WebhookEngine<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEngine")
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> WebhookEngine<K> {
    /// An engine with its own HTTP client, sending as `user_agent`.
    pub fn new(tuning: DeliveryTuning, user_agent: &str) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(user_agent)
            .build()
            .unwrap_or_default();
        Self {
            client,
            tuning,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the queues (settings changed or reset); in-flight batches finish.
    pub fn reset_queues(&self) {
        lock(&self.queues).clear();
    }

    /// Queues `events` for the destination `key`; the first event for a key
    /// starts its queue with `max_concurrent` requests in flight at most and
    /// `destination` as where its batches go. Must run inside a Tokio runtime.
    pub fn enqueue<D: Destination>(
        self: &Arc<Self>,
        key: K,
        max_concurrent: u64,
        events: Vec<Value>,
        destination: impl FnOnce() -> D,
    ) {
        let mut queues = lock(&self.queues);
        let queue = queues
            .entry(key)
            .or_insert_with(|| self.spawn_queue(Arc::new(destination()), max_concurrent));
        for event in events {
            // A closed queue means its task ended with the runtime; nothing to deliver to.
            let _ = queue.events.send(event);
        }
    }

    fn spawn_queue<D: Destination>(
        self: &Arc<Self>,
        destination: Arc<D>,
        max_concurrent: u64,
    ) -> Queue {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let permits = Arc::new(Semaphore::new(max_concurrent.max(1) as usize));
        let client = self.client.clone();
        let tuning = self.tuning.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + tuning.batch_window;
                while batch.len() < tuning.max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(event)) => batch.push(event),
                        _ => break,
                    }
                }
                let sending = Sending {
                    client: client.clone(),
                    tuning: tuning.clone(),
                    destination: destination.clone(),
                    permits: permits.clone(),
                };
                tokio::spawn(async move { sending.deliver(batch).await });
            }
        });
        Queue { events: tx }
    }
}

/// Everything one batch's delivery needs, cheap to clone into a task.
struct Sending<D> {
    client: reqwest::Client,
    tuning: DeliveryTuning,
    destination: Arc<D>,
    permits: Arc<Semaphore>,
}

impl<D> Clone for Sending<D> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            tuning: self.tuning.clone(),
            destination: self.destination.clone(),
            permits: self.permits.clone(),
        }
    }
}

impl<D: Destination> Sending<D> {
    /// Applies the fault dice to a batch, then sends it (twice if duplicated).
    async fn deliver(self, mut batch: Vec<Value>) {
        let destination = &self.destination;
        let Some(account) = destination.account() else {
            return;
        };
        let fault = destination.faults().roll_delivery();
        if fault.drop {
            destination.count(&account, |c| c.dropped_batches += 1);
            return;
        }
        if fault.reorder {
            destination.count(&account, |c| c.reordered_batches += 1);
            destination.faults().shuffle(&mut batch);
            let mut rng = SplitMix64::new(now_ms() as u64);
            tokio::time::sleep(Duration::from_millis(50 + rng.below(450) as u64)).await;
        }
        if fault.duplicate {
            destination.count(&account, |c| c.duplicated_batches += 1);
            let copy = (self.clone(), batch.clone(), account.clone());
            tokio::spawn(async move {
                let (sending, batch, account) = copy;
                sending.attempt_until_acknowledged(&account, batch).await
            });
        }
        self.attempt_until_acknowledged(&account, batch).await;
    }

    async fn attempt_until_acknowledged(&self, account: &D::Account, mut batch: Vec<Value>) {
        let destination = &self.destination;
        let schedule = self.tuning.retries;
        let mut rng = SplitMix64::new(now_ms() as u64 ^ Arc::as_ptr(&self.permits) as u64);
        for attempt in 0..=schedule.max_retries {
            let Some(request) = destination.request(&self.client, &mut batch, attempt) else {
                destination.count(account, |c| c.undeliverable_events += batch.len() as u64);
                return;
            };
            let request = request.timeout(self.tuning.timeout);
            let outcome = {
                let _permit = self.permits.acquire().await;
                destination.count(account, |c| c.attempts += 1);
                request.send().await
            };
            if outcome.as_ref().is_ok_and(|r| r.status().is_success()) {
                destination.count(account, |c| {
                    c.delivered_batches += 1;
                    c.delivered_events += batch.len() as u64;
                });
                return;
            }
            destination.count(account, |c| c.failed_attempts += 1);
            if attempt == schedule.max_retries {
                break;
            }
            tokio::time::sleep(schedule.delay(attempt, rng.next_f64())).await;
        }
        destination.count(account, |c| c.abandoned_batches += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HUBSPOT_LIKE: RetrySchedule = RetrySchedule {
        max_retries: 10,
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.2,
    };

    #[test]
    fn delays_double_from_the_base_until_the_cap() {
        let mid = |attempt| HUBSPOT_LIKE.delay(attempt, 0.5);
        assert_eq!(mid(0), Duration::from_secs(1));
        assert_eq!(mid(1), Duration::from_secs(2));
        assert_eq!(mid(5), Duration::from_secs(32));
        assert_eq!(mid(6), Duration::from_secs(60));
        assert_eq!(mid(40), Duration::from_secs(60));
    }

    proptest! {
        #[test]
        fn a_delay_stays_within_its_jitter_band(attempt in 0u32..64, unit in 0.0f64..1.0) {
            let delay = HUBSPOT_LIKE.delay(attempt, unit);
            let centre = HUBSPOT_LIKE.base.saturating_mul(1u32 << attempt.min(16)).min(HUBSPOT_LIKE.max);
            prop_assert!(delay >= centre.mul_f64(0.8) && delay <= centre.mul_f64(1.2));
        }
    }
}
