//! Credit leases (`Accounts::lease` and the rest), for adapters that take them: a lease is
//! held like a call's hold, so leases never pass the balance, a cap or a bucket; its calls'
//! usage settles in batches, once per request id; what it did not spend goes back when it is
//! released or expires, and a call reported after its lease closed is charged from the balance.
//! [`crate::lease_conformance_tests!`] makes them tests.

use ferry_core::Money;
use ferry_core::admission::{Admission, Budget, BudgetPeriod, Draw, Enforcement};
use ferry_core::billing::GroupBy;
use ferry_core::calendar::Month;
use ferry_core::ledger::TransactionKind;
use ferry_core::ports::{Accounts, Billing, LeasedUsage, PageRequest, Settled};
use ferry_core::ratelimit::{Bucket, Unit};

use crate::Harness;
use crate::TestedStore;
use crate::accounts::{
    T0, admission, assert_books_reconcile, balance, daily_caps, events, grant, of_kind, refusal,
    store_with, tenant, top_up, transactions, usage, usd,
};

async fn take(store: &impl TestedStore, call: &Admission, lease_id: &str) -> Admission {
    store
        .lease(call, lease_id)
        .await
        .unwrap()
        .expect("the lease should be taken")
        .0
}

fn leased(lease_id: &str, request_id: &str, tenant_id: &str, cost: &str) -> LeasedUsage {
    LeasedUsage {
        lease_id: lease_id.into(),
        usage: usage(request_id, tenant_id, usd(cost)),
        loss: Money::ZERO,
    }
}

fn first_page() -> PageRequest {
    PageRequest {
        limit: 100,
        after: None,
    }
}

fn recorded(charged: &str) -> Settled {
    Settled::Recorded {
        charged: usd(charged),
    }
}

pub async fn a_lease_holds_a_share_and_settles_its_calls_in_batches_once<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "1000").await;
    let call = admission("r", "acme", Billing::Prepaid, usd("0.01"));
    let lease = take(&store, &call, "lease:one").await;
    assert_eq!(
        lease.hold,
        usd("2.56"),
        "room for the most calls a lease takes"
    );
    assert_eq!(
        store.balance("acme").await.unwrap(),
        balance("997.44", "2.56")
    );

    let batch = [
        leased("lease:one", "r1", "acme", "0.004"),
        leased("lease:one", "r2", "acme", "0.004"),
        leased("lease:one", "r3", "acme", "0.002"),
    ];
    assert_eq!(
        store.settle_leased(&batch).await.unwrap(),
        [recorded("0.004"), recorded("0.004"), recorded("0.002")]
    );
    assert_eq!(
        store.settle_leased(&batch).await.unwrap(),
        [Settled::Duplicate; 3],
        "a batch replayed charges nothing twice"
    );
    assert_eq!(
        store.balance("acme").await.unwrap(),
        balance("997.44", "2.55")
    );
    assert_eq!(events(&store, "acme").await.len(), 3);
    // The rollups reports read moved with the batch, once per call.
    let day = T0 / 1000;
    let report = store
        .usage_report("acme", None, day - 86_400, day + 86_400, GroupBy::default())
        .await
        .unwrap();
    let totals: Vec<(u64, Money)> = report
        .iter()
        .map(|row| (row.totals.requests, row.totals.cost_usd))
        .collect();
    assert_eq!(totals, [(3, usd("0.01"))]);
    let spend = store
        .key_spend("acme", Month::of_unix(day), &first_page())
        .await
        .unwrap();
    let spent: Vec<(u64, Money)> = spend
        .items
        .iter()
        .map(|key| (key.totals.requests, key.totals.cost_usd))
        .collect();
    assert_eq!(spent, [(3, usd("0.01"))]);
    let ledger = transactions(&store, "acme").await;
    let settled = of_kind(&ledger, TransactionKind::Settle);
    assert_eq!(settled.len(), 3, "each call's charge names its request");

    store.release_lease("lease:one", &[]).await.unwrap();
    assert_eq!(store.balance("acme").await.unwrap(), balance("999.99", "0"));
    store.release_lease("lease:one", &[]).await.unwrap();
    assert_eq!(store.balance("acme").await.unwrap(), balance("999.99", "0"));
    assert_books_reconcile(&store).await;
}

pub async fn a_balance_too_small_to_share_is_not_leased<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "0.1").await;
    let call = admission("r", "acme", Billing::Prepaid, usd("0.01"));
    assert!(store.lease(&call, "lease:small").await.unwrap().is_none());
    assert_eq!(store.balance("acme").await.unwrap(), balance("0.1", "0"));
    // Calls are then admitted one by one, each to the last cent.
    for index in 0..10 {
        grant(
            &store,
            &admission(&format!("r{index}"), "acme", Billing::Prepaid, usd("0.01")),
        )
        .await;
    }
    refusal(
        &store,
        &admission("r10", "acme", Billing::Prepaid, usd("0.01")),
    )
    .await;
}

pub async fn leases_taken_at_once_never_hold_more_than_the_balance<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "10").await;
    let call = admission("r", "acme", Billing::Prepaid, usd("0.01"));
    let (a, b, c, d) = tokio::join!(
        store.lease(&call, "lease:a"),
        store.lease(&call, "lease:b"),
        store.lease(&call, "lease:c"),
        store.lease(&call, "lease:d"),
    );
    let held: i64 = [a, b, c, d]
        .into_iter()
        .filter_map(|taken| taken.unwrap())
        .map(|(lease, _)| lease.hold.nanos())
        .sum();
    let now = store.balance("acme").await.unwrap();
    assert_eq!(now.held_usd.nanos(), held);
    assert_eq!(now.available_usd.nanos() + held, usd("10").nanos());
    assert!(
        held <= usd("10").nanos() / 2,
        "each lease takes an eighth of what is left"
    );
    assert_books_reconcile(&store).await;
}

