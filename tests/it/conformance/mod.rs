//! The conformance suite: one list of scenarios, run for every provider
//! against its own sandbox over HTTP, on both backends. A provider is
//! "supported" when it passes all of it (README, "Providers").
//!
//! Adding a provider: a variant of [`crate::fleet::CrmSetup`] (its sandbox
//! and its connection, an arm in each of the harness's `match`es), an arm
//! in each method of [`crm::Crm`], and its name in the `conformance!` list
//! below; the compiler and the suite list the rest. Garbage bodies need no
//! arm: [`garbage::Garbler`] stands in front of any CRM's API.
//!
//! Sizes: the full-sync scenario reads `CRMSYNC_CONFORMANCE_RECORDS`
//! (default 20,000, the size). The result-cap scenario's size is
//! the provider's cap plus 2,000 ([`crm::Crm::result_cap`]): smaller would
//! not test it. The others are the few thousand records their behaviour
//! needs (a full sync slow enough to act in its middle, enough requests for
//! every fault to happen).

pub(crate) mod crm;
mod garbage;
pub(crate) mod scenarios;

pub(crate) use scenarios::assert_mirrors;

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
    // Deltas: edits mid full sync, inside the index lag, past the result cap.
    edits_made_during_and_after_a_full_sync_all_arrive_by_delta,
    edits_inside_the_search_index_lag_arrive_on_a_later_delta,
    more_changes_than_the_feeds_result_cap_all_arrive_in_many_instants_or_one,
    // A push killed between its CRM write and the write's booking.
    platform_changes_killed_between_the_crm_write_and_its_booking_reach_the_crm_once,
    crm_wins_keeps_a_platform_edit_made_while_a_killed_push_is_retried,
    manual_raises_no_conflict_with_a_killed_push_of_its_own,
    // 429s, 5xx, hangs and garbage bodies.
    a_full_sync_through_throttles_errors_hangs_and_garbage_lands_every_record_once,
    a_queued_delta_and_platform_creates_through_every_fault_lose_nothing,
    // kill -9 of a worker mid full sync.
    a_worker_killed_mid_full_sync_resumes_with_every_record_once,
    // A record each side refuses, parked while the rest syncs.
    crm_records_the_platform_cannot_hold_are_parked_and_the_connections_other_edits_go_on,
    a_platform_record_the_crm_refuses_is_parked_and_the_rest_of_its_push_and_later_pushes_go_through,
);
