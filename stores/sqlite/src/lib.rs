//! `ferry-store-sqlite`: the embedded stores of `ferry serve` and of a function on one
//! machine. `SqliteStore` keeps everything in one SQLite file in WAL mode, migrated on open; one
//! connection, on a thread of its own (`thread`), runs every statement and commits the hot
//! path's writes in groups, so a slow disk never stalls the async workers. `LocalObjectStore`
//! (`objects`) is the object store: a directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ferry_core::Money;
use ferry_core::cache::{CacheKey, Entry as CacheEntry};
use ferry_core::calendar::{Date, Month};
use ferry_core::model::ModelSpec;
use ferry_core::ports::{
    Billing, KeyRecord, Page, PageRequest, RateLimits, SessionRecord, SharedCache, Store,
    StoreError, StoreResult, StoredModel, Tenant, TenantPolicy, UsageRecord, split_cursor,
};
use ferry_core::principal::Role;
use ferry_core::usage::RollupTotals;
use rusqlite::{Connection, OptionalExtension, Row, params};

mod accounts;
mod leases;
mod objects;
mod thread;

pub use objects::LocalObjectStore;

use thread::StoreThread;

/// Schema versions in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        billing TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        public_id TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL,
        tenant_id TEXT REFERENCES tenants(id),
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        models TEXT,
        limits TEXT NOT NULL,
        credit_cap_nanos INTEGER,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
     );
     CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id, created_at);
     CREATE TABLE models (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE usage_events (
        request_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        key_id TEXT,
        model TEXT NOT NULL,
        deployment TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        status INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER,
        created_at INTEGER NOT NULL
     );
     CREATE INDEX usage_by_tenant ON usage_events(tenant_id, created_at);",
    // Money: the ledger and its account projections, holds, rate buckets, spend counters,
    // effective-dated prices, invoices and alerts. Every index costs page writes on the hot
    // path; a call's transactions are found by id (`settle:<request id>`), not by index.
    "ALTER TABLE tenants ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
     ALTER TABLE api_keys ADD COLUMN budgets TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE usage_events ADD COLUMN cache_status TEXT NOT NULL DEFAULT 'none';
     CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        -- SQLite turns an overflowing integer sum into a float: refuse that write instead.
        balance_nanos INTEGER NOT NULL CHECK (typeof(balance_nanos) = 'integer')
     );
     CREATE TABLE ledger_transactions (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        request_id TEXT,
        idempotency_key TEXT UNIQUE,
        memo TEXT,
        created_at_ms INTEGER NOT NULL
     );
     CREATE INDEX ledger_by_tenant ON ledger_transactions(tenant_id, created_at_ms);
     CREATE TABLE ledger_entries (
        transaction_id TEXT NOT NULL REFERENCES ledger_transactions(id),
        account TEXT NOT NULL,
        amount_nanos INTEGER NOT NULL
     );
     CREATE INDEX entries_by_transaction ON ledger_entries(transaction_id);
     CREATE TABLE holds (
        request_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
     );
     CREATE INDEX holds_open ON holds(state, expires_at_ms);
     CREATE TABLE rate_buckets (
        id TEXT PRIMARY KEY,
        tat_nanos INTEGER NOT NULL
     );
     CREATE TABLE spend_counters (
        id TEXT PRIMARY KEY,
        settled_nanos INTEGER NOT NULL CHECK (typeof(settled_nanos) = 'integer'),
        held_nanos INTEGER NOT NULL CHECK (typeof(held_nanos) = 'integer')
     );
     CREATE TABLE prices (
        model TEXT NOT NULL,
        deployment TEXT NOT NULL,
        effective_from_ms INTEGER NOT NULL,
        price TEXT NOT NULL,
        PRIMARY KEY (model, deployment, effective_from_ms)
     );
     CREATE TABLE invoices (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        period TEXT NOT NULL,
        body TEXT NOT NULL,
        total_nanos INTEGER NOT NULL,
        UNIQUE (tenant_id, period)
     );
     CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
     );
     CREATE INDEX alerts_by_tenant ON alerts(tenant_id, created_at_ms);",
    // Prices registered with a model before prices had a table of their own take effect from
    // when the model was registered: the table is the only place a call's price is read.
    "INSERT OR IGNORE INTO prices (model, deployment, effective_from_ms, price)
     SELECT id, '', created_at * 1000, json(json_extract(spec, '$.price'))
     FROM models WHERE json_extract(spec, '$.price') IS NOT NULL;",
    // The response cache's shared level.
    "CREATE TABLE cache_entries (
        key BLOB PRIMARY KEY,
        expires_at_ms INTEGER NOT NULL,
        response TEXT NOT NULL
     );
     CREATE INDEX cache_entries_by_expiry ON cache_entries(expires_at_ms);",
    // How each call was routed: the reason its deployment was tried, and the attempts made.
    "ALTER TABLE usage_events ADD COLUMN route TEXT NOT NULL DEFAULT 'none';
     ALTER TABLE usage_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;",
    // The console: its sessions, and keys read a page at a time, newest first.
    "CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX sessions_by_expiry ON sessions(expires_at);
     DROP INDEX api_keys_by_tenant;
     CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id, created_at, id);
     CREATE TABLE usage_rollups (
        tenant_id TEXT NOT NULL,
        day TEXT NOT NULL,
        model TEXT NOT NULL,
        key_id TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL CHECK (typeof(cost_nanos) = 'integer'),
        PRIMARY KEY (tenant_id, key_id, day, model)
     ) WITHOUT ROWID;
     -- A breakdown by key reads every key's rows of a range of days: covered, so it never
     -- leaves the index.
     CREATE INDEX usage_rollups_by_day ON usage_rollups(tenant_id, day, key_id, model,
        requests, prompt_tokens, cached_tokens, completion_tokens, cost_nanos) WHERE key_id != '*';
     INSERT INTO usage_rollups (tenant_id, day, model, key_id, requests, prompt_tokens,
        cached_tokens, completion_tokens, cost_nanos)
     SELECT tenant_id, strftime('%Y-%m-%d', created_at, 'unixepoch'), model, coalesce(key_id, ''),
            count(*), sum(prompt_tokens), sum(cached_tokens), sum(completion_tokens), sum(cost_nanos)
     FROM usage_events GROUP BY 1, 2, 3, 4;
     INSERT INTO usage_rollups (tenant_id, day, model, key_id, requests, prompt_tokens,
        cached_tokens, completion_tokens, cost_nanos)
     SELECT tenant_id, day, model, '*', sum(requests), sum(prompt_tokens), sum(cached_tokens),
            sum(completion_tokens), sum(cost_nanos)
     FROM usage_rollups GROUP BY 1, 2, 3;
     -- Spend by key and UTC month, read dearest first a page at a time.
     CREATE TABLE usage_key_months (
        tenant_id TEXT NOT NULL,
        month TEXT NOT NULL,
        key_id TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL CHECK (typeof(cost_nanos) = 'integer'),
        PRIMARY KEY (tenant_id, month, key_id)
     ) WITHOUT ROWID;
     CREATE INDEX usage_key_months_by_cost ON usage_key_months(tenant_id, month, cost_nanos, key_id);
     INSERT INTO usage_key_months
     SELECT tenant_id, substr(day, 1, 7), key_id, sum(requests), sum(prompt_tokens),
            sum(cached_tokens), sum(completion_tokens), sum(cost_nanos)
     FROM usage_rollups WHERE key_id != '*' GROUP BY 1, 2, 3;",
    // Idempotency keys are kept within their tenant (`ports::PostRequest::scoped_idempotency_key`).
    "UPDATE ledger_transactions SET idempotency_key = tenant_id || '/' || idempotency_key
     WHERE idempotency_key IS NOT NULL;",
    // Attribution: the caller's own end user and the call's metadata (JSON), where given.
    "ALTER TABLE usage_events ADD COLUMN end_user TEXT;
     ALTER TABLE usage_events ADD COLUMN metadata TEXT;",
];