pub async fn an_expired_lease_returns_the_rest_and_its_late_calls_charge_the_balance<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "10").await;
    let call = Admission {
        expires_at_ms: T0 + 60_000,
        ..admission("r", "acme", Billing::Prepaid, usd("0.01"))
    };
    let lease = take(&store, &call, "lease:gone").await;
    assert_eq!(lease.hold, usd("1.25"));
    store
        .settle_leased(&[leased("lease:gone", "r1", "acme", "0.25")])
        .await
        .unwrap();
    // Its replica died: the lease expires and gives back what it had not charged.
    assert_eq!(store.expire_holds(lease.expires_at_ms).await.unwrap(), 1);
    assert_eq!(store.balance("acme").await.unwrap(), balance("9.75", "0"));
    assert_eq!(events(&store, "acme").await.len(), 1, "a lease is no call");
    // A call it admitted is reported late (its journal replayed): charged from the balance.
    assert_eq!(
        store
            .settle_leased(&[leased("lease:gone", "r2", "acme", "0.5")])
            .await
            .unwrap(),
        [recorded("0.5")]
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("9.25", "0"));
    assert_books_reconcile(&store).await;
}

pub async fn a_late_call_beyond_the_balance_is_charged_to_zero_and_the_rest_written_off<
    H: Harness,
>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "1.28").await;
    let call = admission("r", "acme", Billing::Prepaid, usd("0.01"));
    take(&store, &call, "lease:short").await;
    store.release_lease("lease:short", &[]).await.unwrap();
    let settled = store
        .settle_leased(&[leased("lease:short", "r1", "acme", "2")])
        .await
        .unwrap();
    assert_eq!(settled, [recorded("1.28")]);
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "0"));
    let ledger = transactions(&store, "acme").await;
    let lost = of_kind(&ledger, TransactionKind::Loss);
    assert_eq!(lost.len(), 1);
    assert_books_reconcile(&store).await;
}

pub async fn an_extension_draws_from_the_balance_as_far_as_it_goes<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Prepaid, Vec::new())]).await;
    top_up(&store, "acme", "2").await;
    let call = admission("r", "acme", Billing::Prepaid, usd("0.01"));
    let lease = take(&store, &call, "lease:x").await;
    assert_eq!(lease.hold, usd("0.25"));
    assert_eq!(
        store.extend_lease("lease:x", usd("5")).await.unwrap(),
        usd("1.75")
    );
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "2"));
    assert_eq!(
        store.extend_lease("lease:x", usd("1")).await.unwrap(),
        Money::ZERO
    );
    // The overshooting call: charged all the lease had, the rest written off.
    let overshoot = LeasedUsage {
        loss: usd("0.5"),
        ..leased("lease:x", "r1", "acme", "2")
    };
    assert_eq!(
        store.settle_leased(&[overshoot]).await.unwrap(),
        [recorded("2")]
    );
    store.release_lease("lease:x", &[]).await.unwrap();
    assert_eq!(store.balance("acme").await.unwrap(), balance("0", "0"));
    assert_books_reconcile(&store).await;
    let figures = crate::accounts::tenant_figures(&store, "acme").await;
    assert_eq!(figures.written_off, usd("0.5"));
}

pub async fn a_lease_draws_from_buckets_and_gives_back_what_its_calls_did_not_use<H: Harness>() {
    let store = store_with::<H>(&[tenant("acme", Billing::Postpaid, Vec::new())]).await;
    let bucket = Bucket::new("key:k", Unit::Requests, 160);
    let call = Admission {
        draws: vec![Draw {
            bucket: bucket.clone(),
            amount: 1,
        }],
        ..admission("r", "acme", Billing::Postpaid, usd("0.01"))
    };
    let lease = take(&store, &call, "lease:rpm").await;
    assert_eq!(lease.draws[0].amount, 20, "an eighth of 160");
    store.release_lease("lease:rpm", &[1]).await.unwrap();
    // One call used of the twenty: 159 of the minute are left.
    for index in 0..159 {
        let one = Admission {
            request_id: format!("r{index}"),
            ..call.clone()
        };
        grant(&store, &one).await;
    }
    let last = Admission {
        request_id: "r159".into(),
        ..call.clone()
    };
    refusal(&store, &last).await;
}

pub async fn batches_move_the_caps_and_a_soft_cap_passed_alerts_once<H: Harness>() {
    let acme = tenant(
        "acme",
        Billing::Postpaid,
        vec![Budget {
            period: BudgetPeriod::Day,
            amount_usd: usd("1"),
            enforcement: Enforcement::Soft,
        }],
    );
    let store = store_with::<H>(std::slice::from_ref(&acme)).await;
    let call = Admission {
        caps: daily_caps(&acme),
        ..admission("r", "acme", Billing::Postpaid, usd("0.01"))
    };
    take(&store, &call, "lease:soft").await;
    store
        .settle_leased(&[
            leased("lease:soft", "r1", "acme", "0.6"),
            leased("lease:soft", "r2", "acme", "0.6"),
        ])
        .await
        .unwrap();
    store
        .settle_leased(&[leased("lease:soft", "r3", "acme", "0.6")])
        .await
        .unwrap();
    let alerts = store.alerts("acme").await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].spent_usd, usd("1.2"));
    store.release_lease("lease:soft", &[]).await.unwrap();
    assert_books_reconcile(&store).await;
    let ledger = transactions(&store, "acme").await;
    assert_eq!(of_kind(&ledger, TransactionKind::Charge).len(), 3);
}
