//! Credit leases on SQLite: taken like an admission, settled a batch of calls at a time, given
//! back. The rules are `ferry_core::lease`'s; this file loads state and writes what they say.
//!
//! A batch writes each call's usage event and its own settle transaction (so every charge
//! names its request, and reconciliation pairs them as for calls admitted alone), but moves
//! the account balances, the lease's hold and the caps' counters once per batch.

use std::collections::BTreeMap;

use ferry_core::Money;
use ferry_core::admission::{self, Admission, Grant, Hold};
use ferry_core::lease;
use ferry_core::ledger::Posting;
use ferry_core::ports::{LeasedUsage, Settled, StoreError, StoreResult};
use ferry_core::ratelimit;
use rusqlite::Connection;

use crate::accounts::{
    account_balance, bump_counter, close_hold, distinct_counters, load_hold, move_account, post_in,
    read_admission_state, read_counters, read_tat, record_transaction, refuse_if_admitted,
    usage_recorded, write_admitted, write_alerts, write_hold, write_tat,
};
use crate::{SqliteStore, UsageRollups, insert_usage_event, row, unavailable};
use ferry_clock as clock;

const OPEN: &str = "open";

impl SqliteStore {
    pub(crate) async fn take_lease(
        &self,
        call: &Admission,
        lease_id: &str,
    ) -> StoreResult<Option<(Admission, Grant)>> {
        let call = call.clone();
        let lease_id = lease_id.to_owned();
        self.grouped_unless_busy(move |connection| {
            refuse_if_admitted(connection, &lease_id)?;
            let state = read_admission_state(connection, &call).map_err(unavailable)?;
            let Some(calls) = lease::calls(&call, &state) else {
                return Ok(None);
            };
            let leased = lease::admission(&call, &lease_id, calls);
            // The same state, read for the same buckets and caps, decides the lease.
            let Ok(grant) = admission::decide(&leased, &state) else {
                return Ok(None);
            };
            write_admitted(connection, &leased, &grant, &lease::hold(&leased))?;
            Ok(Some((leased, grant)))
        })
        .await
    }

    pub(crate) async fn extend_lease_by(
        &self,
        lease_id: &str,
        amount: Money,
    ) -> StoreResult<Money> {
        let lease_id = lease_id.to_owned();
        self.grouped(move |connection| {
            let mut hold = open_lease(connection, &lease_id)?;
            let counters = read_counters(connection, &hold)?;
            let available =
                account_balance(connection, &ferry_core::ledger::available(&hold.tenant_id))
                    .map_err(unavailable)?;
            let drawn = lease::extension(&hold, amount, available, &counters);
            if drawn <= Money::ZERO {
                return Ok(Money::ZERO);
            }
            let now_ms = clock::unix_millis();
            if hold.billing == ferry_core::ports::Billing::Prepaid {
                let posted: i64 = row(
                    connection,
                    "SELECT COUNT(*) FROM ledger_transactions WHERE request_id = ?1",
                    [&lease_id],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
                let id = format!("hold:{lease_id}:{posted}");
                post_in(
                    connection,
                    &id,
                    &Posting::hold(&hold.tenant_id, drawn),
                    Some(&lease_id),
                    None,
                    None,
                    now_ms,
                )?;
            }
            for counter in distinct_counters(&hold.caps) {
                bump_counter(connection, counter, 0, drawn.nanos()).map_err(unavailable)?;
            }
            hold.amount = Money::from_nanos(hold.amount.nanos() + drawn.nanos());
            write_hold(connection, &hold, OPEN, false)?;
            Ok(drawn)
        })
        .await
    }

    pub(crate) async fn settle_lease_batch(
        &self,
        batch: &[LeasedUsage],
    ) -> StoreResult<Vec<Settled>> {
        let batch = batch.to_vec();
        self.grouped(move |connection| {
            let mut writer = BatchWriter::default();
            let mut answers = Vec::with_capacity(batch.len());
            for leased in &batch {
                answers.push(writer.settle(connection, leased)?);
            }
            writer.finish(connection)?;
            Ok(answers)
        })
        .await
    }

    pub(crate) async fn give_back_lease(&self, lease_id: &str, used: &[u64]) -> StoreResult<()> {
        let lease_id = lease_id.to_owned();
        let used = used.to_vec();
        self.grouped(move |connection| {
            let Some((hold, state)) = load_hold(connection, &lease_id).map_err(unavailable)? else {
                return Err(StoreError::Invalid(format!("no lease {lease_id}")));
            };
            if state != OPEN {
                return Ok(());
            }
            let now_ms = clock::unix_millis();
            let release = lease::release(&hold, &used);
            if let Some(posting) = &release.posting {
                let id = format!("expire:{lease_id}");
                post_in(
                    connection,
                    &id,
                    posting,
                    Some(&lease_id),
                    None,
                    None,
                    now_ms,
                )?;
            }
            for counter in distinct_counters(&hold.caps) {
                bump_counter(connection, counter, 0, -hold.amount.nanos()).map_err(unavailable)?;
            }
            let now_nanos = ratelimit::nanos_from_millis(now_ms);
            for (draw, delta) in &release.corrections {
                let tat = read_tat(connection, &draw.bucket.id).map_err(unavailable)?;
                let adjusted = ratelimit::adjust(&draw.bucket, tat, *delta, now_nanos);
                write_tat(connection, &draw.bucket.id, adjusted).map_err(unavailable)?;
            }
            write_hold(connection, &hold, "released", false)?;
            Ok(())
        })
        .await
    }
}

fn open_lease(connection: &Connection, lease_id: &str) -> StoreResult<Hold> {
    match load_hold(connection, lease_id).map_err(unavailable)? {
        Some((hold, state)) if state == OPEN && hold.lease_draws.is_some() => Ok(hold),
        Some(_) => Err(StoreError::Conflict(format!("lease {lease_id} is closed"))),
        None => Err(StoreError::Invalid(format!("no lease {lease_id}"))),
    }
}

/// A batch's writes: per call as it comes, per lease and per account at the end.
#[derive(Default)]
struct BatchWriter {
    /// Open leases met in this batch: their holds, and what the batch charged them.
    leases: BTreeMap<String, (Hold, Money)>,
    /// Closed leases met in this batch (their calls are charged from the balance).
    closed: BTreeMap<String, Hold>,
    /// Account balance changes, applied once at the end.
    accounts: BTreeMap<String, i64>,
    /// The leased calls' usage rollups, moved once at the end.
    rollups: UsageRollups,
}

impl BatchWriter {
    fn settle(&mut self, connection: &Connection, leased: &LeasedUsage) -> StoreResult<Settled> {
        let mut usage = leased.usage.clone();
        if usage_recorded(connection, &usage.request_id)? {
            return Ok(Settled::Duplicate);
        }
        let now_ms = clock::unix_millis();
        self.load(connection, &leased.lease_id)?;
        let charged = if let Some((hold, total)) = self.leases.get_mut(&leased.lease_id) {
            let charged = usage.cost.max(Money::ZERO);
            *total = Money::from_nanos(total.nanos() + charged.nanos());
            let loss =
                (leased.loss > Money::ZERO).then(|| Posting::loss(&hold.tenant_id, leased.loss));
            let postings: Vec<Posting> = lease::batch_posting(hold, charged)
                .into_iter()
                .chain(loss)
                .collect();
            for posting in &postings {
                let id = format!("{}:{}", posting.kind.as_str(), usage.request_id);
                self.post(connection, &id, posting, &usage.request_id, now_ms)?;
            }
            charged
        } else if let Some(hold) = self.closed.get(&leased.lease_id) {
            // Its lease closed before this call's usage was written (its replica was gone
            // past the lease's expiry): charged from the balance, like any overdraw.
            let late = lease::late(hold, &usage.request_id);
            let cost = Money::from_nanos(usage.cost.nanos() + leased.loss.nanos());
            close_hold(connection, &late, Some(cost), 0, now_ms)?
        } else {
            return Err(StoreError::Invalid(format!(
                "usage names lease {}, which was never taken",
                leased.lease_id
            )));
        };
        usage.cost = charged;
        if insert_usage_event(connection, &usage).map_err(unavailable)? {
            self.rollups.add(&usage);
        }
        Ok(Settled::Recorded { charged })
    }

