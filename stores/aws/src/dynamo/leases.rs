//! Credit leases on DynamoDB: taken like an admission (`admit_as`), settled a batch of calls
//! at a time, given back. The rules are `ferry_core::lease`'s; this file loads state and writes
//! what they say, each change one conditioned `TransactWriteItems` as everywhere in this store.
//!
//! A batch writes each call's usage event and its own settle transaction, but each account,
//! rollup, cap counter and the lease's hold once: one transaction for many calls (as many as
//! fit DynamoDB's limit of items per transaction), where a call admitted alone takes two.

use std::collections::{BTreeMap, HashMap};

use ferry_core::Money;
use ferry_core::admission::{self, Hold, SpendCounter};
use ferry_core::lease;
use ferry_core::ledger::{self, Posting};
use ferry_core::ports::{Billing, LeasedUsage, Settled, StoreError, StoreResult};
use ferry_core::ratelimit;
use futures_util::future::try_join_all;

use super::DynamoStore;
use super::accounts::{OPEN, RollupAdds, add_moves, usage_item, version_of};
use super::item::{self, get_json, get_text, unavailable};
use super::write::{Attempt, Change, Version, Writes};
use ferry_clock as clock;

/// DynamoDB's limit on the items of one transaction.
const MOST_ITEMS: usize = 100;
/// Items a batch writes besides its calls' own and their rollups: the tenant's accounts, the
/// lease's hold, its caps' counters, alerts.
const ITEMS_BESIDES_CALLS: usize = 16;
/// Items one call writes: its usage event, its settle transaction, perhaps a loss.
const ITEMS_PER_CALL: usize = 3;

/// A lease's hold as stored.
struct Stored {
    hold: Hold,
    open: bool,
    version: Version,
}

impl DynamoStore {
    async fn stored_lease(&self, lease_id: &str) -> StoreResult<Option<Stored>> {
        let Some(found) = self.get(&item::hold(lease_id)).await? else {
            return Ok(None);
        };
        Ok(Some(Stored {
            hold: get_json(&found, "detail")?,
            open: get_text(&found, "state")? == OPEN,
            version: version_of(Some(&found))?,
        }))
    }

    /// Rewrites an open lease's hold (its amount changed), if no one changed it since `read`.
    fn rewrite_lease(&self, writes: &mut Writes, hold: &Hold, read: Version) -> StoreResult<()> {
        let detail = serde_json::to_string(hold).map_err(unavailable)?;
        writes.update(
            &self.table,
            &item::hold(&hold.request_id),
            Some(read),
            Change::default()
                .set("detail", item::s(&detail))
                .only_if_equal("state", item::s(OPEN)),
        )
    }

    /// The counters of `hold`'s caps in their order, and each distinct one's version.
    async fn lease_counters(
        &self,
        hold: &Hold,
    ) -> StoreResult<(Vec<SpendCounter>, HashMap<String, (SpendCounter, Version)>)> {
        let counters = self.read_counters(&hold.caps).await?;
        let values = hold
            .caps
            .iter()
            .map(|cap| counters[cap.counter.as_str()].0)
            .collect();
        Ok((values, counters))
    }

    pub(super) async fn extend_lease_by(
        &self,
        lease_id: &str,
        amount: Money,
    ) -> StoreResult<Money> {
        self.atomically("extend a lease", || async {
            let Some(Stored {
                mut hold,
                open: true,
                version,
            }) = self.stored_lease(lease_id).await?
            else {
                return Err(StoreError::Invalid(format!("no open lease {lease_id}")));
            };
            let account = ledger::available(&hold.tenant_id);
            let ((available, available_version), (values, counters)) =
                futures_util::try_join!(self.read_account(&account), self.lease_counters(&hold),)?;
            let drawn = lease::extension(&hold, amount, available, &values);
            if drawn <= Money::ZERO {
                return Ok(Attempt::Done(Money::ZERO));
            }
            let mut writes = Writes::default();
            if hold.billing == Billing::Prepaid {
                // Each extension a transaction of its own, named by the version it extends.
                let id = format!("hold:{lease_id}:{}", version.unwrap_or(0));
                let read = HashMap::from([(account, available_version)]);
                self.post_in(
                    &mut writes,
                    &id,
                    &Posting::hold(&hold.tenant_id, drawn),
                    Some(lease_id),
                    None,
                    None,
                    clock::unix_millis(),
                    &read,
                )?;
            }
            self.move_counters(&mut writes, &counters, 0, drawn.nanos())?;
            hold.amount = Money::from_nanos(hold.amount.nanos() + drawn.nanos());
            self.rewrite_lease(&mut writes, &hold, version)?;
            Ok(Attempt::Write(writes, drawn))
        })
        .await
    }

