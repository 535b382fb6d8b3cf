//! Money on DynamoDB: admission, settlement, the ledger, prices and billing.
//!
//! Each operation that moves money is one `TransactWriteItems`, conditioned on the versions of
//! the items its decision read (`write.rs`), so it is atomic and isolated as on SQLite. The
//! rules live in `ferry_core::admission`; this file only loads state, calls them, and writes
//! the result. Listings (a tenant's usage, ledger, invoices; open holds) come from the index,
//! which is eventually consistent: closing a month early is brought up to date by closing again,
//! as on SQLite.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::Money;
use ferry_core::admission::{
    self, Admission, AdmissionState, Draw, Grant, Hold, Refusal, SpendCap, SpendCounter,
};
use ferry_core::billing::{
    self, GroupBy, Invoice, LedgerBooks, LedgerFigures, ReportBuilder, RollupRow, TenantBooks,
    TenantFigures, Totals, UsageRow,
};
use ferry_core::calendar::{Date, Month};
use ferry_core::ids::{self, IdKind};
use ferry_core::lease;
use ferry_core::ledger::{self, Posting, TransactionKind};
use ferry_core::ports::{
    Accounts, Alert, Balance, Billing, CloseError, Closed, KeySpend, LeasedUsage, Page,
    PageRequest, PostRequest, Posted, PriceRecord, Settled, StoreError, StoreResult, Transaction,
    UsageRecord, split_cursor,
};
use ferry_core::ratelimit;
use ferry_core::usage::RollupTotals;
use futures_util::future::try_join_all;

use super::DynamoStore;
use super::item::{
    self, Attributes, ItemBuilder, Key, get_i64, get_json, get_text, padded, unavailable,
};
use super::write::{Attempt, Change, VERSION, Version, Writes};
use crate::schema::{INDEX_SORT_KEY, PARTITION_KEY};
use ferry_clock as clock;

/// A closed hold is kept this long (DynamoDB's TTL deletes it after): long past any late or
/// replayed settlement, which then finds the call's usage event anyway.
const CLOSED_HOLD_RETENTION_SECONDS: u64 = 35 * 24 * 3600;
/// A rate-limit bucket is deleted this long after it has refilled (absent means full).
const BUCKET_RETENTION_SECONDS: u64 = 3600;

pub(super) const OPEN: &str = "open";

pub(super) fn version_of(item: Option<&Attributes>) -> StoreResult<Version> {
    match item {
        None => Ok(None),
        Some(item) => Ok(Some(get_i64(item, VERSION)?.unwrap_or(0))),
    }
}

/// Each counter once: two budgets of one period share a counter (see the SQLite adapter).
fn distinct_counters(caps: &[SpendCap]) -> BTreeSet<&str> {
    caps.iter().map(|cap| cap.counter.as_str()).collect()
}

fn transaction_item(
    transaction: &Transaction,
    idempotency_key: Option<&str>,
) -> StoreResult<Attributes> {
    let mut builder = ItemBuilder::new(&item::transaction(&transaction.id))
        .indexed(
            item::tenant_transactions(&transaction.tenant_id),
            format!("{}#{}", padded(transaction.created_at_ms), transaction.id),
        )
        .json("body", transaction)?
        .text("tenant_id", &transaction.tenant_id);
    if let Some(key) = idempotency_key {
        builder = builder.text("idempotency_key", key);
    }
    Ok(builder.build())
}

pub(super) fn usage_item(usage: &UsageRecord) -> StoreResult<Attributes> {
    Ok(ItemBuilder::new(&item::usage(&usage.request_id))
        .indexed(
            item::tenant_usage(&usage.tenant_id),
            format!("{}#{}", padded(usage.created_at), usage.request_id),
        )
        .json("body", usage)?
        .build())
}

/// Adds an event's usage to its day's rollups, in the event's own transaction. Not read by
/// any decision about money, so not versioned: a concurrent settlement of the same rollup
/// only makes one of the two transactions start over.
fn add_to_rollup(writes: &mut Writes, table: &str, usage: &UsageRecord) -> StoreResult<()> {
    let mut adds = RollupAdds::default();
    adds.add(usage);
    adds.write(writes, table)
}

/// Usage to add to the rollup items (the day's for all keys and per key, the key's month),
/// summed per item: a transaction may write each item once, and a batch of calls writes each
/// of its rollups once.
#[derive(Clone, Default)]
pub(super) struct RollupAdds {
    items: BTreeMap<(String, String), RollupItem>,
}

/// One rollup item's part of a batch.
#[derive(Clone)]
struct RollupItem {
    /// The attributes it names (its day, model, key).
    named: Vec<(&'static str, String)>,
    totals: RollupTotals,
}

impl RollupAdds {
    pub(super) fn add(&mut self, usage: &UsageRecord) {
        let day = Date::of_unix(usage.created_at).to_string();
        let month = Month::of_unix(usage.created_at).to_string();
        let sums = RollupTotals::of(usage);
        let mut named = vec![
            (ROLLUP_DAY, day.clone()),
            (ROLLUP_MODEL, usage.model.clone()),
        ];
        let all_keys = item::rollup_all_keys(&usage.tenant_id, &day, &usage.model);
        self.sum(all_keys, named.clone(), sums);
        if let Some(key_id) = &usage.key_id {
            named.push((ROLLUP_KEY, key_id.clone()));
        }
        let key = usage.key_id.as_deref();
        self.sum(
            item::key_month(&usage.tenant_id, &month, key),
            named.clone(),
            sums,
        );
        self.sum(
            item::rollup(&usage.tenant_id, &day, &usage.model, key),
            named,
            sums,
        );
    }

