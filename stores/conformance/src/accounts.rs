//! The money store's contract (`impl Accounts`), run against every adapter: idempotent
//! settlement and postings, prepaid holds and postpaid charges, admission under concurrency,
//! hold expiry, budgets and alerts, token-bucket correction, effective-dated prices, closing a
//! period, and the rules that keep refunds and adjustments honest. Every test ends with the
//! books reconciling where they should.
//!
//! Each case is generic over the adapter's [`Harness`]; [`crate::conformance_tests!`] makes
//! them tests.
//!
//! Admission times are fixed (`T0`, in 2100): `settle` stamps ledger times and corrects token
//! buckets with the wall clock, and a refund never moves a bucket before that clock, so the
//! admission time must lie ahead of it for the corrections to be observable at `T0`.

use std::sync::Arc;

use ferry_core::Money;
use ferry_core::admission::{
    Admission, Budget, BudgetPeriod, CreditCode, Draw, Enforcement, Grant, LimitSource, Refusal,
    SpendCap, spend_caps,
};
use ferry_core::billing::{
    GroupBy, LedgerFigures, ReportBuilder, TenantFigures, UsageRow, discrepancies,
};
use ferry_core::calendar::Month;
use ferry_core::ledger::{self, Posting, TransactionKind};
use ferry_core::model::Price;
use ferry_core::ports::{
    Accounts, Balance, Billing, CloseError, PageRequest, PostRequest, Posted, PriceRecord,
    RateLimits, Settled, Store, StoreError, Tenant, Transaction, UsageRecord,
};
use ferry_core::ratelimit::{Bucket, Unit};

use crate::{Harness, TestedStore};

/// 2100-01-15T12:00:00Z, in unix milliseconds.
pub const T0: u64 = 4_103_697_600_000;
/// How long a hold lives unless a test says otherwise.
pub const HOLD_TTL_MS: u64 = 600_000;

// ---------------------------------------------------------------------------------------------
// Fixtures.

pub fn usd(text: &str) -> Money {
    text.parse().unwrap()
}

pub fn tenant(id: &str, billing: Billing, budgets: Vec<Budget>) -> Tenant {
    Tenant {
        id: id.into(),
        name: format!("{id} inc"),
        billing,
        created_at: 10,
        limits: RateLimits::default(),
        budgets,
        log_prompts: false,
    }
}

pub async fn store_with<H: Harness>(tenants: &[Tenant]) -> H::Store {
    let store = H::new_store().await;
    for tenant in tenants {
        store.create_tenant(tenant).await.unwrap();
    }
    store
}

/// A call admitted at `T0` with no rate limits or spend caps.
pub fn admission(request_id: &str, tenant_id: &str, billing: Billing, hold: Money) -> Admission {
    Admission {
        request_id: request_id.into(),
        tenant_id: tenant_id.into(),
        key_id: None,
        model: "m".into(),
        deployment: "d".into(),
        endpoint: "chat.completions".into(),
        billing,
        hold,
        draws: Vec::new(),
        caps: Vec::new(),
        now_ms: T0,
        expires_at_ms: T0 + HOLD_TTL_MS,
    }
}

pub fn usage(request_id: &str, tenant_id: &str, cost: Money) -> UsageRecord {
    UsageRecord {
        request_id: request_id.into(),
        tenant_id: tenant_id.into(),
        key_id: None,
        model: "m".into(),
        deployment: "d".into(),
        endpoint: "chat.completions".into(),
        prompt_tokens: 10,
        cached_tokens: 0,
        completion_tokens: 5,
        cost,
        status: 200,
        latency_ms: 30,
        ttft_ms: Some(10),
        cache_status: "none".into(),
        route: ferry_core::ports::NO_ROUTE.into(),
        attempts: 0,
        created_at: T0 / 1000,
        user: None,
        metadata: Default::default(),
    }
}

pub fn posting(posting: Posting, idempotency_key: Option<&str>) -> PostRequest {
    PostRequest {
        posting,
        idempotency_key: idempotency_key.map(str::to_owned),
        memo: Some("test".into()),
        now_ms: T0 - 60_000,
    }
}

pub async fn top_up(store: &impl TestedStore, tenant_id: &str, amount: &str) -> Posted {
    store
        .post(&posting(Posting::top_up(tenant_id, usd(amount)), None))
        .await
        .unwrap()
}

pub async fn grant(store: &impl TestedStore, admission: &Admission) -> Grant {
    store
        .admit(admission)
        .await
        .unwrap()
        .expect("the call should be admitted")
}

pub async fn refusal(store: &impl TestedStore, admission: &Admission) -> Refusal {
    store
        .admit(admission)
        .await
        .unwrap()
        .expect_err("the call should be refused")
}

pub fn credit(refusal: &Refusal) -> Option<(CreditCode, LimitSource)> {
    match refusal {
        Refusal::Credit { code, source, .. } => Some((*code, *source)),
        Refusal::RateLimited { .. } => None,
    }
}

pub fn balance(available: &str, held: &str) -> Balance {
    Balance {
        available_usd: usd(available),
        held_usd: usd(held),
    }
}

pub async fn transactions(store: &impl TestedStore, tenant_id: &str) -> Vec<Transaction> {
    store
        .transactions(tenant_id, &PageRequest::first(1000))
        .await
        .unwrap()
        .items
}

pub fn of_kind(transactions: &[Transaction], kind: TransactionKind) -> Vec<&Transaction> {
    transactions
        .iter()
        .filter(|transaction| transaction.kind == kind)
        .collect()
}

pub fn sums_to_zero(transaction: &Transaction) -> bool {
    transaction
        .entries
        .iter()
        .map(|entry| entry.amount_usd.nanos())
        .sum::<i64>()
        == 0
}

/// The amount `transaction` moves into (or, negative, out of) `account`.
pub fn moved(transaction: &Transaction, account: &str) -> Money {
    Money::from_nanos(
        transaction
            .entries
            .iter()
            .filter(|entry| entry.account == account)
            .map(|entry| entry.amount_usd.nanos())
            .sum(),
    )
}

