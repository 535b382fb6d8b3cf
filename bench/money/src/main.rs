//! `bench/money`: settled calls per second through the real gateway router, with durable
//! metering — every call admitted (rate limits, a prepaid hold, budgets), answered, and settled
//! in the store before its response is returned — beside the same calls unbilled, in one run.
//!
//! The backend is an in-process stub that answers at once, so the figures are the gateway's
//! and the store's own cost per call. Each scenario runs on a fresh SQLite file and is
//! reconciled afterwards: a fast run that lost money would fail here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use ferry_core::billing;
use ferry_core::ports::{
    Accounts, SharedCache, Store, Upstream, UpstreamCall, UpstreamError, UpstreamReply,
};
use ferry_functions::admin::{OperatorKey, ensure_operator_key};
use ferry_functions::auth::{AuthConfig, Authenticator};
use ferry_functions::store::{CachedStore, LeasedAccounts};
use ferry_functions::{AppState, RouterConfig};
use ferry_store_sqlite::{Durability, SqliteOptions, SqliteStore};
use serde_json::{Value, json};
use tower::ServiceExt;

const CALLERS: usize = 32;
const DURATION: Duration = Duration::from_secs(4);

/// `--seconds N` per scenario (CI runs a tiny one to check the benchmark works), else 4.
fn duration() -> Duration {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == "--seconds")
        .and_then(|pair| pair[1].parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map_or(DURATION, Duration::from_secs_f64)
}

/// Answers every call at once with a fixed completion.
struct InstantBackend;

