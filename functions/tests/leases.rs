//! Calls admitted and settled against credit leases, through the real router on a SQLite file:
//! every answer's cost is what the tenant paid, nothing more is spent than the balance, the
//! journal drains into the store, leases are given back, and the books reconcile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ferry_core::Money;
use ferry_core::billing::discrepancies;
use ferry_core::lease;
use ferry_core::ledger::TransactionKind;
use ferry_core::ports::{Accounts, PageRequest};
use ferry_functions::store::{CachedStore, LeasedAccounts};
use ferry_functions::testing::{FakeUpstream, TestApp};
use ferry_functions::{AppState, RouterConfig};
use ferry_journal::Durability;
use ferry_store_sqlite::SqliteStore;
use serde_json::{Value, json};

struct Leased {
    test: TestApp,
    leased: Arc<LeasedAccounts>,
    store: Arc<SqliteStore>,
    key: String,
    tenant_id: String,
}

async fn start(directory: &std::path::Path, credit: &str) -> Leased {
    start_journaled(directory, credit, true).await
}

/// As `ferry serve` runs (`journaled`), or as a replica with no disk that outlives it does:
/// each leased call's usage written to the store before its answer.
async fn start_journaled(directory: &std::path::Path, credit: &str, journaled: bool) -> Leased {
    let store = Arc::new(SqliteStore::open(&directory.join("ferry.db")).unwrap());
    let mut state = AppState::for_tests(store.clone(), FakeUpstream::new());
    // As `ferry serve` runs: tenants, models and prices read through a cache, so 300 calls at
    // once do not queue 300 reads each on the store's thread.
    let cached = Arc::new(CachedStore::new(
        store.clone(),
        store.clone(),
        Duration::from_secs(5),
    ));
    state.store = cached.clone();
    let journal = directory.join("journal");
    let journal = journaled.then_some((journal.as_path(), Durability::ProcessCrash));
    let leased = LeasedAccounts::open(cached, journal).await.unwrap();
    state.accounts = leased.clone();
    let test = TestApp::start(state, &RouterConfig::default()).await;
    let operator = test.operator_key.clone();
    let tenant = test
        .post("/admin/v1/tenants", &operator, &json!({"name": "Acme"}))
        .await;
    let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();
    let credited = test
        .post(
            &format!("/admin/v1/tenants/{tenant_id}/credits"),
            &operator,
            &json!({"amount_usd": credit}),
        )
        .await;
    assert_eq!(credited.status, StatusCode::CREATED, "{}", credited.body);
    let model = json!({
        "id": "m",
        "deployments": [{"id": "m-1", "upstream": {"url": "http://upstream.invalid/v1", "model": "org/m"}}],
        "price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001"},
        "max_output_tokens": 64,
    });
    let registered = test.post("/admin/v1/models", &operator, &model).await;
    assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
    let key = test
        .post(
            &format!("/admin/v1/tenants/{tenant_id}/keys"),
            &operator,
            &json!({"name": "ci", "role": "member"}),
        )
        .await;
    Leased {
        test,
        leased,
        store,
        key: key.body["key"].as_str().unwrap().to_owned(),
        tenant_id,
    }
}

fn chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
}