pub async fn events(store: &impl TestedStore, tenant_id: &str) -> Vec<UsageRecord> {
    store
        .usage_events(tenant_id, None, 0, u64::MAX, 1000)
        .await
        .unwrap()
}

pub async fn figures(store: &impl TestedStore) -> (LedgerFigures, Vec<TenantFigures>) {
    store.figures().await.unwrap()
}

pub async fn tenant_figures(store: &impl TestedStore, tenant_id: &str) -> TenantFigures {
    figures(store)
        .await
        .1
        .into_iter()
        .find(|figures| figures.tenant_id == tenant_id)
        .expect("figures for the tenant")
}

pub async fn assert_books_reconcile(store: &impl TestedStore) {
    let (ledger, tenants) = figures(store).await;
    let found = discrepancies(&ledger, &tenants);
    assert!(found.is_empty(), "the books disagree: {found:?}");
}

pub fn daily_caps(tenant: &Tenant) -> Vec<SpendCap> {
    spend_caps(&tenant.id, &tenant.budgets, None, T0 / 1000)
}

// ---------------------------------------------------------------------------------------------
// Idempotency.

pub async fn settling_the_same_usage_twice_records_and_charges_it_once<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "1").await;
    grant(
        &store,
        &admission("r1", "acme", Billing::Prepaid, usd("0.4")),
    )
    .await;
    let record = usage("r1", "acme", usd("0.1"));

    assert_eq!(
        store.settle(&record).await.unwrap(),
        Settled::Recorded {
            charged: usd("0.1")
        }
    );
    let before = (
        store.balance("acme").await.unwrap(),
        transactions(&store, "acme").await,
        events(&store, "acme").await,
        figures(&store).await,
    );

    assert_eq!(store.settle(&record).await.unwrap(), Settled::Duplicate);
    // A replay with different figures is still the same request: nothing changes.
    let mut altered = record.clone();
    altered.cost = usd("0.3");
    altered.completion_tokens = 500;
    assert_eq!(store.settle(&altered).await.unwrap(), Settled::Duplicate);

    let after = (
        store.balance("acme").await.unwrap(),
        transactions(&store, "acme").await,
        events(&store, "acme").await,
        figures(&store).await,
    );
    assert_eq!(before, after);
    assert_eq!(after.0, balance("0.9", "0"));
    assert_eq!(after.2.len(), 1);
    assert_eq!(of_kind(&after.1, TransactionKind::Settle).len(), 1);
    assert_books_reconcile(&store).await;
}

pub async fn posting_with_the_same_idempotency_key_twice_posts_once_per_tenant<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("acme", Billing::Prepaid, Vec::new()),
        tenant("beta", Billing::Prepaid, Vec::new()),
    ])
    .await;
    let request = posting(Posting::top_up("acme", usd("1")), Some("topup-1"));

    let first = store.post(&request).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.balance, balance("1", "0"));
    assert_eq!(first.transaction.kind, TransactionKind::TopUp);

    let second = store.post(&request).await.unwrap();
    assert!(second.replayed);
    assert_eq!(second.transaction, first.transaction);
    assert_eq!(second.balance, balance("1", "0"));
    assert_eq!(transactions(&store, "acme").await.len(), 1);

    let other_amount = posting(Posting::top_up("acme", usd("2")), Some("topup-1"));
    assert!(matches!(
        store.post(&other_amount).await,
        Err(StoreError::Invalid(_))
    ));
    // Keys are the tenant's own: another tenant's same key is a posting of its own, and
    // replays as its own.
    let other_tenant = posting(Posting::top_up("beta", usd("1")), Some("topup-1"));
    let beta_first = store.post(&other_tenant).await.unwrap();
    assert!(!beta_first.replayed);
    assert_ne!(beta_first.transaction.id, first.transaction.id);
    assert!(store.post(&other_tenant).await.unwrap().replayed);

    assert_eq!(store.balance("acme").await.unwrap(), balance("1", "0"));
    assert_eq!(store.balance("beta").await.unwrap(), balance("1", "0"));
    assert_eq!(transactions(&store, "acme").await.len(), 1);
    assert_eq!(transactions(&store, "beta").await.len(), 1);
    assert_books_reconcile(&store).await;
}

// ---------------------------------------------------------------------------------------------
// Prepaid and postpaid calls.

pub async fn a_prepaid_hold_settles_to_its_cost_and_returns_the_rest<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "1").await;

    let granted = grant(
        &store,
        &admission("r1", "acme", Billing::Prepaid, usd("0.4")),
    )
    .await;
    assert_eq!(
        granted.hold_posting,
        Some(Posting::hold("acme", usd("0.4")))
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.6", "0.4"));

    assert_eq!(
        store
            .settle(&usage("r1", "acme", usd("0.1")))
            .await
            .unwrap(),
        Settled::Recorded {
            charged: usd("0.1")
        }
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.9", "0"));

    let ledger = transactions(&store, "acme").await;
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    let holds = of_kind(&ledger, TransactionKind::Hold);
    let settles = of_kind(&ledger, TransactionKind::Settle);
    assert_eq!((holds.len(), settles.len()), (1, 1));
    let (hold, settle) = (holds[0], settles[0]);
    assert!(sums_to_zero(hold) && sums_to_zero(settle), "{ledger:?}");
    assert_eq!(hold.request_id.as_deref(), Some("r1"));
    assert_eq!(settle.request_id.as_deref(), Some("r1"));
    assert_eq!(moved(hold, &ledger::available("acme")), usd("-0.4"));
    assert_eq!(moved(hold, &ledger::held("acme")), usd("0.4"));
    assert_eq!(moved(settle, &ledger::held("acme")), usd("-0.4"));
    assert_eq!(moved(settle, &ledger::available("acme")), usd("0.3"));
    assert_eq!(moved(settle, &ledger::revenue("acme")), usd("0.1"));

    let figures = tenant_figures(&store, "acme").await;
    assert_eq!(figures.usage, usd("0.1"));
    assert_eq!(figures.settled, usd("0.1"));
    assert_eq!(figures.prepaid_available, Some(usd("0.9")));
    assert_books_reconcile(&store).await;
}

pub async fn a_prepaid_cost_above_its_hold_is_drawn_from_the_balance_and_the_rest_written_off<
    H: Harness,
>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "1").await;
    grant(
        &store,
        &admission("r1", "acme", Billing::Prepaid, usd("0.5")),
    )
    .await;
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.5", "0.5"));

    // Beyond the hold, the balance pays: the whole cost is charged.
    assert_eq!(
        store
            .settle(&usage("r1", "acme", usd("0.8")))
            .await
            .unwrap(),
        Settled::Recorded {
            charged: usd("0.8")
        }
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.2", "0"));

    // Beyond the balance too: charged what there is, never below zero, and the rest is the
    // operator's loss, a transaction of its own.
    grant(
        &store,
        &admission("r2", "acme", Billing::Prepaid, usd("0.1")),
    )
    .await;
    assert_eq!(
        store
            .settle(&usage("r2", "acme", usd("0.5")))
            .await
            .unwrap(),
        Settled::Recorded {
            charged: usd("0.2")
        }
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "0"));
    // The records keep what was charged, so usage and the ledger agree.
    let recorded = events(&store, "acme").await;
    let costs: Vec<Money> = recorded.iter().map(|event| event.cost).collect();
    assert_eq!(costs, [usd("0.8"), usd("0.2")]);
    let ledger = transactions(&store, "acme").await;
    let losses = of_kind(&ledger, TransactionKind::Loss);
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].request_id.as_deref(), Some("r2"));
    assert!(sums_to_zero(losses[0]));
    assert_eq!(moved(losses[0], &ledger::losses("acme")), usd("0.3"));
    assert_eq!(moved(losses[0], ledger::WRITE_OFFS), usd("-0.3"));
    let figures = tenant_figures(&store, "acme").await;
    assert_eq!((figures.usage, figures.settled), (usd("1"), usd("1")));
    assert_eq!(figures.written_off, usd("0.3"));
    assert_eq!(figures.prepaid_available, Some(Money::ZERO));
    assert_books_reconcile(&store).await;
}