    /// Reads a lease's hold, once per batch, into the open or the closed ones.
    fn load(&mut self, connection: &Connection, lease_id: &str) -> StoreResult<()> {
        if self.leases.contains_key(lease_id) || self.closed.contains_key(lease_id) {
            return Ok(());
        }
        match load_hold(connection, lease_id).map_err(unavailable)? {
            Some((hold, state)) if state == OPEN => {
                self.leases.insert(lease_id.to_owned(), (hold, Money::ZERO));
            }
            Some((hold, _)) => {
                self.closed.insert(lease_id.to_owned(), hold);
            }
            None => {}
        }
        Ok(())
    }

    /// Writes a transaction and its entries; the accounts move in [`BatchWriter::finish`].
    fn post(
        &mut self,
        connection: &Connection,
        id: &str,
        posting: &Posting,
        request_id: &str,
        now_ms: u64,
    ) -> StoreResult<()> {
        record_transaction(
            connection,
            id,
            posting,
            Some(request_id),
            None,
            None,
            now_ms,
        )?;
        for entry in &posting.entries {
            *self.accounts.entry(entry.account.clone()).or_default() += entry.amount_usd.nanos();
        }
        Ok(())
    }

    /// Moves the accounts, the leases' holds and their caps' counters by the batch's totals.
    fn finish(self, connection: &Connection) -> StoreResult<()> {
        for (account, delta) in &self.accounts {
            move_account(connection, account, *delta)?;
        }
        self.rollups.write(connection).map_err(unavailable)?;
        let now_ms = clock::unix_millis();
        for (mut hold, charged) in self.leases.into_values() {
            if charged <= Money::ZERO {
                continue;
            }
            let counters = read_counters(connection, &hold)?;
            for counter in distinct_counters(&hold.caps) {
                bump_counter(connection, counter, charged.nanos(), -charged.nanos())
                    .map_err(unavailable)?;
            }
            let crossings = admission::crossings(&hold.caps, &counters, charged);
            write_alerts(connection, &hold.tenant_id, &crossings, now_ms)?;
            hold.amount = Money::from_nanos(hold.amount.nanos() - charged.nanos());
            write_hold(connection, &hold, OPEN, false)?;
        }
        Ok(())
    }
}
