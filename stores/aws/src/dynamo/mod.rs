//! `DynamoStore`: the store ports on one DynamoDB table (see ARCHITECTURE.md for its design).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType, TimeToLiveSpecification,
};
use ferry_core::Money;
use ferry_core::admission::Budget;
use ferry_core::cache::{CacheKey, Entry as CacheEntry};
use ferry_core::model::ModelSpec;
use ferry_core::ports::{
    KeyRecord, Page, PageRequest, RateLimits, SessionRecord, SharedCache, Store, StoreError,
    StoreResult, StoredModel, Tenant, TenantPolicy,
};
use ferry_core::principal::Role;
use serde::{Deserialize, Serialize};

mod accounts;
mod item;
mod leases;
mod write;

use item::{Attributes, ItemBuilder, Key, get_json, get_u64, padded, unavailable};
use write::{Attempt, Change, Writes};

use crate::schema::{
    INDEX, INDEX_PARTITION_KEY, INDEX_SORT_KEY, PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE,
};

/// An item's sort key in the index: the cursor of a page that ends with it.
fn index_sort_key(item: &Attributes) -> String {
    item.get(INDEX_SORT_KEY)
        .and_then(|value| value.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

/// Which sort keys of an index partition a query reads.
#[derive(Debug, Clone, Copy)]
enum SortKeys<'a> {
    All,
    /// Inclusive at both ends.
    Between(&'a str, &'a str),
    Above(&'a str),
    Below(&'a str),
}

/// A session's last recorded use, an attribute of its own so a touch rewrites only it.
const SESSION_SEEN: &str = "last_seen_at";

/// The store on a DynamoDB table. Cheap to clone; every replica of every function shares the
/// table, and every atomic change is a conditional write (see `write.rs`).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    sent: Arc<SentCounts>,
}

/// The atomic writes (`TransactWriteItems`) this store has committed, and their items: what
/// DynamoDB bills twice the write units of an item for.
#[derive(Debug, Default)]
pub struct SentCounts {
    pub transactions: AtomicU64,
    pub items: AtomicU64,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            sent: Arc::default(),
        }
    }

    /// The atomic writes committed so far (by this handle and its clones), and their items.
    pub fn writes_committed(&self) -> (u64, u64) {
        (
            self.sent.transactions.load(Ordering::Relaxed),
            self.sent.items.load(Ordering::Relaxed),
        )
    }

    /// On `table`, with the AWS configuration given (see [`crate::sdk_config`]).
    pub fn from_config(config: &aws_config::SdkConfig, table: impl Into<String>) -> DynamoStore {
        DynamoStore::new(Client::new(config), table)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table as `iac/terraform/modules/data` does (for tests and local servers;
    /// in AWS the Terraform owns it); false if it exists already.
    pub async fn create_table(&self) -> StoreResult<bool> {
        let string = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(unavailable)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(unavailable)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(INDEX)
            .key_schema(key(INDEX_PARTITION_KEY, KeyType::Hash)?)
            .key_schema(key(INDEX_SORT_KEY, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(unavailable)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string(PARTITION_KEY)?)
            .attribute_definitions(string(SORT_KEY)?)
            .attribute_definitions(string(INDEX_PARTITION_KEY)?)
            .attribute_definitions(string(INDEX_SORT_KEY)?)
            .key_schema(key(PARTITION_KEY, KeyType::Hash)?)
            .key_schema(key(SORT_KEY, KeyType::Range)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(error) if error.code() == Some("ResourceInUseException") => return Ok(false),
            Err(error) => return Err(unavailable(describe(&error))),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL_ATTRIBUTE)
                    .enabled(true)
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(true)
    }

    async fn get(&self, key: &Key) -> StoreResult<Option<Attributes>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key.attributes()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(output.item().cloned())
    }

    /// Writes `item` unless its key exists; false when it did.
    async fn create(&self, item: Attributes) -> StoreResult<bool> {
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(unavailable(describe(&error))),
        }
    }

    async fn put(&self, item: Attributes) -> StoreResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(())
    }

    /// Every item of one index partition whose sort key lies in `[from, to]`, in sort-key
    /// order (newest first when `descending`), stopping after `limit` accepted by `keep`.
    async fn list(
        &self,
        partition: &str,
        range: Option<(&str, &str)>,
        descending: bool,
        limit: usize,
        keep: impl Fn(&Attributes) -> bool,
    ) -> StoreResult<Vec<Attributes>> {
        let sort_keys = range.map_or(SortKeys::All, |(from, to)| SortKeys::Between(from, to));
        self.query_index(partition, sort_keys, descending, limit, keep)
            .await
    }

    /// One page of an index partition in sort-key order (newest first when `descending`):
    /// the items after the cursor (the sort key of the previous page's last item) that `keep`
    /// accepts, each read by `read`, and the cursor of the next page.
    async fn page<T>(
        &self,
        partition: &str,
        page: &PageRequest,
        descending: bool,
        keep: impl Fn(&Attributes) -> bool,
        read: impl FnMut(Attributes) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let sort_keys = match page.after.as_deref() {
            None => SortKeys::All,
            Some(after) if descending => SortKeys::Below(after),
            Some(after) => SortKeys::Above(after),
        };
        let wanted = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let items = self
            .query_index(
                partition,
                sort_keys,
                descending,
                wanted.saturating_add(1),
                keep,
            )
            .await?;
        Page::from_overfetch(items, page.limit, index_sort_key).try_map(read)
    }

    async fn query_index(
        &self,
        partition: &str,
        sort_keys: SortKeys<'_>,
        descending: bool,
        limit: usize,
        keep: impl Fn(&Attributes) -> bool,
    ) -> StoreResult<Vec<Attributes>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .expression_attribute_names("#p", INDEX_PARTITION_KEY)
                .expression_attribute_values(":p", item::s(partition))
                .scan_index_forward(!descending)
                .limit(i32::try_from(limit).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            query = match sort_keys {
                SortKeys::All => query.key_condition_expression("#p = :p"),
                SortKeys::Between(from, to) => query
                    .key_condition_expression("#p = :p AND #s BETWEEN :from AND :to")
                    .expression_attribute_names("#s", INDEX_SORT_KEY)
                    .expression_attribute_values(":from", item::s(from))
                    .expression_attribute_values(":to", item::s(to)),
                SortKeys::Above(after) | SortKeys::Below(after) => query
                    .key_condition_expression(if matches!(sort_keys, SortKeys::Below(_)) {
                        "#p = :p AND #s < :after"
                    } else {
                        "#p = :p AND #s > :after"
                    })
                    .expression_attribute_names("#s", INDEX_SORT_KEY)
                    .expression_attribute_values(":after", item::s(after)),
            };
            let output = query
                .send()
                .await
                .map_err(|error| unavailable(describe(&error)))?;
            for item in output.items() {
                if keep(item) {
                    found.push(item.clone());
                    if found.len() >= limit {
                        return Ok(found);
                    }
                }
            }
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }

    /// The items of one base-table partition whose sort key lies in `[from, to]`, read
    /// strongly consistent, in sort-key order.
    async fn sorted_range(&self, pk: &str, from: &str, to: &str) -> StoreResult<Vec<Attributes>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#p = :p AND #s BETWEEN :from AND :to")
                .expression_attribute_names("#p", PARTITION_KEY)
                .expression_attribute_names("#s", SORT_KEY)
                .expression_attribute_values(":p", item::s(pk))
                .expression_attribute_values(":from", item::s(from))
                .expression_attribute_values(":to", item::s(to))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|error| unavailable(describe(&error)))?;
            found.extend(output.items().iter().cloned());
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }

    /// Every item of one base-table partition, read strongly consistent.
    async fn partition(&self, pk: &str) -> StoreResult<Vec<Attributes>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#p = :p")
                .expression_attribute_names("#p", PARTITION_KEY)
                .expression_attribute_values(":p", item::s(pk))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|error| unavailable(describe(&error)))?;
            found.extend(output.items().iter().cloned());
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }

    /// Every item of the table but the cache's (reconciliation only).
    async fn scan(&self) -> StoreResult<Vec<Attributes>> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                // Kept answers are large and not the books': never loaded here.
                .filter_expression("NOT begins_with(#pk, :cache)")
                .expression_attribute_names("#pk", PARTITION_KEY)
                .expression_attribute_values(":cache", item::s("CACHE#"))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|error| unavailable(describe(&error)))?;
            found.extend(output.items().iter().cloned());
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }
}