pub async fn concurrent_overdrafts_never_take_the_balance_below_zero<H: Harness>() {
    const CALLS: usize = 10;
    let store = Arc::new(store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await);
    top_up(&*store, "acme", "1").await;
    for call in 0..CALLS {
        let request = format!("r{call}");
        grant(
            &*store,
            &admission(&request, "acme", Billing::Prepaid, usd("0.05")),
        )
        .await;
    }
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.5", "0.5"));
    // Each call costs four times its hold: together twice what the tenant has.
    let settlements = (0..CALLS).map(|call| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let request = format!("r{call}");
            store.settle(&usage(&request, "acme", usd("0.2"))).await
        })
    });
    let mut charged = Money::ZERO;
    for settlement in settlements {
        let settled = settlement.await.unwrap().unwrap();
        let Settled::Recorded { charged: one } = settled else {
            unreachable!("every call settles once: {settled:?}");
        };
        charged = charged.checked_add(one).unwrap();
    }
    assert_eq!(charged, usd("1"));
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "0"));
    let figures = tenant_figures(&*store, "acme").await;
    assert_eq!((figures.usage, figures.settled), (usd("1"), usd("1")));
    assert_eq!(figures.written_off, usd("1"));
    assert_books_reconcile(&*store).await;
}

pub async fn a_postpaid_call_holds_nothing_and_its_charge_is_owed<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Postpaid, Vec::new())]).await;

    let granted = grant(
        &store,
        &admission("r1", "acme", Billing::Postpaid, usd("0.5")),
    )
    .await;
    assert_eq!(granted.hold_posting, None);
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "0"));
    assert!(transactions(&store, "acme").await.is_empty());

    // Postpaid is charged the whole cost, even past the estimate.
    assert_eq!(
        store
            .settle(&usage("r1", "acme", usd("0.75")))
            .await
            .unwrap(),
        Settled::Recorded {
            charged: usd("0.75")
        }
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("-0.75", "0"));
    let ledger = transactions(&store, "acme").await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let charge = &ledger[0];
    assert_eq!(charge.kind, TransactionKind::Charge);
    assert_eq!(charge.request_id.as_deref(), Some("r1"));
    assert!(sums_to_zero(charge));
    assert_eq!(moved(charge, &ledger::available("acme")), usd("-0.75"));
    assert_eq!(moved(charge, &ledger::revenue("acme")), usd("0.75"));

    let figures = tenant_figures(&store, "acme").await;
    assert_eq!((figures.usage, figures.settled), (usd("0.75"), usd("0.75")));
    assert_eq!(figures.prepaid_available, None);
    assert_books_reconcile(&store).await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

pub async fn concurrent_admissions_grant_exactly_the_holds_the_credit_covers<H: Harness>() {
    const COVERED: usize = 7;
    const CALLS: usize = 50;
    let hold = usd("0.1");
    let store = Arc::new(store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await);
    top_up(&*store, "acme", "0.7").await;

    let tasks: Vec<_> = (0..CALLS)
        .map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let request_id = format!("r{index:02}");
                let result = store
                    .admit(&admission(&request_id, "acme", Billing::Prepaid, hold))
                    .await
                    .unwrap();
                (request_id, result)
            })
        })
        .collect();
    let mut granted = Vec::new();
    for task in tasks {
        let (request_id, result) = task.await.unwrap();
        match result {
            Ok(_) => granted.push(request_id),
            Err(refused) => assert!(
                matches!(
                    credit(&refused),
                    Some((
                        CreditCode::InFlightBudgetExhausted | CreditCode::InsufficientCredit,
                        LimitSource::TenantBalance
                    ))
                ),
                "{refused:?}"
            ),
        }
    }
    assert_eq!(granted.len(), COVERED, "{granted:?}");
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "0.7"));
    assert_eq!(
        of_kind(&transactions(&*store, "acme").await, TransactionKind::Hold).len(),
        COVERED
    );

    let settles: Vec<_> = granted
        .iter()
        .map(|request_id| {
            let store = Arc::clone(&store);
            let record = usage(request_id, "acme", usd("0.03"));
            tokio::spawn(async move { store.settle(&record).await.unwrap() })
        })
        .collect();
    for task in settles {
        assert_eq!(
            task.await.unwrap(),
            Settled::Recorded {
                charged: usd("0.03")
            }
        );
    }
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.49", "0"));
    let figures = tenant_figures(&*store, "acme").await;
    assert_eq!((figures.usage, figures.settled), (usd("0.21"), usd("0.21")));
    assert_eq!(figures.prepaid_available, Some(usd("0.49")));
    assert_books_reconcile(&*store).await;
}