    fn sum(&mut self, key: Key, named: Vec<(&'static str, String)>, sums: RollupTotals) {
        self.items
            .entry((key.pk, key.sk))
            .or_insert_with(|| RollupItem {
                named,
                totals: RollupTotals::default(),
            })
            .totals
            .add(sums);
    }

    /// How many items [`RollupAdds::write`] writes.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn write(self, writes: &mut Writes, table: &str) -> StoreResult<()> {
        for ((pk, sk), RollupItem { named, totals }) in self.items {
            let mut change = Change::default();
            for (name, value) in named {
                change = change.set(name, item::s(&value));
            }
            for (name, total) in totals.named() {
                change = change.add(name, total);
            }
            writes.update(table, &Key::new(pk, sk), None, change)?;
        }
        Ok(())
    }
}

const ROLLUP_DAY: &str = "day";
const ROLLUP_MODEL: &str = "model";
const ROLLUP_KEY: &str = "key_id";

/// Adds a posting's entries to per-account sums.
pub(super) fn add_moves(moves: &mut BTreeMap<String, i64>, posting: &Posting) {
    for entry in &posting.entries {
        *moves.entry(entry.account.clone()).or_default() += entry.amount_usd.nanos();
    }
}

fn key_spend_from_item(found: &Attributes) -> StoreResult<KeySpend> {
    Ok(KeySpend {
        key_id: found
            .get(ROLLUP_KEY)
            .and_then(|value| value.as_s().ok())
            .cloned(),
        totals: totals_of(found)?,
    })
}

fn totals_of(found: &Attributes) -> StoreResult<Totals> {
    let count = |name: &str| -> StoreResult<u64> {
        Ok(u64::try_from(get_i64(found, name)?.unwrap_or(0)).unwrap_or(0))
    };
    Ok(Totals {
        requests: count("requests")?,
        prompt_tokens: count("prompt_tokens")?,
        cached_tokens: count("cached_tokens")?,
        completion_tokens: count("completion_tokens")?,
        cost_usd: Money::from_nanos(get_i64(found, "cost_nanos")?.unwrap_or(0)),
    })
}

fn rollup_from_item(found: &Attributes) -> StoreResult<RollupRow> {
    let KeySpend { key_id, totals } = key_spend_from_item(found)?;
    Ok(RollupRow {
        day: get_text(found, ROLLUP_DAY)?.parse().map_err(unavailable)?,
        model: get_text(found, ROLLUP_MODEL)?.to_owned(),
        key_id,
        totals,
    })
}

fn invoice_item(invoice: &Invoice) -> StoreResult<Attributes> {
    Ok(ItemBuilder::new(&item::invoice(&invoice.id))
        .indexed(item::tenant_invoices(&invoice.tenant_id), &invoice.period)
        .json("body", invoice)?
        .build())
}

fn bodies<T: serde::de::DeserializeOwned>(items: &[Attributes]) -> StoreResult<Vec<T>> {
    items.iter().map(|item| get_json(item, "body")).collect()
}

/// The sort-key range of `[from, to)` unix seconds, in a listing sorted by padded time.
fn time_range(from: u64, to: u64) -> Option<(String, String)> {
    (from < to).then(|| (padded(from), format!("{}~", padded(to - 1))))
}

impl DynamoStore {
    pub(super) async fn read_number(
        &self,
        key: Key,
        name: &'static str,
    ) -> StoreResult<(Option<i64>, Version)> {
        let item = self.get(&key).await?;
        let value = item
            .as_ref()
            .map(|item| get_i64(item, name))
            .transpose()?
            .flatten();
        Ok((value, version_of(item.as_ref())?))
    }

    pub(super) async fn read_account(&self, account: &str) -> StoreResult<(Money, Version)> {
        let (nanos, version) = self.read_number(item::account(account), "balance").await?;
        Ok((Money::from_nanos(nanos.unwrap_or(0)), version))
    }

    async fn read_counter(&self, id: &str) -> StoreResult<(SpendCounter, Version)> {
        let item = self.get(&item::counter(id)).await?;
        let number = |name| -> StoreResult<Money> {
            Ok(Money::from_nanos(
                item.as_ref()
                    .map(|item| get_i64(item, name))
                    .transpose()?
                    .flatten()
                    .unwrap_or(0),
            ))
        };
        let counter = SpendCounter {
            settled: number("settled")?,
            held: number("held")?,
        };
        Ok((counter, version_of(item.as_ref())?))
    }

    /// Each distinct counter of `caps`, read once: two budgets of one period share a counter,
    /// and a decision must see (and its commit check) one version of it.
    pub(super) async fn read_counters(
        &self,
        caps: &[SpendCap],
    ) -> StoreResult<HashMap<String, (SpendCounter, Version)>> {
        let ids = distinct_counters(caps);
        let read = try_join_all(ids.iter().map(|id| self.read_counter(id))).await?;
        Ok(ids.into_iter().map(str::to_owned).zip(read).collect())
    }

