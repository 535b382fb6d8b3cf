//! The `Store` contract (tenants, keys, models), run against every adapter like
//! `accounts.rs`: what one tenant or key does never shows through another's.

use ferry_core::Money;
use ferry_core::admission::{Budget, BudgetPeriod, Enforcement};
use ferry_core::cache::{CacheKey, Entry as CacheEntry};
use ferry_core::model::ModelSpec;
use ferry_core::ports::{
    Accounts, Billing, Endpoint, KeyRecord, PageRequest, RateLimits, SessionRecord, Settled,
    SharedCache, Store, StoreError, Tenant, TenantPolicy, UsageRecord,
};
use ferry_core::principal::Role;
use ferry_core::session::{Lifetime, SessionSubject};

use crate::Harness;

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: format!("{id} inc"),
        billing: Billing::Prepaid,
        created_at: 10,
        limits: RateLimits::default(),
        budgets: Vec::new(),
        log_prompts: false,
    }
}

fn key(id: &str, tenant_id: Option<&str>, created_at: u64) -> KeyRecord {
    KeyRecord {
        id: format!("key_{id}"),
        public_id: id.into(),
        secret_hash: "h".into(),
        tenant_id: tenant_id.map(str::to_owned),
        name: "k".into(),
        role: Role::Member,
        models: Some(vec!["m".into()]),
        limits: RateLimits {
            rpm: Some(5),
            tpm: None,
        },
        budgets: Vec::new(),
        credit_cap: Some(Money::from_nanos(7)),
        created_at,
        expires_at: Some(99),
        revoked_at: None,
    }
}

fn unbilled_usage(request_id: &str, tenant_id: &str) -> UsageRecord {
    UsageRecord {
        request_id: request_id.into(),
        tenant_id: tenant_id.into(),
        key_id: None,
        model: "m".into(),
        deployment: "d".into(),
        endpoint: "chat.completions".into(),
        prompt_tokens: 3,
        cached_tokens: 0,
        completion_tokens: 4,
        cost: Money::from_nanos(12),
        status: 200,
        latency_ms: 5,
        ttft_ms: Some(1),
        cache_status: "none".into(),
        route: ferry_core::ports::NO_ROUTE.into(),
        attempts: 0,
        created_at: 20,
        user: None,
        metadata: Default::default(),
    }
}

pub async fn tenants_and_keys_round_trip_and_stay_apart<H: Harness>() {
    let store = H::new_store().await;
    store.create_tenant(&tenant("a")).await.unwrap();
    store.create_tenant(&tenant("b")).await.unwrap();
    assert_eq!(
        store.create_tenant(&tenant("a")).await,
        Err(StoreError::Conflict("tenant".into()))
    );
    assert_eq!(store.get_tenant("a").await.unwrap(), Some(tenant("a")));
    assert_eq!(store.get_tenant("c").await.unwrap(), None);
    store.create_key(&key("one", Some("a"), 1)).await.unwrap();
    store.create_key(&key("two", Some("b"), 1)).await.unwrap();
    assert_eq!(
        store.create_key(&key("one", Some("b"), 2)).await,
        Err(StoreError::Conflict("key".into()))
    );
    assert_eq!(
        store.find_key("one").await.unwrap(),
        Some(key("one", Some("a"), 1))
    );
    assert_eq!(store.find_key("three").await.unwrap(), None);
    assert_eq!(
        store.list_keys("a").await.unwrap(),
        vec![key("one", Some("a"), 1)]
    );
    assert!(store.revoke_key("key_one", 50).await.unwrap());
    assert!(!store.revoke_key("key_one", 51).await.unwrap());
    assert!(!store.revoke_key("key_nothing", 51).await.unwrap());
    assert_eq!(
        store
            .find_key("one")
            .await
            .unwrap()
            .and_then(|key| key.revoked_at),
        Some(50)
    );
    let tenants: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|tenant| tenant.id)
        .collect();
    assert_eq!(tenants, ["a", "b"]);
}

