//! The provider context: a connection's [`Session`] calling its CRM through
//! the [`Provider`] dispatch. Every call carries the session's token; on a
//! 401 the session refreshes once and calls again, and a second refusal
//! marks the connection `needs_reauth`. Jobs call these methods and never
//! name a CRM.

use super::{Deps, JobError, Session};
use crate::domain::{CrmId, CrmObject};
use crate::providers::{ChangePage, FeedLimits, FeedRead, Page, Partition, Provider, ReservedRead};
use crate::sync::Incoming;

/// Calls the provider with the session's token; on a 401 refreshes once and
/// calls again (a macro, not a closure, so the futures stay plainly `Send`).
macro_rules! authed {
    ($session:expr, $deps:expr, |$provider:ident, $account:ident, $token:ident| $call:expr) => {{
        let first = {
            let ($provider, $account, $token) = (
                &$session.provider,
                $session.connection.external_account_id.as_str(),
                $session.token(),
            );
            $call.await
        };
        match first {
            Err($crate::providers::ProviderError::Unauthorized(refused)) => {
                $session.reauthorize($deps, refused).await?;
                let retried = {
                    let ($provider, $account, $token) = (
                        &$session.provider,
                        $session.connection.external_account_id.as_str(),
                        $session.token(),
                    );
                    $call.await
                };
                $session.after_retry($deps, retried).await
            }
            other => other.map_err($crate::jobs::JobError::from),
        }
    }};
}
pub(crate) use authed;

impl Session {
    /// The connection's CRM.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// From now on this session's calls take only free budget slots, so
    /// interactive work (webhook follow-ups, pushes) goes first.
    pub fn in_background(&mut self) {
        self.provider = self.provider.background();
    }

    /// The account the session's token belongs to, asked within the
    /// account's budget.
    pub async fn identify(&mut self, deps: &Deps) -> Result<String, JobError> {
        authed!(self, deps, |p, account, token| p
            .identify(Some(account), token))
    }

    /// One page of every record of `object`.
    pub async fn list_page(
        &mut self,
        deps: &Deps,
        object: CrmObject,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, JobError> {
        authed!(self, deps, |p, account, token| p
            .list_page(account, token, object, after, limit))
    }

    /// How a full sync of `object` splits (see [`Provider::partitions`]).
    pub async fn partitions(
        &mut self,
        deps: &Deps,
        object: CrmObject,
        wanted: u32,
        page: u32,
    ) -> Result<Vec<Partition>, JobError> {
        authed!(self, deps, |p, account, token| p
            .partitions(account, token, object, wanted, page))
    }

    /// One page of one partition of `object`.
    pub async fn partition_page(
        &mut self,
        deps: &Deps,
        object: CrmObject,
        partition: &Partition,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, JobError> {
        authed!(self, deps, |p, account, token| p
            .partition_page(account, token, object, partition, after, limit))
    }

    /// One page of `object`'s change feed.
    pub async fn change_page(
        &mut self,
        deps: &Deps,
        object: CrmObject,
        read: &FeedRead,
        limits: FeedLimits,
    ) -> Result<ChangePage, JobError> {
        authed!(self, deps, |p, account, token| p
            .change_page(account, token, object, read, limits))
    }

    /// Waits for a slot of the account's budget for one read.
    pub async fn reserve_read(&self) -> Result<ReservedRead, JobError> {
        Ok(self.provider.reserve_read(self.account()).await?)
    }

    /// Waits for `requests` slots at `share` of the account's rate.
    pub async fn pace_share(&self, share: f64, requests: u32) -> Result<(), JobError> {
        Ok(self
            .provider
            .pace_share(self.account(), share, requests)
            .await?)
    }

    /// Current state of records by id (a `reserved` slot pays for the first
    /// call).
    pub async fn read(
        &mut self,
        deps: &Deps,
        object: CrmObject,
        ids: &[CrmId],
        with_history: bool,
        mut reserved: Option<ReservedRead>,
    ) -> Result<Vec<Incoming>, JobError> {
        authed!(self, deps, |p, account, token| p.read(
            account,
            token,
            object,
            ids,
            with_history,
            reserved.take()
        ))
    }

    /// The leads whose person is one of `persons`, with their persons.
    pub async fn read_leads_of_persons(
        &mut self,
        deps: &Deps,
        persons: &[CrmId],
        with_history: bool,
        mut reserved: Option<ReservedRead>,
    ) -> Result<Vec<Incoming>, JobError> {
        authed!(self, deps, |p, account, token| p.read_leads_of_persons(
            account,
            token,
            persons,
            with_history,
            reserved.take()
        ))
    }

    /// Makes sure the CRM has the fields crmsync writes.
    pub async fn ensure_fields(&mut self, deps: &Deps, object: CrmObject) -> Result<(), JobError> {
        authed!(self, deps, |p, account, token| p
            .ensure_fields(account, token, object))
    }

    /// Deletes (archives) records in the CRM.
    pub async fn archive(
        &mut self,
        deps: &Deps,
        object: CrmObject,
        ids: &[CrmId],
    ) -> Result<(), JobError> {
        authed!(self, deps, |p, account, token| p
            .archive(account, token, object, ids))
    }
}
