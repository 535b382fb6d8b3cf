//! `--dynamodb N`: DynamoDB writes per settled call, on a local AWS-compatible server
//! (`AWS_ENDPOINT_URL`, e.g. moto): calls admitted one by one beside calls served from
//! credit leases, each leased call written before its answer, and journaled. Counts the
//! `TransactWriteItems` the store committed (and their items, which DynamoDB bills at twice an
//! item's write units) from the first call to the last lease given back; times are the local
//! server's, not DynamoDB's, and are not shown. Run it against `serial_moto.py` (moto's
//! server serves concurrent transactions unsafely; see `stores/aws/tests/moto`).

use std::sync::Arc;

use anyhow::ensure;
use ferry_aws::DynamoStore;
use ferry_core::billing;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Scenario, Setup, call_while, set_up, settled_in_store};

/// Callers at once.
const CALLERS: usize = 4;

pub async fn writes_per_call(calls: usize) -> anyhow::Result<()> {
    let config = ferry_aws::sdk_config().await;
    println!("bench/money --dynamodb: {calls} calls, {CALLERS} callers at once, one tenant");
    println!(
        "{:<34} {:>14} {:>14}",
        "path", "writes / call", "items / call"
    );
    let journal_directory =
        std::env::temp_dir().join(format!("ferry-bench-money-journal-{}", std::process::id()));
    let journal = Some((
        journal_directory.as_path(),
        ferry_journal::Durability::ProcessCrash,
    ));
    for (name, scenario, journal) in [
        ("admitted one by one", Scenario::PrepaidWithLimits, None),
        ("leased, each call written", Scenario::Leased, None),
        ("leased, journaled", Scenario::Leased, journal),
    ] {
        let table = format!("ferry-bench-{:016x}", ferry_clock::random_u64());
        let store = Arc::new(DynamoStore::from_config(&config, table));
        store.create_table().await?;
        let setup = set_up(scenario, store.clone(), journal).await?;
        if let Some(leased) = &setup.leased {
            // The local server answers a few calls a second, DynamoDB hundreds: without this
            // the tenant would never be busy enough to lease for.
            leased.set_busy_calls(1);
        }
        let (transactions, items) = store.writes_committed();
        let answered = call_n(&setup, calls, CALLERS).await?;
        settled_in_store(&setup).await?;
        let (after_transactions, after_items) = store.writes_committed();
        let (ledger, tenants) = setup.accounts.figures().await?;
        let problems = billing::discrepancies(&ledger, &tenants);
        ensure!(problems.is_empty(), "books do not reconcile: {problems:?}");
        let per_call = |count: u64| count as f64 / answered as f64;
        println!(
            "{:<34} {:>14.3} {:>14.2}",
            name,
            per_call(after_transactions - transactions),
            per_call(after_items - items)
        );
    }
    let _ = std::fs::remove_dir_all(&journal_directory);
    Ok(())
}

/// Makes `calls` calls, `callers` at a time; how many were answered (all must be).
async fn call_n(setup: &Setup, calls: usize, callers: usize) -> anyhow::Result<u64> {
    let left = Arc::new(AtomicU64::new(u64::try_from(calls)?));
    call_while(setup, callers, move || {
        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    })
    .await
}
