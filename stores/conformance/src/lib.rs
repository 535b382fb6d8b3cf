//! `ferry-store-conformance`: the contract every store adapter keeps, as a library its tests
//! call (Vector's component compliance helpers): the `Store` port in [`store`] (tenants, keys,
//! models, sessions, the shared cache; what one tenant or key does never shows through
//! another's) and the `Accounts` port in [`accounts`] (idempotent settlement and postings,
//! holds, budgets, token buckets, prices, closing a month; every case ends with the books
//! reconciling where they should), and the `ObjectStore` port in [`objects`].
//!
//! An adapter implements [`Harness`] (how to make a fresh, empty store) and expands
//! [`conformance_tests!`] in its tests, which makes one `#[tokio::test]` per case.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test library: a failed expectation is a failed test"
)]

use std::future::Future;

use ferry_core::ports::{Accounts, SharedCache, Store};

pub mod accounts;
pub mod leases;
pub mod objects;
pub mod store;

/// What the suite tests: a store with both ports and the shared cache.
pub trait TestedStore: Store + Accounts + SharedCache {}

impl<S: Store + Accounts + SharedCache + ?Sized> TestedStore for S {}

/// How an adapter's tests make a fresh, empty store for each case.
pub trait Harness: 'static {
    type Store: TestedStore + 'static;

    fn new_store() -> impl Future<Output = Self::Store> + Send;
}

