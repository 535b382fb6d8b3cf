//! The ports: what the functions need from the outside world, as traits. Adapters (SQLite,
//! DynamoDB, an HTTP upstream, the GPU pool) implement them at the edges.

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::admission::{Admission, Budget, Grant, Refusal};
use crate::billing::{GroupBy, Invoice, LedgerFigures, TenantFigures, UsageRow};
use crate::cache::{CacheKey, Entry as CacheEntry};
use crate::calendar::Month;
use crate::error::{ApiError, ErrorKind};
use crate::ledger::{Entry, Posting, TransactionKind};
use crate::model::Price;
use crate::model::{ModelSpec, UpstreamTarget};
use crate::money::Money;
use crate::principal::Role;
use crate::route::Recovery;
pub use crate::session::SessionRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Billing {
    /// Pays ahead: every call holds credit first.
    Prepaid,
    /// Pays after: invoiced for what was used.
    Postpaid,
}

impl Billing {
    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Prepaid => "prepaid",
            Billing::Postpaid => "postpaid",
        }
    }

    pub fn parse(text: &str) -> Option<Billing> {
        match text {
            "prepaid" => Some(Billing::Prepaid),
            "postpaid" => Some(Billing::Postpaid),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub billing: Billing,
    /// Unix seconds.
    pub created_at: u64,
    /// Requests and tokens per minute across all the tenant's keys.
    #[serde(default)]
    pub limits: RateLimits,
    #[serde(default)]
    pub budgets: Vec<Budget>,
    /// Log the text of this tenant's requests (its prompts). Off unless an operator turns it
    /// on for the tenant; never in metrics or traces.
    #[serde(default)]
    pub log_prompts: bool,
}

/// What an operator changes of a tenant after creation, stored as one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPolicy {
    #[serde(default)]
    pub limits: RateLimits,
    #[serde(default)]
    pub budgets: Vec<Budget>,
    #[serde(default)]
    pub log_prompts: bool,
}

impl Tenant {
    pub fn policy(&self) -> TenantPolicy {
        TenantPolicy {
            limits: self.limits,
            budgets: self.budgets.clone(),
            log_prompts: self.log_prompts,
        }
    }

    pub fn set_policy(&mut self, policy: TenantPolicy) {
        self.limits = policy.limits;
        self.budgets = policy.budgets;
        self.log_prompts = policy.log_prompts;
    }
}

pub use crate::ratelimit::RateLimits;

/// An API key as stored: everything but the secret, which is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `key_<public id>`.
    pub id: String,
    pub public_id: String,
    pub secret_hash: String,
    /// `None` for operator keys.
    pub tenant_id: Option<String>,
    pub name: String,
    pub role: Role,
    pub models: Option<Vec<String>>,
    pub limits: RateLimits,
    pub budgets: Vec<Budget>,
    pub credit_cap: Option<Money>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

impl KeyRecord {
    pub fn is_live(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

/// One page of a list, in the list's order, and the cursor of the page after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque to callers: pass it back as [`PageRequest::after`]. `None`: this was the last.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The same page with each item made into another, or the first failure.
    pub fn try_map<U, E>(self, read: impl FnMut(T) -> Result<U, E>) -> Result<Page<U>, E> {
        Ok(Page {
            items: self.items.into_iter().map(read).collect::<Result<_, _>>()?,
            next: self.next,
        })
    }

    /// `fetched` holds up to one item more than `limit`: its presence says another page
    /// follows, whose cursor `cursor_of` makes from the last item kept.
    pub fn from_overfetch(
        mut fetched: Vec<T>,
        limit: u32,
        cursor_of: impl Fn(&T) -> String,
    ) -> Page<T> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if fetched.len() > limit {
            fetched.truncate(limit);
            let next = fetched.last().map(cursor_of);
            Page {
                items: fetched,
                next,
            }
        } else {
            Page {
                items: fetched,
                next: None,
            }
        }
    }
}

/// One key's usage over a month (`key_id` `None`: calls made without a key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeySpend {
    pub key_id: Option<String>,
    #[serde(flatten)]
    pub totals: crate::billing::Totals,
}