// ---------------------------------------------------------------------------------------------
// Expiry.

pub async fn expired_holds_are_released_and_late_settlements_charge_nothing<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "1").await;
    let expiring = Admission {
        expires_at_ms: T0 + 60_000,
        ..admission("r-old", "acme", Billing::Prepaid, usd("0.3"))
    };
    grant(&store, &expiring).await;
    grant(
        &store,
        &admission("r-new", "acme", Billing::Prepaid, usd("0.2")),
    )
    .await;
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.5", "0.5"));

    assert_eq!(store.expire_holds(T0 + 59_999).await.unwrap(), 0);
    assert_eq!(store.expire_holds(T0 + 60_000).await.unwrap(), 1);
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.8", "0.2"));
    let recorded = events(&store, "acme").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].request_id, "r-old");
    assert_eq!(recorded[0].status, 500);
    assert_eq!(recorded[0].cost, Money::ZERO);
    assert_eq!(recorded[0].created_at, T0 / 1000);
    let ledger = transactions(&store, "acme").await;
    let expired = of_kind(&ledger, TransactionKind::Expire);
    assert_eq!(expired.len(), 1, "{ledger:?}");
    assert!(sums_to_zero(expired[0]));
    assert_eq!(expired[0].request_id.as_deref(), Some("r-old"));
    assert_eq!(moved(expired[0], &ledger::available("acme")), usd("0.3"));

    // The gateway comes back and reports the call: it was released, so it costs nothing.
    assert_eq!(
        store
            .settle(&usage("r-old", "acme", usd("0.25")))
            .await
            .unwrap(),
        Settled::Duplicate
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.8", "0.2"));
    assert_eq!(events(&store, "acme").await[0].cost, Money::ZERO);
    assert_eq!(store.expire_holds(T0 + 60_000).await.unwrap(), 0);

    // The hold that had not expired still settles normally.
    assert_eq!(
        store
            .settle(&usage("r-new", "acme", usd("0.1")))
            .await
            .unwrap(),
        Settled::Recorded {
            charged: usd("0.1")
        }
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.9", "0"));
    assert_books_reconcile(&store).await;
}

// ---------------------------------------------------------------------------------------------
// Budgets and alerts.

pub async fn a_hard_daily_budget_refuses_once_settled_spend_and_the_hold_would_pass_it<
    H: Harness,
>() {
    let acme = tenant(
        "acme",
        Billing::Prepaid,
        vec![Budget {
            period: BudgetPeriod::Day,
            amount_usd: usd("1"),
            enforcement: Enforcement::Hard,
        }],
    );
    let store = store_with::<H>(std::slice::from_ref(&acme)).await;
    top_up(&store, "acme", "10").await;
    let call = |request_id: &str, hold: &str| Admission {
        caps: daily_caps(&acme),
        ..admission(request_id, "acme", Billing::Prepaid, usd(hold))
    };

    grant(&store, &call("r1", "0.4")).await;
    store
        .settle(&usage("r1", "acme", usd("0.4")))
        .await
        .unwrap();
    grant(&store, &call("r2", "0.4")).await;
    // 0.4 settled + 0.4 held + 0.4 asked: only the call in flight stands in the way.
    let refused = refusal(&store, &call("r3", "0.4")).await;
    assert_eq!(
        credit(&refused),
        Some((
            CreditCode::InFlightBudgetExhausted,
            LimitSource::TenantDailyBudget
        ))
    );
    store
        .settle(&usage("r2", "acme", usd("0.4")))
        .await
        .unwrap();
    // 0.8 settled + 0.4 asked passes the cap for the rest of the day (12 hours).
    assert_eq!(
        refusal(&store, &call("r3", "0.4")).await,
        Refusal::Credit {
            code: CreditCode::InsufficientCredit,
            source: LimitSource::TenantDailyBudget,
            retry_after_seconds: Some(12 * 3600),
        }
    );
    // Spending up to the cap exactly is allowed.
    grant(&store, &call("r4", "0.2")).await;
    assert_eq!(store.balance("acme").await.unwrap(), balance("9", "0.2"));
    // A hard cap is a refusal, not an alert.
    assert!(store.alerts("acme").await.unwrap().is_empty());
}

pub async fn a_soft_budget_admits_past_its_cap_and_alerts_once<H: Harness>() {
    let acme = tenant(
        "acme",
        Billing::Prepaid,
        vec![Budget {
            period: BudgetPeriod::Day,
            amount_usd: usd("0.5"),
            enforcement: Enforcement::Soft,
        }],
    );
    let store = store_with::<H>(std::slice::from_ref(&acme)).await;
    top_up(&store, "acme", "10").await;

    for (index, alerts_after) in [(1, 0), (2, 1), (3, 1), (4, 1)] {
        let request_id = format!("r{index}");
        grant(
            &store,
            &Admission {
                caps: daily_caps(&acme),
                ..admission(&request_id, "acme", Billing::Prepaid, usd("0.3"))
            },
        )
        .await;
        store
            .settle(&usage(&request_id, "acme", usd("0.3")))
            .await
            .unwrap();
        assert_eq!(
            store.alerts("acme").await.unwrap().len(),
            alerts_after,
            "after {request_id}"
        );
    }
    let alerts = store.alerts("acme").await.unwrap();
    let alert = &alerts[0];
    assert_eq!(alert.tenant_id, "acme");
    assert_eq!(alert.limit_source, "tenant_daily_budget");
    assert_eq!(alert.enforcement, "soft");
    assert_eq!(alert.counter, "spend:tenant:acme:2100-01-15");
    assert_eq!(alert.cap_usd, usd("0.5"));
    assert_eq!(alert.spent_usd, usd("0.6"));
    assert_eq!(store.balance("acme").await.unwrap(), balance("8.8", "0"));
}

/// Admissions and settlements racing on a hard cap that shares its counter with a soft alert:
/// the cap is never passed, however the reads and writes interleave.
pub async fn racing_calls_never_pass_a_hard_cap_shared_with_a_soft_alert<H: Harness>() {
    const CALLS: usize = 24;
    let acme = tenant(
        "acme",
        Billing::Prepaid,
        vec![
            Budget {
                period: BudgetPeriod::Day,
                amount_usd: usd("0.3"),
                enforcement: Enforcement::Soft,
            },
            Budget {
                period: BudgetPeriod::Day,
                amount_usd: usd("1"),
                enforcement: Enforcement::Hard,
            },
        ],
    );
    let store = Arc::new(store_with::<H>(std::slice::from_ref(&acme)).await);
    top_up(&*store, "acme", "10").await;
    let tasks: Vec<_> = (0..CALLS)
        .map(|index| {
            let (store, caps) = (Arc::clone(&store), daily_caps(&acme));
            tokio::spawn(async move {
                let request_id = format!("r{index:02}");
                let call = Admission {
                    caps,
                    ..admission(&request_id, "acme", Billing::Prepaid, usd("0.1"))
                };
                // Each call retries while others hold the budget, and settles at its hold.
                for _ in 0..200 {
                    match store.admit(&call).await.unwrap() {
                        Ok(_) => {
                            store
                                .settle(&usage(&request_id, "acme", usd("0.1")))
                                .await
                                .unwrap();
                            return true;
                        }
                        Err(Refusal::Credit {
                            code: CreditCode::InFlightBudgetExhausted,
                            ..
                        }) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                        Err(_) => return false,
                    }
                }
                false
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10, "exactly the cap's worth of calls");
    let figures = tenant_figures(&*store, "acme").await;
    assert_eq!(figures.settled, usd("1"));
    assert_eq!(store.balance("acme").await.unwrap(), balance("9", "0"));
    assert_eq!(
        store.alerts("acme").await.unwrap().len(),
        1,
        "the soft alert, once"
    );
    assert_books_reconcile(&*store).await;
}

pub async fn a_soft_alert_below_a_hard_cap_of_the_same_period_counts_spend_once<H: Harness>() {
    let acme = tenant(
        "acme",
        Billing::Prepaid,
        vec![
            Budget {
                period: BudgetPeriod::Day,
                amount_usd: usd("0.5"),
                enforcement: Enforcement::Soft,
            },
            Budget {
                period: BudgetPeriod::Day,
                amount_usd: usd("1"),
                enforcement: Enforcement::Hard,
            },
        ],
    );
    let store = store_with::<H>(std::slice::from_ref(&acme)).await;
    top_up(&store, "acme", "10").await;
    let call = |request_id: &str| Admission {
        caps: daily_caps(&acme),
        ..admission(request_id, "acme", Billing::Prepaid, usd("0.3"))
    };

    for request_id in ["r1", "r2"] {
        grant(&store, &call(request_id)).await;
        store
            .settle(&usage(request_id, "acme", usd("0.3")))
            .await
            .unwrap();
    }
    // 0.6 spent today: past the soft cap of 0.5, once.
    let alerts = store.alerts("acme").await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].spent_usd, usd("0.6"));
    // 0.6 spent + 0.3 asked stays within the hard cap of 1.
    let admitted = store.admit(&call("r3")).await.unwrap();
    assert!(admitted.is_ok(), "{admitted:?}");
}

// ---------------------------------------------------------------------------------------------
// Rate limits.

pub async fn token_buckets_drawn_on_the_estimate_are_corrected_to_the_actual_count<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Postpaid, Vec::new())]).await;
    let bucket = Bucket::new("tenant:acme", Unit::Tokens, 1000);
    let call = |request_id: &str, estimate: u64| Admission {
        draws: vec![Draw {
            bucket: bucket.clone(),
            amount: estimate,
        }],
        ..admission(request_id, "acme", Billing::Postpaid, Money::ZERO)
    };
    let tokens_left = |grant: &Grant| grant.rate.tokens.map(|tokens| tokens.remaining);
    let finished = |request_id: &str, prompt: u64, completion: u64| UsageRecord {
        prompt_tokens: prompt,
        completion_tokens: completion,
        ..usage(request_id, "acme", usd("0.001"))
    };

    assert_eq!(
        tokens_left(&grant(&store, &call("r1", 600)).await),
        Some(400)
    );
    // Used 150 of the 600 drawn: 450 come back.
    store.settle(&finished("r1", 100, 50)).await.unwrap();
    assert_eq!(tokens_left(&grant(&store, &call("r2", 1)).await), Some(849));
    // Used exactly what was drawn: no change.
    store.settle(&finished("r2", 1, 0)).await.unwrap();
    assert_eq!(
        tokens_left(&grant(&store, &call("r3", 100)).await),
        Some(749)
    );
    // Used 400 of the 100 drawn: 300 more are taken.
    store.settle(&finished("r3", 150, 250)).await.unwrap();
    assert_eq!(tokens_left(&grant(&store, &call("r4", 1)).await), Some(448));
    // A duplicate settlement corrects nothing.
    assert_eq!(
        store.settle(&finished("r3", 1, 1)).await.unwrap(),
        Settled::Duplicate
    );
    assert_eq!(tokens_left(&grant(&store, &call("r5", 1)).await), Some(447));
}