/// Calls `count` at once; the costs their answers state, and how many were refused.
async fn call_many(ferry: &Leased, count: usize) -> (Vec<Money>, usize) {
    let body = chat();
    let calls = (0..count).map(|_| ferry.test.post("/v1/chat/completions", &ferry.key, &body));
    let answers = futures_util::future::join_all(calls).await;
    let mut costs = Vec::new();
    let mut refused = 0;
    for answer in answers {
        match answer.status {
            StatusCode::OK => costs.push(
                answer.body["usage"]["cost"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            ),
            StatusCode::PAYMENT_REQUIRED | StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    (costs, refused)
}

/// Waits until every answered call's usage is in the store and every lease is given back.
async fn settle_down(ferry: &Leased, calls: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = ferry
            .store
            .usage_events(&ferry.tenant_id, None, 0, u64::MAX, 100_000)
            .await
            .unwrap();
        let balance = ferry.store.balance(&ferry.tenant_id).await.unwrap();
        if events.len() == calls && balance.held_usd == Money::ZERO {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {calls} calls in the store, {} still held",
            events.len(),
            balance.held_usd
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many holds (one per call admitted alone, one per lease) the tenant's ledger has.
async fn holds(ferry: &Leased) -> usize {
    let ledger = ferry
        .store
        .transactions(
            &ferry.tenant_id,
            &PageRequest {
                limit: 1000,
                after: None,
            },
        )
        .await
        .unwrap();
    ledger
        .items
        .iter()
        .filter(|transaction| transaction.kind == TransactionKind::Hold)
        .count()
}

async fn assert_reconciles(store: &SqliteStore) {
    let (ledger, tenants) = store.figures().await.unwrap();
    let found = discrepancies(&ledger, &tenants);
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_calls_are_charged_what_their_answers_say_and_the_books_reconcile() {
    let directory = tempfile::tempdir().unwrap();
    let ferry = start(directory.path(), "100").await;
    let (costs, refused) = call_many(&ferry, 300).await;
    assert_eq!(refused, 0);
    settle_down(&ferry, 300).await;
    let stated: i64 = costs.iter().map(|cost| cost.nanos()).sum();
    let balance = ferry.store.balance(&ferry.tenant_id).await.unwrap();
    assert_eq!(
        Money::from_nanos(100_000_000_000 - stated),
        balance.available_usd,
        "the tenant paid exactly what its answers said"
    );
    let holds = holds(&ferry).await;
    assert!(
        holds <= lease::BUSY_CALLS as usize + 4,
        "{holds} holds: once busy, the calls took from leases, not one each"
    );
    assert_reconciles(&ferry.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_journal_calls_finishing_together_share_a_write_and_are_each_charged_once() {
    let directory = tempfile::tempdir().unwrap();
    let ferry = start_journaled(directory.path(), "100", false).await;
    let (costs, refused) = call_many(&ferry, 300).await;
    assert_eq!((costs.len(), refused), (300, 0));
    // Written before their answers: every call is in the store already.
    let events = ferry
        .store
        .usage_events(&ferry.tenant_id, None, 0, u64::MAX, 100_000)
        .await
        .unwrap();
    assert_eq!(events.len(), 300);
    settle_down(&ferry, 300).await;
    let stated: i64 = costs.iter().map(|cost| cost.nanos()).sum();
    let balance = ferry.store.balance(&ferry.tenant_id).await.unwrap();
    assert_eq!(
        Money::from_nanos(100_000_000_000 - stated),
        balance.available_usd
    );
    assert!(holds(&ferry).await < 50, "the calls took from leases");
    assert_reconciles(&ferry.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_crowding_the_store_are_leased_for_before_the_scope_is_counted_busy() {
    let directory = tempfile::tempdir().unwrap();
    let ferry = start(directory.path(), "100").await;
    // Never busy by the count of calls: only the crowd at the store can make it lease.
    ferry.leased.set_busy_calls(u64::MAX);
    let (costs, refused) = call_many(&ferry, 200).await;
    assert_eq!((costs.len(), refused), (200, 0));
    settle_down(&ferry, 200).await;
    let holds = holds(&ferry).await;
    assert!(
        holds < 50,
        "{holds} holds: calls waiting behind {} others at the store took from a lease",
        lease::BUSY_AT_STORE
    );
    let stated: i64 = costs.iter().map(|cost| cost.nanos()).sum();
    let balance = ferry.store.balance(&ferry.tenant_id).await.unwrap();
    assert_eq!(
        Money::from_nanos(100_000_000_000 - stated),
        balance.available_usd
    );
    assert_reconciles(&ferry.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_for_a_few_calls_gets_exactly_those_few_leased_or_not() {
    let directory = tempfile::tempdir().unwrap();
    // A call costs about 0.00102 (0.001 per call and a few tokens): 0.0035 pays for three.
    // Twenty calls one after another: the scope turns busy at its sixteenth, when the store
    // has too little left to lease and admits call by call still.
    let ferry = start(directory.path(), "0.0035").await;
    let mut costs = Vec::new();
    for _ in 0..20 {
        let (answered, _) = call_many(&ferry, 1).await;
        costs.extend(answered);
    }
    assert_eq!(costs.len(), 3);
    settle_down(&ferry, 3).await;
    let balance = ferry.store.balance(&ferry.tenant_id).await.unwrap();
    assert!(!balance.available_usd.is_negative());
    assert_reconciles(&ferry.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_over_the_same_journal_replays_nothing_twice() {
    let directory = tempfile::tempdir().unwrap();
    let ferry = start(directory.path(), "100").await;
    let (costs, _) = call_many(&ferry, 50).await;
    settle_down(&ferry, 50).await;
    let tenant_id = ferry.tenant_id.clone();
    drop(ferry);
    // The journal's records were drained; reopening it writes nothing again.
    let store = Arc::new(SqliteStore::open(&directory.path().join("ferry.db")).unwrap());
    let _reopened = LeasedAccounts::open(
        store.clone(),
        Some((&directory.path().join("journal"), Durability::ProcessCrash)),
    )
    .await
    .unwrap();
    let (_, tenants) = store.figures().await.unwrap();
    let stated: i64 = costs.iter().map(|cost| cost.nanos()).sum();
    let acme = tenants
        .iter()
        .find(|figures| figures.tenant_id == tenant_id)
        .unwrap();
    assert_eq!(acme.usage.nanos(), stated);
    assert_reconciles(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_writes_every_call_and_gives_every_lease_back_before_it_returns() {
    let directory = tempfile::tempdir().unwrap();
    let ferry = start(directory.path(), "100").await;
    let (costs, _) = call_many(&ferry, 100).await;
    ferry.leased.close(Duration::from_secs(5)).await;
    let events = ferry
        .store
        .usage_events(&ferry.tenant_id, None, 0, u64::MAX, 1000)
        .await
        .unwrap();
    assert_eq!(events.len(), costs.len());
    let balance = ferry.store.balance(&ferry.tenant_id).await.unwrap();
    assert_eq!(balance.held_usd, Money::ZERO);
    assert_reconciles(&ferry.store).await;
}

/// A process that dies after answering leased calls and before its drain wrote them: the next
/// one over the same journal writes them, once, and gives back the lease it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_drain_is_made_good_by_the_next_process() {
    use ferry_core::ports::{Billing, Settled, Store};
    use ferry_store_conformance::accounts::{
        admission, assert_books_reconcile, tenant, top_up, usage, usd,
    };

    let directory = tempfile::tempdir().unwrap();
    let journal = Some((directory.path().join("journal"), Durability::ProcessCrash));
    let journal = journal
        .as_ref()
        .map(|(path, durability)| (path.as_path(), *durability));
    let store = Arc::new(SqliteStore::open(&directory.path().join("ferry.db")).unwrap());
    store
        .create_tenant(&tenant("acme", Billing::Prepaid, Vec::new()))
        .await
        .unwrap();
    top_up(store.as_ref(), "acme", "1000").await;

    let dying = LeasedAccounts::open_without_drain(store.clone(), journal)
        .await
        .unwrap();
    // The scope turns busy at its sixteenth call: the first fifteen are admitted and settled by
    // the store, the rest from a lease.
    let calls = 20;
    for index in 0..calls {
        let request_id = format!("r{index}");
        let call = admission(&request_id, "acme", Billing::Prepaid, usd("0.01"));
        dying.admit(&call).await.unwrap().unwrap();
        let settled = dying
            .settle(&usage(&request_id, "acme", usd("0.004")))
            .await
            .unwrap();
        assert_eq!(
            settled,
            Settled::Recorded {
                charged: usd("0.004")
            }
        );
    }
    drop(dying);
    // Every answer was given; the leased calls' usage is only in the journal, and the lease
    // still holds credit.
    let in_store = |events: Vec<ferry_core::ports::UsageRecord>| events.len();
    let events = store
        .usage_events("acme", None, 0, u64::MAX, 100)
        .await
        .unwrap();
    assert_eq!(in_store(events), lease::BUSY_CALLS as usize - 1);
    assert!(store.balance("acme").await.unwrap().held_usd > Money::ZERO);

    LeasedAccounts::open(store.clone(), journal).await.unwrap();
    let events = store
        .usage_events("acme", None, 0, u64::MAX, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), calls);
    let balance = store.balance("acme").await.unwrap();
    assert_eq!(
        (balance.available_usd, balance.held_usd),
        (usd("999.92"), Money::ZERO),
        "each call charged once, the lease given back"
    );
    assert_books_reconcile(store.as_ref()).await;
}
