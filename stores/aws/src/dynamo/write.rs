//! Atomic changes across items: optimistic concurrency on `TransactWriteItems`.
//!
//! Every item a decision depends on carries a version `v`. A change reads the items (strongly
//! consistent), decides with the rules in `ferry-core`, then writes everything in one
//! transaction that is conditioned on each read item's version being unchanged (or on the
//! item still being absent) and bumps the version of every item it writes. If another writer
//! got there first, DynamoDB cancels the whole transaction and the change starts over from
//! its reads. Items changed without being read (a global funding account) are bumped without
//! a condition, so concurrent readers of them still notice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update,
};
use ferry_core::ports::{StoreError, StoreResult};

use super::DynamoStore;
use super::item::{Attributes, Key, n, unavailable};
use ferry_clock as clock;

/// The version attribute.
pub const VERSION: &str = "v";

/// An item's version as read: `None` when the item did not exist.
pub type Version = Option<i64>;

/// How many times a change is retried when another writer wins the race.
const ATTEMPTS: u32 = 40;

/// The writes of one atomic change.
#[derive(Debug, Default)]
pub struct Writes {
    items: Vec<TransactWriteItem>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Writes a new item; fails the change if it exists (the item is an idempotency guard).
    pub fn create(&mut self, table: &str, item: Attributes) -> StoreResult<()> {
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(unavailable)?;
        self.items
            .push(TransactWriteItem::builder().put(put).build());
        Ok(())
    }

    /// Writes an item whatever was there.
    pub fn put(&mut self, table: &str, item: Attributes) -> StoreResult<()> {
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .build()
            .map_err(unavailable)?;
        self.items
            .push(TransactWriteItem::builder().put(put).build());
        Ok(())
    }

    /// Deletes an item, whether or not it exists.
    pub fn delete(&mut self, table: &str, key: &Key) -> StoreResult<()> {
        let delete = Delete::builder()
            .table_name(table)
            .set_key(Some(key.attributes()))
            .build()
            .map_err(unavailable)?;
        self.items
            .push(TransactWriteItem::builder().delete(delete).build());
        Ok(())
    }

    /// Updates an item. `read`: `Some(version)` if the change read it (the write then holds
    /// only if it is unchanged since), `None` if not. The version is bumped either way.
    /// `set` and `add` are `(attribute, value)` pairs; `remove` attributes are deleted.
    pub fn update(
        &mut self,
        table: &str,
        key: &Key,
        read: Option<Version>,
        change: Change,
    ) -> StoreResult<()> {
        let mut names = HashMap::from([("#v".to_owned(), VERSION.to_owned())]);
        let mut values = HashMap::from([(":one".to_owned(), n(1))]);
        let mut set = Vec::new();
        for (index, (name, value)) in change.set.into_iter().enumerate() {
            names.insert(format!("#s{index}"), name);
            values.insert(format!(":s{index}"), value);
            set.push(format!("#s{index} = :s{index}"));
        }
        let mut add = vec!["#v :one".to_owned()];
        for (index, (name, value)) in change.add.into_iter().enumerate() {
            names.insert(format!("#a{index}"), name);
            values.insert(format!(":a{index}"), n(value));
            add.push(format!("#a{index} :a{index}"));
        }
        let mut remove = Vec::new();
        for (index, name) in change.remove.into_iter().enumerate() {
            names.insert(format!("#r{index}"), name);
            remove.push(format!("#r{index}"));
        }
        let mut expression = format!("ADD {}", add.join(", "));
        if !set.is_empty() {
            expression.push_str(&format!(" SET {}", set.join(", ")));
        }
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let mut condition = change.condition;
        match read {
            None => {}
            Some(None) => condition.push("attribute_not_exists(pk)".to_owned()),
            Some(Some(version)) => {
                values.insert(":read".to_owned(), n(version));
                condition.push(version_condition(version).to_owned());
            }
        }
        for (name, value) in change.condition_values {
            values.insert(name, value);
        }
        names.extend(change.condition_names);
        let update = Update::builder()
            .table_name(table)
            .set_key(Some(key.attributes()))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .set_condition_expression((!condition.is_empty()).then(|| condition.join(" AND ")))
            .build()
            .map_err(unavailable)?;
        self.items
            .push(TransactWriteItem::builder().update(update).build());
        Ok(())
    }

    /// Holds the change to an item it read but does not write.
    pub fn unchanged(&mut self, table: &str, key: &Key, version: Version) -> StoreResult<()> {
        let (condition, values) = match version {
            None => ("attribute_not_exists(pk)".to_owned(), None),
            Some(version) => (
                version_condition(version).to_owned(),
                Some(HashMap::from([(":read".to_owned(), n(version))])),
            ),
        };
        let names = version.map(|_| HashMap::from([("#v".to_owned(), VERSION.to_owned())]));
        let check = ConditionCheck::builder()
            .table_name(table)
            .set_key(Some(key.attributes()))
            .condition_expression(condition)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .build()
            .map_err(unavailable)?;
        self.items
            .push(TransactWriteItem::builder().condition_check(check).build());
        Ok(())
    }
}