pub async fn a_tenants_policy_changes_alone<H: Harness>() {
    let store = H::new_store().await;
    store.create_tenant(&tenant("a")).await.unwrap();
    let limits = RateLimits {
        rpm: Some(60),
        tpm: Some(10_000),
    };
    let budgets = vec![Budget {
        period: BudgetPeriod::Day,
        amount_usd: Money::from_nanos(5_000_000_000),
        enforcement: Enforcement::Hard,
    }];
    let policy = TenantPolicy {
        limits,
        budgets: budgets.clone(),
        log_prompts: true,
    };
    assert!(store.update_tenant_policy("a", &policy).await.unwrap());
    assert!(!store.update_tenant_policy("nobody", &policy).await.unwrap());
    let changed = store.get_tenant("a").await.unwrap().unwrap();
    assert_eq!(
        (changed.limits, changed.budgets.clone(), changed.log_prompts),
        (limits, budgets, true)
    );
    assert_eq!(changed.policy(), policy);
    assert_eq!(changed.name, "a inc");
    let listed = store.list_tenants().await.unwrap();
    assert!(listed[0].log_prompts, "listed with its policy too");
}

pub async fn operator_keys_are_listed_live_and_newest_first<H: Harness>() {
    let store = H::new_store().await;
    store.create_tenant(&tenant("a")).await.unwrap();
    store.create_key(&key("old", None, 1)).await.unwrap();
    store.create_key(&key("new", None, 5)).await.unwrap();
    store.create_key(&key("gone", None, 9)).await.unwrap();
    store
        .create_key(&key("tenant", Some("a"), 7))
        .await
        .unwrap();
    assert!(store.revoke_key("key_gone", 10).await.unwrap());
    let listed: Vec<String> = store
        .list_operator_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|key| key.public_id)
        .collect();
    assert_eq!(listed, ["new", "old"]);
}

pub async fn the_key_set_version_moves_with_every_key_creation_and_revocation<H: Harness>() {
    let store = H::new_store().await;
    store.create_tenant(&tenant("a")).await.unwrap();
    let mut seen = vec![store.key_set_version().await.unwrap()];
    let mut expect_moved = |version: u64| {
        assert!(!seen.contains(&version), "{version} seen before: {seen:?}");
        seen.push(version);
    };
    store.create_key(&key("op", None, 1)).await.unwrap();
    expect_moved(store.key_set_version().await.unwrap());
    store.create_key(&key("one", Some("a"), 2)).await.unwrap();
    expect_moved(store.key_set_version().await.unwrap());
    // Refused changes leave it alone.
    let before = store.key_set_version().await.unwrap();
    assert!(store.create_key(&key("one", Some("a"), 3)).await.is_err());
    assert!(!store.revoke_key("key_nothing", 4).await.unwrap());
    assert_eq!(store.key_set_version().await.unwrap(), before);
    assert!(store.revoke_key("key_one", 5).await.unwrap());
    expect_moved(store.key_set_version().await.unwrap());
    assert!(!store.revoke_key("key_one", 6).await.unwrap());
    assert_eq!(store.key_set_version().await.unwrap(), seen[3]);
}

pub async fn live_key_ids_leave_out_revoked_and_expired_keys<H: Harness>() {
    let store = H::new_store().await;
    store.create_tenant(&tenant("a")).await.unwrap();
    store.create_tenant(&tenant("b")).await.unwrap();
    store.create_key(&key("op", None, 1)).await.unwrap();
    store.create_key(&key("a1", Some("a"), 2)).await.unwrap();
    store.create_key(&key("a2", Some("a"), 3)).await.unwrap();
    store.create_key(&key("b1", Some("b"), 4)).await.unwrap();
    let forever = KeyRecord {
        expires_at: None,
        ..key("b2", Some("b"), 5)
    };
    store.create_key(&forever).await.unwrap();
    assert!(store.revoke_key("key_a2", 6).await.unwrap());
    let mut live = store.live_key_ids(50).await.unwrap();
    live.sort();
    assert_eq!(live, ["a1", "b1", "b2", "op"]);
    // The test keys expire at 99, but for `b2`.
    assert_eq!(store.live_key_ids(99).await.unwrap(), ["b2"]);
}

