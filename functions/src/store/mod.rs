//! Wrappers around any store: the read-through cache ([`CachedStore`]) and credit leases
//! ([`LeasedAccounts`]). The stores themselves are crates of their own (`ferry-store-sqlite`,
//! `ferry-aws`).

mod cached;
mod leased;

pub use cached::CachedStore;
pub use leased::{LeaseSetupError, LeasedAccounts};

/// `impl Accounts for $wrapper`: the methods given, and every other one passed to
/// `self.$inner` unchanged. A wrapper writes only what it changes (here `admit`, `settle`,
/// `put_price` and `price_at`, which both wrappers have views on).
macro_rules! accounts_passing_to {
    ($wrapper:ty, $inner:ident, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl ferry_core::ports::Accounts for $wrapper {
            $($own)*

            async fn lease(
                &self,
                call: &ferry_core::admission::Admission,
                lease_id: &str,
            ) -> ferry_core::ports::StoreResult<
                Option<(ferry_core::admission::Admission, ferry_core::admission::Grant)>,
            > {
                self.$inner.lease(call, lease_id).await
            }

            async fn extend_lease(
                &self,
                lease_id: &str,
                amount: ferry_core::Money,
            ) -> ferry_core::ports::StoreResult<ferry_core::Money> {
                self.$inner.extend_lease(lease_id, amount).await
            }

            async fn settle_leased(
                &self,
                batch: &[ferry_core::ports::LeasedUsage],
            ) -> ferry_core::ports::StoreResult<Vec<ferry_core::ports::Settled>> {
                self.$inner.settle_leased(batch).await
            }

            async fn release_lease(
                &self,
                lease_id: &str,
                used: &[u64],
            ) -> ferry_core::ports::StoreResult<()> {
                self.$inner.release_lease(lease_id, used).await
            }

            async fn expire_holds(&self, now_ms: u64) -> ferry_core::ports::StoreResult<u64> {
                self.$inner.expire_holds(now_ms).await
            }

            async fn post(
                &self,
                request: &ferry_core::ports::PostRequest,
            ) -> ferry_core::ports::StoreResult<ferry_core::ports::Posted> {
                self.$inner.post(request).await
            }

            async fn balance(
                &self,
                tenant_id: &str,
            ) -> ferry_core::ports::StoreResult<ferry_core::ports::Balance> {
                self.$inner.balance(tenant_id).await
            }

            async fn transactions(
                &self,
                tenant_id: &str,
                page: &ferry_core::ports::PageRequest,
            ) -> ferry_core::ports::StoreResult<
                ferry_core::ports::Page<ferry_core::ports::Transaction>,
            > {
                self.$inner.transactions(tenant_id, page).await
            }

            async fn list_prices(
                &self,
                model: &str,
            ) -> ferry_core::ports::StoreResult<Vec<ferry_core::ports::PriceRecord>> {
                self.$inner.list_prices(model).await
            }

            async fn usage_events(
                &self,
                tenant_id: &str,
                key_id: Option<&str>,
                from: u64,
                to: u64,
                limit: u32,
            ) -> ferry_core::ports::StoreResult<Vec<ferry_core::ports::UsageRecord>> {
                self.$inner
                    .usage_events(tenant_id, key_id, from, to, limit)
                    .await
            }

            async fn usage_events_page(
                &self,
                tenant_id: &str,
                key_id: Option<&str>,
                range: (u64, u64),
                page: &ferry_core::ports::PageRequest,
            ) -> ferry_core::ports::StoreResult<
                ferry_core::ports::Page<ferry_core::ports::UsageRecord>,
            > {
                self.$inner
                    .usage_events_page(tenant_id, key_id, range, page)
                    .await
            }

            async fn usage_report(
                &self,
                tenant_id: &str,
                key_id: Option<&str>,
                from: u64,
                to: u64,
                group: ferry_core::billing::GroupBy,
            ) -> ferry_core::ports::StoreResult<Vec<ferry_core::billing::UsageRow>> {
                self.$inner
                    .usage_report(tenant_id, key_id, from, to, group)
                    .await
            }

            async fn key_spend(
                &self,
                tenant_id: &str,
                month: ferry_core::calendar::Month,
                page: &ferry_core::ports::PageRequest,
            ) -> ferry_core::ports::StoreResult<
                ferry_core::ports::Page<ferry_core::ports::KeySpend>,
            > {
                self.$inner.key_spend(tenant_id, month, page).await
            }

            async fn alerts(
                &self,
                tenant_id: &str,
            ) -> ferry_core::ports::StoreResult<Vec<ferry_core::ports::Alert>> {
                self.$inner.alerts(tenant_id).await
            }

            async fn close_period(
                &self,
                month: ferry_core::calendar::Month,
                now: u64,
            ) -> Result<Vec<ferry_core::ports::Closed>, ferry_core::ports::CloseError> {
                self.$inner.close_period(month, now).await
            }

            async fn invoices(
                &self,
                tenant_id: &str,
            ) -> ferry_core::ports::StoreResult<Vec<ferry_core::billing::Invoice>> {
                self.$inner.invoices(tenant_id).await
            }

            async fn figures(
                &self,
            ) -> ferry_core::ports::StoreResult<(
                ferry_core::billing::LedgerFigures,
                Vec<ferry_core::billing::TenantFigures>,
            )> {
                self.$inner.figures().await
            }
        }
    };
}

use accounts_passing_to;