/// What a store says of a cursor it did not make (`StoreError::Invalid`).
pub const BAD_CURSOR: &str = "after must be a cursor this list returned (next_cursor)";

/// A cursor of the form `<number>:<id>` (what the stores make: a sort value and the id that
/// breaks its ties); a cursor of any other form is the caller's mistake.
pub fn split_cursor<N: std::str::FromStr>(cursor: &str) -> Result<(N, String), StoreError> {
    cursor
        .split_once(':')
        .and_then(|(number, id)| Some((number.parse().ok()?, id.to_owned())))
        .ok_or_else(|| StoreError::Invalid(BAD_CURSOR.into()))
}

/// Which page of a list to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many items (at least one).
    pub limit: u32,
    /// The cursor from the previous page; `None` for the first.
    pub after: Option<String>,
}

impl PageRequest {
    pub fn first(limit: u32) -> PageRequest {
        PageRequest {
            limit: limit.max(1),
            after: None,
        }
    }
}

/// A model as stored, with when it was first registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    pub spec: ModelSpec,
    pub created_at: u64,
}

/// One call, as metered. `request_id` makes recording idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRecord {
    pub request_id: String,
    /// The tenant billed, or `operator` for the operator's own calls.
    pub tenant_id: String,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment: String,
    pub endpoint: String,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Money,
    pub status: u16,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// `hit` or `miss` where a cache was consulted, `none` otherwise.
    pub cache_status: String,
    /// Why the deployment that answered was tried (`ferry_core::route::Reason`: `weighted`,
    /// `detour`, `fallback`, `retry`), or `none` where no backend was called.
    #[serde(default = "no_route")]
    pub route: String,
    /// Backend attempts the call made (0: answered without one).
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds when the call was admitted: the period it is billed in.
    pub created_at: u64,
    /// The caller's own end user, as it said (`call::Attribution`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The call's `metadata`, as the caller sent it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The route of a call no backend answered (an expired hold, a cache or edge hit).
pub const NO_ROUTE: &str = "none";

