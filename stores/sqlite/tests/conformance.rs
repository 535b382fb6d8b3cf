//! SQLite: the conformance suite every store adapter passes (`ferry-store-conformance`), and
//! what only a shared file has: two stores (two gateway processes) on one file, the write-ahead
//! log starting over, and turning calls away when the store is overloaded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use ferry_core::Money;
use ferry_core::admission::{Admission, Draw, Refusal};
use ferry_core::ports::{Accounts, Billing, Store, StoreError};
use ferry_core::ratelimit::{Bucket, Unit};
use ferry_store_conformance::Harness;
use ferry_store_conformance::accounts::*;
use ferry_store_sqlite::{SqliteOptions, SqliteStore};

/// A store in memory for each case.
struct InMemory;

impl Harness for InMemory {
    type Store = SqliteStore;

    async fn new_store() -> SqliteStore {
        SqliteStore::in_memory().unwrap()
    }
}

ferry_store_conformance::conformance_tests!(InMemory);
ferry_store_conformance::lease_conformance_tests!(InMemory);

/// A fresh directory for a database file, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "ferry-accounts-{name}-{}-{}",
            std::process::id(),
            ferry_clock::random_u64()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The write-ahead log.

/// The log's checkpoint sequence number (bytes 12..16 of its header): how many times it has
/// started over.
fn wal_restarts(path: &std::path::Path) -> u32 {
    let header = std::fs::read(path).unwrap_or_default();
    header
        .get(12..16)
        .map_or(0, |bytes| u32::from_be_bytes(bytes.try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_share_a_rate_bucket() {
    const CALLS: usize = 40;
    let directory = TempDir::new("shared-bucket");
    let path = directory.0.join("ferry.db");
    let first = SqliteStore::open(&path).unwrap();
    first
        .create_tenant(&tenant("acme", Billing::Postpaid, Vec::new()))
        .await
        .unwrap();
    let second = SqliteStore::open(&path).unwrap();
    let stores = [Arc::new(first), Arc::new(second)];
    let bucket = Bucket::new("tenant:acme", Unit::Requests, 10);
    let call = |request_id: String| Admission {
        draws: vec![Draw {
            bucket: bucket.clone(),
            amount: 1,
        }],
        ..admission(&request_id, "acme", Billing::Postpaid, Money::ZERO)
    };

    let tasks: Vec<_> = (0..CALLS)
        .map(|index| {
            let store = Arc::clone(&stores[index % 2]);
            let admission = call(format!("r{index:02}"));
            tokio::spawn(async move { store.admit(&admission).await.unwrap() })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(refused) => assert!(
                matches!(
                    refused,
                    Refusal::RateLimited {
                        unit: Unit::Requests,
                        limit: 10,
                        ..
                    }
                ),
                "{refused:?}"
            ),
        }
    }
    assert_eq!(granted, 10);
    // Either process sees the bucket empty at the same instant.
    for (index, store) in stores.iter().enumerate() {
        let refused = refusal(store.as_ref(), &call(format!("late-{index}"))).await;
        assert!(
            matches!(refused, Refusal::RateLimited { .. }),
            "{refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_starts_over_under_continuous_writes() {
    let directory = TempDir::new("wal");
    let path = directory.0.join("ferry.db");
    let store = Arc::new(
        SqliteStore::open_with(
            &path,
            SqliteOptions {
                wal_catch_up_bytes: 256 << 10,
                ..SqliteOptions::default()
            },
        )
        .unwrap(),
    );
    store
        .create_tenant(&tenant("acme", Billing::Postpaid, Vec::new()))
        .await
        .unwrap();
    // Writers that never pause together: a checkpoint beside them never catches up alone.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut calls = 0u32;
                while std::time::Instant::now() < until {
                    let id = format!("req-{writer}-{calls}");
                    grant(
                        store.as_ref(),
                        &admission(&id, "acme", Billing::Postpaid, Money::ZERO),
                    )
                    .await;
                    store
                        .settle(&usage(&id, "acme", usd("0.001")))
                        .await
                        .unwrap();
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for writer in writers {
        calls += writer.await.unwrap();
    }
    let wal = directory.0.join("ferry.db-wal");
    assert!(
        wal_restarts(&wal) >= 2,
        "the log started over {} times in {calls} calls",
        wal_restarts(&wal)
    );
    assert_books_reconcile(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overloaded_store_turns_new_calls_away_and_holds_nothing_for_them() {
    const CALLS: usize = 400;
    let directory = TempDir::new("busy");
    let store = Arc::new(
        SqliteStore::open_with(
            &directory.0.join("ferry.db"),
            SqliteOptions {
                max_queued_admissions: 8,
                ..SqliteOptions::default()
            },
        )
        .unwrap(),
    );
    store
        .create_tenant(&tenant("acme", Billing::Prepaid, Vec::new()))
        .await
        .unwrap();
    top_up(store.as_ref(), "acme", "1000").await;
    let hold = usd("0.1");
    let tasks: Vec<_> = (0..CALLS)
        .map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .admit(&admission(
                        &format!("r{index}"),
                        "acme",
                        Billing::Prepaid,
                        hold,
                    ))
                    .await
            })
        })
        .collect();
    let (mut granted, mut busy) = (0i64, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(Ok(_)) => granted += 1,
            Err(StoreError::Busy(_)) => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(granted > 0 && busy > 0, "granted {granted}, busy {busy}");
    let balance = store.balance("acme").await.unwrap();
    assert_eq!(balance.held_usd, Money::from_nanos(hold.nanos() * granted));
    // Settlements are never turned away, however long the queue.
    assert_books_reconcile(store.as_ref()).await;
}