/// The condition that an item is still at `version`. An item written whole (`create`, `put`)
/// has no version attribute until it is first updated: it reads as version 0.
fn version_condition(version: i64) -> &'static str {
    if version == 0 {
        "(attribute_not_exists(#v) OR #v = :read)"
    } else {
        "#v = :read"
    }
}

/// What an update does to one item.
#[derive(Debug, Default)]
pub struct Change {
    pub set: Vec<(String, AttributeValue)>,
    pub add: Vec<(String, i64)>,
    pub remove: Vec<String>,
    /// Extra conditions (besides the version's), with their `:placeholders`' values.
    pub condition: Vec<String>,
    pub condition_names: Vec<(String, String)>,
    pub condition_values: Vec<(String, AttributeValue)>,
}

impl Change {
    pub fn set(mut self, name: &str, value: AttributeValue) -> Change {
        self.set.push((name.to_owned(), value));
        self
    }

    pub fn add(mut self, name: &str, amount: i64) -> Change {
        self.add.push((name.to_owned(), amount));
        self
    }

    pub fn remove(mut self, name: &str) -> Change {
        self.remove.push(name.to_owned());
        self
    }

    /// Holds the change only while `attribute` = `value`.
    pub fn only_if_equal(mut self, attribute: &str, value: AttributeValue) -> Change {
        let index = self.condition.len();
        self.condition.push(format!("#c{index} = :c{index}"));
        self.condition_names
            .push((format!("#c{index}"), attribute.to_owned()));
        self.condition_values.push((format!(":c{index}"), value));
        self
    }
}

/// How one attempt of a change ended.
pub enum Attempt<T> {
    /// Nothing to write: the answer stands as read.
    Done(T),
    /// Write these; if they commit, the answer stands.
    Write(Writes, T),
}

/// How a sent transaction ended.
enum Sent {
    Committed,
    /// Another writer won: read again and decide again.
    LostRace,
}

/// How many times one transaction is resent (same token) while its outcome is unknown.
const RESENDS: u32 = 5;

impl DynamoStore {
    /// Runs `attempt` (reads, a decision, writes) until its writes commit unopposed.
    pub(super) async fn atomically<T, F, Fut>(&self, what: &str, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<Attempt<T>>>,
    {
        for round in 0..ATTEMPTS {
            let (writes, answer) = match attempt().await? {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Write(writes, answer) => (writes, answer),
            };
            if writes.is_empty() {
                return Ok(answer);
            }
            match self.send(what, writes.items).await? {
                Sent::Committed => return Ok(answer),
                Sent::LostRace => {
                    // Back off a little, more each round, with jitter so the racers do not
                    // collide again.
                    let jitter = u64::from(clock::random_bytes::<1>()[0]) % 8;
                    let millis = (u64::from(round.min(6)) * 4 + jitter).max(1);
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                }
            }
        }
        Err(StoreError::Busy(format!(
            "{what}: gave up after {ATTEMPTS} conflicting attempts"
        )))
    }

    /// Sends one transaction. While its outcome is unknown (the request failed in transit, or
    /// DynamoDB is still applying an earlier send) it is resent as it was, with the same
    /// token, which DynamoDB applies at most once: deciding again instead could apply a
    /// change twice (a posting without an idempotency key).
    async fn send(&self, what: &str, items: Vec<TransactWriteItem>) -> StoreResult<Sent> {
        let token = request_token();
        let mut resends = 0;
        loop {
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(&token)
                .send()
                .await;
            let error = match sent {
                Ok(_) => {
                    let counts = &self.sent;
                    counts.transactions.fetch_add(1, Ordering::Relaxed);
                    let items = u64::try_from(items.len()).unwrap_or(u64::MAX);
                    counts.items.fetch_add(items, Ordering::Relaxed);
                    return Ok(Sent::Committed);
                }
                Err(error) => error,
            };
            let unknown = match error.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled))
                    if cancelled.cancellation_reasons().iter().all(|reason| {
                        matches!(
                            reason.code(),
                            None | Some("None" | "ConditionalCheckFailed" | "TransactionConflict")
                        )
                    }) =>
                {
                    return Ok(Sent::LostRace);
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
                Some(_) => false,
                // No answer (a timeout, a dropped connection): it may have committed.
                None => true,
            };
            if !unknown || resends >= RESENDS {
                return Err(StoreError::Unavailable(format!(
                    "{what}: {}",
                    error
                        .as_service_error()
                        .and_then(|service| service.message().map(str::to_owned))
                        .unwrap_or_else(|| format!("{error:?}"))
                )));
            }
            resends += 1;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(resends))).await;
        }
    }
}

/// A token for one `TransactWriteItems` attempt: the SDK's own retries of that attempt reuse
/// it, so DynamoDB applies the attempt at most once.
fn request_token() -> String {
    clock::random_bytes::<16>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