fn no_route() -> String {
    NO_ROUTE.to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// More work is queued than the store can do promptly: new calls are turned away (with
    /// a fast 503) rather than queued until every caller times out.
    #[error("store busy: {0}")]
    Busy(String),
    /// The change would break a rule the store keeps (a negative prepaid balance, a reused
    /// idempotency key); the message is for the caller.
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Conflict(what) => {
                ApiError::new(ErrorKind::Conflict, format!("{what} already exists"))
            }
            // The detail goes to the logs, not to the caller.
            StoreError::Invalid(message) => ApiError::new(ErrorKind::InvalidRequest, message),
            StoreError::Unavailable(_) => {
                ApiError::new(ErrorKind::Internal, "the store is unavailable; try again")
                    .retry_after(1)
            }
            StoreError::Busy(_) => ApiError::new(
                ErrorKind::NoCapacity,
                "The service is overloaded; try again shortly.",
            )
            .with_code("overloaded")
            .retry_after(1),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Tenants, keys and models (usage is written by `Accounts::settle`). Implemented by `SqliteStore` (embedded) and cloud stores.
#[async_trait]
pub trait Store: Send + Sync {
    async fn ping(&self) -> StoreResult<()>;

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()>;
    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>>;
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    /// Tenants by id, a page at a time; `search` keeps those whose id starts with it or whose
    /// name contains it (case-insensitively).
    async fn tenants_page(
        &self,
        search: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Tenant>>;

    /// Replaces a tenant's policy (limits, budgets, prompt logging); false when there is no
    /// such tenant.
    async fn update_tenant_policy(&self, id: &str, policy: &TenantPolicy) -> StoreResult<bool>;

    async fn create_key(&self, key: &KeyRecord) -> StoreResult<()>;
    async fn find_key(&self, public_id: &str) -> StoreResult<Option<KeyRecord>>;
    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRecord>>;
    /// A tenant's keys, newest first, a page at a time.
    async fn keys_page(&self, tenant_id: &str, page: &PageRequest) -> StoreResult<Page<KeyRecord>>;
    /// Marks the key revoked; false when there is no such live key.
    async fn revoke_key(&self, key_id: &str, at: u64) -> StoreResult<bool>;
    /// Operator keys (no tenant) that are still live, newest first.
    async fn list_operator_keys(&self) -> StoreResult<Vec<KeyRecord>>;
    /// A number that changes whenever a key is created or revoked, so a replica holding a
    /// filter of key ids knows, with one cheap read, when to rebuild it.
    async fn key_set_version(&self) -> StoreResult<u64>;
    /// The public ids of every key neither revoked nor expired at `now` (unix seconds).
    async fn live_key_ids(&self, now: u64) -> StoreResult<Vec<String>>;

    /// Creates or replaces a model; `created_at` of an existing model is kept.
    async fn put_model(&self, model: &ModelSpec, now: u64) -> StoreResult<StoredModel>;
    async fn get_model(&self, id: &str) -> StoreResult<Option<StoredModel>>;
    /// As `get_model`, but never from a replica's read cache (`CachedStore`): for changes that
    /// read a model and write it back.
    async fn get_model_fresh(&self, id: &str) -> StoreResult<Option<StoredModel>> {
        self.get_model(id).await
    }
    async fn list_models(&self) -> StoreResult<Vec<StoredModel>>;
    async fn delete_model(&self, id: &str) -> StoreResult<bool>;

    /// Console sessions (`crate::session`), by the hash of their token.
    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()>;
    async fn find_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>>;
    /// Records a use of the session; a session deleted meanwhile stays deleted.
    async fn touch_session(&self, id_hash: &str, seen_at: u64) -> StoreResult<()>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
}

/// The response cache's shared level: answers every replica can read. The key is a
/// tenant-bound hash (`CacheKey`), so no lookup can reach another tenant's answers; an entry
/// past its expiry is never returned.
#[async_trait]
pub trait SharedCache: Send + Sync {
    async fn get(&self, key: &CacheKey, now_ms: u64) -> StoreResult<Option<CacheEntry>>;
    /// Keeps `entry`, replacing what was there; an entry too large for the store is not kept.
    /// The store may sweep out entries expired by `now_ms`.
    async fn put(&self, key: &CacheKey, entry: &CacheEntry, now_ms: u64) -> StoreResult<()>;
}

/// A tenant's credit: what it may spend, and what calls in flight hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balance {
    pub available_usd: Money,
    pub held_usd: Money,
}

impl Balance {
    /// Available plus held: the tenant's credit once every call in flight has settled at zero.
    pub fn total(&self) -> Money {
        Money::from_nanos(
            self.available_usd
                .nanos()
                .saturating_add(self.held_usd.nanos()),
        )
    }
}

/// A price from the moment it takes effect until the next one for the same model and
/// deployment does. Prices are never edited: a change is a new record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceRecord {
    pub model: String,
    /// `None`: every deployment of the model without a price of its own.
    pub deployment: Option<String>,
    /// Unix milliseconds.
    pub effective_from_ms: u64,
    pub price: Price,
}

impl PriceRecord {
    /// The price in effect for `deployment` at `at_ms`, from one model's records: the
    /// deployment's own price wins over the model's; within each, the latest to take effect.
    pub fn in_effect<'a>(
        records: &'a [PriceRecord],
        deployment: &str,
        at_ms: u64,
    ) -> Option<&'a Price> {
        let latest = |own: bool| {
            records
                .iter()
                .filter(|record| record.effective_from_ms <= at_ms)
                .filter(|record| match &record.deployment {
                    Some(named) => own && named == deployment,
                    None => !own,
                })
                .max_by_key(|record| record.effective_from_ms)
        };
        latest(true)
            .or_else(|| latest(false))
            .map(|record| &record.price)
    }
}

/// A ledger transaction as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Transaction {
    pub id: String,
    pub kind: TransactionKind,
    pub tenant_id: String,
    pub request_id: Option<String>,
    pub memo: Option<String>,
    pub entries: Vec<Entry>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

/// A posting to make, once per idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostRequest {
    pub posting: Posting,
    pub idempotency_key: Option<String>,
    pub memo: Option<String>,
    pub now_ms: u64,
}

