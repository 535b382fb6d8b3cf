//! Items: building and reading DynamoDB attribute maps, and the key of each kind of item.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::ports::{StoreError, StoreResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::schema::{INDEX_PARTITION_KEY, INDEX_SORT_KEY, PARTITION_KEY, SORT_KEY};

pub type Attributes = HashMap<String, AttributeValue>;

/// The primary key of an item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Key {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }

    /// An item that is alone in its partition.
    pub fn single(pk: impl Into<String>) -> Key {
        let pk = pk.into();
        let sk = pk.split('#').next().unwrap_or_default().to_owned();
        Key { pk, sk }
    }

    pub fn attributes(&self) -> Attributes {
        HashMap::from([
            (PARTITION_KEY.to_owned(), s(&self.pk)),
            (SORT_KEY.to_owned(), s(&self.sk)),
        ])
    }
}

// The kinds of item. A `#` separates a kind from its id; ids never start a key, so no id can
// reach another kind's items.
pub fn tenant(id: &str) -> Key {
    Key::single(format!("TENANT#{id}"))
}
pub fn api_key(public_id: &str) -> Key {
    Key::single(format!("KEY#{public_id}"))
}
pub fn model(id: &str) -> Key {
    Key::single(format!("MODEL#{id}"))
}
pub fn price(model: &str, effective_from_ms: u64, deployment: Option<&str>) -> Key {
    Key::new(
        format!("PRICE#{model}"),
        format!("{}#{}", padded(effective_from_ms), deployment.unwrap_or("")),
    )
}
pub fn bucket(id: &str) -> Key {
    Key::single(format!("BUCKET#{id}"))
}
pub fn account(id: &str) -> Key {
    Key::single(format!("ACCOUNT#{id}"))
}
pub fn counter(id: &str) -> Key {
    Key::single(format!("COUNTER#{id}"))
}
pub fn hold(request_id: &str) -> Key {
    Key::single(format!("HOLD#{request_id}"))
}
pub fn transaction(id: &str) -> Key {
    Key::single(format!("TXN#{id}"))
}
pub fn idempotency(key: &str) -> Key {
    Key::single(format!("IDEMPOTENCY#{key}"))
}
pub fn usage(request_id: &str) -> Key {
    Key::single(format!("USAGE#{request_id}"))
}
pub fn alert(id: &str) -> Key {
    Key::single(format!("ALERT#{id}"))
}
/// One counter bumped with every key creation and revocation.
/// A tenant's usage of one model by one key on one UTC day: `day#model#key` (key ids hold
/// no `#`, so the last part is the key's; `-` for none).
pub fn rollup(tenant_id: &str, day: &str, model: &str, key_id: Option<&str>) -> Key {
    Key::new(
        rollups(tenant_id),
        format!("{day}#{model}#{}", key_id.unwrap_or("-")),
    )
}
pub fn rollups(tenant_id: &str) -> String {
    format!("ROLLUP#{tenant_id}")
}
/// The same for all of the tenant's keys together: `day#model`, in a partition of its own so
/// a report not broken down by key reads only these.
pub fn rollup_all_keys(tenant_id: &str, day: &str, model: &str) -> Key {
    Key::new(rollups_all_keys(tenant_id), format!("{day}#{model}"))
}
pub fn rollups_all_keys(tenant_id: &str) -> String {
    format!("ROLLUP#{tenant_id}#ALL")
}
/// A tenant's spend by one key over one UTC month (`-`: calls made without a key).
pub fn key_month(tenant_id: &str, month: &str, key_id: Option<&str>) -> Key {
    Key::new(key_months(tenant_id, month), key_id.unwrap_or("-"))
}
pub fn key_months(tenant_id: &str, month: &str) -> String {
    format!("KEYSPEND#{tenant_id}#{month}")
}
pub fn session(id_hash: &str) -> Key {
    Key::single(format!("SESSION#{id_hash}"))
}
pub fn key_set() -> Key {
    Key::single("KEYSET")
}
/// How many partitions the key directory is spread over.
pub const KEY_DIRECTORY_SHARDS: u8 = 16;
/// A live key's entry in the key directory: base-table partitions that a strongly consistent
/// query lists (the index is only eventually consistent, and a replica rebuilding its key
/// filter must not miss a key created a moment ago).
pub fn key_directory_entry(public_id: &str) -> Key {
    let shard = public_id
        .bytes()
        .fold(0u8, |sum, byte| sum.wrapping_add(byte))
        % KEY_DIRECTORY_SHARDS;
    Key::new(key_directory_shard(shard), public_id)
}
pub fn key_directory_shard(shard: u8) -> String {
    format!("KEYDIR#{shard:02}")
}
/// A kept answer of the response cache's shared level, by its key's hex.
pub fn cache_entry(key_hex: &str) -> Key {
    Key::single(format!("CACHE#{key_hex}"))
}
pub fn invoice(id: &str) -> Key {
    Key::single(format!("INVOICE#{id}"))
}

