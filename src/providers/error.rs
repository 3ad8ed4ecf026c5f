//! The one error type every provider adapter turns HTTP into at its boundary;
//! nothing above an adapter sees a status code or `reqwest`.

use std::time::Duration;

/// A failed CRM call, classified for retry decisions.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The CRM refused for rate reasons; retry after the given delay.
    #[error("rate limited by the CRM ({policy}); retry in {retry_after:?}")]
    RateLimited {
        /// How long to wait (from `Retry-After` or the limit's window).
        retry_after: Duration,
        /// Which limit (HubSpot's `policyName`, e.g. `TEN_SECONDLY_ROLLING`).
        policy: String,
    },
    /// The CRM failed or timed out (5xx, timeout, garbage body).
    #[error("CRM unavailable: {0}")]
    Unavailable(String),
    /// The credentials were refused (after one refresh, where possible).
    #[error("CRM refused the credentials: {0}")]
    Unauthorized(String),
    /// The CRM does not know the thing asked for.
    #[error("not found in the CRM: {0}")]
    NotFound(String),
    /// The CRM rejected the request as invalid (4xx); retrying won't help.
    #[error("CRM rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The CRM's message.
        message: String,
    },
    /// The connection to the CRM failed.
    #[error("could not reach the CRM: {0}")]
    Transport(String),
}

impl ProviderError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Unavailable(_)
                | ProviderError::Transport(_)
        )
    }

    /// How long to wait before retrying, when the CRM said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