/// What a commit survives once `SqliteStore` has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The process being killed (WAL with `synchronous = NORMAL`: the commit is in the log
    /// file, which the next open replays). A power cut may lose the last commits before the
    /// operating system wrote them out.
    #[default]
    ProcessCrash,
    /// A power cut too (`synchronous = FULL`: the log is fsynced at every commit).
    PowerLoss,
}

#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// Commit the admissions and settlements waiting at the same time together (on by
    /// default; off is for measuring what it buys).
    pub group_commit: bool,
    /// How large the write-ahead log may grow before the store thread catches the checkpoint
    /// up so the log starts over (`thread.rs`).
    pub wal_catch_up_bytes: u64,
    /// New calls are turned away (503 `overloaded`) while this many store jobs are queued;
    /// at a few hundred microseconds a job, 256 is a queue of tens of milliseconds.
    /// Settlements are never turned away.
    pub max_queued_admissions: usize,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            durability: Durability::default(),
            group_commit: true,
            wal_catch_up_bytes: 128 << 20,
            max_queued_admissions: 256,
        }
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    thread: StoreThread,
    max_queued_admissions: usize,
    /// Writes to the shared cache so far: every so many, expired entries are swept.
    cache_writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SqliteStore")
    }
}

pub(crate) fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

pub(crate) fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn from_sql_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date. Commits
    /// survive the process dying ([`Durability::ProcessCrash`]).
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(path: &Path, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let connection = Connection::open(path).map_err(unavailable)?;
        // Checkpoints (copying the log back into the database file, with an fsync) run on a
        // connection of their own, so the store thread rarely stalls on one (`thread.rs`).
        // Once the log starts over it keeps up to 256 MiB of its file: rewriting allocated
        // blocks is cheaper than extending the file again. 1 KiB pages (for a new file): a
        // call dirties about thirty pages, so this is what it writes to the log.
        connection
            .execute_batch("PRAGMA page_size = 1024; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 268435456;")
            .map_err(unavailable)?;
        let store = SqliteStore::prepare(connection, options)?;
        thread::spawn_checkpointer(path, &store.thread, options.wal_catch_up_bytes)?;
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> StoreResult<SqliteStore> {
        SqliteStore::prepare(
            Connection::open_in_memory().map_err(unavailable)?,
            SqliteOptions::default(),
        )
    }

    fn prepare(mut connection: Connection, options: SqliteOptions) -> StoreResult<SqliteStore> {
        // WAL lets readers run beside the writer and makes a commit one append to the log.
        let synchronous = match options.durability {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        connection
            .execute_batch(&format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;"))
            .map_err(unavailable)?;
        migrate(&mut connection)?;
        Ok(SqliteStore {
            thread: StoreThread::spawn(connection, options.group_commit)?,
            max_queued_admissions: options.max_queued_admissions,
            cache_writes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Runs `work` alone on the store's thread.
    pub(crate) async fn with<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        self.thread.exclusive(work).await
    }

    /// Runs `work` inside the next group commit (see `thread.rs`); it must not manage
    /// transactions itself.
    /// As `grouped`, for new work that may be turned away when the store is overloaded.
    pub(crate) async fn grouped_unless_busy<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.thread
            .grouped_unless_busy(self.max_queued_admissions, work)
            .await
    }

    pub(crate) async fn grouped<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.thread.grouped(work).await
    }
}

fn migrate(connection: &mut Connection) -> StoreResult<()> {
    // Each step reads the version under the write lock, so two processes opening a new file
    // at once never both run the same migration.
    loop {
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let applied: u32 = transaction
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(unavailable)?;
        let Some(migration) = MIGRATIONS.get(applied as usize) else {
            return Ok(());
        };
        transaction.execute_batch(migration).map_err(unavailable)?;
        transaction
            .pragma_update(None, "user_version", applied + 1)
            .map_err(unavailable)?;
        transaction.commit().map_err(unavailable)?;
    }
}

/// Runs a statement through the connection's statement cache: the hot paths run the same few
/// statements thousands of times a second, and parsing SQL each time was most of their cost.
pub(crate) fn run(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(params)
}

/// One row, through the statement cache.
pub(crate) fn row<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(params, map)
}

/// A write refused by a uniqueness constraint is `what` existing already; anything else, an
/// unavailable store.
fn conflict_or_unavailable(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |error| {
        if is_constraint_violation(&error) {
            StoreError::Conflict(what.into())
        } else {
            unavailable(error)
        }
    }
}

pub(crate) fn is_constraint_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _) if failure.code == rusqlite::ErrorCode::ConstraintViolation)
}

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

