//! Money on SQLite: admission, settlement, the ledger, prices and billing.
//!
//! Every operation is atomic: admissions and settlements run in a savepoint of a group commit
//! (`thread.rs`), the rest in a `BEGIN IMMEDIATE` transaction of their own. Either way SQLite's
//! write lock is taken before reading, so two gateway processes sharing the file serialise on
//! it and a decision is never made on state another writer is about to change. The rules themselves live in
//! `ferry_core::admission`; this file only loads state, calls them, and writes the result.

use async_trait::async_trait;
use ferry_core::Money;
use ferry_core::admission::{self, Admission, Grant, Hold, Refusal, SpendCap, SpendCounter};
use ferry_core::billing::{
    self, GroupBy, Invoice, LedgerBooks, LedgerFigures, ReportBuilder, RollupRow, TenantBooks,
    TenantFigures, Totals, UsageRow,
};
use ferry_core::calendar::{Date, Month};
use ferry_core::ids::{self, IdKind};
use ferry_core::ledger::{self, Entry, Posting, TransactionKind};
use ferry_core::model::Price;
use ferry_core::ports::{
    Accounts, Alert, Balance, Billing, CloseError, Closed, KeySpend, LeasedUsage, Page,
    PageRequest, PostRequest, Posted, PriceRecord, Settled, StoreError, StoreResult, Transaction,
    UsageRecord, split_cursor,
};
use ferry_core::ratelimit;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{
    ALL_KEYS, SqliteStore, USAGE_COLUMNS, from_sql_int, insert_usage, json_column, row, run,
    to_sql_int, unavailable, usage_from_row,
};
use ferry_clock as clock;

fn immediate(connection: &mut Connection) -> StoreResult<rusqlite::Transaction<'_>> {
    connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)
}

pub(crate) fn account_balance(connection: &Connection, account: &str) -> rusqlite::Result<Money> {
    let nanos: Option<i64> = row(
        connection,
        "SELECT balance_nanos FROM accounts WHERE id = ?1",
        [account],
        |row| row.get(0),
    )
    .optional()?;
    Ok(Money::from_nanos(nanos.unwrap_or(0)))
}

pub(crate) fn read_balance(connection: &Connection, tenant_id: &str) -> rusqlite::Result<Balance> {
    Ok(Balance {
        available_usd: account_balance(connection, &ledger::available(tenant_id))?,
        held_usd: account_balance(connection, &ledger::held(tenant_id))?,
    })
}

pub(crate) fn read_counter(connection: &Connection, id: &str) -> rusqlite::Result<SpendCounter> {
    let counter = row(
        connection,
        "SELECT settled_nanos, held_nanos FROM spend_counters WHERE id = ?1",
        [id],
        |row| {
            Ok(SpendCounter {
                settled: Money::from_nanos(row.get(0)?),
                held: Money::from_nanos(row.get(1)?),
            })
        },
    )
    .optional()?;
    Ok(counter.unwrap_or_default())
}

/// The counters of a hold's caps, in the caps' order.
pub(crate) fn read_counters(
    connection: &Connection,
    hold: &Hold,
) -> StoreResult<Vec<SpendCounter>> {
    hold.caps
        .iter()
        .map(|cap| read_counter(connection, &cap.counter))
        .collect::<rusqlite::Result<_>>()
        .map_err(unavailable)
}

pub(crate) fn bump_counter(
    connection: &Connection,
    id: &str,
    settled: i64,
    held: i64,
) -> rusqlite::Result<()> {
    run(connection,
        "INSERT INTO spend_counters (id, settled_nanos, held_nanos) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET settled_nanos = settled_nanos + ?2, held_nanos = held_nanos + ?3",
        params![id, settled, held],
    )?;
    Ok(())
}

/// Each counter once: two budgets for the same period (a soft alert under a hard cap) share
/// one counter, and a call must count against it once.
pub(crate) fn distinct_counters(caps: &[SpendCap]) -> Vec<&str> {
    let mut counters: Vec<&str> = caps.iter().map(|cap| cap.counter.as_str()).collect();
    counters.sort_unstable();
    counters.dedup();
    counters
}

pub(crate) fn read_tat(connection: &Connection, bucket: &str) -> rusqlite::Result<Option<i64>> {
    row(
        connection,
        "SELECT tat_nanos FROM rate_buckets WHERE id = ?1",
        [bucket],
        |row| row.get(0),
    )
    .optional()
}

pub(crate) fn write_tat(connection: &Connection, bucket: &str, tat: i64) -> rusqlite::Result<()> {
    run(
        connection,
        "INSERT INTO rate_buckets (id, tat_nanos) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET tat_nanos = excluded.tat_nanos",
        params![bucket, tat],
    )?;
    Ok(())
}