// ---------------------------------------------------------------------------------------------
// Prices.

fn price(per_mtok: &str) -> Price {
    Price {
        input_per_mtok_usd: usd(per_mtok),
        cached_input_per_mtok_usd: None,
        output_per_mtok_usd: usd(per_mtok),
        per_call_usd: None,
        cache_hit_usd: None,
        batch_discount_percent: None,
    }
}

pub async fn the_price_in_effect_is_the_latest_and_a_deployments_own_price_wins<H: Harness>() {
    let store = store_with::<H>(&[]).await;
    let record = |deployment: Option<&str>, effective_from_ms: u64, per_mtok: &str| PriceRecord {
        model: "m".into(),
        deployment: deployment.map(str::to_owned),
        effective_from_ms,
        price: price(per_mtok),
    };
    // Put out of order: the store orders by effect, not by arrival.
    let records = [
        record(None, 2_000, "2"),
        record(Some("d1"), 1_500, "15"),
        record(None, 1_000, "1"),
        record(None, 5_000, "5"),
    ];
    for record in &records {
        store.put_price(record).await.unwrap();
    }
    let at = |deployment: &'static str, at_ms: u64| {
        let store = &store;
        async move { store.price_at("m", deployment, at_ms).await.unwrap() }
    };

    assert_eq!(at("d2", 999).await, None);
    assert_eq!(at("d2", 1_000).await, Some(price("1")));
    assert_eq!(at("d2", 1_999).await, Some(price("1")));
    assert_eq!(at("d2", 2_000).await, Some(price("2")));
    // A price from the future is not in effect yet.
    assert_eq!(at("d2", 4_999).await, Some(price("2")));
    assert_eq!(at("d2", 5_000).await, Some(price("5")));
    // d1 has the model's price until its own takes effect, then its own.
    assert_eq!(at("d1", 1_499).await, Some(price("1")));
    assert_eq!(at("d1", 1_500).await, Some(price("15")));
    assert_eq!(at("d1", 3_000).await, Some(price("15")));
    assert_eq!(at("d1", 6_000).await, Some(price("15")));
    assert_eq!(store.price_at("other", "d1", 6_000).await.unwrap(), None);

    let listed = store.list_prices("m").await.unwrap();
    let order: Vec<(Option<&str>, u64)> = listed
        .iter()
        .map(|record| (record.deployment.as_deref(), record.effective_from_ms))
        .collect();
    assert_eq!(
        order,
        [
            (None, 1_000),
            (Some("d1"), 1_500),
            (None, 2_000),
            (None, 5_000)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Closing a period.

pub async fn closing_a_month_makes_one_invoice_per_tenant_once_no_call_is_in_flight<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("acme", Billing::Prepaid, Vec::new()),
        tenant("beta", Billing::Postpaid, Vec::new()),
    ])
    .await;
    top_up(&store, "acme", "10").await;
    let month = Month::of_unix(T0 / 1000);
    assert_eq!(month.to_string(), "2100-01");
    let (_, end) = month.bounds_unix();
    let calls = [
        ("r1", "acme", Billing::Prepaid, "m-a", "0.1"),
        ("r2", "acme", Billing::Prepaid, "m-b", "0.2"),
        ("r3", "acme", Billing::Prepaid, "m-a", "0.3"),
        ("r4", "beta", Billing::Postpaid, "m-a", "0.05"),
    ];
    for (request_id, tenant_id, billing, model, cost) in calls {
        grant(
            &store,
            &Admission {
                model: model.into(),
                ..admission(request_id, tenant_id, billing, usd("1"))
            },
        )
        .await;
        let record = UsageRecord {
            model: model.into(),
            ..usage(request_id, tenant_id, usd(cost))
        };
        store.settle(&record).await.unwrap();
    }
    // One call admitted this month is still running; one admitted next month does not count.
    grant(
        &store,
        &admission("r5", "beta", Billing::Postpaid, usd("1")),
    )
    .await;
    let next_month = Admission {
        now_ms: end * 1000 + 1_000,
        expires_at_ms: end * 1000 + 1_000 + HOLD_TTL_MS,
        ..admission("r6", "acme", Billing::Prepaid, usd("1"))
    };
    grant(&store, &next_month).await;

    assert_eq!(
        store.close_period(month, end + 60).await,
        Err(CloseError::InFlight(1))
    );
    assert!(store.invoices("acme").await.unwrap().is_empty());

    store
        .settle(&usage("r5", "beta", usd("0.01")))
        .await
        .unwrap();
    let closed = store.close_period(month, end + 60).await.unwrap();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed.iter().all(|closed| closed.created));
    let acme = &closed[0].invoice;
    assert_eq!(acme.tenant_id, "acme");
    assert_eq!(acme.id, "inv_acme_210001");
    assert_eq!(acme.period, "2100-01");
    let lines: Vec<(&str, u64, Money)> = acme
        .lines
        .iter()
        .map(|line| {
            (
                line.model.as_str(),
                line.totals.requests,
                line.totals.cost_usd,
            )
        })
        .collect();
    assert_eq!(lines, [("m-a", 2, usd("0.4")), ("m-b", 1, usd("0.2"))]);
    assert_eq!(acme.total_usd, usd("0.6"));
    let beta = &closed[1].invoice;
    assert_eq!(beta.tenant_id, "beta");
    let lines: Vec<(&str, u64, Money)> = beta
        .lines
        .iter()
        .map(|line| {
            (
                line.model.as_str(),
                line.totals.requests,
                line.totals.cost_usd,
            )
        })
        .collect();
    assert_eq!(lines, [("m", 1, usd("0.01")), ("m-a", 1, usd("0.05"))]);
    assert_eq!(beta.total_usd, usd("0.06"));

    let again = store.close_period(month, end + 3_600).await.unwrap();
    assert_eq!(again.len(), 2);
    for (first, second) in closed.iter().zip(&again) {
        assert!(!second.created);
        assert_eq!(second.invoice, first.invoice);
    }
    assert_eq!(store.invoices("acme").await.unwrap(), vec![acme.clone()]);
    let figures = tenant_figures(&store, "acme").await;
    assert_eq!(
        figures.invoiced,
        vec![("2100-01".to_owned(), usd("0.6"), usd("0.6"))]
    );
    assert_books_reconcile(&store).await;
}

