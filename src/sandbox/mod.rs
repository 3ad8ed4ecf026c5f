//! Emulated CRMs: faithful stand-ins for each provider's public API, so that
//! tests, benchmarks and `crmsync dev` exercise real HTTP without a real CRM.
//!
//! One folder per provider; what several providers need (deterministic
//! randomness, fault knobs, rolling-window counters) lives beside them. The
//! sandbox never imports the provider adapters and they never import it: two
//! independent readings of the same public documents catch each other's
//! mistakes.

pub mod crm;
pub mod faults;
pub mod hubspot;
pub mod latency;
pub mod rng;
pub mod window;

pub use crm::{Crm, CrmListError, parse_crm_list};