impl PostRequest {
    /// The idempotency key as the stores keep it: within its tenant, so one tenant's keys
    /// never collide with (or reveal) another's.
    pub fn scoped_idempotency_key(&self) -> Option<String> {
        self.idempotency_key
            .as_deref()
            .map(|key| format!("{}/{key}", self.posting.tenant_id))
    }
}

/// The answer to a posting: the transaction, and whether it had been made before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub transaction: Transaction,
    pub replayed: bool,
    pub balance: Balance,
}

/// A cap a tenant's spending passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub id: String,
    pub tenant_id: String,
    pub limit_source: String,
    pub enforcement: String,
    pub counter: String,
    pub cap_usd: Money,
    pub spent_usd: Money,
    pub created_at_ms: u64,
}

/// How a settlement went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Recorded now; the tenant paid `charged`.
    Recorded { charged: Money },
    /// This request id was settled before; nothing changed.
    Duplicate,
}

/// A call's usage, settled against a credit lease (`crate::lease`) by the replica holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedUsage {
    pub lease_id: String,
    /// Its `cost` is what the replica charged the call from its lease (and the lease's
    /// extensions): what the call's answer said it was charged.
    pub usage: UsageRecord,
    /// What the call cost beyond that: written off.
    pub loss: Money,
}

/// What closing a period did for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub invoice: Invoice,
    /// False when the same invoice had been made before.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    #[error(
        "{0} calls admitted in this period are still in flight; close again once they settle or expire"
    )]
    InFlight(u64),
    #[error(
        "the invoice {0} was closed with different charges; the usage it was made from has changed"
    )]
    Changed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Money: admission, settlement, the ledger, prices and billing. Implemented by `SqliteStore`
/// (embedded) and cloud stores; every method is atomic on its own.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Takes from every bucket and holds the worst case, or takes nothing and says why.
    async fn admit(&self, admission: &Admission) -> StoreResult<Result<Grant, Refusal>>;
    /// Records the call's usage and settles its hold, once per request id. The usage's cost is
    /// what the call cost; what the tenant is charged (and the record keeps) never exceeds the
    /// prepaid hold.
    async fn settle(&self, usage: &UsageRecord) -> StoreResult<Settled>;
    /// Takes a credit lease `lease_id` with room for as many calls like `call` as its limits
    /// allow to share (`ferry_core::lease::calls`), in one atomic operation like [`admit`]:
    /// the lease's admission and grant, or none when a limit is too small to lease or refuses
    /// (the call is then admitted alone). A store without leases takes none.
    ///
    /// [`admit`]: Accounts::admit
    async fn lease(
        &self,
        call: &Admission,
        lease_id: &str,
    ) -> StoreResult<Option<(Admission, Grant)>> {
        let _ = (call, lease_id);
        Ok(None)
    }
    /// Draws up to `amount` more into an open lease from the tenant's balance, as far as the
    /// balance and the lease's hard caps allow: what it drew.
    async fn extend_lease(&self, lease_id: &str, amount: Money) -> StoreResult<Money> {
        let _ = amount;
        Err(StoreError::Invalid(format!("no lease {lease_id} here")))
    }
    /// Records leased calls' usage, once per request id, charging their leases' holds: a
    /// call whose lease is closed already is charged from the balance (never below zero; the
    /// rest written off). One answer per usage, in order.
    async fn settle_leased(&self, batch: &[LeasedUsage]) -> StoreResult<Vec<Settled>> {
        match batch.first() {
            None => Ok(Vec::new()),
            Some(first) => Err(StoreError::Invalid(format!(
                "no lease {} here",
                first.lease_id
            ))),
        }
    }
    /// Gives a lease back once its calls are settled: its unspent credit to the balance and,
    /// per draw, what its calls did not use (`used`, aligned with its draws) to the bucket.
    /// Releasing a closed lease changes nothing.
    async fn release_lease(&self, lease_id: &str, used: &[u64]) -> StoreResult<()> {
        let _ = used;
        Err(StoreError::Invalid(format!("no lease {lease_id} here")))
    }
    /// Releases holds whose calls never settled (the gateway died), charging nothing.
    async fn expire_holds(&self, now_ms: u64) -> StoreResult<u64>;
    /// Posts a top-up, refund or adjustment, once per idempotency key.
    async fn post(&self, request: &PostRequest) -> StoreResult<Posted>;
    async fn balance(&self, tenant_id: &str) -> StoreResult<Balance>;
    /// A tenant's ledger, newest first, a page at a time.
    async fn transactions(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<Transaction>>;

    async fn put_price(&self, price: &PriceRecord) -> StoreResult<()>;
    async fn list_prices(&self, model: &str) -> StoreResult<Vec<PriceRecord>>;
    /// The price in effect for a deployment of `model` at `at_ms`.
    async fn price_at(
        &self,
        model: &str,
        deployment: &str,
        at_ms: u64,
    ) -> StoreResult<Option<Price>> {
        let records = self.list_prices(model).await?;
        Ok(PriceRecord::in_effect(&records, deployment, at_ms).cloned())
    }

    /// Usage events admitted in `[from, to)` (unix seconds), oldest first; only one key's
    /// when `key_id` is set.
    async fn usage_events(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        from: u64,
        to: u64,
        limit: u32,
    ) -> StoreResult<Vec<UsageRecord>>;
    /// The same, a page at a time: `[from, to)`, oldest first, after the cursor.
    async fn usage_events_page(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        (from, to): (u64, u64),
        page: &PageRequest,
    ) -> StoreResult<Page<UsageRecord>>;
    async fn usage_report(
        &self,
        tenant_id: &str,
        key_id: Option<&str>,
        from: u64,
        to: u64,
        group: GroupBy,
    ) -> StoreResult<Vec<UsageRow>>;
    /// A tenant's spend by key over one UTC month, dearest first, a page at a time: kept as
    /// usage settles (one row per key and month), so it never sums a month of events.
    async fn key_spend(
        &self,
        tenant_id: &str,
        month: Month,
        page: &PageRequest,
    ) -> StoreResult<Page<KeySpend>>;
    async fn alerts(&self, tenant_id: &str) -> StoreResult<Vec<Alert>>;

    /// Makes each tenant's invoice for `month` from its usage events; closing again is a no-op.
    async fn close_period(&self, month: Month, now: u64) -> Result<Vec<Closed>, CloseError>;
    async fn invoices(&self, tenant_id: &str) -> StoreResult<Vec<Invoice>>;
    /// The figures reconciliation compares.
    async fn figures(&self) -> StoreResult<(LedgerFigures, Vec<TenantFigures>)>;
}