    /// Each distinct bucket of `draws`, read once.
    pub(super) async fn read_tats(
        &self,
        draws: &[Draw],
    ) -> StoreResult<HashMap<String, (Option<i64>, Version)>> {
        let ids: BTreeSet<&str> = draws.iter().map(|draw| draw.bucket.id.as_str()).collect();
        let read = try_join_all(ids.iter().map(|id| self.read_tat(id))).await?;
        Ok(ids.into_iter().map(str::to_owned).zip(read).collect())
    }

    async fn read_tat(&self, bucket: &str) -> StoreResult<(Option<i64>, Version)> {
        self.read_number(item::bucket(bucket), "tat").await
    }

    pub(super) fn write_tat(
        &self,
        writes: &mut Writes,
        bucket: &str,
        tat: i64,
        read: Version,
    ) -> StoreResult<()> {
        let refilled = u64::try_from(tat / 1_000_000_000).unwrap_or(0);
        writes.update(
            &self.table,
            &item::bucket(bucket),
            Some(read),
            Change::default().set("tat", item::n(tat)).set(
                crate::schema::TTL_ATTRIBUTE,
                item::n(refilled + BUCKET_RETENTION_SECONDS),
            ),
        )
    }

    /// Writes one balanced transaction and moves its accounts' balances. `read` holds the
    /// versions of the accounts the caller's decision read; the others move unconditionally.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn post_in(
        &self,
        writes: &mut Writes,
        id: &str,
        posting: &Posting,
        request_id: Option<&str>,
        idempotency_key: Option<&str>,
        memo: Option<&str>,
        now_ms: u64,
        read: &HashMap<String, Version>,
    ) -> StoreResult<Transaction> {
        let transaction = self.record_transaction(
            writes,
            id,
            posting,
            request_id,
            idempotency_key,
            memo,
            now_ms,
        )?;
        let mut moves = BTreeMap::new();
        add_moves(&mut moves, posting);
        self.move_accounts(writes, moves, read)?;
        Ok(transaction)
    }

    /// Writes one balanced transaction; its accounts are the caller's to move
    /// ([`add_moves`], [`DynamoStore::move_accounts`]), at once or summed over a batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_transaction(
        &self,
        writes: &mut Writes,
        id: &str,
        posting: &Posting,
        request_id: Option<&str>,
        idempotency_key: Option<&str>,
        memo: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<Transaction> {
        if !posting.is_balanced() {
            return Err(StoreError::Invalid(format!(
                "refusing an unbalanced {} transaction",
                posting.kind.as_str()
            )));
        }
        let transaction = Transaction {
            id: id.to_owned(),
            kind: posting.kind,
            tenant_id: posting.tenant_id.clone(),
            request_id: request_id.map(str::to_owned),
            memo: memo.map(str::to_owned),
            entries: posting.entries.clone(),
            created_at_ms: now_ms,
        };
        writes.create(
            &self.table,
            transaction_item(&transaction, idempotency_key)?,
        )?;
        Ok(transaction)
    }

    /// Moves each account by its summed amount, once.
    pub(super) fn move_accounts(
        &self,
        writes: &mut Writes,
        moves: BTreeMap<String, i64>,
        read: &HashMap<String, Version>,
    ) -> StoreResult<()> {
        for (account, amount) in moves {
            writes.update(
                &self.table,
                &item::account(&account),
                read.get(&account).copied(),
                Change::default().add("balance", amount),
            )?;
        }
        Ok(())
    }

    /// Moves each counter read (by `read_counters`) by `settled` and `held` nanodollars, if it
    /// is still at the version read.
    pub(super) fn move_counters(
        &self,
        writes: &mut Writes,
        counters: &HashMap<String, (SpendCounter, Version)>,
        settled: i64,
        held: i64,
    ) -> StoreResult<()> {
        for (counter, (_, version)) in counters {
            writes.update(
                &self.table,
                &item::counter(counter),
                Some(*version),
                Change::default().add("settled", settled).add("held", held),
            )?;
        }
        Ok(())
    }

    /// Adds to `writes` the closing of an open `hold`: settled at `cost`, or (no cost) expired.
    /// Returns what the tenant is charged.
    pub(super) async fn close_hold(
        &self,
        writes: &mut Writes,
        hold: &Hold,
        cost: Option<Money>,
        actual_tokens: u64,
        now_ms: u64,
    ) -> StoreResult<Money> {
        let charged = self
            .settle_hold(writes, hold, cost, actual_tokens, now_ms)
            .await?;
        let state = if cost.is_some() { "settled" } else { "expired" };
        self.close_hold_item(writes, &hold.request_id, None, state, now_ms)?;
        Ok(charged)
    }

    /// Marks an open hold's item closed (`state`), out of the open holds' index, kept a while;
    /// with `read`, only if its version is still that.
    pub(super) fn close_hold_item(
        &self,
        writes: &mut Writes,
        request_id: &str,
        read: Option<Version>,
        state: &str,
        now_ms: u64,
    ) -> StoreResult<()> {
        writes.update(
            &self.table,
            &item::hold(request_id),
            read,
            Change::default()
                .set("state", item::s(state))
                .set(
                    crate::schema::TTL_ATTRIBUTE,
                    item::n(now_ms / 1000 + CLOSED_HOLD_RETENTION_SECONDS),
                )
                .remove(crate::schema::INDEX_PARTITION_KEY)
                .remove(crate::schema::INDEX_SORT_KEY)
                .only_if_equal("state", item::s(OPEN)),
        )
    }