// ---------------------------------------------------------------------------------------------
// Refunds and adjustments.

pub async fn refunds_and_debits_cannot_take_more_than_the_tenant_has<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("acme", Billing::Prepaid, Vec::new()),
        tenant("beta", Billing::Postpaid, Vec::new()),
    ])
    .await;
    top_up(&store, "acme", "1").await;
    grant(
        &store,
        &admission("r1", "acme", Billing::Prepaid, usd("0.4")),
    )
    .await;
    store
        .settle(&usage("r1", "acme", usd("0.25")))
        .await
        .unwrap();
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.75", "0"));
    let ledger_before = transactions(&store, "acme").await.len();

    let refund = |amount: &str| posting(Posting::refund("acme", usd(amount)), None);
    let adjust =
        |tenant_id: &str, amount: &str| posting(Posting::adjustment(tenant_id, usd(amount)), None);
    assert!(matches!(
        store.post(&refund("0.250000001")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.post(&adjust("acme", "-0.750000001")).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.75", "0"));
    assert_eq!(transactions(&store, "acme").await.len(), ledger_before);

    // Exactly what was charged may be refunded, once.
    let refunded = store.post(&refund("0.25")).await.unwrap();
    assert_eq!(refunded.balance, balance("1", "0"));
    assert!(matches!(
        store.post(&refund("0.01")).await,
        Err(StoreError::Invalid(_))
    ));
    // A debit down to zero is allowed; one below it is not.
    assert_eq!(
        store.post(&adjust("acme", "-1")).await.unwrap().balance,
        balance("0", "0")
    );
    assert!(matches!(
        store.post(&adjust("acme", "-0.000000001")).await,
        Err(StoreError::Invalid(_))
    ));
    // Credit held by a call in flight is not available to debit either.
    top_up(&store, "acme", "1").await;
    grant(
        &store,
        &admission("r2", "acme", Billing::Prepaid, usd("0.6")),
    )
    .await;
    assert!(matches!(
        store.post(&adjust("acme", "-0.5")).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.4", "0.6"));
    // A postpaid tenant may owe.
    assert_eq!(
        store.post(&adjust("beta", "-2")).await.unwrap().balance,
        balance("-2", "0")
    );
    assert_books_reconcile(&store).await;
}

/// What a report must say, summed from the events themselves.
async fn report_from_events(
    store: &impl TestedStore,
    tenant_id: &str,
    key_id: Option<&str>,
    (from, to): (u64, u64),
    group: GroupBy,
) -> Vec<UsageRow> {
    let mut report = ReportBuilder::new(group);
    for event in store
        .usage_events(tenant_id, key_id, from, to, 10_000)
        .await
        .unwrap()
    {
        report.add_event(&event);
    }
    report.finish()
}

pub async fn usage_reports_from_rollups_agree_with_the_events_at_any_range<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("a", Billing::Postpaid, Vec::new()),
        tenant("b", Billing::Postpaid, Vec::new()),
    ])
    .await;
    // Days in the past, so only ranges that cut a day read events.
    let day = 86_400;
    let day0 = 1_600_041_600; // 2020-09-14T00:00:00Z
    let calls = [
        ("r1", "a", Some("key_x"), "m", day0 + 10, "0.000001"),
        ("r2", "a", Some("key_x"), "m", day0 + 5_000, "0.000002"),
        ("r3", "a", Some("key_y"), "n", day0 + 80_000, "0.000004"),
        ("r4", "a", None, "m", day0 + day + 7, "0.000008"),
        (
            "r5",
            "a",
            Some("key_x"),
            "n",
            day0 + 2 * day + 100,
            "0.000016",
        ),
        ("r6", "b", Some("key_z"), "m", day0 + 20, "1"),
    ];
    for (request_id, tenant_id, key_id, model, created_at, cost) in calls {
        let mut call = usage(request_id, tenant_id, usd(cost));
        call.key_id = key_id.map(str::to_owned);
        call.model = model.into();
        call.created_at = created_at;
        // The caller's own end users, on some calls.
        call.user = match request_id {
            "r1" | "r2" => Some("alice".into()),
            "r3" => Some("bob".into()),
            _ => None,
        };
        if request_id == "r1" {
            call.metadata.insert("project".into(), "apollo".into());
        }
        assert!(matches!(
            store.settle(&call).await.unwrap(),
            Settled::Recorded { .. }
        ));
    }
    // Attribution is kept on the event, and a report grouped by user sums each user's calls.
    let events = store
        .usage_events("a", None, day0, day0 + day, 10)
        .await
        .unwrap();
    let first = events
        .iter()
        .find(|event| event.request_id == "r1")
        .unwrap();
    assert_eq!(first.user.as_deref(), Some("alice"));
    assert_eq!(
        first.metadata.get("project").map(String::as_str),
        Some("apollo")
    );
    let by_user = GroupBy {
        user: true,
        ..GroupBy::default()
    };
    let report = store
        .usage_report("a", None, day0, day0 + 3 * day, by_user)
        .await
        .unwrap();
    let users: Vec<(Option<&str>, u64, Money)> = report
        .iter()
        .map(|row| {
            (
                row.user.as_deref(),
                row.totals.requests,
                row.totals.cost_usd,
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            (None, 2, usd("0.000024")),
            (Some("alice"), 2, usd("0.000003")),
            (Some("bob"), 1, usd("0.000004")),
        ]
    );
    // A settlement replayed is not counted twice.
    let mut again = usage("r1", "a", usd("0.000001"));
    again.key_id = Some("key_x".into());
    again.created_at = day0 + 10;
    assert_eq!(store.settle(&again).await.unwrap(), Settled::Duplicate);

    let all = GroupBy {
        day: true,
        model: true,
        key: true,
        user: true,
    };
    let ranges = [
        (day0, day0 + 3 * day),            // whole days
        (day0 + 11, day0 + 2 * day + 50),  // cut at both ends
        (day0 + 4_000, day0 + 81_000),     // inside one day
        (day0 - 5 * day, day0 + 30 * day), // wider than the data
        (day0 + day, day0 + day),          // empty
    ];
    for range in ranges {
        for group in [
            all,
            GroupBy::default(),
            GroupBy {
                day: true,
                ..GroupBy::default()
            },
            GroupBy {
                model: true,
                key: true,
                ..GroupBy::default()
            },
            GroupBy {
                user: true,
                ..GroupBy::default()
            },
        ] {
            let report = store
                .usage_report("a", None, range.0, range.1, group)
                .await
                .unwrap();
            assert_eq!(
                report,
                report_from_events(&store, "a", None, range, group).await,
                "range {range:?}, {group:?}"
            );
        }
        // A member's own key only.
        let report = store
            .usage_report("a", Some("key_x"), range.0, range.1, all)
            .await
            .unwrap();
        assert_eq!(
            report,
            report_from_events(&store, "a", Some("key_x"), range, all).await,
            "key_x, range {range:?}"
        );
    }
    let whole = store
        .usage_report("a", None, day0, day0 + 3 * day, GroupBy::default())
        .await
        .unwrap();
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].totals.requests, 5);
    assert_eq!(
        whole[0].totals.cost_usd,
        usd("0.000031"),
        "b's call is not a's"
    );
}