/// Where exports and uploaded files go: a bucket (S3) or a local directory, addressed by
/// `/`-separated keys.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes the whole object at once: readers see the old object or the new, never a part.
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()>;
    /// The whole object, or `None` where there is none.
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>>;
    /// Removes the object; false where there was none.
    async fn delete(&self, key: &str) -> StoreResult<bool>;
    /// The keys of the objects directly in `folder` (a key prefix without its last `/`), in
    /// key order.
    async fn list(&self, folder: &str) -> StoreResult<Vec<String>>;
    /// Where `key` is, for people (a path or a URL).
    fn locate(&self, key: &str) -> String;
}

/// The OpenAI endpoints a backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The path under the upstream's `/v1` base.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    pub fn from_name(name: &str) -> Option<Endpoint> {
        [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
        ]
        .into_iter()
        .find(|endpoint| endpoint.name() == name)
    }
}

/// One request to a backend: the caller's body with `model` already rewritten.
#[derive(Debug, Clone)]
pub struct UpstreamCall {
    pub target: UpstreamTarget,
    pub endpoint: Endpoint,
    pub body: serde_json::Value,
    pub stream: bool,
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

pub enum UpstreamReply {
    /// A whole JSON response.
    Complete(serde_json::Value),
    /// Raw SSE bytes as they arrive, not buffered.
    Stream(ByteStream),
}

impl std::fmt::Debug for UpstreamReply {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamReply::Complete(body) => formatter.debug_tuple("Complete").field(body).finish(),
            UpstreamReply::Stream(_) => formatter.write_str("Stream(..)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not reach the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// The request field the upstream's error named, for an invalid request.
        param: Option<String>,
        retry_after_seconds: Option<u64>,
    },
    #[error("the upstream broke the protocol: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// What the route does next (`ferry_core::route`). Worth another attempt anywhere: the
    /// backend could not be reached, did not answer in time (408 included), answered 429 or
    /// 5xx. Worth one elsewhere only: it refused Ferry's credentials (401, 403, 407), does not
    /// know the model or path (404, 405), answered with no error status, or broke the
    /// protocol; waiting would not mend those. Not worth any: the request itself is invalid
    /// (any other 4xx), and would be everywhere.
    pub fn recovery(&self) -> Recovery {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout => Recovery::Retryable {
                retry_after_ms: None,
            },
            UpstreamError::Status { status, .. }
                if *status == 408 || *status == 429 || *status >= 500 =>
            {
                Recovery::Retryable {
                    retry_after_ms: self.retry_after_ms(),
                }
            }
            UpstreamError::Status {
                status: 401 | 403 | 404 | 405 | 407,
                ..
            }
            | UpstreamError::Protocol(_) => Recovery::Elsewhere,
            // Not an error status at all (a redirect it was not allowed to follow): the
            // deployment is misconfigured.
            UpstreamError::Status { status, .. } if *status < 400 => Recovery::Elsewhere,
            UpstreamError::Status { .. } => Recovery::Final,
        }
    }