    /// Records an alert per cap a charge carried past its limit (once per counter and cap).
    pub(super) fn write_alerts(
        &self,
        writes: &mut Writes,
        tenant_id: &str,
        crossings: &[admission::Crossing],
        now_ms: u64,
    ) -> StoreResult<()> {
        let mut alerted = BTreeSet::new();
        for crossing in crossings {
            let alert = crossing.alert(tenant_id, now_ms);
            if !alerted.insert(alert.id.clone()) {
                continue;
            }
            let item = ItemBuilder::new(&item::alert(&alert.id))
                .indexed(
                    item::tenant_alerts(&alert.tenant_id),
                    format!("{}#{}", padded(now_ms), alert.id),
                )
                .json("body", &alert)?
                .build();
            writes.put(&self.table, item)?;
            tracing::warn!(tenant = %tenant_id, counter = %crossing.cap.counter, cap = %crossing.cap.cap, spent = %crossing.spent, "spend passed a budget");
        }
        Ok(())
    }

    /// Adds to `writes` what settling `hold` at `cost` (or, with none, expiring it) does to
    /// the money: postings, counters, alerts, token buckets. What the tenant is charged.
    pub(super) async fn settle_hold(
        &self,
        writes: &mut Writes,
        hold: &Hold,
        cost: Option<Money>,
        actual_tokens: u64,
        now_ms: u64,
    ) -> StoreResult<Money> {
        let (counters, tats) = futures_util::try_join!(
            self.read_counters(&hold.caps),
            self.read_tats(&hold.token_draws),
        )?;
        let values: Vec<SpendCounter> = hold
            .caps
            .iter()
            .map(|cap| counters[cap.counter.as_str()].0)
            .collect();
        // A cost beyond the hold draws on the available balance: the write is conditioned on
        // the balance it read, so two overdrafts cannot both spend the same credit.
        let mut read = HashMap::new();
        let available = if hold.overdrawn_by(cost) {
            let account = ledger::available(&hold.tenant_id);
            let (balance, version) = self.read_account(&account).await?;
            read.insert(account, version);
            balance
        } else {
            Money::ZERO
        };
        let plan = admission::settle_plan(hold, cost, available, &values);
        if plan.loss > Money::ZERO {
            tracing::warn!(request_id = %hold.request_id, tenant = %hold.tenant_id, charged = %plan.charged, loss = %plan.loss, "the call cost more than the tenant's balance could pay; the rest is written off");
        }
        for posting in &plan.postings {
            let id = format!("{}:{}", posting.kind.as_str(), hold.request_id);
            self.post_in(
                writes,
                &id,
                posting,
                Some(&hold.request_id),
                None,
                None,
                now_ms,
                &read,
            )?;
        }
        self.move_counters(
            writes,
            &counters,
            plan.charged.nanos(),
            -hold.amount.nanos(),
        )?;
        self.write_alerts(writes, &hold.tenant_id, &plan.crossings, now_ms)?;
        if cost.is_some() {
            // Token buckets drew the estimate at admission; now they take the actual count.
            let now_nanos = ratelimit::nanos_from_millis(now_ms);
            let mut corrected = BTreeSet::new();
            for draw in &hold.token_draws {
                if !corrected.insert(draw.bucket.id.as_str()) {
                    continue;
                }
                let (tat, version) = &tats[draw.bucket.id.as_str()];
                let delta = i64::try_from(actual_tokens).unwrap_or(i64::MAX)
                    - i64::try_from(draw.amount).unwrap_or(i64::MAX);
                let adjusted = ratelimit::adjust(&draw.bucket, *tat, delta, now_nanos);
                self.write_tat(writes, &draw.bucket.id, adjusted, *version)?;
            }
        }
        Ok(plan.charged)
    }

    async fn open_hold(&self, request_id: &str) -> StoreResult<Option<Option<Hold>>> {
        let Some(item) = self.get(&item::hold(request_id)).await? else {
            return Ok(None);
        };
        if get_text(&item, "state")? != OPEN {
            return Ok(Some(None));
        }
        Ok(Some(Some(get_json(&item, "detail")?)))
    }

    async fn read_balance(&self, tenant_id: &str) -> StoreResult<Balance> {
        let (available, held) = (ledger::available(tenant_id), ledger::held(tenant_id));
        let (available, held) =
            futures_util::try_join!(self.read_account(&available), self.read_account(&held))?;
        Ok(Balance {
            available_usd: available.0,
            held_usd: held.0,
        })
    }

    async fn load_transaction(&self, id: &str) -> StoreResult<Option<Transaction>> {
        self.get(&item::transaction(id))
            .await?
            .map(|item| get_json(&item, "body"))
            .transpose()
    }

    async fn all_usage(
        &self,
        tenant_id: &str,
        from: u64,
        to: u64,
    ) -> StoreResult<Vec<UsageRecord>> {
        self.usage_events(tenant_id, None, from, to, u32::MAX).await
    }