fn is_condition_failure<E: ProvideErrorMetadata>(
    error: &aws_sdk_dynamodb::error::SdkError<E>,
) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

/// An SDK error as one line: the service's code and message where there is one.
fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(
    error: &aws_sdk_dynamodb::error::SdkError<E>,
) -> String {
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => format!("{error:?}"),
    }
}

/// A key as stored: every field but the revocation, which is changed on its own.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    public_id: String,
    secret_hash: String,
    tenant_id: Option<String>,
    name: String,
    role: String,
    models: Option<Vec<String>>,
    limits: RateLimits,
    budgets: Vec<Budget>,
    credit_cap_nanos: Option<i64>,
    created_at: u64,
    expires_at: Option<u64>,
}

const REVOKED_AT: &str = "revoked_at";

fn key_item(key: &KeyRecord) -> StoreResult<Attributes> {
    let stored = StoredKey {
        id: key.id.clone(),
        public_id: key.public_id.clone(),
        secret_hash: key.secret_hash.clone(),
        tenant_id: key.tenant_id.clone(),
        name: key.name.clone(),
        role: key.role.as_str().to_owned(),
        models: key.models.clone(),
        limits: key.limits,
        budgets: key.budgets.clone(),
        credit_cap_nanos: key.credit_cap.map(Money::nanos),
        created_at: key.created_at,
        expires_at: key.expires_at,
    };
    let listing = match &key.tenant_id {
        Some(tenant_id) => item::tenant_keys(tenant_id),
        None => item::OPERATOR_KEYS.to_owned(),
    };
    let mut builder = ItemBuilder::new(&item::api_key(&key.public_id))
        .indexed(listing, format!("{}#{}", padded(key.created_at), key.id))
        .json("body", &stored)?;
    if let Some(revoked_at) = key.revoked_at {
        builder = builder.number(REVOKED_AT, revoked_at);
    }
    Ok(builder.build())
}