// The index's partitions: each one listing, in its sort key's order.
pub const TENANTS: &str = "TENANTS";
pub const MODELS: &str = "MODELS";
pub const OPERATOR_KEYS: &str = "OPERATOR#KEYS";
/// Holds still open, by expiry: a sparse partition (a hold leaves it when it closes).
pub const OPEN_HOLDS: &str = "HOLDS#OPEN";
pub fn tenant_keys(tenant_id: &str) -> String {
    format!("TENANT#{tenant_id}#KEYS")
}
pub fn tenant_transactions(tenant_id: &str) -> String {
    format!("TENANT#{tenant_id}#TXNS")
}
pub fn tenant_usage(tenant_id: &str) -> String {
    format!("TENANT#{tenant_id}#USAGE")
}
pub fn tenant_alerts(tenant_id: &str) -> String {
    format!("TENANT#{tenant_id}#ALERTS")
}
pub fn tenant_invoices(tenant_id: &str) -> String {
    format!("TENANT#{tenant_id}#INVOICES")
}

/// Numbers in sort keys are zero-padded so that text order is numeric order.
pub fn padded(number: u64) -> String {
    format!("{number:020}")
}

pub fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

pub fn n(number: impl ToString) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// Builds an item: its key, its place in the index, and its attributes.
#[derive(Debug, Clone)]
pub struct ItemBuilder(Attributes);

impl ItemBuilder {
    pub fn new(key: &Key) -> ItemBuilder {
        ItemBuilder(key.attributes())
    }

    pub fn indexed(mut self, partition: impl Into<String>, sort: impl Into<String>) -> Self {
        self.0.insert(
            INDEX_PARTITION_KEY.to_owned(),
            AttributeValue::S(partition.into()),
        );
        self.0
            .insert(INDEX_SORT_KEY.to_owned(), AttributeValue::S(sort.into()));
        self
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), s(value));
        self
    }

    pub fn number(mut self, name: &str, value: impl ToString) -> Self {
        self.0.insert(name.to_owned(), n(value));
        self
    }

    pub fn json(self, name: &str, value: &impl Serialize) -> StoreResult<Self> {
        let text = serde_json::to_string(value).map_err(unavailable)?;
        Ok(self.text(name, &text))
    }

    pub fn build(self) -> Attributes {
        self.0
    }
}

pub fn get_text<'a>(item: &'a Attributes, name: &str) -> StoreResult<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(text)) => Ok(text),
        _ => Err(unavailable(format!(
            "item lacks the text attribute `{name}`"
        ))),
    }
}

pub fn get_i64(item: &Attributes, name: &str) -> StoreResult<Option<i64>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(number)) => number
            .parse()
            .map(Some)
            .map_err(|_| unavailable(format!("`{name}` is not an integer: {number}"))),
        Some(_) => Err(unavailable(format!("`{name}` is not a number"))),
    }
}

pub fn get_u64(item: &Attributes, name: &str) -> StoreResult<Option<u64>> {
    Ok(get_i64(item, name)?.map(|value| u64::try_from(value).unwrap_or(0)))
}

pub fn get_json<T: DeserializeOwned>(item: &Attributes, name: &str) -> StoreResult<T> {
    serde_json::from_str(get_text(item, name)?).map_err(unavailable)
}

pub fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}
