//! CRM adapters. Each turns HTTP into [`ProviderError`] at its boundary and
//! takes its base URL from configuration, so every provider can be pointed at
//! a sandbox. Budgets pace calls per account.

pub mod error;
pub mod hubspot;
pub mod throttle;

pub use error::ProviderError;