    /// Admits `call`, or with `lease_id` takes a lease sized for calls like it
    /// (`ferry_core::lease::calls`): the admission decided (the lease's, scaled) and the
    /// decision, or none when a lease would be too small. One atomic write either way.
    pub(super) async fn admit_as(
        &self,
        call: &Admission,
        lease_id: Option<&str>,
    ) -> StoreResult<Option<(Admission, Result<Grant, Refusal>)>> {
        let request_id = lease_id.unwrap_or(&call.request_id);
        let available_account = ledger::available(&call.tenant_id);
        let held_account = ledger::held(&call.tenant_id);
        self.atomically("admit", || async {
            let hold_key = item::hold(request_id);
            let (existing, available, held, tats, counters) = futures_util::try_join!(
                self.get(&hold_key),
                self.read_account(&available_account),
                self.read_account(&held_account),
                self.read_tats(&call.draws),
                self.read_counters(&call.caps),
            )?;
            if existing.is_some() {
                return Err(StoreError::Conflict(format!("request {request_id}")));
            }
            let state = AdmissionState {
                tats: call
                    .draws
                    .iter()
                    .map(|draw| tats[draw.bucket.id.as_str()].0)
                    .collect(),
                available: available.0,
                held: held.0,
                counters: call
                    .caps
                    .iter()
                    .map(|cap| counters[cap.counter.as_str()].0)
                    .collect(),
            };
            let (admission, hold) = match lease_id {
                None => (call.clone(), Hold::of(call)),
                Some(lease_id) => {
                    let Some(calls) = lease::calls(call, &state) else {
                        return Ok(Attempt::Done(None));
                    };
                    let leased = lease::admission(call, lease_id, calls);
                    let hold = lease::hold(&leased);
                    (leased, hold)
                }
            };
            let admission = &admission;
            let grant = match admission::decide(admission, &state) {
                Ok(grant) => grant,
                // Nothing is written: a refusal takes nothing.
                Err(refusal) => return Ok(Attempt::Done(Some((admission.clone(), Err(refusal))))),
            };
            let mut writes = Writes::default();
            let mut drawn = BTreeSet::new();
            for (draw, tat) in admission.draws.iter().zip(&grant.tats) {
                if drawn.insert(draw.bucket.id.as_str()) {
                    let version = tats[draw.bucket.id.as_str()].1;
                    self.write_tat(&mut writes, &draw.bucket.id, *tat, version)?;
                }
            }
            let hold_item = ItemBuilder::new(&hold_key)
                .indexed(
                    item::OPEN_HOLDS,
                    format!(
                        "{}#{}",
                        padded(admission.expires_at_ms),
                        admission.request_id
                    ),
                )
                .text("state", OPEN)
                .text("tenant_id", &admission.tenant_id)
                .number("created_at_ms", admission.now_ms)
                .json("detail", &hold)?
                .build();
            writes.create(&self.table, hold_item)?;
            let read = HashMap::from([
                (available_account.clone(), available.1),
                (held_account.clone(), held.1),
            ]);
            match &grant.hold_posting {
                Some(posting) => {
                    let id = format!("hold:{}", admission.request_id);
                    self.post_in(
                        &mut writes,
                        &id,
                        posting,
                        Some(&admission.request_id),
                        None,
                        None,
                        admission.now_ms,
                        &read,
                    )?;
                }
                // A postpaid decision never looks at the balance.
                None if admission.billing == Billing::Postpaid => {}
                None => {
                    // The decision read the balance: it must still hold when this commits.
                    writes.unchanged(
                        &self.table,
                        &item::account(&available_account),
                        available.1,
                    )?;
                    writes.unchanged(&self.table, &item::account(&held_account), held.1)?;
                }
            }
            self.move_counters(&mut writes, &counters, 0, admission.hold.nanos())?;
            Ok(Attempt::Write(writes, Some((admission.clone(), Ok(grant)))))
        })
        .await
    }

    /// Expires one hold if it is still open and due; true when it did.
    async fn expire_hold(&self, request_id: &str, now_ms: u64) -> StoreResult<bool> {
        self.atomically("expire a hold", || async {
            let Some(Some(hold)) = self.open_hold(request_id).await? else {
                return Ok(Attempt::Done(false));
            };
            if hold.expires_at_ms > now_ms {
                return Ok(Attempt::Done(false));
            }
            let mut writes = Writes::default();
            self.close_hold(&mut writes, &hold, None, 0, now_ms).await?;
            // A usage record may already be there (the hold's idempotency guard was swept by
            // its TTL and the request replayed): the hold closes without a second one, rather
            // than failing its condition on every sweep.
            let usage = hold.expired_usage(now_ms);
            // A lease is no call: its calls' usage is their own.
            if hold.lease_draws.is_none() && self.get(&item::usage(request_id)).await?.is_none() {
                writes.create(&self.table, usage_item(&usage)?)?;
                add_to_rollup(&mut writes, &self.table, &usage)?;
            }
            Ok(Attempt::Write(writes, true))
        })
        .await
    }
}

#[async_trait]
impl Accounts for DynamoStore {
    async fn admit(&self, admission: &Admission) -> StoreResult<Result<Grant, Refusal>> {
        match self.admit_as(admission, None).await? {
            Some((_, decided)) => Ok(decided),
            None => Err(StoreError::Unavailable(
                "an admission was not decided".into(),
            )),
        }
    }