    /// Counts against the deployment's circuit breaker: every failure but an invalid request,
    /// which is the caller's doing.
    pub fn is_backend_fault(&self) -> bool {
        self.recovery() != Recovery::Final
    }

    /// A short, bounded name for the failure (traces' `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Status { status: 429, .. } => "429",
            UpstreamError::Status { status, .. } if *status >= 500 => "5xx",
            UpstreamError::Status { .. } => "4xx",
            UpstreamError::Protocol(_) => "protocol",
        }
    }

    /// How long the backend asked to be left alone (a 429's or 503's `Retry-After`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            UpstreamError::Status {
                retry_after_seconds: Some(seconds),
                ..
            } => Some(seconds.saturating_mul(1000)),
            _ => None,
        }
    }

    /// What the caller sees. The upstream's own message is passed on only for a request the
    /// upstream judged invalid; everything else is Ferry's fault to report, not the upstream's.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            UpstreamError::Connect(_) => ApiError::new(
                ErrorKind::UpstreamFailed,
                "the model backend could not be reached",
            )
            .retry_after(1),
            UpstreamError::Timeout => ApiError::new(
                ErrorKind::UpstreamTimeout,
                "the model backend did not answer in time",
            ),
            UpstreamError::Status { status: 408, .. } => ApiError::new(
                ErrorKind::UpstreamTimeout,
                "the model backend did not answer in time",
            ),
            // The backend judged the request itself invalid (`failure()` says `Final`): the
            // field it named is the caller's own, since the body is forwarded as sent.
            UpstreamError::Status { message, param, .. } if self.recovery() == Recovery::Final => {
                let error = ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("the model backend rejected the request: {message}"),
                );
                match param {
                    Some(param) => error.with_param(param.clone()),
                    None => error,
                }
            }
            UpstreamError::Status {
                status: 429 | 503,
                retry_after_seconds,
                ..
            } => ApiError::new(
                ErrorKind::NoCapacity,
                "the model backend is at capacity; retry shortly",
            )
            .retry_after(retry_after_seconds.unwrap_or(1)),
            UpstreamError::Status { .. } | UpstreamError::Protocol(_) => ApiError::new(
                ErrorKind::UpstreamFailed,
                "the model backend failed to answer",
            ),
        }
    }
}

