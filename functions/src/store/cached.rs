//! A read-through cache in front of any store: tenants, models and price schedules, the
//! read-mostly data every call looks up, are kept for a short TTL so the hot path makes no
//! store round trip for them (API keys are cached by the authenticator).
//!
//! Writes made through this cache forget what they change at once, so this replica sees its
//! own changes immediately; a change made by another replica lands here within the TTL.
//! Prices are cached as the model's whole schedule and the price in effect is picked per call,
//! so a price scheduled at least a TTL ahead takes effect on time everywhere.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::admission::{Admission, Grant, Refusal};
use ferry_core::model::{ModelSpec, Price};
use ferry_core::ports::{
    Accounts, KeyRecord, Page, PageRequest, PriceRecord, SessionRecord, Settled, Store,
    StoreResult, StoredModel, Tenant, TenantPolicy, UsageRecord,
};

use crate::ttl_cache::TtlCache;

pub struct CachedStore {
    store: Arc<dyn Store>,
    accounts: Arc<dyn Accounts>,
    tenants: TtlCache<Option<Tenant>>,
    models: TtlCache<Option<StoredModel>>,
    prices: TtlCache<Arc<[PriceRecord]>>,
}

impl CachedStore {
    /// A zero `ttl` caches nothing.
    pub fn new(store: Arc<dyn Store>, accounts: Arc<dyn Accounts>, ttl: Duration) -> CachedStore {
        CachedStore {
            store,
            accounts,
            tenants: TtlCache::new(ttl),
            models: TtlCache::new(ttl),
            prices: TtlCache::new(ttl),
        }
    }
}

/// The cached value for `id`, else what `load` reads (then cached). `load` runs only on a miss.
async fn read_through<V: Clone>(
    cache: &TtlCache<V>,
    id: &str,
    load: impl Future<Output = StoreResult<V>>,
) -> StoreResult<V> {
    if let Some(value) = cache.get(id) {
        return Ok(value);
    }
    let value = load.await?;
    cache.put(id, value.clone());
    Ok(value)
}

#[async_trait]
impl Store for CachedStore {
    async fn ping(&self) -> StoreResult<()> {
        self.store.ping().await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let created = self.store.create_tenant(tenant).await;
        self.tenants.forget(&tenant.id);
        created
    }

    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        read_through(&self.tenants, id, self.store.get_tenant(id)).await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.store.list_tenants().await
    }

    async fn update_tenant_policy(&self, id: &str, policy: &TenantPolicy) -> StoreResult<bool> {
        let updated = self.store.update_tenant_policy(id, policy).await;
        self.tenants.forget(id);
        updated
    }

    async fn create_key(&self, key: &KeyRecord) -> StoreResult<()> {
        self.store.create_key(key).await
    }

    async fn find_key(&self, public_id: &str) -> StoreResult<Option<KeyRecord>> {
        self.store.find_key(public_id).await
    }

    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRecord>> {
        self.store.list_keys(tenant_id).await
    }

    async fn keys_page(&self, tenant_id: &str, page: &PageRequest) -> StoreResult<Page<KeyRecord>> {
        self.store.keys_page(tenant_id, page).await
    }

    async fn tenants_page(
        &self,
        search: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Tenant>> {
        self.store.tenants_page(search, page).await
    }

    // Sessions are cached by the authenticator, which forgets one as it is deleted.
    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        self.store.create_session(session).await
    }

    async fn find_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.store.find_session(id_hash).await
    }

    async fn touch_session(&self, id_hash: &str, seen_at: u64) -> StoreResult<()> {
        self.store.touch_session(id_hash, seen_at).await
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        self.store.delete_session(id_hash).await
    }

    async fn revoke_key(&self, key_id: &str, at: u64) -> StoreResult<bool> {
        self.store.revoke_key(key_id, at).await
    }

    async fn list_operator_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        self.store.list_operator_keys().await
    }

    async fn key_set_version(&self) -> StoreResult<u64> {
        self.store.key_set_version().await
    }

    async fn live_key_ids(&self, now: u64) -> StoreResult<Vec<String>> {
        self.store.live_key_ids(now).await
    }

    async fn put_model(&self, model: &ModelSpec, now: u64) -> StoreResult<StoredModel> {
        let stored = self.store.put_model(model, now).await;
        // Registering a model may also record its price.
        self.models.forget(&model.id);
        self.prices.forget(&model.id);
        stored
    }

    async fn get_model(&self, id: &str) -> StoreResult<Option<StoredModel>> {
        read_through(&self.models, id, self.store.get_model(id)).await
    }

    async fn get_model_fresh(&self, id: &str) -> StoreResult<Option<StoredModel>> {
        let model = self.store.get_model_fresh(id).await?;
        self.models.put(id, model.clone());
        Ok(model)
    }

    async fn list_models(&self) -> StoreResult<Vec<StoredModel>> {
        self.store.list_models().await
    }

    async fn delete_model(&self, id: &str) -> StoreResult<bool> {
        let deleted = self.store.delete_model(id).await;
        self.models.forget(id);
        self.prices.forget(id);
        deleted
    }
}

super::accounts_passing_to!(CachedStore, accounts, {
    async fn admit(&self, admission: &Admission) -> StoreResult<Result<Grant, Refusal>> {
        self.accounts.admit(admission).await
    }

    async fn settle(&self, usage: &UsageRecord) -> StoreResult<Settled> {
        self.accounts.settle(usage).await
    }

    async fn put_price(&self, price: &PriceRecord) -> StoreResult<()> {
        let put = self.accounts.put_price(price).await;
        self.prices.forget(&price.model);
        put
    }

    async fn price_at(
        &self,
        model: &str,
        deployment: &str,
        at_ms: u64,
    ) -> StoreResult<Option<Price>> {
        let load = async { Ok(self.accounts.list_prices(model).await?.into()) };
        let schedule = read_through(&self.prices, model, load).await?;
        Ok(PriceRecord::in_effect(&schedule, deployment, at_ms).cloned())
    }
});