/// Posts one balanced transaction and moves the account projections with it.
pub(crate) fn post_in(
    connection: &Connection,
    id: &str,
    posting: &Posting,
    request_id: Option<&str>,
    idempotency_key: Option<&str>,
    memo: Option<&str>,
    now_ms: u64,
) -> StoreResult<()> {
    record_transaction(
        connection,
        id,
        posting,
        request_id,
        idempotency_key,
        memo,
        now_ms,
    )?;
    for entry in &posting.entries {
        move_account(connection, &entry.account, entry.amount_usd.nanos())?;
    }
    Ok(())
}

/// Writes one balanced transaction and its entries; the account projections are the caller's
/// to move ([`move_account`]), at once or summed over a batch.
pub(crate) fn record_transaction(
    connection: &Connection,
    id: &str,
    posting: &Posting,
    request_id: Option<&str>,
    idempotency_key: Option<&str>,
    memo: Option<&str>,
    now_ms: u64,
) -> StoreResult<()> {
    if !posting.is_balanced() {
        return Err(StoreError::Invalid(format!(
            "refusing an unbalanced {} transaction",
            posting.kind.as_str()
        )));
    }
    run(connection,
            "INSERT INTO ledger_transactions (id, kind, tenant_id, request_id, idempotency_key, memo, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, posting.kind.as_str(), posting.tenant_id, request_id, idempotency_key, memo, to_sql_int(now_ms)],
        )
        .map_err(unavailable)?;
    for entry in &posting.entries {
        run(connection,
                "INSERT INTO ledger_entries (transaction_id, account, amount_nanos) VALUES (?1, ?2, ?3)",
                params![id, entry.account, entry.amount_usd.nanos()],
            )
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Moves an account's stored balance by `delta` nanodollars.
pub(crate) fn move_account(connection: &Connection, account: &str, delta: i64) -> StoreResult<()> {
    run(
        connection,
        "INSERT INTO accounts (id, balance_nanos) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET balance_nanos = balance_nanos + ?2",
        params![account, delta],
    )
    .map_err(unavailable)?;
    Ok(())
}

fn load_transaction(connection: &Connection, id: &str) -> rusqlite::Result<Option<Transaction>> {
    let header = row(connection,
            "SELECT id, kind, tenant_id, request_id, memo, created_at_ms FROM ledger_transactions WHERE id = ?1",
            [id],
            |row| {
                let kind: String = row.get(1)?;
                Ok(Transaction {
                    id: row.get(0)?,
                    kind: TransactionKind::parse(&kind).unwrap_or(TransactionKind::Adjustment),
                    tenant_id: row.get(2)?,
                    request_id: row.get(3)?,
                    memo: row.get(4)?,
                    entries: Vec::new(),
                    created_at_ms: from_sql_int(row.get(5)?),
                })
            },
        )
        .optional()?;
    let Some(mut transaction) = header else {
        return Ok(None);
    };
    let mut statement = connection.prepare_cached(
        "SELECT account, amount_nanos FROM ledger_entries WHERE transaction_id = ?1 ORDER BY rowid",
    )?;
    transaction.entries = statement
        .query_map([id], |row| {
            Ok(Entry {
                account: row.get(0)?,
                amount_usd: Money::from_nanos(row.get(1)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(transaction))
}

pub(crate) fn load_hold(
    connection: &Connection,
    request_id: &str,
) -> rusqlite::Result<Option<(Hold, String)>> {
    row(
        connection,
        "SELECT detail, state FROM holds WHERE request_id = ?1",
        [request_id],
        |row| Ok((json_column::<Hold>(row, 0)?, row.get::<_, String>(1)?)),
    )
    .optional()
}

/// Settles (or, with no cost, expires) an open hold; the caller has checked the usage record
/// is new and writes it.
pub(crate) fn close_hold(
    connection: &Connection,
    hold: &Hold,
    cost: Option<Money>,
    actual_tokens: u64,
    now_ms: u64,
) -> StoreResult<Money> {
    let counters = read_counters(connection, hold)?;
    let available = if hold.overdrawn_by(cost) {
        account_balance(connection, &ledger::available(&hold.tenant_id)).map_err(unavailable)?
    } else {
        Money::ZERO
    };
    let plan = admission::settle_plan(hold, cost, available, &counters);
    if plan.loss > Money::ZERO {
        tracing::warn!(request_id = %hold.request_id, tenant = %hold.tenant_id, charged = %plan.charged, loss = %plan.loss, "the call cost more than the tenant's balance could pay; the rest is written off");
    }
    for posting in &plan.postings {
        let id = format!("{}:{}", posting.kind.as_str(), hold.request_id);
        post_in(
            connection,
            &id,
            posting,
            Some(&hold.request_id),
            None,
            None,
            now_ms,
        )?;
    }
    for counter in distinct_counters(&hold.caps) {
        bump_counter(
            connection,
            counter,
            plan.charged.nanos(),
            -hold.amount.nanos(),
        )
        .map_err(unavailable)?;
    }
    write_alerts(connection, &hold.tenant_id, &plan.crossings, now_ms)?;
    if cost.is_some() {
        // Token buckets drew the estimate at admission; now they take the actual count.
        let now_nanos = ratelimit::nanos_from_millis(now_ms);
        for draw in &hold.token_draws {
            let delta = i64::try_from(actual_tokens).unwrap_or(i64::MAX)
                - i64::try_from(draw.amount).unwrap_or(i64::MAX);
            let tat = read_tat(connection, &draw.bucket.id).map_err(unavailable)?;
            let adjusted = ratelimit::adjust(&draw.bucket, tat, delta, now_nanos);
            write_tat(connection, &draw.bucket.id, adjusted).map_err(unavailable)?;
        }
    }
    let state = if cost.is_some() { "settled" } else { "expired" };
    run(
        connection,
        "UPDATE holds SET state = ?2 WHERE request_id = ?1",
        params![hold.request_id, state],
    )
    .map_err(unavailable)?;
    Ok(plan.charged)
}

/// Whether `sql` (a `SELECT 1 ... WHERE request_id = ?1`) finds a row for `request_id`.
fn has_row(connection: &Connection, sql: &str, request_id: &str) -> StoreResult<bool> {
    let found: Option<i64> = row(connection, sql, [request_id], |row| row.get(0))
        .optional()
        .map_err(unavailable)?;
    Ok(found.is_some())
}

/// Whether a usage event is recorded for `request_id`.
pub(crate) fn usage_recorded(connection: &Connection, request_id: &str) -> StoreResult<bool> {
    has_row(
        connection,
        "SELECT 1 FROM usage_events WHERE request_id = ?1",
        request_id,
    )
}

/// A request id already admitted is a conflict, whatever the buckets and balance say now (a
/// retried report of edge hits relies on it).
pub(crate) fn refuse_if_admitted(connection: &Connection, request_id: &str) -> StoreResult<()> {
    if has_row(
        connection,
        "SELECT 1 FROM holds WHERE request_id = ?1",
        request_id,
    )? {
        return Err(StoreError::Conflict(format!("request {request_id}")));
    }
    Ok(())
}

/// What admission decides on: the buckets, the balance and the caps' counters.
pub(crate) fn read_admission_state(
    connection: &Connection,
    admission: &Admission,
) -> rusqlite::Result<admission::AdmissionState> {
    let balance = read_balance(connection, &admission.tenant_id)?;
    Ok(admission::AdmissionState {
        tats: admission
            .draws
            .iter()
            .map(|draw| read_tat(connection, &draw.bucket.id))
            .collect::<rusqlite::Result<_>>()?,
        available: balance.available_usd,
        held: balance.held_usd,
        counters: admission
            .caps
            .iter()
            .map(|cap| read_counter(connection, &cap.counter))
            .collect::<rusqlite::Result<_>>()?,
    })
}

/// Writes what a grant takes: the buckets, the hold, its posting, the caps' held amounts.
pub(crate) fn write_admitted(
    connection: &Connection,
    admission: &Admission,
    grant: &Grant,
    hold: &Hold,
) -> StoreResult<()> {
    for (draw, tat) in admission.draws.iter().zip(&grant.tats) {
        write_tat(connection, &draw.bucket.id, *tat).map_err(unavailable)?;
    }
    let inserted = write_hold(connection, hold, "open", true)?;
    if !inserted {
        return Err(StoreError::Conflict(format!(
            "request {}",
            admission.request_id
        )));
    }
    if let Some(posting) = &grant.hold_posting {
        let id = format!("hold:{}", admission.request_id);
        post_in(
            connection,
            &id,
            posting,
            Some(&admission.request_id),
            None,
            None,
            admission.now_ms,
        )?;
    }
    for counter in distinct_counters(&admission.caps) {
        bump_counter(connection, counter, 0, admission.hold.nanos()).map_err(unavailable)?;
    }
    Ok(())
}

/// Inserts a hold (`new`) or rewrites its detail and state; false when a new one's request id
/// is taken.
pub(crate) fn write_hold(
    connection: &Connection,
    hold: &Hold,
    state: &str,
    new: bool,
) -> StoreResult<bool> {
    let detail = serde_json::to_string(hold).map_err(unavailable)?;
    let changed = if new {
        run(
            connection,
            "INSERT INTO holds (request_id, tenant_id, state, detail, created_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (request_id) DO NOTHING",
            params![
                hold.request_id,
                hold.tenant_id,
                state,
                detail,
                to_sql_int(hold.created_at_ms),
                to_sql_int(hold.expires_at_ms)
            ],
        )
    } else {
        run(
            connection,
            "UPDATE holds SET detail = ?2, state = ?3 WHERE request_id = ?1",
            params![hold.request_id, detail, state],
        )
    }
    .map_err(unavailable)?;
    Ok(changed == 1)
}

/// Records an alert per cap a charge carried past its limit (once per counter and cap).
pub(crate) fn write_alerts(
    connection: &Connection,
    tenant_id: &str,
    crossings: &[admission::Crossing],
    now_ms: u64,
) -> StoreResult<()> {
    for crossing in crossings {
        let alert = crossing.alert(tenant_id, now_ms);
        let body = serde_json::to_string(&alert).map_err(unavailable)?;
        run(
            connection,
            "INSERT INTO alerts (id, tenant_id, body, created_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO NOTHING",
            params![alert.id, alert.tenant_id, body, to_sql_int(now_ms)],
        )
        .map_err(unavailable)?;
        tracing::warn!(tenant = %tenant_id, counter = %crossing.cap.counter, cap = %crossing.cap.cap, spent = %crossing.spent, "spend passed a budget");
    }
    Ok(())
}

fn price_from_text(text: &str) -> StoreResult<Price> {
    serde_json::from_str(text).map_err(unavailable)
}

#[async_trait]
impl Accounts for SqliteStore {
    async fn admit(&self, admission: &Admission) -> StoreResult<Result<Grant, Refusal>> {
        let admission = admission.clone();
        self.grouped_unless_busy(move |connection| {
            refuse_if_admitted(connection, &admission.request_id)?;
            let state = read_admission_state(connection, &admission).map_err(unavailable)?;
            let grant = match admission::decide(&admission, &state) {
                Ok(grant) => grant,
                // Nothing has been written yet: a refusal takes nothing.
                Err(refusal) => return Ok(Err(refusal)),
            };
            write_admitted(connection, &admission, &grant, &Hold::of(&admission))?;
            Ok(Ok(grant))
        })
        .await
    }

    async fn lease(
        &self,
        call: &Admission,
        lease_id: &str,
    ) -> StoreResult<Option<(Admission, Grant)>> {
        self.take_lease(call, lease_id).await
    }

    async fn extend_lease(&self, lease_id: &str, amount: Money) -> StoreResult<Money> {
        self.extend_lease_by(lease_id, amount).await
    }

    async fn settle_leased(&self, batch: &[LeasedUsage]) -> StoreResult<Vec<Settled>> {
        self.settle_lease_batch(batch).await
    }

    async fn release_lease(&self, lease_id: &str, used: &[u64]) -> StoreResult<()> {
        self.give_back_lease(lease_id, used).await
    }

    async fn settle(&self, usage: &UsageRecord) -> StoreResult<Settled> {
        let mut usage = usage.clone();
        self.grouped(move |connection| {
            if usage_recorded(connection, &usage.request_id)? {
                return Ok(Settled::Duplicate);
            }
            let now_ms = clock::unix_millis();
            let charged = match load_hold(connection, &usage.request_id).map_err(unavailable)? {
                Some((hold, state)) if state == "open" => {
                    let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
                    let charged = close_hold(connection, &hold, Some(usage.cost), actual, now_ms)?;
                    // Billed in the period the call was admitted in.
                    usage.created_at = hold.created_at_ms / 1000;
                    charged
                }
                // Settled or expired already (its usage record would have been found above,
                // unless written by an older version): never charge twice.
                Some(_) => return Ok(Settled::Duplicate),
                // Unbilled calls (the operator's own) have no hold.
                None => usage.cost,
            };
            usage.cost = charged;
            insert_usage(connection, &usage).map_err(unavailable)?;
            Ok(Settled::Recorded { charged })
        })
        .await
    }

    async fn expire_holds(&self, now_ms: u64) -> StoreResult<u64> {
        self.with(move |connection| {
            let transaction = immediate(connection)?;
            let holds = {
                let mut statement = transaction
                    .prepare("SELECT detail FROM holds WHERE state = 'open' AND expires_at_ms <= ?1 ORDER BY expires_at_ms LIMIT 1000")
                    .map_err(unavailable)?;
                statement
                    .query_map([to_sql_int(now_ms)], |row| json_column::<Hold>(row, 0))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)?
            };
            for hold in &holds {
                close_hold(&transaction, hold, None, 0, now_ms)?;
                // A lease is no call: its calls' usage is their own.
                if hold.lease_draws.is_none() {
                    let usage = hold.expired_usage(now_ms);
                    insert_usage(&transaction, &usage).map_err(unavailable)?;
                }
            }
            transaction.commit().map_err(unavailable)?;
            Ok(holds.len() as u64)
        })
        .await
    }

    async fn post(&self, request: &PostRequest) -> StoreResult<Posted> {
        let request = request.clone();
        self.with(move |connection| {
            let transaction = immediate(connection)?;
            let tenant_id = request.posting.tenant_id.clone();
            let scoped_key = request.scoped_idempotency_key();
            if let Some(key) = &scoped_key {
                let existing: Option<String> = row(
                    &transaction,
                    "SELECT id FROM ledger_transactions WHERE idempotency_key = ?1",
                    [key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
                if let Some(id) = existing {
                    let found = load_transaction(&transaction, &id)
                        .map_err(unavailable)?
                        .ok_or_else(|| unavailable("transaction vanished"))?;
                    if found.tenant_id != tenant_id
                        || found.kind != request.posting.kind
                        || found.entries != request.posting.entries
                    {
                        return Err(StoreError::Invalid(
                            "this idempotency_key was used for a different request".into(),
                        ));
                    }
                    let balance = read_balance(&transaction, &tenant_id).map_err(unavailable)?;
                    return Ok(Posted {
                        transaction: found,
                        replayed: true,
                        balance,
                    });
                }
            }
            let billing: Option<String> = row(
                &transaction,
                "SELECT billing FROM tenants WHERE id = ?1",
                [&tenant_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(unavailable)?;
            let Some(billing) = billing else {
                return Err(StoreError::Invalid("no such tenant".into()));
            };
            let balance = read_balance(&transaction, &tenant_id).map_err(unavailable)?;
            let delta: i64 = request
                .posting
                .entries
                .iter()
                .filter(|entry| entry.account == ledger::available(&tenant_id))
                .map(|entry| entry.amount_usd.nanos())
                .sum();
            if Billing::parse(&billing) == Some(Billing::Prepaid)
                && balance.available_usd.nanos().saturating_add(delta) < 0
            {
                return Err(StoreError::Invalid(
                    "this would take the prepaid balance below zero".into(),
                ));
            }
            if request.posting.kind == TransactionKind::Refund {
                let earned = account_balance(&transaction, &ledger::revenue(&tenant_id))
                    .map_err(unavailable)?;
                if earned.nanos() < request.posting.revenue().nanos().saturating_neg() {
                    return Err(StoreError::Invalid(format!(
                        "a refund cannot exceed what the tenant has been charged ({earned})"
                    )));
                }
            }
            let id = ids::object_id(IdKind::Transaction, request.now_ms, clock::random_bytes());
            post_in(
                &transaction,
                &id,
                &request.posting,
                None,
                scoped_key.as_deref(),
                request.memo.as_deref(),
                request.now_ms,
            )?;
            let found = load_transaction(&transaction, &id)
                .map_err(unavailable)?
                .ok_or_else(|| unavailable("transaction vanished"))?;
            let balance = read_balance(&transaction, &tenant_id).map_err(unavailable)?;
            transaction.commit().map_err(unavailable)?;
            Ok(Posted {
                transaction: found,
                replayed: false,
                balance,
            })
        })
        .await
    }

    async fn balance(&self, tenant_id: &str) -> StoreResult<Balance> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |connection| read_balance(connection, &tenant_id).map_err(unavailable))
            .await
    }

    async fn transactions(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<Transaction>> {
        // The cursor is the last transaction's `created_at_ms:id`; newest first.
        let after = page.after.as_deref().map(split_cursor::<u64>).transpose()?;
        let tenant_id = tenant_id.to_owned();
        let limit = page.limit;
        self.with(move |connection| {
            let (created, id) = after.map_or((None, None), |(created, id)| (Some(to_sql_int(created)), Some(id)));
            let ids: Vec<String> = {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT id FROM ledger_transactions
                         WHERE tenant_id = ?1 AND (?2 IS NULL OR created_at_ms < ?2 OR (created_at_ms = ?2 AND id < ?3))
                         ORDER BY created_at_ms DESC, id DESC LIMIT ?4",
                    )
                    .map_err(unavailable)?;
                statement
                    .query_map(params![tenant_id, created, id, i64::from(limit) + 1], |row| row.get(0))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(unavailable)?
            };
            let transactions = ids
                .iter()
                .filter_map(|id| load_transaction(connection, id).transpose())
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            Ok(Page::from_overfetch(transactions, limit, |transaction| {
                format!("{}:{}", transaction.created_at_ms, transaction.id)
            }))
        })
        .await
    }

    async fn put_price(&self, price: &PriceRecord) -> StoreResult<()> {
        let price = price.clone();
        self.with(move |connection| {
            let body = serde_json::to_string(&price.price).map_err(unavailable)?;
            run(connection,
                    "INSERT INTO prices (model, deployment, effective_from_ms, price) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO UPDATE SET price = excluded.price",
                    params![price.model, price.deployment.as_deref().unwrap_or(""), to_sql_int(price.effective_from_ms), body],
                )
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_prices(&self, model: &str) -> StoreResult<Vec<PriceRecord>> {
        let model = model.to_owned();
        self.with(move |connection| {
            let mut statement = connection
                .prepare("SELECT deployment, effective_from_ms, price FROM prices WHERE model = ?1 ORDER BY effective_from_ms, deployment")
                .map_err(unavailable)?;
            let rows = statement
                .query_map([&model], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(deployment, effective_from_ms, price)| {
                    Ok(PriceRecord {
                        model: model.clone(),
                        deployment: (!deployment.is_empty()).then_some(deployment),
                        effective_from_ms: from_sql_int(effective_from_ms),
                        price: price_from_text(&price)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn usage_events(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        from: u64,
        to: u64,
        limit: u32,
    ) -> StoreResult<Vec<UsageRecord>> {
        let tenant_id = tenant_id.to_owned();
        let key_id = key_id.map(str::to_owned);
        self.with(move |connection| {
            let mut statement = connection
                .prepare(&format!(
                    "SELECT {USAGE_COLUMNS} FROM usage_events WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3
                     AND (?5 IS NULL OR key_id = ?5) ORDER BY created_at, request_id LIMIT ?4"
                ))
                .map_err(unavailable)?;
            let rows = statement
                .query_map(params![tenant_id, to_sql_int(from), to_sql_int(to), limit, key_id], usage_from_row)
                .map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn usage_events_page(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        (from, to): (u64, u64),
        page: &PageRequest,
    ) -> StoreResult<Page<UsageRecord>> {
        // The cursor is the last event's `created_at:request_id`; oldest first.
        let after = page.after.as_deref().map(split_cursor::<u64>).transpose()?;
        let tenant_id = tenant_id.to_owned();
        let key_id = key_id.map(str::to_owned);
        let limit = page.limit;
        self.with(move |connection| {
            let (created, id) = after.map_or((None, None), |(created, id)| (Some(to_sql_int(created)), Some(id)));
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {USAGE_COLUMNS} FROM usage_events WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3
                     AND (?4 IS NULL OR key_id = ?4)
                     AND (?5 IS NULL OR created_at > ?5 OR (created_at = ?5 AND request_id > ?6))
                     ORDER BY created_at, request_id LIMIT ?7"
                ))
                .map_err(unavailable)?;
            let events = statement
                .query_map(
                    params![tenant_id, to_sql_int(from), to_sql_int(to), key_id, created, id, i64::from(limit) + 1],
                    usage_from_row,
                )
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(Page::from_overfetch(events, limit, |event| format!("{}:{}", event.created_at, event.request_id)))
        })
        .await
    }

    async fn usage_report(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        from: u64,
        to: u64,
        group: GroupBy,
    ) -> StoreResult<Vec<UsageRow>> {
        let plan = billing::plan_report(group, from, to, clock::unix_seconds());
        let tenant_id = tenant_id.to_owned();
        let key_id = key_id.map(str::to_owned);
        self.with(move |connection| {
            let mut report = ReportBuilder::new(group);
            if let Some((first, end)) = plan.rollup_days {
                // A report not broken down by key reads the all-keys rows; one that is, or is
                // one key's, the rows per key.
                const COLUMNS: &str = "day, model, key_id, requests, prompt_tokens, cached_tokens, completion_tokens, cost_nanos";
                // One key's rows, the all-keys rows, or (a breakdown by key) every key's.
                let (sql, keys) = match (&key_id, group.key) {
                    (Some(key), _) => ("key_id = ?4", key.clone()),
                    (None, false) => ("key_id = ?4", ALL_KEYS.to_owned()),
                    (None, true) => ("key_id != '*' AND key_id != ?4", ALL_KEYS.to_owned()),
                };
                let index = if group.key && key_id.is_none() { "INDEXED BY usage_rollups_by_day" } else { "" };
                let sql = format!("SELECT {COLUMNS} FROM usage_rollups {index} WHERE tenant_id = ?1 AND {sql} AND day >= ?2 AND day < ?3");
                let mut statement = connection.prepare_cached(&sql).map_err(unavailable)?;
                let rows = statement
                    .query_map(params![tenant_id, first.to_string(), end.to_string(), keys], |row| {
                        let day: String = row.get(0)?;
                        let key: String = row.get(2)?;
                        Ok((day, RollupRow {
                            day: Date::of_unix(0),
                            model: row.get(1)?,
                            key_id: (!key.is_empty() && key != ALL_KEYS).then_some(key),
                            totals: Totals {
                                requests: from_sql_int(row.get(3)?),
                                prompt_tokens: from_sql_int(row.get(4)?),
                                cached_tokens: from_sql_int(row.get(5)?),
                                completion_tokens: from_sql_int(row.get(6)?),
                                cost_usd: Money::from_nanos(row.get(7)?),
                            },
                        }))
                    })
                    .map_err(unavailable)?;
                for found in rows {
                    let (day, mut row) = found.map_err(unavailable)?;
                    row.day = day.parse().map_err(unavailable)?;
                    report.add_rollup(&row);
                }
            }
            for (from, to) in plan.event_ranges {
                let mut statement = connection
                    .prepare_cached(&format!(
                        "SELECT {USAGE_COLUMNS} FROM usage_events WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3
                         AND (?4 IS NULL OR key_id = ?4)"
                    ))
                    .map_err(unavailable)?;
                let events = statement
                    .query_map(params![tenant_id, to_sql_int(from), to_sql_int(to), key_id], usage_from_row)
                    .map_err(unavailable)?;
                for event in events {
                    report.add_event(&event.map_err(unavailable)?);
                }
            }
            Ok(report.finish())
        })
        .await
    }

    async fn key_spend(
        &self,
        tenant_id: &str,
        month: Month,
        page: &PageRequest,
    ) -> StoreResult<Page<KeySpend>> {
        // The cursor is the last row's `cost_nanos:key_id`; dearest first.
        let after = page.after.as_deref().map(split_cursor::<i64>).transpose()?;
        let tenant_id = tenant_id.to_owned();
        let limit = page.limit;
        self.with(move |connection| {
            let (cost, key) = after.map_or((None, None), |(cost, key)| (Some(cost), Some(key)));
            let mut statement = connection
                .prepare_cached(
                    "SELECT key_id, requests, prompt_tokens, cached_tokens, completion_tokens, cost_nanos
                     FROM usage_key_months
                     WHERE tenant_id = ?1 AND month = ?2
                       AND (?3 IS NULL OR cost_nanos < ?3 OR (cost_nanos = ?3 AND key_id < ?4))
                     ORDER BY cost_nanos DESC, key_id DESC LIMIT ?5",
                )
                .map_err(unavailable)?;
            let rows = statement
                .query_map(params![tenant_id, month.to_string(), cost, key, i64::from(limit) + 1], |row| {
                    let key: String = row.get(0)?;
                    Ok(KeySpend {
                        key_id: (!key.is_empty()).then_some(key),
                        totals: Totals {
                            requests: from_sql_int(row.get(1)?),
                            prompt_tokens: from_sql_int(row.get(2)?),
                            cached_tokens: from_sql_int(row.get(3)?),
                            completion_tokens: from_sql_int(row.get(4)?),
                            cost_usd: Money::from_nanos(row.get(5)?),
                        },
                    })
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(Page::from_overfetch(rows, limit, |row| {
                format!("{}:{}", row.totals.cost_usd.nanos(), row.key_id.as_deref().unwrap_or(""))
            }))
        })
        .await
    }

    async fn alerts(&self, tenant_id: &str) -> StoreResult<Vec<Alert>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |connection| {
            let mut statement = connection
                .prepare("SELECT body FROM alerts WHERE tenant_id = ?1 ORDER BY created_at_ms, id")
                .map_err(unavailable)?;
            let rows = statement
                .query_map([tenant_id], |row| json_column::<Alert>(row, 0))
                .map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn close_period(&self, month: Month, now: u64) -> Result<Vec<Closed>, CloseError> {
        self.with(move |connection| {
            let transaction = immediate(connection)?;
            let (start, end) = month.bounds_unix();
            let in_flight: i64 = row(&transaction,
                    "SELECT COUNT(*) FROM holds WHERE state = 'open' AND created_at_ms >= ?1 AND created_at_ms < ?2",
                    params![to_sql_int(start * 1000), to_sql_int(end * 1000)],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            if let Err(refused) = billing::may_close(from_sql_int(in_flight)) {
                return Ok(Err(refused));
            }
            let tenants: Vec<String> = {
                let mut statement = transaction
                    .prepare("SELECT id FROM tenants WHERE id IN (SELECT DISTINCT tenant_id FROM usage_events WHERE created_at >= ?1 AND created_at < ?2) ORDER BY id")
                    .map_err(unavailable)?;
                statement
                    .query_map(params![to_sql_int(start), to_sql_int(end)], |row| row.get(0))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(unavailable)?
            };
            let mut closed = Vec::new();
            for tenant_id in tenants {
                let usage: Vec<UsageRecord> = {
                    let mut statement = transaction
                        .prepare(&format!("SELECT {USAGE_COLUMNS} FROM usage_events WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3 ORDER BY created_at, request_id"))
                        .map_err(unavailable)?;
                    statement
                        .query_map(params![tenant_id, to_sql_int(start), to_sql_int(end)], usage_from_row)
                        .map_err(unavailable)?
                        .collect::<rusqlite::Result<_>>()
                        .map_err(unavailable)?
                };
                let fresh = Invoice::from_usage(&tenant_id, month, &usage, now);
                let stored = row(&transaction, "SELECT body FROM invoices WHERE id = ?1", [&fresh.id], |row| json_column::<Invoice>(row, 0))
                    .optional()
                    .map_err(unavailable)?;
                let invoice = match billing::close_invoice(fresh, stored, month) {
                    Ok(invoice) => invoice,
                    Err(refused) => return Ok(Err(refused)),
                };
                if invoice.created {
                    write_invoice(&transaction, &invoice.invoice)?;
                }
                closed.push(invoice);
            }
            transaction.commit().map_err(unavailable)?;
            Ok(Ok(closed))
        })
        .await?
    }

    async fn invoices(&self, tenant_id: &str) -> StoreResult<Vec<Invoice>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |connection| {
            let mut statement = connection
                .prepare("SELECT body FROM invoices WHERE tenant_id = ?1 ORDER BY period")
                .map_err(unavailable)?;
            let rows = statement
                .query_map([tenant_id], |row| json_column::<Invoice>(row, 0))
                .map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn figures(&self) -> StoreResult<(LedgerFigures, Vec<TenantFigures>)> {
        self.with(|connection| {
            // One read transaction: every figure comes from the same snapshot. Records are
            // streamed into the books a tenant at a time, never all held at once.
            let transaction = connection.transaction().map_err(unavailable)?;
            let mut ledger = LedgerBooks::default();
            for_each_transaction(&transaction, None, |posted| ledger.transaction(posted))?;
            for_each_row(
                &transaction,
                "SELECT id, balance_nanos FROM accounts",
                [],
                |row| {
                    ledger.account(&row.get::<_, String>(0)?, row.get(1)?);
                    Ok(())
                },
            )?;
            let tenants: Vec<(String, String)> = {
                let mut statement = transaction
                    .prepare("SELECT id, billing FROM tenants ORDER BY id")
                    .map_err(unavailable)?;
                statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(unavailable)?
            };
            let mut figures = Vec::with_capacity(tenants.len());
            for (tenant_id, billing) in tenants {
                let mut books = TenantBooks::new(&tenant_id, Billing::parse(&billing));
                for_each_transaction(&transaction, Some(&tenant_id), |posted| {
                    books.transaction(posted)
                })?;
                let usage =
                    format!("SELECT {USAGE_COLUMNS} FROM usage_events WHERE tenant_id = ?1");
                for_each_row(&transaction, &usage, [&tenant_id], |row| {
                    books.usage(&usage_from_row(row)?);
                    Ok(())
                })?;
                for_each_row(
                    &transaction,
                    "SELECT body FROM invoices WHERE tenant_id = ?1",
                    [&tenant_id],
                    |row| {
                        books.invoice(&json_column::<Invoice>(row, 0)?);
                        Ok(())
                    },
                )?;
                books.available(
                    account_balance(&transaction, &ledger::available(&tenant_id))
                        .map_err(unavailable)?,
                );
                figures.push(books.figures());
            }
            Ok((ledger.figures(), figures))
        })
        .await
    }
}

/// Runs `each` on every row `sql` finds, one at a time.
fn for_each_row(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut each: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> StoreResult<()> {
    let mut statement = connection.prepare(sql).map_err(unavailable)?;
    let mut rows = statement.query(params).map_err(unavailable)?;
    while let Some(row) = rows.next().map_err(unavailable)? {
        each(row).map_err(unavailable)?;
    }
    Ok(())
}

/// Runs `each` on every ledger transaction (of one tenant, if given), whole, one at a time.
fn for_each_transaction(
    connection: &Connection,
    tenant_id: Option<&str>,
    mut each: impl FnMut(&Transaction),
) -> StoreResult<()> {
    // A tenant's: its transactions with their entries. All: every entry with its transaction
    // (an entry whose transaction is missing still counts, as an unbalanced one).
    let (sql, params) = match tenant_id {
        Some(tenant_id) => (
            "SELECT t.id, t.kind, t.tenant_id, t.request_id, t.memo, t.created_at_ms, e.account, e.amount_nanos
             FROM ledger_transactions t LEFT JOIN ledger_entries e ON e.transaction_id = t.id
             WHERE t.tenant_id = ?1 ORDER BY t.id, e.rowid",
            vec![tenant_id],
        ),
        None => (
            "SELECT e.transaction_id, t.kind, t.tenant_id, t.request_id, t.memo, t.created_at_ms, e.account, e.amount_nanos
             FROM ledger_entries e LEFT JOIN ledger_transactions t ON t.id = e.transaction_id
             ORDER BY e.transaction_id, e.rowid",
            Vec::new(),
        ),
    };
    let mut current: Option<Transaction> = None;
    for_each_row(connection, sql, rusqlite::params_from_iter(params), |row| {
        let id: String = row.get(0)?;
        if current
            .as_ref()
            .is_some_and(|transaction| transaction.id != id)
            && let Some(done) = current.take()
        {
            each(&done);
        }
        if current.is_none() {
            let kind: Option<String> = row.get(1)?;
            current = Some(Transaction {
                id,
                kind: kind
                    .as_deref()
                    .and_then(TransactionKind::parse)
                    .unwrap_or(TransactionKind::Adjustment),
                tenant_id: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                request_id: row.get(3)?,
                memo: row.get(4)?,
                created_at_ms: from_sql_int(row.get::<_, Option<i64>>(5)?.unwrap_or(0)),
                entries: Vec::new(),
            });
        }
        if let (Some(transaction), Some(account)) =
            (current.as_mut(), row.get::<_, Option<String>>(6)?)
        {
            transaction.entries.push(Entry {
                account,
                amount_usd: Money::from_nanos(row.get(7)?),
            });
        }
        Ok(())
    })?;
    if let Some(done) = current {
        each(&done);
    }
    Ok(())
}

fn write_invoice(connection: &Connection, invoice: &Invoice) -> StoreResult<()> {
    let body = serde_json::to_string(invoice).map_err(unavailable)?;
    run(connection,
            "INSERT INTO invoices (id, tenant_id, period, body, total_nanos) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, total_nanos = excluded.total_nanos",
            params![invoice.id, invoice.tenant_id, invoice.period, body, invoice.total_usd.nanos()],
        )
        .map_err(unavailable)?;
    Ok(())
}