pub async fn a_tenants_ledger_comes_a_page_at_a_time_newest_first<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("a", Billing::Prepaid, Vec::new()),
        tenant("b", Billing::Prepaid, Vec::new()),
    ])
    .await;
    // Three in the same millisecond, two later: the order still holds each once.
    for (index, at) in [0, 0, 0, 5, 9].into_iter().enumerate() {
        let mut request = posting(Posting::top_up("a", usd("1")), None);
        request.now_ms += at;
        request.memo = Some(format!("top-up {index}"));
        store.post(&request).await.unwrap();
    }
    top_up(&store, "b", "3").await;
    let mut seen: Vec<Transaction> = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let found = store.transactions("a", &page).await.unwrap();
        assert!(found.items.len() <= 2);
        seen.extend(found.items);
        match found.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "each of a's transactions once");
    assert!(seen.iter().all(|transaction| transaction.tenant_id == "a"));
    let mut ids: Vec<&str> = seen
        .iter()
        .map(|transaction| transaction.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    let times: Vec<u64> = seen
        .iter()
        .map(|transaction| transaction.created_at_ms)
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first: {times:?}"
    );
}

pub async fn spend_by_key_for_a_month_comes_dearest_first_a_page_at_a_time<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("a", Billing::Postpaid, Vec::new()),
        tenant("b", Billing::Postpaid, Vec::new()),
    ])
    .await;
    let september = 1_600_041_600; // 2020-09-14
    let october = 1_601_510_400; // 2020-10-01
    let calls = [
        ("r1", "a", Some("key_x"), september, "0.000005"),
        ("r2", "a", Some("key_x"), september + 60, "0.000005"),
        ("r3", "a", Some("key_y"), september, "0.000020"),
        ("r4", "a", Some("key_z"), september, "0.000001"),
        ("r5", "a", None, september, "0.000003"),
        ("r6", "a", Some("key_w"), september, "0.000010"),
        ("r7", "a", Some("key_x"), october, "9"),
        ("r8", "b", Some("key_q"), september, "7"),
    ];
    for (request_id, tenant_id, key_id, created_at, cost) in calls {
        let mut call = usage(request_id, tenant_id, usd(cost));
        call.key_id = key_id.map(str::to_owned);
        call.created_at = created_at;
        store.settle(&call).await.unwrap();
    }
    let month: Month = "2020-09".parse().unwrap();
    let mut seen = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let found = store.key_spend("a", month, &page).await.unwrap();
        assert!(found.items.len() <= 2);
        seen.extend(found.items);
        match found.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    let ranked: Vec<(Option<&str>, u64, Money)> = seen
        .iter()
        .map(|row| {
            (
                row.key_id.as_deref(),
                row.totals.requests,
                row.totals.cost_usd,
            )
        })
        .collect();
    // key_x and key_w both spent 0.00001: the order between them is the store's, but fixed.
    assert_eq!(ranked.len(), 5, "{ranked:?}");
    assert_eq!(ranked[0], (Some("key_y"), 1, usd("0.00002")));
    let tied: Vec<Option<&str>> = ranked[1..3].iter().map(|row| row.0).collect();
    assert!(
        tied.contains(&Some("key_x")) && tied.contains(&Some("key_w")),
        "{ranked:?}"
    );
    let key_x = ranked.iter().find(|row| row.0 == Some("key_x")).unwrap();
    assert_eq!((key_x.1, key_x.2), (2, usd("0.00001")));
    assert_eq!(ranked[3], (None, 1, usd("0.000003")));
    assert_eq!(ranked[4], (Some("key_z"), 1, usd("0.000001")));
    let october_page = store
        .key_spend("a", "2020-10".parse().unwrap(), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(october_page.items.len(), 1);
    assert_eq!(october_page.items[0].totals.cost_usd, usd("9"));
    let bad = store
        .key_spend(
            "a",
            month,
            &PageRequest {
                limit: 2,
                after: Some("nonsense".into()),
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
}

pub async fn usage_events_come_a_page_at_a_time_oldest_first<H: Harness>() {
    let store = store_with::<H>(&[
        tenant("a", Billing::Postpaid, Vec::new()),
        tenant("b", Billing::Postpaid, Vec::new()),
    ])
    .await;
    let at = 1_600_041_600;
    // Three in one second: the cursor still holds each once.
    for (request_id, tenant_id, key_id, created_at) in [
        ("r1", "a", Some("key_x"), at),
        ("r2", "a", Some("key_y"), at),
        ("r3", "a", Some("key_x"), at),
        ("r4", "a", Some("key_x"), at + 5),
        ("r5", "a", Some("key_x"), at + 9),
        ("r6", "b", Some("key_x"), at + 1),
        ("r7", "a", Some("key_x"), at + 100),
    ] {
        let mut call = usage(request_id, tenant_id, usd("0.000001"));
        call.key_id = key_id.map(str::to_owned);
        call.created_at = created_at;
        store.settle(&call).await.unwrap();
    }
    let walk = |key: Option<&'static str>| {
        let store = &store;
        async move {
            let mut seen = Vec::new();
            let mut page = PageRequest::first(2);
            loop {
                let found = store
                    .usage_events_page("a", key, (at, at + 50), &page)
                    .await
                    .unwrap();
                assert!(found.items.len() <= 2);
                seen.extend(found.items.into_iter().map(|event| event.request_id));
                match found.next {
                    Some(next) => page.after = Some(next),
                    None => break,
                }
            }
            seen
        }
    };
    let all = walk(None).await;
    assert_eq!(all.len(), 5, "{all:?}");
    let mut unique = all.clone();
    unique.sort();
    assert_eq!(unique, ["r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(&all[3..], ["r4", "r5"], "oldest first");
    let own = walk(Some("key_x")).await;
    assert_eq!(own.len(), 4, "{own:?}");
    assert!(!own.contains(&"r2".to_owned()));
}