const TENANT_COLUMNS: &str = "id, name, billing, created_at, policy";

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<Tenant> {
    let billing: String = row.get(2)?;
    // The tenant's policy is one JSON column.
    let policy: TenantPolicy = json_column(row, 4)?;
    let mut tenant = Tenant {
        id: row.get(0)?,
        name: row.get(1)?,
        billing: Billing::parse(&billing).unwrap_or(Billing::Prepaid),
        created_at: from_sql_int(row.get(3)?),
        limits: RateLimits::default(),
        budgets: Vec::new(),
        log_prompts: false,
    };
    tenant.set_policy(policy);
    Ok(tenant)
}

fn tenant_policy_json(policy: &TenantPolicy) -> StoreResult<String> {
    serde_json::to_string(policy).map_err(unavailable)
}

const KEY_COLUMNS: &str = "id, public_id, secret_hash, tenant_id, name, role, models, limits, credit_cap_nanos, created_at, expires_at, revoked_at, budgets";

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let role: String = row.get(5)?;
    let models: Option<String> = row.get(6)?;
    let limits: String = row.get(7)?;
    let decode = |index: usize, error: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    };
    Ok(KeyRecord {
        id: row.get(0)?,
        public_id: row.get(1)?,
        secret_hash: row.get(2)?,
        tenant_id: row.get(3)?,
        name: row.get(4)?,
        role: Role::parse(&role).unwrap_or(Role::Member),
        models: models
            .map(|models| serde_json::from_str(&models))
            .transpose()
            .map_err(|error| decode(6, error))?,
        limits: serde_json::from_str::<RateLimits>(&limits).map_err(|error| decode(7, error))?,
        credit_cap: row.get::<_, Option<i64>>(8)?.map(Money::from_nanos),
        created_at: from_sql_int(row.get(9)?),
        expires_at: row.get::<_, Option<i64>>(10)?.map(from_sql_int),
        revoked_at: row.get::<_, Option<i64>>(11)?.map(from_sql_int),
        budgets: json_column(row, 12)?,
    })
}