    pub(super) async fn give_back_lease(&self, lease_id: &str, used: &[u64]) -> StoreResult<()> {
        self.atomically("give back a lease", || async {
            let Some(stored) = self.stored_lease(lease_id).await? else {
                return Err(StoreError::Invalid(format!("no lease {lease_id}")));
            };
            if !stored.open {
                return Ok(Attempt::Done(()));
            }
            let hold = &stored.hold;
            let release = lease::release(hold, used);
            let corrected: Vec<_> = release
                .corrections
                .iter()
                .map(|(draw, _)| draw.clone())
                .collect();
            let (counters, tats) = futures_util::try_join!(
                self.read_counters(&hold.caps),
                self.read_tats(&corrected),
            )?;
            let now_ms = clock::unix_millis();
            let mut writes = Writes::default();
            if let Some(posting) = &release.posting {
                let id = format!("expire:{lease_id}");
                self.post_in(
                    &mut writes,
                    &id,
                    posting,
                    Some(lease_id),
                    None,
                    None,
                    now_ms,
                    &HashMap::new(),
                )?;
            }
            self.move_counters(&mut writes, &counters, 0, -hold.amount.nanos())?;
            let now_nanos = ratelimit::nanos_from_millis(now_ms);
            for (draw, delta) in &release.corrections {
                let (tat, version) = &tats[draw.bucket.id.as_str()];
                let adjusted = ratelimit::adjust(&draw.bucket, *tat, *delta, now_nanos);
                self.write_tat(&mut writes, &draw.bucket.id, adjusted, *version)?;
            }
            // Conditioned on the version read: an extension or a batch since would change the
            // amount this gives back.
            self.close_hold_item(
                &mut writes,
                lease_id,
                Some(stored.version),
                "released",
                now_ms,
            )?;
            Ok(Attempt::Write(writes, ()))
        })
        .await
    }

    pub(super) async fn settle_lease_batch(
        &self,
        batch: &[LeasedUsage],
    ) -> StoreResult<Vec<Settled>> {
        let mut answers: Vec<Option<Settled>> = vec![None; batch.len()];
        let mut by_lease: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, leased) in batch.iter().enumerate() {
            by_lease.entry(&leased.lease_id).or_default().push(index);
        }
        for (lease_id, indices) in by_lease {
            for chunk in chunks_within_limit(batch, &indices) {
                let calls: Vec<&LeasedUsage> = chunk.iter().map(|index| &batch[*index]).collect();
                let settled = match self.settle_on_open_lease(lease_id, &calls).await? {
                    Some(settled) => settled,
                    None => self.settle_late(lease_id, &calls).await?,
                };
                for (index, answer) in chunk.iter().zip(settled) {
                    answers[*index] = Some(answer);
                }
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.ok_or_else(|| unavailable("a leased call was not settled")))
            .collect()
    }