/// A backend that speaks the OpenAI API: an HTTP upstream, or the GPU pool.
#[async_trait]
pub trait Upstream: Send + Sync {
    async fn call(&self, call: UpstreamCall) -> Result<UpstreamReply, UpstreamError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployments_own_latest_price_in_effect_wins() {
        let record = |deployment: Option<&str>, from: u64, nanos: i64| PriceRecord {
            model: "m".into(),
            deployment: deployment.map(str::to_owned),
            effective_from_ms: from,
            price: Price {
                input_per_mtok_usd: Money::from_nanos(nanos),
                cached_input_per_mtok_usd: None,
                output_per_mtok_usd: Money::ZERO,
                per_call_usd: None,
                cache_hit_usd: None,
                batch_discount_percent: None,
            },
        };
        let records = [
            record(None, 0, 1),
            record(None, 100, 2),
            record(Some("a"), 50, 3),
            record(Some("a"), 200, 4),
            record(Some("b"), 300, 5),
        ];
        let at = |deployment: &str, at_ms: u64| {
            PriceRecord::in_effect(&records, deployment, at_ms)
                .map(|price| price.input_per_mtok_usd.nanos())
        };
        assert_eq!(at("a", 10), Some(1), "before its own price, the model's");
        assert_eq!(at("a", 60), Some(3));
        assert_eq!(
            at("a", 150),
            Some(3),
            "its own older price beats the model's newer one"
        );
        assert_eq!(
            at("a", 200),
            Some(4),
            "in effect from its first millisecond"
        );
        assert_eq!(at("c", 150), Some(2));
        assert_eq!(at("b", 299), Some(2));
        assert_eq!(at("b", 300), Some(5));
        assert_eq!(PriceRecord::in_effect(&records[4..], "a", 1_000), None);
    }

    #[test]
    fn upstream_failures_map_to_the_contract() {
        let status = |status: u16| UpstreamError::Status {
            status,
            message: "m".into(),
            param: Some("response_format".into()),
            retry_after_seconds: None,
        };
        let cases = [
            (UpstreamError::Connect("refused".into()), 502),
            (UpstreamError::Timeout, 504),
            (status(400), 400),
            (status(422), 400),
            (status(413), 400),
            (status(401), 502),
            (status(404), 502),
            (status(405), 502),
            (status(408), 504),
            (status(302), 502),
            (status(429), 503),
            (status(503), 503),
            (status(500), 502),
            (UpstreamError::Protocol("bad json".into()), 502),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_api_error().kind.status(), expected, "{error:?}");
        }
        // An invalid request names the caller's field the backend named; nothing else does.
        assert_eq!(
            status(400).to_api_error().param.as_deref(),
            Some("response_format")
        );
        assert_eq!(status(500).to_api_error().param, None);
    }

    #[test]
    fn what_the_route_does_after_each_failure() {
        let status = |status: u16| UpstreamError::Status {
            status,
            message: "m".into(),
            param: None,
            retry_after_seconds: Some(2),
        };
        let anywhere = |retry_after_ms| Recovery::Retryable { retry_after_ms };
        let cases = [
            (UpstreamError::Connect("refused".into()), anywhere(None)),
            (UpstreamError::Timeout, anywhere(None)),
            (status(429), anywhere(Some(2_000))),
            (status(502), anywhere(Some(2_000))),
            (status(408), anywhere(Some(2_000))),
            (status(401), Recovery::Elsewhere),
            (status(404), Recovery::Elsewhere),
            (
                UpstreamError::Protocol("not JSON".into()),
                Recovery::Elsewhere,
            ),
            (status(400), Recovery::Final),
            (status(422), Recovery::Final),
        ];
        for (error, expected) in cases {
            assert_eq!(error.recovery(), expected, "{error:?}");
            assert_eq!(
                error.is_backend_fault(),
                expected != Recovery::Final,
                "{error:?}"
            );
        }
    }

    #[test]
    fn upstream_secrets_and_addresses_stay_hidden() {
        let error = UpstreamError::Connect("tcp connect error 10.0.0.7:8000".into()).to_api_error();
        assert!(!error.message.contains("10.0.0.7"));
    }

    #[test]
    fn keys_expire_and_revoke() {
        let key = |expires_at, revoked_at| KeyRecord {
            id: "key_x".into(),
            public_id: "x".into(),
            secret_hash: String::new(),
            tenant_id: None,
            name: "n".into(),
            role: Role::Member,
            models: None,
            limits: RateLimits::default(),
            budgets: Vec::new(),
            credit_cap: None,
            created_at: 0,
            expires_at,
            revoked_at,
        };
        assert!(key(None, None).is_live(100));
        assert!(key(Some(101), None).is_live(100));
        assert!(!key(Some(100), None).is_live(100));
        assert!(!key(None, Some(50)).is_live(100));
    }
}