/// The key's entry in the key directory; it leaves with the key's expiry (TTL) or revocation.
fn key_directory_item(key: &KeyRecord) -> Attributes {
    let mut builder = ItemBuilder::new(&item::key_directory_entry(&key.public_id));
    if let Some(expires_at) = key.expires_at {
        builder = builder.number(TTL_ATTRIBUTE, expires_at);
    }
    builder.build()
}

fn key_from_item(item: &Attributes) -> StoreResult<KeyRecord> {
    let stored: StoredKey = get_json(item, "body")?;
    let role = Role::parse(&stored.role)
        .ok_or_else(|| unavailable(format!("unknown role {}", stored.role)))?;
    Ok(KeyRecord {
        id: stored.id,
        public_id: stored.public_id,
        secret_hash: stored.secret_hash,
        tenant_id: stored.tenant_id,
        name: stored.name,
        role,
        models: stored.models,
        limits: stored.limits,
        budgets: stored.budgets,
        credit_cap: stored.credit_cap_nanos.map(Money::from_nanos),
        created_at: stored.created_at,
        expires_at: stored.expires_at,
        revoked_at: get_u64(item, REVOKED_AT)?,
    })
}

/// A tenant's policy (limits, budgets, prompt logging) is an attribute of its own, changed
/// without rewriting the rest.
fn tenant_from_item(item: &Attributes) -> StoreResult<Tenant> {
    let mut tenant: Tenant = get_json(item, "body")?;
    let policy: TenantPolicy = get_json(item, "policy")?;
    tenant.set_policy(policy);
    Ok(tenant)
}

fn model_from_item(item: &Attributes) -> StoreResult<StoredModel> {
    Ok(StoredModel {
        spec: get_json(item, "spec")?,
        created_at: get_u64(item, "created_at")?.unwrap_or(0),
    })
}