    async fn lease(
        &self,
        call: &Admission,
        lease_id: &str,
    ) -> StoreResult<Option<(Admission, Grant)>> {
        Ok(match self.admit_as(call, Some(lease_id)).await? {
            Some((lease, Ok(grant))) => Some((lease, grant)),
            Some((_, Err(_))) | None => None,
        })
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
        let settled = self
            .atomically("settle", || async {
                let usage_key = item::usage(&usage.request_id);
                let (recorded, hold) = futures_util::try_join!(
                    self.get(&usage_key),
                    self.open_hold(&usage.request_id),
                )?;
                if recorded.is_some() {
                    return Ok(Attempt::Done(Settled::Duplicate));
                }
                let mut usage = usage.clone();
                let mut writes = Writes::default();
                let charged = match hold {
                    Some(Some(hold)) => {
                        let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
                        let now_ms = clock::unix_millis();
                        let charged = self
                            .close_hold(&mut writes, &hold, Some(usage.cost), actual, now_ms)
                            .await?;
                        // Billed in the period the call was admitted in.
                        usage.created_at = hold.created_at_ms / 1000;
                        charged
                    }
                    // Settled or expired already: never charge twice.
                    Some(None) => return Ok(Attempt::Done(Settled::Duplicate)),
                    // Unbilled calls (the operator's own) have no hold.
                    None => usage.cost,
                };
                usage.cost = charged;
                writes.create(&self.table, usage_item(&usage)?)?;
                add_to_rollup(&mut writes, &self.table, &usage)?;
                Ok(Attempt::Write(writes, Settled::Recorded { charged }))
            })
            .await?;
        Ok(settled)
    }

    async fn expire_holds(&self, now_ms: u64) -> StoreResult<u64> {
        let due = self
            .list(
                item::OPEN_HOLDS,
                Some((&padded(0), &format!("{}~", padded(now_ms)))),
                false,
                1000,
                |_| true,
            )
            .await?;
        let mut expired = 0;
        for hold in &due {
            let key = get_text(hold, PARTITION_KEY)?;
            let request_id = key.strip_prefix("HOLD#").unwrap_or(key);
            // One hold that cannot be expired must not keep the others open.
            match self.expire_hold(request_id, now_ms).await {
                Ok(true) => expired += 1,
                Ok(false) => {}
                Err(error) => tracing::error!(%request_id, %error, "could not expire a hold"),
            }
        }
        Ok(expired)
    }

    async fn post(&self, request: &PostRequest) -> StoreResult<Posted> {
        let tenant_id = request.posting.tenant_id.clone();
        let available_account = ledger::available(&tenant_id);
        let held_account = ledger::held(&tenant_id);
        let revenue_account = ledger::revenue(&tenant_id);
        let scoped_key = request.scoped_idempotency_key();
        self.atomically("post", || async {
            if let Some(key) = &scoped_key
                && let Some(found) = self.get(&item::idempotency(key)).await?
            {
                let id = get_text(&found, "transaction_id")?;
                let found = self
                    .load_transaction(id)
                    .await?
                    .ok_or_else(|| unavailable("an idempotency record's transaction vanished"))?;
                if found.tenant_id != tenant_id
                    || found.kind != request.posting.kind
                    || found.entries != request.posting.entries
                {
                    return Err(StoreError::Invalid(
                        "this idempotency_key was used for a different request".into(),
                    ));
                }
                let balance = self.read_balance(&tenant_id).await?;
                return Ok(Attempt::Done(Posted {
                    transaction: found,
                    replayed: true,
                    balance,
                }));
            }
            let refund = request.posting.kind == TransactionKind::Refund;
            let tenant_key = item::tenant(&tenant_id);
            let (tenant, available, held, revenue) = futures_util::try_join!(
                self.get(&tenant_key),
                self.read_account(&available_account),
                self.read_account(&held_account),
                async {
                    if refund {
                        self.read_account(&revenue_account).await.map(Some)
                    } else {
                        Ok(None)
                    }
                },
            )?;
            let Some(tenant) = tenant else {
                return Err(StoreError::Invalid("no such tenant".into()));
            };
            let delta = request.posting.moved(&available_account).nanos();
            if Billing::parse(get_text(&tenant, "billing")?) == Some(Billing::Prepaid)
                && available.0.nanos().saturating_add(delta) < 0
            {
                return Err(StoreError::Invalid(
                    "this would take the prepaid balance below zero".into(),
                ));
            }
            let mut read = HashMap::from([(available_account.clone(), available.1)]);
            if let Some((earned, version)) = revenue {
                if earned.nanos() < request.posting.revenue().nanos().saturating_neg() {
                    return Err(StoreError::Invalid(format!(
                        "a refund cannot exceed what the tenant has been charged ({earned})"
                    )));
                }
                read.insert(revenue_account.clone(), version);
            }
            let now_ms = request.now_ms;
            let id = ids::object_id(IdKind::Transaction, now_ms, clock::random_bytes());
            let mut writes = Writes::default();
            let transaction = self.post_in(
                &mut writes,
                &id,
                &request.posting,
                None,
                scoped_key.as_deref(),
                request.memo.as_deref(),
                now_ms,
                &read,
            )?;
            let held_delta = request.posting.moved(&held_account).nanos();
            if !request
                .posting
                .entries
                .iter()
                .any(|entry| entry.account == held_account)
            {
                // The answer reports the held amount read: it must still be true.
                writes.unchanged(&self.table, &item::account(&held_account), held.1)?;
            }
            if let Some(key) = &scoped_key {
                // Kept for good, as on SQLite: money posted twice is worse than an item.
                let record = ItemBuilder::new(&item::idempotency(key))
                    .text("transaction_id", &id)
                    .build();
                writes.create(&self.table, record)?;
            }
            let balance = Balance {
                available_usd: Money::from_nanos(available.0.nanos().saturating_add(delta)),
                held_usd: Money::from_nanos(held.0.nanos().saturating_add(held_delta)),
            };
            Ok(Attempt::Write(
                writes,
                Posted {
                    transaction,
                    replayed: false,
                    balance,
                },
            ))
        })
        .await
    }