pub async fn usage_is_recorded_once_per_request<H: Harness>() {
    let store = H::new_store().await;
    // Unbilled calls (no hold) are recorded as they come, once per request id.
    assert_eq!(
        store.settle(&unbilled_usage("r1", "a")).await.unwrap(),
        Settled::Recorded {
            charged: Money::from_nanos(12)
        }
    );
    assert_eq!(
        store.settle(&unbilled_usage("r1", "a")).await.unwrap(),
        Settled::Duplicate
    );
    store.settle(&unbilled_usage("r2", "b")).await.unwrap();
    assert_eq!(
        store
            .usage_events("a", None, 0, u64::MAX, 10)
            .await
            .unwrap(),
        vec![unbilled_usage("r1", "a")]
    );
    assert_eq!(
        store.usage_events("a", None, 21, 30, 10).await.unwrap(),
        Vec::new()
    );
}

pub async fn models_keep_their_creation_time<H: Harness>() {
    let store = H::new_store().await;
    let spec = |upstream: &str| -> ModelSpec {
        serde_json::from_value(serde_json::json!({
            "id": "m", "deployments": [{"id": "d", "upstream": {"url": "http://x/v1", "model": upstream}}]
        }))
        .unwrap()
    };
    assert_eq!(store.put_model(&spec("a"), 5).await.unwrap().created_at, 5);
    let replaced = store.put_model(&spec("b"), 9).await.unwrap();
    assert_eq!((replaced.created_at, replaced.spec), (5, spec("b")));
    assert_eq!(store.get_model("m").await.unwrap().unwrap().spec, spec("b"));
    assert_eq!(store.list_models().await.unwrap().len(), 1);
    assert!(store.delete_model("m").await.unwrap());
    assert!(!store.delete_model("m").await.unwrap());
    assert_eq!(store.get_model("m").await.unwrap(), None);
    assert!(store.list_models().await.unwrap().is_empty());
}

