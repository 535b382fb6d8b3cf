//! The key directory in front of the store: random keys are refused without a store read
//! (counted), a key made on another replica starts working within the recheck interval, and a
//! revocation made elsewhere lands within the key cache's TTL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, header};
use ferry_core::api_key::ApiKey;
use ferry_core::model::ModelSpec;
use ferry_core::ports::{
    Billing, KeyRecord, Page, PageRequest, RateLimits, SessionRecord, Store, StoreError,
    StoreResult, StoredModel, Tenant, TenantPolicy,
};
use ferry_core::principal::Role;
use ferry_functions::auth::{AuthConfig, Authenticator};
use ferry_store_sqlite::SqliteStore;

/// A real SQLite store that counts the reads the authenticator may make.
struct Counting {
    inner: SqliteStore,
    find_key: AtomicU64,
    key_set_version: AtomicU64,
    live_key_ids: AtomicU64,
    key_set_down: AtomicBool,
    /// How long a key list takes to arrive after it was read (to race a rebuild).
    list_delay_ms: AtomicU64,
}

impl Counting {
    fn reads(&self) -> [u64; 3] {
        [
            self.find_key.load(Ordering::SeqCst),
            self.key_set_version.load(Ordering::SeqCst),
            self.live_key_ids.load(Ordering::SeqCst),
        ]
    }
}

#[async_trait]
impl Store for Counting {
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        self.inner.create_tenant(tenant).await
    }
    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        self.inner.get_tenant(id).await
    }
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.inner.list_tenants().await
    }
    async fn update_tenant_policy(&self, id: &str, policy: &TenantPolicy) -> StoreResult<bool> {
        self.inner.update_tenant_policy(id, policy).await
    }
    async fn create_key(&self, key: &KeyRecord) -> StoreResult<()> {
        self.inner.create_key(key).await
    }
    async fn find_key(&self, public_id: &str) -> StoreResult<Option<KeyRecord>> {
        self.find_key.fetch_add(1, Ordering::SeqCst);
        self.inner.find_key(public_id).await
    }
    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRecord>> {
        self.inner.list_keys(tenant_id).await
    }
    async fn keys_page(&self, tenant_id: &str, page: &PageRequest) -> StoreResult<Page<KeyRecord>> {
        self.inner.keys_page(tenant_id, page).await
    }
    async fn tenants_page(
        &self,
        search: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Tenant>> {
        self.inner.tenants_page(search, page).await
    }
    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        self.inner.create_session(session).await
    }
    async fn find_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.find_session(id_hash).await
    }
    async fn touch_session(&self, id_hash: &str, seen_at: u64) -> StoreResult<()> {
        self.inner.touch_session(id_hash, seen_at).await
    }
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        self.inner.delete_session(id_hash).await
    }
    async fn revoke_key(&self, key_id: &str, at: u64) -> StoreResult<bool> {
        self.inner.revoke_key(key_id, at).await
    }
    async fn list_operator_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        self.inner.list_operator_keys().await
    }
    async fn key_set_version(&self) -> StoreResult<u64> {
        self.key_set_version.fetch_add(1, Ordering::SeqCst);
        if self.key_set_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        self.inner.key_set_version().await
    }
    async fn live_key_ids(&self, now: u64) -> StoreResult<Vec<String>> {
        self.live_key_ids.fetch_add(1, Ordering::SeqCst);
        let ids = self.inner.live_key_ids(now).await;
        let delay = self.list_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        ids
    }
    async fn put_model(&self, model: &ModelSpec, now: u64) -> StoreResult<StoredModel> {
        self.inner.put_model(model, now).await
    }
    async fn get_model(&self, id: &str) -> StoreResult<Option<StoredModel>> {
        self.inner.get_model(id).await
    }
    async fn list_models(&self) -> StoreResult<Vec<StoredModel>> {
        self.inner.list_models().await
    }
    async fn delete_model(&self, id: &str) -> StoreResult<bool> {
        self.inner.delete_model(id).await
    }
}

fn random_key() -> ApiKey {
    let mut public = [0u8; 12];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut public).unwrap();
    getrandom::fill(&mut secret).unwrap();
    ApiKey::generate(public, secret)
}

async fn store_with_tenant() -> Arc<Counting> {
    let store = Arc::new(Counting {
        inner: SqliteStore::in_memory().unwrap(),
        find_key: AtomicU64::new(0),
        key_set_version: AtomicU64::new(0),
        live_key_ids: AtomicU64::new(0),
        key_set_down: AtomicBool::new(false),
        list_delay_ms: AtomicU64::new(0),
    });
    store
        .create_tenant(&Tenant {
            id: "acme".into(),
            name: "Acme".into(),
            billing: Billing::Prepaid,
            created_at: 1,
            limits: RateLimits::default(),
            budgets: Vec::new(),
            log_prompts: false,
        })
        .await
        .unwrap();
    store
}

/// A key stored as if another replica's admin API had made it.
async fn create_elsewhere(store: &Counting) -> ApiKey {
    let key = random_key();
    store
        .create_key(&KeyRecord {
            id: key.key_id(),
            public_id: key.public_id().to_owned(),
            secret_hash: key.hash(),
            tenant_id: Some("acme".into()),
            name: "k".into(),
            role: Role::Member,
            models: None,
            limits: RateLimits::default(),
            budgets: Vec::new(),
            credit_cap: None,
            created_at: 1,
            expires_at: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    key
}

fn bearer(key: &ApiKey) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = format!("Bearer {}", key.expose());
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&value).unwrap(),
    );
    headers
}

