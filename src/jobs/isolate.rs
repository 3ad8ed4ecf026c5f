//! Batch writes that one bad record cannot fail. A CRM that refuses a batch
//! as invalid (HubSpot answers 400 for the whole batch when one input breaks
//! a property rule) gets it again in halves, and so on, until each refused
//! input stands alone: those come back with the CRM's reason to be parked,
//! and everything else is written. One bad record in 100 costs about
//! 2·log₂100 ≈ 14 more calls, once — it is parked, not retried.
//!
//! Shared by every provider's push: only *which* statuses mean "this input
//! is refused" is the CRM's, and [`is_refusal`] names them.

use super::{Deps, JobError, Session};
use crate::providers::{Provider, ProviderError};
use secrecy::SecretString;
use std::future::Future;

/// What a batch write did: the results of the inputs written, and the
/// inputs refused, each with the CRM's reason.
#[derive(Debug)]
pub(crate) struct Isolated<T, R> {
    /// Results of the calls that succeeded, in call order.
    pub written: Vec<R>,
    /// Inputs the CRM refused on their own.
    pub refused: Vec<(T, String)>,
}

/// Whether the CRM refused the request's content (retrying the same input
/// cannot succeed): a validation failure or a unique-value clash. Rate
/// limits, auth failures and 5xx are not refusals.
pub(crate) fn is_refusal(error: &ProviderError) -> Option<&str> {
    match error {
        ProviderError::Rejected {
            status: 400 | 409 | 422,
            message,
        } => Some(message),
        _ => None,
    }
}

/// Sends `inputs` through `call` (one CRM call per batch, given the
/// provider, the account and a token), isolating the inputs the CRM refuses
/// by splitting refused batches in halves.
pub(crate) async fn isolating<T, R, F, Fut>(
    session: &mut Session,
    deps: &Deps,
    inputs: Vec<T>,
    call: F,
) -> Result<Isolated<T, R>, JobError>
where
    T: Clone,
    F: Fn(Provider, String, SecretString, Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, ProviderError>>,
{
    let mut out = Isolated {
        written: Vec::new(),
        refused: Vec::new(),
    };
    // Depth first, first half first: the calls keep the inputs' order.
    let mut stack = vec![inputs];
    while let Some(mut batch) = stack.pop() {
        if batch.is_empty() {
            continue;
        }
        let attempt = super::crm::authed!(session, deps, |provider, account, token| {
            refusal_as_value(call(
                provider.clone(),
                account.to_string(),
                token.clone(),
                batch.clone(),
            ))
        })?;
        match attempt {
            Ok(results) => out.written.extend(results),
            Err(reason) if batch.len() == 1 => {
                if let Some(input) = batch.pop() {
                    out.refused.push((input, reason));
                }
            }
            Err(_) => {
                let second = batch.split_off(batch.len() / 2);
                stack.push(second);
                stack.push(batch);
            }
        }
    }
    Ok(out)
}

/// A refusal as a value (`Ok(Err(reason))`), every other error as an error.
async fn refusal_as_value<R>(
    call: impl Future<Output = Result<R, ProviderError>>,
) -> Result<Result<R, String>, ProviderError> {
    match call.await {
        Ok(r) => Ok(Ok(r)),
        Err(e) => match is_refusal(&e) {
            Some(reason) => Ok(Err(reason.to_string())),
            None => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_refusals_are_isolated() {
        let rejected = |status| ProviderError::Rejected {
            status,
            message: "bad".into(),
        };
        assert_eq!(is_refusal(&rejected(400)), Some("bad"));
        assert_eq!(is_refusal(&rejected(409)), Some("bad"));
        assert_eq!(is_refusal(&rejected(422)), Some("bad"));
        assert_eq!(is_refusal(&rejected(403)), None, "a throttle or a scope");
        assert_eq!(is_refusal(&rejected(404)), None);
        assert_eq!(is_refusal(&ProviderError::Unavailable("5xx".into())), None);
        assert_eq!(
            is_refusal(&ProviderError::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
                policy: "TEN_SECONDLY_ROLLING".into()
            }),
            None
        );
    }
}