pub async fn the_shared_cache_keeps_fresh_entries_by_key<H: Harness>() {
    let store = H::new_store().await;
    let key = |tenant: &str| {
        CacheKey::of(
            tenant,
            "deployment",
            Endpoint::ChatCompletions,
            &serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    let entry = CacheEntry {
        expires_at_ms: 10_000,
        response: serde_json::json!({"object": "chat.completion", "usage": {"prompt_tokens": 1}}),
    };
    SharedCache::put(&store, &key("a"), &entry, 0)
        .await
        .unwrap();
    let found = SharedCache::get(&store, &key("a"), 5_000).await.unwrap();
    assert_eq!(found, Some(entry.clone()));
    // Another tenant's key, and the same key once expired, find nothing.
    assert_eq!(
        SharedCache::get(&store, &key("b"), 5_000).await.unwrap(),
        None
    );
    assert_eq!(
        SharedCache::get(&store, &key("a"), 10_000).await.unwrap(),
        None
    );
    // A newer answer replaces the old.
    let newer = CacheEntry {
        expires_at_ms: 20_000,
        response: serde_json::json!({"object": "chat.completion", "usage": {"prompt_tokens": 2}}),
    };
    SharedCache::put(&store, &key("a"), &newer, 15_000)
        .await
        .unwrap();
    let found = SharedCache::get(&store, &key("a"), 15_000).await.unwrap();
    assert_eq!(found, Some(newer));
}

pub async fn tenants_come_a_page_at_a_time_by_id_and_can_be_searched<H: Harness>() {
    let store = H::new_store().await;
    for id in ["ten_e", "ten_a", "ten_c", "ten_b", "ten_d"] {
        store.create_tenant(&tenant(id)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let found = store.tenants_page(None, &page).await.unwrap();
        assert!(found.items.len() <= 2);
        seen.extend(found.items.iter().map(|tenant| tenant.id.clone()));
        match found.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["ten_a", "ten_b", "ten_c", "ten_d", "ten_e"]);
    // By id prefix, or by any part of the name in any case.
    let by_id = store
        .tenants_page(Some("ten_c"), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(by_id.items.len(), 1);
    assert_eq!(by_id.items[0].id, "ten_c");
    assert_eq!(by_id.next, None);
    let by_name = store
        .tenants_page(Some("d inc"), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(
        by_name
            .items
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["ten_d"]
    );
    let none = store
        .tenants_page(Some("nobody"), &PageRequest::first(10))
        .await
        .unwrap();
    assert!(none.items.is_empty() && none.next.is_none());
}

pub async fn a_tenants_keys_come_a_page_at_a_time_newest_first_and_only_its_own<H: Harness>() {
    let store = H::new_store().await;
    store.create_tenant(&tenant("a")).await.unwrap();
    store.create_tenant(&tenant("b")).await.unwrap();
    // Two keys share a creation second: the order still holds each once.
    for (id, created_at) in [("k1", 10), ("k2", 20), ("k3", 20), ("k4", 30), ("k5", 40)] {
        store
            .create_key(&key(id, Some("a"), created_at))
            .await
            .unwrap();
    }
    store
        .create_key(&key("other", Some("b"), 25))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let found = store.keys_page("a", &page).await.unwrap();
        seen.extend(
            found
                .items
                .iter()
                .map(|key| (key.created_at, key.id.clone())),
        );
        match found.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    let ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 5, "each of a's keys once: {ids:?}");
    assert!(!ids.contains(&"key_other"));
    let created: Vec<u64> = seen.iter().map(|(created, _)| *created).collect();
    assert_eq!(created, [40, 30, 20, 20, 10], "newest first");
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 5);
    let empty = store
        .keys_page("nobody", &PageRequest::first(5))
        .await
        .unwrap();
    assert!(empty.items.is_empty() && empty.next.is_none());
}

fn session(id_hash: &str, now: u64) -> SessionRecord {
    SessionRecord::new(
        id_hash.into(),
        SessionSubject::Key {
            public_id: "p".into(),
        },
        "csrf".into(),
        now,
        Lifetime::default(),
    )
}

pub async fn sessions_are_found_by_hash_touched_forward_and_gone_once_deleted<H: Harness>() {
    let store = H::new_store().await;
    let now = 1_900_000_000;
    store.create_session(&session("h1", now)).await.unwrap();
    store.create_session(&session("h2", now)).await.unwrap();
    assert_eq!(
        store.create_session(&session("h1", now)).await,
        Err(StoreError::Conflict("session".into()))
    );
    assert_eq!(
        store.find_session("h1").await.unwrap(),
        Some(session("h1", now))
    );
    assert_eq!(store.find_session("nope").await.unwrap(), None);

    store.touch_session("h1", now + 90).await.unwrap();
    store.touch_session("h1", now + 30).await.unwrap();
    let touched = store.find_session("h1").await.unwrap().unwrap();
    assert_eq!(
        touched.last_seen_at,
        now + 90,
        "a touch never moves a session back"
    );
    assert_eq!(touched.expires_at, session("h1", now).expires_at);

    store.delete_session("h1").await.unwrap();
    store.delete_session("h1").await.unwrap();
    store.touch_session("h1", now + 200).await.unwrap();
    assert_eq!(
        store.find_session("h1").await.unwrap(),
        None,
        "deleted stays deleted"
    );
    assert_eq!(
        store.find_session("h2").await.unwrap(),
        Some(session("h2", now))
    );
}