fn model_from_row(row: &Row<'_>) -> rusqlite::Result<StoredModel> {
    let spec: String = row.get(0)?;
    let spec: ModelSpec = serde_json::from_str(&spec).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(error))
    })?;
    Ok(StoredModel {
        spec,
        created_at: from_sql_int(row.get(1)?),
    })
}

pub(crate) const USAGE_COLUMNS: &str = "request_id, tenant_id, key_id, model, deployment, endpoint, prompt_tokens, cached_tokens, \
     completion_tokens, cost_nanos, status, latency_ms, ttft_ms, created_at, cache_status, route, attempts, end_user, metadata";

pub(crate) fn usage_from_row(row: &Row<'_>) -> rusqlite::Result<UsageRecord> {
    Ok(UsageRecord {
        request_id: row.get(0)?,
        tenant_id: row.get(1)?,
        key_id: row.get(2)?,
        model: row.get(3)?,
        deployment: row.get(4)?,
        endpoint: row.get(5)?,
        prompt_tokens: from_sql_int(row.get(6)?),
        cached_tokens: from_sql_int(row.get(7)?),
        completion_tokens: from_sql_int(row.get(8)?),
        cost: Money::from_nanos(row.get(9)?),
        status: u16::try_from(row.get::<_, i64>(10)?).unwrap_or(0),
        latency_ms: from_sql_int(row.get(11)?),
        ttft_ms: row.get::<_, Option<i64>>(12)?.map(from_sql_int),
        created_at: from_sql_int(row.get(13)?),
        cache_status: row.get(14)?,
        route: row.get(15)?,
        attempts: u32::try_from(row.get::<_, i64>(16)?).unwrap_or(0),
        user: row.get(17)?,
        metadata: row
            .get::<_, Option<String>>(18)?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.with(|connection| row(connection, "SELECT 1", [], |_| Ok(())).map_err(unavailable))
            .await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let tenant = tenant.clone();
        self.with(move |connection| {
            run(
                connection,
                &format!("INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    tenant.id,
                    tenant.name,
                    tenant.billing.as_str(),
                    to_sql_int(tenant.created_at),
                    tenant_policy_json(&tenant.policy())?,
                ],
            )
            .map_err(conflict_or_unavailable("tenant"))?;
            Ok(())
        })
        .await
    }

    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>> {
        let id = id.to_owned();
        self.with(move |connection| {
            row(
                connection,
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                [id],
                tenant_from_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.with(|connection| {
            let mut statement = connection
                .prepare(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"))
                .map_err(unavailable)?;
            let tenants = statement
                .query_map([], tenant_from_row)
                .map_err(unavailable)?;
            tenants.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn update_tenant_policy(&self, id: &str, policy: &TenantPolicy) -> StoreResult<bool> {
        let id = id.to_owned();
        let policy = tenant_policy_json(policy)?;
        self.with(move |connection| {
            let changed = run(
                connection,
                "UPDATE tenants SET policy = ?2 WHERE id = ?1",
                params![id, policy],
            )
            .map_err(unavailable)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn create_key(&self, key: &KeyRecord) -> StoreResult<()> {
        let key = key.clone();
        self.with(move |connection| {
            let models = key.models.as_ref().map(serde_json::to_string).transpose().map_err(unavailable)?;
            let limits = serde_json::to_string(&key.limits).map_err(unavailable)?;
            let budgets = serde_json::to_string(&key.budgets).map_err(unavailable)?;
            run(connection,
                    &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
                    params![
                        key.id,
                        key.public_id,
                        key.secret_hash,
                        key.tenant_id,
                        key.name,
                        key.role.as_str(),
                        models,
                        limits,
                        key.credit_cap.map(Money::nanos),
                        to_sql_int(key.created_at),
                        key.expires_at.map(to_sql_int),
                        key.revoked_at.map(to_sql_int),
                        budgets,
                    ],
                )
                .map_err(conflict_or_unavailable("key"))?;
            Ok(())
        })
        .await
    }

    async fn find_key(&self, public_id: &str) -> StoreResult<Option<KeyRecord>> {
        let public_id = public_id.to_owned();
        self.with(move |connection| {
            row(
                connection,
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE public_id = ?1"),
                [public_id],
                key_from_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |connection| {
            let mut statement = connection
                .prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, id"))
                .map_err(unavailable)?;
            let keys = statement.query_map([tenant_id], key_from_row).map_err(unavailable)?;
            keys.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn revoke_key(&self, key_id: &str, at: u64) -> StoreResult<bool> {
        let key_id = key_id.to_owned();
        self.with(move |connection| {
            let changed = run(
                connection,
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![key_id, to_sql_int(at)],
            )
            .map_err(unavailable)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn list_operator_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        self.with(|connection| {
            let mut statement = connection
                .prepare(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id IS NULL AND revoked_at IS NULL ORDER BY created_at DESC"
                ))
                .map_err(unavailable)?;
            let keys = statement.query_map([], key_from_row).map_err(unavailable)?;
            keys.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn key_set_version(&self) -> StoreResult<u64> {
        // Keys are never deleted and a revocation is never undone, so the two counts only
        // grow: every creation or revocation changes the pair.
        self.with(|connection| {
            let (created, revoked): (i64, i64) = row(
                connection,
                "SELECT count(*), count(revoked_at) FROM api_keys",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(unavailable)?;
            Ok((from_sql_int(created) << 32) ^ from_sql_int(revoked))
        })
        .await
    }

    async fn live_key_ids(&self, now: u64) -> StoreResult<Vec<String>> {
        self.with(move |connection| {
            let mut statement = connection
                .prepare(
                    "SELECT public_id FROM api_keys
                     WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)",
                )
                .map_err(unavailable)?;
            let ids = statement
                .query_map([to_sql_int(now)], |row| row.get(0))
                .map_err(unavailable)?;
            ids.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn put_model(&self, model: &ModelSpec, now: u64) -> StoreResult<StoredModel> {
        let model = model.clone();
        self.with(move |connection| {
            let spec = serde_json::to_string(&model).map_err(unavailable)?;
            let created_at: i64 = row(connection,
                    "INSERT INTO models (id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at
                     RETURNING created_at",
                    params![model.id, spec, to_sql_int(now)],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            Ok(StoredModel { spec: model, created_at: from_sql_int(created_at) })
        })
        .await
    }

    async fn get_model(&self, id: &str) -> StoreResult<Option<StoredModel>> {
        let id = id.to_owned();
        self.with(move |connection| {
            row(
                connection,
                "SELECT spec, created_at FROM models WHERE id = ?1",
                [id],
                model_from_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn list_models(&self) -> StoreResult<Vec<StoredModel>> {
        self.with(|connection| {
            let mut statement = connection
                .prepare("SELECT spec, created_at FROM models ORDER BY id")
                .map_err(unavailable)?;
            let models = statement
                .query_map([], model_from_row)
                .map_err(unavailable)?;
            models.collect::<Result<_, _>>().map_err(unavailable)
        })
        .await
    }

    async fn delete_model(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.with(move |connection| {
            Ok(
                run(connection, "DELETE FROM models WHERE id = ?1", [id]).map_err(unavailable)?
                    == 1,
            )
        })
        .await
    }

    async fn tenants_page(
        &self,
        search: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Tenant>> {
        let search = search
            .filter(|text| !text.is_empty())
            .map(str::to_lowercase);
        let page = page.clone();
        self.with(move |connection| {
            let mut statement = connection
                .prepare(&format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants
                     WHERE (?1 IS NULL OR id > ?1)
                       AND (?2 IS NULL OR substr(id, 1, length(?2)) = ?2 OR instr(lower(name), ?2) > 0)
                     ORDER BY id LIMIT ?3"
                ))
                .map_err(unavailable)?;
            let tenants = statement
                .query_map(params![page.after, search, i64::from(page.limit) + 1], tenant_from_row)
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(Page::from_overfetch(tenants, page.limit, |tenant| tenant.id.clone()))
        })
        .await
    }

    async fn keys_page(&self, tenant_id: &str, page: &PageRequest) -> StoreResult<Page<KeyRecord>> {
        // The cursor is the last key's `created_at:id`; newest first.
        let after = page.after.as_deref().map(split_cursor::<u64>).transpose()?;
        let tenant_id = tenant_id.to_owned();
        let limit = page.limit;
        self.with(move |connection| {
            let (created, id) = after.map_or((None, None), |(created, id)| (Some(to_sql_int(created)), Some(id)));
            let mut statement = connection
                .prepare(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys
                     WHERE tenant_id = ?1 AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND id < ?3))
                     ORDER BY created_at DESC, id DESC LIMIT ?4"
                ))
                .map_err(unavailable)?;
            let keys = statement
                .query_map(params![tenant_id, created, id, i64::from(limit) + 1], key_from_row)
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(Page::from_overfetch(keys, limit, |key| format!("{}:{}", key.created_at, key.id)))
        })
        .await
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let body = serde_json::to_string(session).map_err(unavailable)?;
        let (id_hash, expires_at, now) = (
            session.id_hash.clone(),
            session.expires_at,
            session.created_at,
        );
        self.with(move |connection| {
            // Sessions that ended are swept out as new ones begin (sign-ins are rare).
            run(
                connection,
                "DELETE FROM sessions WHERE expires_at <= ?1",
                [to_sql_int(now)],
            )
            .map_err(unavailable)?;
            run(
                connection,
                "INSERT INTO sessions (id_hash, body, expires_at) VALUES (?1, ?2, ?3)",
                params![id_hash, body, to_sql_int(expires_at)],
            )
            .map_err(conflict_or_unavailable("session"))?;
            Ok(())
        })
        .await
    }

    async fn find_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let id_hash = id_hash.to_owned();
        self.with(move |connection| {
            row(
                connection,
                "SELECT body FROM sessions WHERE id_hash = ?1",
                [id_hash],
                |row| json_column::<SessionRecord>(row, 0),
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn touch_session(&self, id_hash: &str, seen_at: u64) -> StoreResult<()> {
        let id_hash = id_hash.to_owned();
        self.with(move |connection| {
            run(
                connection,
                "UPDATE sessions SET body = json_set(body, '$.last_seen_at', ?2)
                 WHERE id_hash = ?1 AND json_extract(body, '$.last_seen_at') < ?2",
                params![id_hash, to_sql_int(seen_at)],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        let id_hash = id_hash.to_owned();
        self.with(move |connection| {
            run(
                connection,
                "DELETE FROM sessions WHERE id_hash = ?1",
                [id_hash],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

/// Every this many writes to the shared cache, the expired entries are swept out, and the
/// soonest to expire beyond `CACHE_MAX_ENTRIES`.
const CACHE_SWEEP_EVERY: u64 = 256;
const CACHE_MAX_ENTRIES: i64 = 100_000;

#[async_trait]
impl SharedCache for SqliteStore {
    async fn get(&self, key: &CacheKey, now_ms: u64) -> StoreResult<Option<CacheEntry>> {
        let key = key.bytes().to_vec();
        let found: Option<(i64, String)> = self
            .with(move |connection| {
                row(
                    connection,
                    "SELECT expires_at_ms, response FROM cache_entries
                     WHERE key = ?1 AND expires_at_ms > ?2",
                    params![key, to_sql_int(now_ms)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(unavailable)
            })
            .await?;
        let Some((expires_at_ms, response)) = found else {
            return Ok(None);
        };
        let response = serde_json::from_str(&response).map_err(unavailable)?;
        Ok(Some(CacheEntry {
            expires_at_ms: from_sql_int(expires_at_ms),
            response,
        }))
    }

    async fn put(&self, key: &CacheKey, entry: &CacheEntry, now_ms: u64) -> StoreResult<()> {
        let key = key.bytes().to_vec();
        let expires_at_ms = to_sql_int(entry.expires_at_ms);
        let response = entry.response.to_string();
        let sweep = self
            .cache_writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CACHE_SWEEP_EVERY);
        self.with(move |connection| {
            run(
                connection,
                "INSERT OR REPLACE INTO cache_entries (key, expires_at_ms, response) VALUES (?1, ?2, ?3)",
                params![key, expires_at_ms, response],
            )
            .map_err(unavailable)?;
            if sweep {
                run(
                    connection,
                    "DELETE FROM cache_entries WHERE expires_at_ms <= ?1",
                    [to_sql_int(now_ms)],
                )
                .map_err(unavailable)?;
                run(
                    connection,
                    "DELETE FROM cache_entries WHERE key IN (
                        SELECT key FROM cache_entries ORDER BY expires_at_ms
                        LIMIT max(0, (SELECT count(*) FROM cache_entries) - ?1))",
                    [CACHE_MAX_ENTRIES],
                )
                .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }
}

/// Inserts a usage record; false when its request id is there already (replays are ignored,
/// never doubled: the request id is the primary key).
/// The rollup rows of all of a tenant's keys together (no key id is `*`).
pub(crate) const ALL_KEYS: &str = "*";

pub(crate) fn insert_usage(connection: &Connection, usage: &UsageRecord) -> rusqlite::Result<bool> {
    let inserted = insert_usage_event(connection, usage)?;
    if inserted {
        // The day's rollups move with the event, in the same transaction: reports read
        // rollups, never a scan of the events.
        let mut rollups = UsageRollups::default();
        rollups.add(usage);
        rollups.write(connection)?;
    }
    Ok(inserted)
}

/// Writes a usage event alone, once per request id (false: it was there); its rollups are
/// the caller's to move ([`UsageRollups`]).
pub(crate) fn insert_usage_event(
    connection: &Connection,
    usage: &UsageRecord,
) -> rusqlite::Result<bool> {
    let inserted = run(connection,
        &format!(
            "INSERT INTO usage_events ({USAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
             ON CONFLICT (request_id) DO NOTHING"
        ),
        params![
            usage.request_id,
            usage.tenant_id,
            usage.key_id,
            usage.model,
            usage.deployment,
            usage.endpoint,
            to_sql_int(usage.prompt_tokens),
            to_sql_int(usage.cached_tokens),
            to_sql_int(usage.completion_tokens),
            usage.cost.nanos(),
            i64::from(usage.status),
            to_sql_int(usage.latency_ms),
            usage.ttft_ms.map(to_sql_int),
            to_sql_int(usage.created_at),
            usage.cache_status,
            usage.route,
            i64::from(usage.attempts),
            usage.user,
            (!usage.metadata.is_empty())
                .then(|| serde_json::to_string(&usage.metadata).ok())
                .flatten(),
        ],
    )?;
    Ok(inserted == 1)
}

/// Usage events' additions to the rollups, summed per row: a batch of events moves each row
/// once. Per day and model, one row per key and one (`*`) for all of the tenant's keys (what
/// reports not broken down by key read); per month, one row per key.
#[derive(Default)]
pub(crate) struct UsageRollups {
    days: BTreeMap<(String, String, String, String), RollupTotals>,
    key_months: BTreeMap<(String, String, String), RollupTotals>,
}

impl UsageRollups {
    pub(crate) fn add(&mut self, usage: &UsageRecord) {
        let sums = RollupTotals::of(usage);
        let day = Date::of_unix(usage.created_at).to_string();
        let key = usage.key_id.as_deref().unwrap_or("");
        for key in [key, ALL_KEYS] {
            let row = (
                usage.tenant_id.clone(),
                day.clone(),
                usage.model.clone(),
                key.to_owned(),
            );
            self.days.entry(row).or_default().add(sums);
        }
        let month = Month::of_unix(usage.created_at).to_string();
        self.key_months
            .entry((usage.tenant_id.clone(), month, key.to_owned()))
            .or_default()
            .add(sums);
    }

    pub(crate) fn write(self, connection: &Connection) -> rusqlite::Result<()> {
        for ((tenant_id, day, model, key), totals) in self.days {
            run(
                connection,
                "INSERT INTO usage_rollups (tenant_id, day, model, key_id, requests, prompt_tokens,
                cached_tokens, completion_tokens, cost_nanos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (tenant_id, key_id, day, model) DO UPDATE SET
                requests = requests + excluded.requests,
                prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                cached_tokens = cached_tokens + excluded.cached_tokens,
                completion_tokens = completion_tokens + excluded.completion_tokens,
                cost_nanos = cost_nanos + excluded.cost_nanos",
                params![
                    tenant_id,
                    day,
                    model,
                    key,
                    totals.requests,
                    totals.prompt_tokens,
                    totals.cached_tokens,
                    totals.completion_tokens,
                    totals.cost_nanos
                ],
            )?;
        }
        for ((tenant_id, month, key), totals) in self.key_months {
            run(
                connection,
                "INSERT INTO usage_key_months VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (tenant_id, month, key_id) DO UPDATE SET
                requests = requests + excluded.requests,
                prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                cached_tokens = cached_tokens + excluded.cached_tokens,
                completion_tokens = completion_tokens + excluded.completion_tokens,
                cost_nanos = cost_nanos + excluded.cost_nanos",
                params![
                    tenant_id,
                    month,
                    key,
                    totals.requests,
                    totals.prompt_tokens,
                    totals.cached_tokens,
                    totals.completion_tokens,
                    totals.cost_nanos
                ],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: format!("{id} inc"),
            billing: Billing::Prepaid,
            created_at: 10,
            limits: RateLimits::default(),
            budgets: Vec::new(),
            log_prompts: false,
        }
    }

    #[tokio::test]
    async fn reopening_a_file_keeps_data_and_schema() {
        let directory =
            std::env::temp_dir().join(format!("ferry-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("ferry.db");
        SqliteStore::open(&path)
            .unwrap()
            .create_tenant(&tenant("a"))
            .await
            .unwrap();
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.get_tenant("a").await.unwrap(), Some(tenant("a")));
        std::fs::remove_dir_all(directory).unwrap();
    }
}