fn authenticator(store: Arc<Counting>, config: AuthConfig) -> Authenticator {
    Authenticator::new(store, config, reqwest::Client::new()).unwrap()
}

#[tokio::test]
async fn random_keys_are_refused_without_a_store_read() {
    let store = store_with_tenant().await;
    let real = create_elsewhere(&store).await;
    let auth = authenticator(
        store.clone(),
        AuthConfig {
            key_set_recheck: Duration::from_secs(600),
            ..AuthConfig::default()
        },
    );
    // The first call loads the directory (one version read, one key list) and the key.
    let principal = auth.authenticate(&bearer(&real)).await.unwrap();
    assert_eq!(principal.tenant_id.as_deref(), Some("acme"));
    assert_eq!(store.reads(), [1, 1, 1]);

    for _ in 0..2_000 {
        let error = auth.authenticate(&bearer(&random_key())).await.unwrap_err();
        assert_eq!(error.code.as_deref(), Some("invalid_api_key"));
    }
    assert_eq!(store.reads(), [1, 1, 1], "random keys reached the store");
    // The real key is still served from memory.
    auth.authenticate(&bearer(&real)).await.unwrap();
    assert_eq!(store.reads(), [1, 1, 1]);
    assert_eq!(auth.key_directory().rebuilds(), 1);
}

#[tokio::test]
async fn a_key_made_on_another_replica_works_within_the_recheck_interval() {
    let store = store_with_tenant().await;
    let recheck = Duration::from_millis(200);
    let auth = authenticator(
        store.clone(),
        AuthConfig {
            key_set_recheck: recheck,
            ..AuthConfig::default()
        },
    );
    auth.authenticate(&bearer(&random_key())).await.unwrap_err();
    let [_, versions, lists] = store.reads();
    assert_eq!((versions, lists), (1, 1));

    let made = create_elsewhere(&store).await;
    tokio::time::sleep(recheck + Duration::from_millis(50)).await;
    // The miss finds the filter stale, sees the version moved, and rebuilds.
    auth.authenticate(&bearer(&made)).await.unwrap();
    assert_eq!(auth.key_directory().rebuilds(), 2);

    // Past the interval, a miss with no change costs a version read but no rebuild.
    tokio::time::sleep(recheck + Duration::from_millis(50)).await;
    auth.authenticate(&bearer(&random_key())).await.unwrap_err();
    let [finds, versions, lists] = store.reads();
    assert_eq!((finds, versions, lists), (1, 3, 2));
}

#[tokio::test]
async fn a_key_made_through_this_replica_works_at_once() {
    let store = store_with_tenant().await;
    let auth = authenticator(
        store.clone(),
        AuthConfig {
            key_set_recheck: Duration::from_secs(600),
            ..AuthConfig::default()
        },
    );
    auth.authenticate(&bearer(&random_key())).await.unwrap_err();
    let made = create_elsewhere(&store).await;
    // What the admin API does after storing a key.
    auth.remember_key(made.public_id());
    auth.authenticate(&bearer(&made)).await.unwrap();
    assert_eq!(auth.key_directory().rebuilds(), 1);
}

#[tokio::test]
async fn a_key_made_here_while_the_filter_is_rebuilt_is_not_lost() {
    let store = store_with_tenant().await;
    let auth = Arc::new(authenticator(
        store.clone(),
        AuthConfig {
            key_set_recheck: Duration::from_secs(600),
            ..AuthConfig::default()
        },
    ));
    store.list_delay_ms.store(300, Ordering::SeqCst);
    // The first call loads the filter; its key list is read before the key below exists.
    let loading = tokio::spawn({
        let auth = auth.clone();
        async move { auth.authenticate(&bearer(&random_key())).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let made = create_elsewhere(&store).await;
    auth.remember_key(made.public_id());
    loading.await.unwrap().unwrap_err();
    assert_eq!(auth.key_directory().rebuilds(), 1);
    auth.authenticate(&bearer(&made)).await.unwrap();
}

#[tokio::test]
async fn a_revocation_made_elsewhere_lands_within_the_key_cache_ttl() {
    let store = store_with_tenant().await;
    let ttl = Duration::from_millis(200);
    let auth = authenticator(
        store.clone(),
        AuthConfig {
            key_cache_ttl: ttl,
            ..AuthConfig::default()
        },
    );
    let key = create_elsewhere(&store).await;
    auth.authenticate(&bearer(&key)).await.unwrap();
    assert!(store.revoke_key(&key.key_id(), 2).await.unwrap());
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let error = auth.authenticate(&bearer(&key)).await.unwrap_err();
    assert!(error.message.contains("revoked"), "{}", error.message);
}

#[tokio::test]
async fn an_unreadable_key_set_lets_the_store_decide() {
    // Key-set reads failing (a throttled index, say) must not lock every caller out.
    let store = store_with_tenant().await;
    let key = create_elsewhere(&store).await;
    store.key_set_down.store(true, Ordering::SeqCst);
    let auth = authenticator(store.clone(), AuthConfig::default());
    auth.authenticate(&bearer(&key)).await.unwrap();
    let error = auth.authenticate(&bearer(&random_key())).await.unwrap_err();
    assert_eq!(error.code.as_deref(), Some("invalid_api_key"));
    assert_eq!(store.reads()[0], 2, "both keys were read from the store");
}