    /// Settles `calls` against their lease's hold in one transaction; none if the lease is
    /// closed.
    async fn settle_on_open_lease(
        &self,
        lease_id: &str,
        calls: &[&LeasedUsage],
    ) -> StoreResult<Option<Vec<Settled>>> {
        self.atomically("settle leased calls", || async {
            let Some(Stored {
                mut hold,
                open,
                version,
            }) = self.stored_lease(lease_id).await?
            else {
                return Err(StoreError::Invalid(format!(
                    "usage names lease {lease_id}, which was never taken"
                )));
            };
            if !open {
                return Ok(Attempt::Done(None));
            }
            let keys: Vec<_> = calls
                .iter()
                .map(|call| item::usage(&call.usage.request_id))
                .collect();
            let seen = try_join_all(keys.iter().map(|key| self.get(key))).await?;
            let now_ms = clock::unix_millis();
            let mut writes = Writes::default();
            let mut moves = BTreeMap::new();
            let mut rollups = RollupAdds::default();
            let mut total = Money::ZERO;
            let mut settled = Vec::with_capacity(calls.len());
            for (call, seen) in calls.iter().zip(seen) {
                if seen.is_some() {
                    settled.push(Settled::Duplicate);
                    continue;
                }
                let usage = &call.usage;
                let charged = usage.cost.max(Money::ZERO);
                total = Money::from_nanos(total.nanos() + charged.nanos());
                let loss =
                    (call.loss > Money::ZERO).then(|| Posting::loss(&hold.tenant_id, call.loss));
                for posting in lease::batch_posting(&hold, charged).iter().chain(&loss) {
                    let id = format!("{}:{}", posting.kind.as_str(), usage.request_id);
                    self.record_transaction(
                        &mut writes,
                        &id,
                        posting,
                        Some(&usage.request_id),
                        None,
                        None,
                        now_ms,
                    )?;
                    add_moves(&mut moves, posting);
                }
                writes.create(&self.table, usage_item(usage)?)?;
                rollups.add(usage);
                settled.push(Settled::Recorded { charged });
            }
            self.move_accounts(&mut writes, moves, &HashMap::new())?;
            rollups.write(&mut writes, &self.table)?;
            if total > Money::ZERO {
                let (values, counters) = self.lease_counters(&hold).await?;
                self.move_counters(&mut writes, &counters, total.nanos(), -total.nanos())?;
                let crossings = admission::crossings(&hold.caps, &values, total);
                self.write_alerts(&mut writes, &hold.tenant_id, &crossings, now_ms)?;
                hold.amount = Money::from_nanos(hold.amount.nanos() - total.nanos());
                self.rewrite_lease(&mut writes, &hold, version)?;
            }
            Ok(Attempt::Write(writes, Some(settled)))
        })
        .await
    }

    /// Settles calls whose lease closed before their usage was written (their replica was
    /// gone past its expiry): each charged from the balance, like any overdraw.
    async fn settle_late(
        &self,
        lease_id: &str,
        calls: &[&LeasedUsage],
    ) -> StoreResult<Vec<Settled>> {
        let Some(stored) = self.stored_lease(lease_id).await? else {
            return Err(StoreError::Invalid(format!("no lease {lease_id}")));
        };
        let mut settled = Vec::with_capacity(calls.len());
        for call in calls {
            let answer = self
                .atomically("settle a late leased call", || async {
                    let usage_key = item::usage(&call.usage.request_id);
                    if self.get(&usage_key).await?.is_some() {
                        return Ok(Attempt::Done(Settled::Duplicate));
                    }
                    let late = lease::late(&stored.hold, &call.usage.request_id);
                    let cost = Money::from_nanos(call.usage.cost.nanos() + call.loss.nanos());
                    let mut writes = Writes::default();
                    let charged = self
                        .settle_hold(&mut writes, &late, Some(cost), 0, clock::unix_millis())
                        .await?;
                    let mut usage = call.usage.clone();
                    usage.cost = charged;
                    writes.create(&self.table, usage_item(&usage)?)?;
                    let mut rollups = RollupAdds::default();
                    rollups.add(&usage);
                    rollups.write(&mut writes, &self.table)?;
                    Ok(Attempt::Write(writes, Settled::Recorded { charged }))
                })
                .await?;
            settled.push(answer);
        }
        Ok(settled)
    }
}

/// `indices` (calls of one lease) in runs that each fit one transaction: a run closes before a
/// call whose own items and new rollups would pass DynamoDB's limit.
fn chunks_within_limit(batch: &[LeasedUsage], indices: &[usize]) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<usize> = Vec::new();
    let mut rollups = RollupAdds::default();
    for &index in indices {
        let mut with = rollups.clone();
        with.add(&batch[index].usage);
        let items = (chunk.len() + 1) * ITEMS_PER_CALL + with.len() + ITEMS_BESIDES_CALLS;
        if items > MOST_ITEMS && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            rollups = RollupAdds::default();
            rollups.add(&batch[index].usage);
        } else {
            rollups = with;
        }
        chunk.push(index);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}