/// One `#[tokio::test]` per case of the suite, run against `$harness`'s stores.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:ty) => {
        #[tokio::test]
        async fn tenants_and_keys_round_trip_and_stay_apart() {
            $crate::store::tenants_and_keys_round_trip_and_stay_apart::<$harness>().await;
        }
        #[tokio::test]
        async fn a_tenants_policy_changes_alone() {
            $crate::store::a_tenants_policy_changes_alone::<$harness>().await;
        }
        #[tokio::test]
        async fn operator_keys_are_listed_live_and_newest_first() {
            $crate::store::operator_keys_are_listed_live_and_newest_first::<$harness>().await;
        }
        #[tokio::test]
        async fn the_key_set_version_moves_with_every_key_creation_and_revocation() {
            $crate::store::the_key_set_version_moves_with_every_key_creation_and_revocation::<$harness>().await;
        }
        #[tokio::test]
        async fn live_key_ids_leave_out_revoked_and_expired_keys() {
            $crate::store::live_key_ids_leave_out_revoked_and_expired_keys::<$harness>().await;
        }
        #[tokio::test]
        async fn usage_is_recorded_once_per_request() {
            $crate::store::usage_is_recorded_once_per_request::<$harness>().await;
        }
        #[tokio::test]
        async fn models_keep_their_creation_time() {
            $crate::store::models_keep_their_creation_time::<$harness>().await;
        }
        #[tokio::test]
        async fn the_shared_cache_keeps_fresh_entries_by_key() {
            $crate::store::the_shared_cache_keeps_fresh_entries_by_key::<$harness>().await;
        }
        #[tokio::test]
        async fn tenants_come_a_page_at_a_time_by_id_and_can_be_searched() {
            $crate::store::tenants_come_a_page_at_a_time_by_id_and_can_be_searched::<$harness>().await;
        }
        #[tokio::test]
        async fn a_tenants_keys_come_a_page_at_a_time_newest_first_and_only_its_own() {
            $crate::store::a_tenants_keys_come_a_page_at_a_time_newest_first_and_only_its_own::<$harness>().await;
        }
        #[tokio::test]
        async fn sessions_are_found_by_hash_touched_forward_and_gone_once_deleted() {
            $crate::store::sessions_are_found_by_hash_touched_forward_and_gone_once_deleted::<$harness>().await;
        }
        #[tokio::test]
        async fn settling_the_same_usage_twice_records_and_charges_it_once() {
            $crate::accounts::settling_the_same_usage_twice_records_and_charges_it_once::<$harness>().await;
        }
        #[tokio::test]
        async fn posting_with_the_same_idempotency_key_twice_posts_once_per_tenant() {
            $crate::accounts::posting_with_the_same_idempotency_key_twice_posts_once_per_tenant::<$harness>().await;
        }
        #[tokio::test]
        async fn a_prepaid_hold_settles_to_its_cost_and_returns_the_rest() {
            $crate::accounts::a_prepaid_hold_settles_to_its_cost_and_returns_the_rest::<$harness>().await;
        }
        #[tokio::test]
        async fn a_prepaid_cost_above_its_hold_is_drawn_from_the_balance_and_the_rest_written_off() {
            $crate::accounts::a_prepaid_cost_above_its_hold_is_drawn_from_the_balance_and_the_rest_written_off::<$harness>().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_overdrafts_never_take_the_balance_below_zero() {
            $crate::accounts::concurrent_overdrafts_never_take_the_balance_below_zero::<$harness>().await;
        }
        #[tokio::test]
        async fn a_postpaid_call_holds_nothing_and_its_charge_is_owed() {
            $crate::accounts::a_postpaid_call_holds_nothing_and_its_charge_is_owed::<$harness>().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_admissions_grant_exactly_the_holds_the_credit_covers() {
            $crate::accounts::concurrent_admissions_grant_exactly_the_holds_the_credit_covers::<$harness>().await;
        }
        #[tokio::test]
        async fn expired_holds_are_released_and_late_settlements_charge_nothing() {
            $crate::accounts::expired_holds_are_released_and_late_settlements_charge_nothing::<$harness>().await;
        }
        #[tokio::test]
        async fn a_hard_daily_budget_refuses_once_settled_spend_and_the_hold_would_pass_it() {
            $crate::accounts::a_hard_daily_budget_refuses_once_settled_spend_and_the_hold_would_pass_it::<$harness>().await;
        }
        #[tokio::test]
        async fn a_soft_budget_admits_past_its_cap_and_alerts_once() {
            $crate::accounts::a_soft_budget_admits_past_its_cap_and_alerts_once::<$harness>().await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn racing_calls_never_pass_a_hard_cap_shared_with_a_soft_alert() {
            $crate::accounts::racing_calls_never_pass_a_hard_cap_shared_with_a_soft_alert::<$harness>().await;
        }
        #[tokio::test]
        async fn a_soft_alert_below_a_hard_cap_of_the_same_period_counts_spend_once() {
            $crate::accounts::a_soft_alert_below_a_hard_cap_of_the_same_period_counts_spend_once::<$harness>().await;
        }
        #[tokio::test]
        async fn token_buckets_drawn_on_the_estimate_are_corrected_to_the_actual_count() {
            $crate::accounts::token_buckets_drawn_on_the_estimate_are_corrected_to_the_actual_count::<$harness>().await;
        }
        #[tokio::test]
        async fn the_price_in_effect_is_the_latest_and_a_deployments_own_price_wins() {
            $crate::accounts::the_price_in_effect_is_the_latest_and_a_deployments_own_price_wins::<$harness>().await;
        }
        #[tokio::test]
        async fn closing_a_month_makes_one_invoice_per_tenant_once_no_call_is_in_flight() {
            $crate::accounts::closing_a_month_makes_one_invoice_per_tenant_once_no_call_is_in_flight::<$harness>().await;
        }
        #[tokio::test]
        async fn refunds_and_debits_cannot_take_more_than_the_tenant_has() {
            $crate::accounts::refunds_and_debits_cannot_take_more_than_the_tenant_has::<$harness>().await;
        }
        #[tokio::test]
        async fn usage_reports_from_rollups_agree_with_the_events_at_any_range() {
            $crate::accounts::usage_reports_from_rollups_agree_with_the_events_at_any_range::<$harness>().await;
        }
        #[tokio::test]
        async fn a_tenants_ledger_comes_a_page_at_a_time_newest_first() {
            $crate::accounts::a_tenants_ledger_comes_a_page_at_a_time_newest_first::<$harness>().await;
        }
        #[tokio::test]
        async fn spend_by_key_for_a_month_comes_dearest_first_a_page_at_a_time() {
            $crate::accounts::spend_by_key_for_a_month_comes_dearest_first_a_page_at_a_time::<$harness>().await;
        }
        #[tokio::test]
        async fn usage_events_come_a_page_at_a_time_oldest_first() {
            $crate::accounts::usage_events_come_a_page_at_a_time_oldest_first::<$harness>().await;
        }
    };
}

/// One `#[tokio::test]` per credit-lease case, for adapters that take leases.
#[macro_export]
macro_rules! lease_conformance_tests {
    ($harness:ty) => {
        #[tokio::test]
        async fn a_lease_holds_a_share_and_settles_its_calls_in_batches_once() {
            $crate::leases::a_lease_holds_a_share_and_settles_its_calls_in_batches_once::<$harness>().await;
        }
        #[tokio::test]
        async fn a_balance_too_small_to_share_is_not_leased() {
            $crate::leases::a_balance_too_small_to_share_is_not_leased::<$harness>().await;
        }
        #[tokio::test]
        async fn leases_taken_at_once_never_hold_more_than_the_balance() {
            $crate::leases::leases_taken_at_once_never_hold_more_than_the_balance::<$harness>().await;
        }
        #[tokio::test]
        async fn an_expired_lease_returns_the_rest_and_its_late_calls_charge_the_balance() {
            $crate::leases::an_expired_lease_returns_the_rest_and_its_late_calls_charge_the_balance::<$harness>().await;
        }
        #[tokio::test]
        async fn a_late_call_beyond_the_balance_is_charged_to_zero_and_the_rest_written_off() {
            $crate::leases::a_late_call_beyond_the_balance_is_charged_to_zero_and_the_rest_written_off::<$harness>().await;
        }
        #[tokio::test]
        async fn an_extension_draws_from_the_balance_as_far_as_it_goes() {
            $crate::leases::an_extension_draws_from_the_balance_as_far_as_it_goes::<$harness>().await;
        }
        #[tokio::test]
        async fn a_lease_draws_from_buckets_and_gives_back_what_its_calls_did_not_use() {
            $crate::leases::a_lease_draws_from_buckets_and_gives_back_what_its_calls_did_not_use::<$harness>().await;
        }
        #[tokio::test]
        async fn batches_move_the_caps_and_a_soft_cap_passed_alerts_once() {
            $crate::leases::batches_move_the_caps_and_a_soft_cap_passed_alerts_once::<$harness>().await;
        }
    };
}