#[async_trait]
impl Store for DynamoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.get(&Key::single("PING")).await.map(|_| ())
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let item = ItemBuilder::new(&item::tenant(&tenant.id))
            .indexed(item::TENANTS, &tenant.id)
            .json("body", tenant)?
            .json("policy", &tenant.policy())?
            .text("billing", tenant.billing.as_str())
            .build();
        if self.create(item).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict("tenant".into()))
        }
    }

    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        self.get(&item::tenant(id))
            .await?
            .as_ref()
            .map(tenant_from_item)
            .transpose()
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.list(item::TENANTS, None, false, usize::MAX, |_| true)
            .await?
            .iter()
            .map(tenant_from_item)
            .collect()
    }

    async fn tenants_page(
        &self,
        search: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Tenant>> {
        let search = search
            .filter(|text| !text.is_empty())
            .map(str::to_lowercase);
        let matches = |item: &Attributes| {
            let Some(search) = &search else { return true };
            tenant_from_item(item).is_ok_and(|tenant| {
                tenant.id.starts_with(search.as_str())
                    || tenant.name.to_lowercase().contains(search.as_str())
            })
        };
        self.page(item::TENANTS, page, false, matches, |found| {
            tenant_from_item(&found)
        })
        .await
    }

    async fn update_tenant_policy(&self, id: &str, policy: &TenantPolicy) -> StoreResult<bool> {
        let policy = serde_json::to_string(policy).map_err(unavailable)?;
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item::tenant(id).attributes()))
            .update_expression("SET #policy = :policy")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#policy", "policy")
            .expression_attribute_values(":policy", AttributeValue::S(policy))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(unavailable(describe(&error))),
        }
    }

    async fn create_key(&self, key: &KeyRecord) -> StoreResult<()> {
        // The key and the key set's version change together, so no replica can miss a key.
        let created = self
            .atomically("create key", || async {
                if self.get(&item::api_key(&key.public_id)).await?.is_some() {
                    return Ok(Attempt::Done(false));
                }
                let mut writes = Writes::default();
                writes.create(&self.table, key_item(key)?)?;
                writes.put(&self.table, key_directory_item(key))?;
                writes.update(&self.table, &item::key_set(), None, Change::default())?;
                Ok(Attempt::Write(writes, true))
            })
            .await?;
        if created {
            Ok(())
        } else {
            Err(StoreError::Conflict("key".into()))
        }
    }

    async fn find_key(&self, public_id: &str) -> StoreResult<Option<KeyRecord>> {
        self.get(&item::api_key(public_id))
            .await?
            .as_ref()
            .map(key_from_item)
            .transpose()
    }

    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRecord>> {
        self.list(
            &item::tenant_keys(tenant_id),
            None,
            false,
            usize::MAX,
            |_| true,
        )
        .await?
        .iter()
        .map(key_from_item)
        .collect()
    }

    async fn keys_page(&self, tenant_id: &str, page: &PageRequest) -> StoreResult<Page<KeyRecord>> {
        self.page(
            &item::tenant_keys(tenant_id),
            page,
            true,
            |_| true,
            |found| key_from_item(&found),
        )
        .await
    }

    async fn revoke_key(&self, key_id: &str, at: u64) -> StoreResult<bool> {
        let Some(public_id) = key_id.strip_prefix("key_") else {
            return Ok(false);
        };
        let key = item::api_key(public_id);
        self.atomically("revoke key", || async {
            let live = self
                .get(&key)
                .await?
                .is_some_and(|item| !item.contains_key(REVOKED_AT));
            if !live {
                return Ok(Attempt::Done(false));
            }
            let mut change = Change::default().set(REVOKED_AT, item::n(at));
            change
                .condition
                .push("attribute_not_exists(#revoked)".into());
            change
                .condition_names
                .push(("#revoked".into(), REVOKED_AT.into()));
            let mut writes = Writes::default();
            writes.update(&self.table, &key, None, change)?;
            writes.delete(&self.table, &item::key_directory_entry(public_id))?;
            writes.update(&self.table, &item::key_set(), None, Change::default())?;
            Ok(Attempt::Write(writes, true))
        })
        .await
    }

    async fn list_operator_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        self.list(item::OPERATOR_KEYS, None, true, usize::MAX, |item| {
            !item.contains_key(REVOKED_AT)
        })
        .await?
        .iter()
        .map(key_from_item)
        .collect()
    }

    async fn key_set_version(&self) -> StoreResult<u64> {
        let version = self.get(&item::key_set()).await?;
        Ok(match version {
            Some(item) => get_u64(&item, write::VERSION)?.unwrap_or_default(),
            None => 0,
        })
    }

    async fn live_key_ids(&self, now: u64) -> StoreResult<Vec<String>> {
        let mut ids = Vec::new();
        for shard in 0..item::KEY_DIRECTORY_SHARDS {
            for entry in self.partition(&item::key_directory_shard(shard)).await? {
                // Expired entries linger until DynamoDB's TTL sweep removes them.
                let live =
                    get_u64(&entry, TTL_ATTRIBUTE)?.is_none_or(|expires_at| now < expires_at);
                if live {
                    ids.push(item::get_text(&entry, SORT_KEY)?.to_owned());
                }
            }
        }
        Ok(ids)
    }

    async fn put_model(&self, model: &ModelSpec, now: u64) -> StoreResult<StoredModel> {
        let spec = serde_json::to_string(model).map_err(unavailable)?;
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item::model(&model.id).attributes()))
            .update_expression(
                "SET #spec = :spec, #updated = :now, #created = if_not_exists(#created, :now), #ip = :ip, #is = :is",
            )
            .expression_attribute_names("#spec", "spec")
            .expression_attribute_names("#updated", "updated_at")
            .expression_attribute_names("#created", "created_at")
            .expression_attribute_names("#ip", INDEX_PARTITION_KEY)
            .expression_attribute_names("#is", INDEX_SORT_KEY)
            .expression_attribute_values(":spec", AttributeValue::S(spec))
            .expression_attribute_values(":now", item::n(now))
            .expression_attribute_values(":ip", item::s(item::MODELS))
            .expression_attribute_values(":is", item::s(&model.id))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        let created_at = output
            .attributes()
            .map(|attributes| get_u64(attributes, "created_at"))
            .transpose()?
            .flatten()
            .unwrap_or(now);
        Ok(StoredModel {
            spec: model.clone(),
            created_at,
        })
    }

    async fn get_model(&self, id: &str) -> StoreResult<Option<StoredModel>> {
        self.get(&item::model(id))
            .await?
            .as_ref()
            .map(model_from_item)
            .transpose()
    }

    async fn list_models(&self) -> StoreResult<Vec<StoredModel>> {
        self.list(item::MODELS, None, false, usize::MAX, |_| true)
            .await?
            .iter()
            .map(model_from_item)
            .collect()
    }

    async fn delete_model(&self, id: &str) -> StoreResult<bool> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(item::model(id).attributes()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(output.attributes().is_some_and(|old| !old.is_empty()))
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        // The table's TTL sweeps a session out after it ends.
        let item = ItemBuilder::new(&item::session(&session.id_hash))
            .json("body", session)?
            .number(SESSION_SEEN, session.last_seen_at)
            .number(TTL_ATTRIBUTE, session.expires_at)
            .build();
        if self.create(item).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict("session".into()))
        }
    }

    async fn find_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let Some(found) = self.get(&item::session(id_hash)).await? else {
            return Ok(None);
        };
        let mut session: SessionRecord = get_json(&found, "body")?;
        session.last_seen_at = get_u64(&found, SESSION_SEEN)?.unwrap_or(session.last_seen_at);
        Ok(Some(session))
    }

    async fn touch_session(&self, id_hash: &str, seen_at: u64) -> StoreResult<()> {
        // Only an existing session, and only forward: a touch never revives a deleted one.
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item::session(id_hash).attributes()))
            .update_expression("SET #seen = :seen")
            .condition_expression("attribute_exists(pk) AND #seen < :seen")
            .expression_attribute_names("#seen", SESSION_SEEN)
            .expression_attribute_values(":seen", item::n(seen_at))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()),
            Err(error) => Err(unavailable(describe(&error))),
        }
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(item::session(id_hash).attributes()))
            .send()
            .await
            .map_err(|error| unavailable(describe(&error)))?;
        Ok(())
    }
}

