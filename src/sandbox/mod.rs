//! Emulated CRMs: faithful stand-ins for each provider's public API, so that
//! tests, benchmarks and `crmsync dev` exercise real HTTP without a real CRM.
//!
//! One folder per provider (`hubspot/`) with its routes, shapes, ids and
//! rules; what every provider needs lives beside them:
//! - `crm` — which CRMs a process serves (`crmsync-sandbox --crm`)
//! - `gate` — latency, injected faults (with the CRM's own replies),
//!   cool-downs; `latency` — the per-call delay rule; `faults` — the knobs
//! - `webhook_delivery` — batching, concurrency, retries, faults; the CRM
//!   supplies its envelope, auth and retry schedule
//! - `history`, `unique_index`, `search_lag` — the record store's parts
//! - `people` — seeded persons; `rng` — the seeded die; `window` — rolling
//!   windows for budgets
//!
//! The sandbox never imports the provider adapters and they never import
//! it: two independent readings of the same public documents catch each
//! other's mistakes.

pub mod crm;
pub mod faults;
pub mod gate;
pub mod history;
pub mod hubspot;
pub mod latency;
pub mod people;
pub mod rng;
pub mod search_lag;
pub mod unique_index;
pub mod webhook_delivery;
pub mod window;

pub use crm::{Crm, CrmListError, parse_crm_list};

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning: a panicking handler must not take
/// the whole sandbox down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the epoch: the emulated CRMs' clock for event and
/// record timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
