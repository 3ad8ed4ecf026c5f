//! The conformance suite: one list of scenarios, run for every provider
//! against its own sandbox over HTTP, on both backends. A provider is
//! "supported" when it passes all of it (README, "Providers").
//!
//! Adding a provider: an arm in each method of [`crm::Crm`], and its name in
//! the `conformance!` list below; the compiler and the suite list the rest.
//!
//! Sizes: the full-sync scenario reads `CRMSYNC_CONFORMANCE_RECORDS`
//! (default 20,000, the size).

mod crm;
mod scenarios;

/// Every scenario for one provider, on both backends:
/// `conformance::<provider>::<scenario>::on_{postgres_and_redis,sqlite}`.
macro_rules! conformance {
    ($provider:ident => $crm:expr; $($scenario:ident),+ $(,)?) => {
        mod $provider {
            $(
                mod $scenario {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn on_postgres_and_redis() {
                        super::super::scenarios::$scenario($crm, crate::fleet::Backend::Postgres).await
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn on_sqlite() {
                        super::super::scenarios::$scenario($crm, crate::fleet::Backend::Sqlite).await
                    }
                }
            )+
        }
    };
}

conformance!(hubspot => super::super::crm::Crm::Hubspot;
    full_sync_lands_every_record_and_a_second_writes_nothing,
    crm_changes_arrive_by_webhook_with_the_delta_off,
    crm_changes_arrive_by_delta_with_webhooks_off,
    platform_changes_reach_the_crm_without_echo_writes,
    an_expired_token_is_refreshed_and_a_revoked_one_marks_needs_reauth,
);