    async fn balance(&self, tenant_id: &str) -> StoreResult<Balance> {
        self.read_balance(tenant_id).await
    }

    async fn transactions(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<Transaction>> {
        self.page(
            &item::tenant_transactions(tenant_id),
            page,
            true,
            |_| true,
            |found| get_json(&found, "body"),
        )
        .await
    }

    async fn put_price(&self, price: &PriceRecord) -> StoreResult<()> {
        let item = ItemBuilder::new(&item::price(
            &price.model,
            price.effective_from_ms,
            price.deployment.as_deref(),
        ))
        .json("body", price)?
        .build();
        self.put(item).await
    }

    async fn list_prices(&self, model: &str) -> StoreResult<Vec<PriceRecord>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#p = :p")
                .expression_attribute_names("#p", PARTITION_KEY)
                .expression_attribute_values(":p", AttributeValue::S(format!("PRICE#{model}")))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|error| unavailable(super::describe(&error)))?;
            found.extend(bodies::<PriceRecord>(output.items())?);
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }

    async fn usage_events(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        from: u64,
        to: u64,
        limit: u32,
    ) -> StoreResult<Vec<UsageRecord>> {
        let Some((low, high)) = time_range(from, to) else {
            return Ok(Vec::new());
        };
        let items = self
            .list(
                &item::tenant_usage(tenant_id),
                Some((&low, &high)),
                false,
                limit as usize,
                |item| {
                    key_id.is_none_or(|key_id| {
                        get_json::<UsageRecord>(item, "body")
                            .is_ok_and(|usage| usage.key_id.as_deref() == Some(key_id))
                    })
                },
            )
            .await?;
        bodies(&items)
    }

    async fn usage_events_page(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        (from, to): (u64, u64),
        page: &PageRequest,
    ) -> StoreResult<Page<UsageRecord>> {
        let Some((low, high)) = time_range(from, to) else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        // The cursor is the last event's index sort key (`padded created#request id`).
        let after = page.after.clone().unwrap_or_default();
        let low = low.max(after.clone());
        let wanted = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let items = self
            .list(
                &item::tenant_usage(tenant_id),
                Some((&low, &high)),
                false,
                wanted.saturating_add(1),
                |item| {
                    item.get(INDEX_SORT_KEY)
                        .and_then(|value| value.as_s().ok())
                        .is_some_and(|sort| *sort > after)
                        && key_id.is_none_or(|key_id| {
                            get_json::<UsageRecord>(item, "body")
                                .is_ok_and(|usage| usage.key_id.as_deref() == Some(key_id))
                        })
                },
            )
            .await?;
        Page::from_overfetch(items, page.limit, super::index_sort_key)
            .try_map(|found| get_json(&found, "body"))
    }

    async fn usage_report(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        from: u64,
        to: u64,
        group: GroupBy,
    ) -> StoreResult<Vec<UsageRow>> {
        let plan = billing::plan_report(group, from, to, clock::unix_millis() / 1000);
        let mut report = ReportBuilder::new(group);
        if let Some((first, end)) = plan.rollup_days {
            // A report not broken down by key nor for one key reads the all-keys rollups.
            let partition = if group.key || key_id.is_some() {
                item::rollups(tenant_id)
            } else {
                item::rollups_all_keys(tenant_id)
            };
            for found in self
                .sorted_range(&partition, &first.to_string(), &end.to_string())
                .await?
            {
                let row = rollup_from_item(&found)?;
                if key_id.is_none() || row.key_id.as_deref() == key_id {
                    report.add_rollup(&row);
                }
            }
        }
        for (from, to) in plan.event_ranges {
            for usage in self
                .usage_events(tenant_id, key_id, from, to, u32::MAX)
                .await?
            {
                report.add_event(&usage);
            }
        }
        Ok(report.finish())
    }

    async fn key_spend(
        &self,
        tenant_id: &str,
        month: Month,
        page: &PageRequest,
    ) -> StoreResult<Page<KeySpend>> {
        // One item per key active in the month, ordered here: DynamoDB cannot keep an index
        // on a number that every settlement adds to.
        let mut rows = self
            .partition(&item::key_months(tenant_id, &month.to_string()))
            .await?
            .iter()
            .map(key_spend_from_item)
            .collect::<StoreResult<Vec<_>>>()?;
        rows.sort_by(|a, b| (b.totals.cost_usd, &b.key_id).cmp(&(a.totals.cost_usd, &a.key_id)));
        let cursor_of = |row: &KeySpend| {
            format!(
                "{}:{}",
                row.totals.cost_usd.nanos(),
                row.key_id.as_deref().unwrap_or("")
            )
        };
        let start = match page.after.as_deref() {
            None => 0,
            Some(after) => {
                let (cost, key) = split_cursor::<i64>(after)?;
                let key = key.as_str();
                rows.iter()
                    .position(|row| {
                        let row_key = row.key_id.as_deref().unwrap_or("");
                        (row.totals.cost_usd.nanos(), row_key) < (cost, key)
                    })
                    .unwrap_or(rows.len())
            }
        };
        let wanted = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let fetched: Vec<KeySpend> = rows
            .into_iter()
            .skip(start)
            .take(wanted.saturating_add(1))
            .collect();
        Ok(Page::from_overfetch(fetched, page.limit, cursor_of))
    }

    async fn alerts(&self, tenant_id: &str) -> StoreResult<Vec<Alert>> {
        let items = self
            .list(
                &item::tenant_alerts(tenant_id),
                None,
                false,
                usize::MAX,
                |_| true,
            )
            .await?;
        bodies(&items)
    }

    async fn close_period(&self, month: Month, now: u64) -> Result<Vec<Closed>, CloseError> {
        let (start, end) = month.bounds_unix();
        let open = self
            .list(item::OPEN_HOLDS, None, false, usize::MAX, |_| true)
            .await?;
        let in_flight = open
            .iter()
            .filter_map(|hold| get_i64(hold, "created_at_ms").ok().flatten())
            .filter(|created| {
                u64::try_from(*created)
                    .is_ok_and(|created| created >= start * 1000 && created < end * 1000)
            })
            .count();
        billing::may_close(in_flight as u64)?;
        let mut tenants: Vec<String> = self
            .list(item::TENANTS, None, false, usize::MAX, |_| true)
            .await?
            .iter()
            .map(|tenant| get_text(tenant, crate::schema::INDEX_SORT_KEY).map(str::to_owned))
            .collect::<StoreResult<_>>()?;
        tenants.sort();
        let mut closed = Vec::new();
        for tenant_id in tenants {
            let usage = self.all_usage(&tenant_id, start, end).await?;
            if usage.is_empty() {
                continue;
            }
            let fresh = Invoice::from_usage(&tenant_id, month, &usage, now);
            let stored: Option<Invoice> = self
                .get(&item::invoice(&fresh.id))
                .await?
                .map(|item| get_json(&item, "body"))
                .transpose()?;
            let invoice = billing::close_invoice(fresh, stored, month)?;
            if invoice.created {
                self.put(invoice_item(&invoice.invoice)?).await?;
            }
            closed.push(invoice);
        }
        Ok(closed)
    }

    async fn invoices(&self, tenant_id: &str) -> StoreResult<Vec<Invoice>> {
        let items = self
            .list(
                &item::tenant_invoices(tenant_id),
                None,
                false,
                usize::MAX,
                |_| true,
            )
            .await?;
        bodies(&items)
    }

    async fn figures(&self) -> StoreResult<(LedgerFigures, Vec<TenantFigures>)> {
        let mut ledger = LedgerBooks::default();
        let mut tenants: BTreeMap<String, TenantBooks> = BTreeMap::new();
        let mut transactions: Vec<Transaction> = Vec::new();
        let mut usage: Vec<UsageRecord> = Vec::new();
        let mut invoices: Vec<Invoice> = Vec::new();
        let mut balances: Vec<(String, i64)> = Vec::new();
        for item in self.scan().await? {
            let key = get_text(&item, PARTITION_KEY)?;
            let (kind, id) = key.split_once('#').unwrap_or((key, ""));
            match kind {
                "TXN" => transactions.push(get_json(&item, "body")?),
                "ACCOUNT" => {
                    let balance = get_i64(&item, "balance")?.unwrap_or(0);
                    ledger.account(id, balance);
                    balances.push((id.to_owned(), balance));
                }
                "USAGE" => usage.push(get_json(&item, "body")?),
                "TENANT" => {
                    let billing = Billing::parse(get_text(&item, "billing")?);
                    tenants.insert(id.to_owned(), TenantBooks::new(id, billing));
                }
                "INVOICE" => invoices.push(get_json(&item, "body")?),
                _ => {}
            }
        }
        // The scan's order is the table's: tenants are known only once it is done.
        for transaction in &transactions {
            ledger.transaction(transaction);
            if let Some(books) = tenants.get_mut(&transaction.tenant_id) {
                books.transaction(transaction);
            }
        }
        for record in &usage {
            if let Some(books) = tenants.get_mut(&record.tenant_id) {
                books.usage(record);
            }
        }
        for invoice in &invoices {
            if let Some(books) = tenants.get_mut(&invoice.tenant_id) {
                books.invoice(invoice);
            }
        }
        for (account, balance) in &balances {
            for (tenant_id, books) in tenants.iter_mut() {
                if *account == ledger::available(tenant_id) {
                    books.available(Money::from_nanos(*balance));
                }
            }
        }
        let tenants = tenants.into_values().map(TenantBooks::figures).collect();
        Ok((ledger.figures(), tenants))
    }
}