/// A DynamoDB item holds at most 400 KB; larger answers are not kept in the shared level.
const MAX_CACHED_RESPONSE_BYTES: usize = 350_000;

#[async_trait]
impl SharedCache for DynamoStore {
    async fn get(&self, key: &CacheKey, now_ms: u64) -> StoreResult<Option<CacheEntry>> {
        let Some(found) = self.get(&item::cache_entry(&key.to_string())).await? else {
            return Ok(None);
        };
        // DynamoDB's TTL sweep is lazy: the expiry in the item decides.
        let expires_at_ms = get_u64(&found, "expires_ms")?.unwrap_or_default();
        if expires_at_ms <= now_ms {
            return Ok(None);
        }
        let response =
            serde_json::from_str(item::get_text(&found, "response")?).map_err(unavailable)?;
        Ok(Some(CacheEntry {
            expires_at_ms,
            response,
        }))
    }

    async fn put(&self, key: &CacheKey, entry: &CacheEntry, _now_ms: u64) -> StoreResult<()> {
        let response = entry.response.to_string();
        if response.len() > MAX_CACHED_RESPONSE_BYTES {
            return Ok(());
        }
        let item = ItemBuilder::new(&item::cache_entry(&key.to_string()))
            .text("response", &response)
            .number("expires_ms", entry.expires_at_ms)
            .number(TTL_ATTRIBUTE, entry.expires_at_ms.div_ceil(1000))
            .build();
        self.put(item).await
    }
}