#[async_trait]
impl Upstream for InstantBackend {
    async fn call(&self, call: UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        Ok(UpstreamReply::Complete(json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": call.body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        })))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// The operator's own calls: no admission, a usage record per call.
    Unbilled,
    /// A prepaid tenant: hold at admission, settle after, both durable.
    Prepaid,
    /// As prepaid, with key rate limits and a daily budget checked in the same transaction.
    PrepaidWithLimits,
    /// As prepaid with limits, admitted and settled against credit leases, usage journaled
    /// and written to the store in batches (`ferry serve --leases`). Timed until the last
    /// call's usage is in the store and every lease is given back.
    Leased,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Unbilled => "unbilled (usage record only)",
            Scenario::Prepaid => "prepaid (hold + settle)",
            Scenario::PrepaidWithLimits => "prepaid + rpm/tpm + budget",
            Scenario::Leased => "leased (prepaid + limits)",
        }
    }
}

struct Setup {
    app: Router,
    accounts: Arc<dyn Accounts>,
    /// The leases, in a leased scenario.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    leased: Option<Arc<LeasedAccounts>>,
    key: String,
    tenant_id: Option<String>,
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Where a leased run journals its usage (none: each leased call written before its answer).
type JournalAt<'a> = Option<(&'a Path, ferry_journal::Durability)>;

/// Ferry's router over `store`, a tenant with credit and a key for `scenario`.
async fn set_up<S>(
    scenario: Scenario,
    store: Arc<S>,
    journal: JournalAt<'_>,
) -> anyhow::Result<Setup>
where
    S: Store + Accounts + SharedCache + 'static,
{
    let OperatorKey::Generated(operator) = ensure_operator_key(store.as_ref(), None).await? else {
        anyhow::bail!("a fresh store has no operator key");
    };
    let auth = Authenticator::new(
        store.clone(),
        AuthConfig {
            key_cache_ttl: Duration::from_secs(60),
            ..AuthConfig::default()
        },
        reqwest::Client::new(),
    )?;
    let mut state = AppState::for_tests(store.clone(), Arc::new(InstantBackend));
    state.auth = Arc::new(auth);
    // As `ferry serve` runs: tenants, models and prices read through a cache, so the store's
    // thread does the money and nothing else.
    let cached = Arc::new(CachedStore::new(
        store.clone(),
        store.clone(),
        Duration::from_secs(5),
    ));
    state.store = cached.clone();
    state.accounts = cached.clone();
    let leased = match scenario {
        Scenario::Leased => Some(LeasedAccounts::open(cached, journal).await?),
        _ => None,
    };
    if let Some(leased) = &leased {
        state.accounts = leased.clone();
    }
    let accounts = state.accounts.clone();
    let app = ferry_functions::router(state, &RouterConfig::default());
    let model = json!({
        "id": "bench-model",
        "deployments": [{"id": "d1", "upstream": {"url": "http://127.0.0.1:9/v1", "model": "stub"}}],
        "price": {"input_per_mtok_usd": "0.15", "output_per_mtok_usd": "0.60", "per_call_usd": "0.0001"},
        "max_output_tokens": 64,
    });
    let (status, _) = send(&app, "POST", "/admin/v1/models", &operator, &model).await?;
    ensure!(status == StatusCode::OK, "registering the model: {status}");
    if scenario == Scenario::Unbilled {
        return Ok(Setup {
            app,
            accounts,
            leased,
            key: operator,
            tenant_id: None,
        });
    }
    let (_, tenant) = send(
        &app,
        "POST",
        "/admin/v1/tenants",
        &operator,
        &json!({"name": "bench"}),
    )
    .await?;
    let tenant_id = tenant["id"].as_str().context("tenant id")?.to_owned();
    let credit = json!({"amount_usd": "1000000"});
    send(
        &app,
        "POST",
        &format!("/admin/v1/tenants/{tenant_id}/credits"),
        &operator,
        &credit,
    )
    .await?;
    let mut key = json!({"name": "bench", "role": "member"});
    if matches!(scenario, Scenario::PrepaidWithLimits | Scenario::Leased) {
        key["limits"] = json!({"rpm": 10_000_000, "tpm": 1_000_000_000});
        key["budgets"] = json!([{"period": "day", "amount_usd": "100000"}]);
    }
    let (_, created) = send(
        &app,
        "POST",
        &format!("/admin/v1/tenants/{tenant_id}/keys"),
        &operator,
        &key,
    )
    .await?;
    let key = created["key"].as_str().context("key")?.to_owned();
    Ok(Setup {
        app,
        accounts,
        leased,
        key,
        tenant_id: Some(tenant_id),
    })
}

/// Waits until every answered call is settled in the store: the journal drained and every
/// lease given back (nothing held).
async fn settled_in_store(setup: &Setup) -> anyhow::Result<()> {
    if let Some(tenant) = &setup.tenant_id {
        while setup.accounts.balance(tenant).await?.held_usd != ferry_core::Money::ZERO {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Calls as fast as `CALLERS` concurrent callers can for `duration()`; returns calls per second.
async fn run(scenario: Scenario, options: SqliteOptions) -> anyhow::Result<f64> {
    let directory = std::env::temp_dir().join(format!(
        "ferry-bench-money-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&directory)?;
    let store = Arc::new(SqliteStore::open_with(
        &directory.join("ferry.db"),
        options,
    )?);
    let durability = match options.durability {
        Durability::ProcessCrash => ferry_journal::Durability::ProcessCrash,
        Durability::PowerLoss => ferry_journal::Durability::PowerLoss,
    };
    let journal = directory.join("journal");
    let setup = set_up(scenario, store, Some((&journal, durability))).await?;
    let started = Instant::now();
    let duration = duration();
    let calls = call_while(&setup, CALLERS, move || started.elapsed() < duration).await?;
    settled_in_store(&setup).await?;
    let seconds = started.elapsed().as_secs_f64();
    // Every call must be in the books, and the books must balance.
    let (ledger, tenants) = setup.accounts.figures().await?;
    let problems = billing::discrepancies(&ledger, &tenants);
    ensure!(problems.is_empty(), "books do not reconcile: {problems:?}");
    let settled: u64 = tenants
        .iter()
        .map(|tenant| u64::from(tenant.usage.nanos() > 0))
        .sum();
    ensure!(
        scenario == Scenario::Unbilled || settled == 1,
        "the tenant's calls were not charged"
    );
    drop(setup);
    std::fs::remove_dir_all(&directory)?;
    Ok(calls as f64 / seconds)
}

/// `callers` callers each making calls one after another while `more()` says so; how many were
/// answered (every one must be).
async fn call_while(
    setup: &Setup,
    callers: usize,
    more: impl Fn() -> bool + Clone + Send + 'static,
) -> anyhow::Result<u64> {
    let body = json!({"model": "bench-model", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 16});
    let callers: Vec<_> = (0..callers)
        .map(|_| {
            let (app, key, body, more) = (
                setup.app.clone(),
                setup.key.clone(),
                body.clone(),
                more.clone(),
            );
            tokio::spawn(async move {
                let mut answered = 0u64;
                while more() {
                    let (status, answer) =
                        send(&app, "POST", "/v1/chat/completions", &key, &body).await?;
                    ensure!(status == StatusCode::OK, "call failed: {status} {answer}");
                    answered += 1;
                }
                anyhow::Ok(answered)
            })
        })
        .collect();
    let mut answered = 0;
    for caller in callers {
        answered += caller.await??;
    }
    Ok(answered)
}

/// `--only WORD`: run only the rows whose scenario name contains it (e.g. `leased`, to profile
/// one path); else every row.
fn only() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == "--only")
        .map(|pair| pair[1].clone())
}

#[cfg(feature = "aws")]
mod dynamodb;

/// `--dynamodb N`: DynamoDB writes per call instead (built with `--features aws`).
fn dynamodb_calls() -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == "--dynamodb")
        .and_then(|pair| pair[1].parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(calls) = dynamodb_calls() {
        #[cfg(feature = "aws")]
        return dynamodb::writes_per_call(calls).await;
        #[cfg(not(feature = "aws"))]
        anyhow::bail!("--dynamodb {calls}: build with `--features aws`");
    }
    println!(
        "bench/money: {CALLERS} concurrent callers, {} s per scenario, instant backend, one SQLite file",
        duration().as_secs_f64()
    );
    println!(
        "{:<30} {:<24} {:<8} {:>10} {:>12}",
        "scenario", "durability", "grouped", "calls/s", "vs unbilled"
    );
    let options = |durability, group_commit| SqliteOptions {
        durability,
        group_commit,
        ..SqliteOptions::default()
    };
    let normal = Durability::ProcessCrash;
    let full = Durability::PowerLoss;
    // Each prepaid row is compared with the unbilled row of the same store settings above it.
    let mut baseline = None;
    for (scenario, options) in [
        (Scenario::Unbilled, options(normal, true)),
        (Scenario::Prepaid, options(normal, true)),
        (Scenario::PrepaidWithLimits, options(normal, true)),
        (Scenario::Leased, options(normal, true)),
        (Scenario::Unbilled, options(normal, false)),
        (Scenario::Prepaid, options(normal, false)),
        (Scenario::Unbilled, options(full, true)),
        (Scenario::Prepaid, options(full, true)),
        (Scenario::Leased, options(full, true)),
        (Scenario::Unbilled, options(full, false)),
        (Scenario::Prepaid, options(full, false)),
    ] {
        if only().is_some_and(|word| !scenario.name().contains(&word)) {
            continue;
        }
        let rate = run(scenario, options).await?;
        if scenario == Scenario::Unbilled {
            baseline = Some(rate);
        }
        let ratio = baseline.map_or(String::new(), |base| format!("{:.2}", rate / base));
        let durability = match options.durability {
            Durability::ProcessCrash => "process crash (NORMAL)",
            Durability::PowerLoss => "power loss (FULL)",
        };
        let grouped = if options.group_commit { "yes" } else { "no" };
        println!(
            "{:<30} {:<24} {:<8} {:>10.0} {:>12}",
            scenario.name(),
            durability,
            grouped,
            rate,
            ratio
        );
    }
    Ok(())
}
