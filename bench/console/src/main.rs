//! `bench/console`: the console's API calls, as the console makes them (a signed-in session's
//! cookie, through the real router over HTTP), on a tenant with a million usage events and
//! 100,000 keys in a SQLite file.
//!
//! Seeding goes through the store's own writes (`create_key`, `settle`, `post`: a tenth as
//! many ledger top-ups as events), so the rollups are
//! the ones real traffic keeps. Events fall over the last 90 days on six models; keys are
//! used as a real tenant's are, a few heavily and most rarely (key `i` of `n` is drawn as
//! `n·u⁴`, `u` uniform: a tenth of the keys make half the calls). Each call is timed
//! sequentially after a warm-up; the table gives p50, p99 and the worst, in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use ferry_core::Money;
use ferry_core::api_key::{self, ApiKey};
use ferry_core::calendar::{Date, Month};
use ferry_core::ledger::Posting;
use ferry_core::ports::{
    Accounts, Billing, KeyRecord, PostRequest, RateLimits, Store, Tenant, Upstream, UpstreamCall,
    UpstreamError, UpstreamReply, UsageRecord,
};
use ferry_core::principal::Role;
use ferry_functions::auth::{AuthConfig, Authenticator};
use ferry_functions::{AppState, RouterConfig};
use ferry_store_sqlite::{SqliteOptions, SqliteStore};
use futures_util::StreamExt as _;

const TENANT: &str = "ten_bench";
const MODELS: [&str; 6] = [
    "smollm2-135m-instruct",
    "llama-3.1-8b",
    "qwen2.5-7b",
    "mistral-7b",
    "gemma-2-9b",
    "phi-3-mini",
];
const DAY: u64 = 86_400;

struct Args {
    events: u64,
    keys: u64,
    samples: usize,
}

fn args() -> anyhow::Result<Args> {
    let given: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| -> anyhow::Result<u64> {
        match given.iter().position(|arg| arg == name) {
            Some(index) => given
                .get(index + 1)
                .and_then(|text| text.replace('_', "").parse().ok())
                .with_context(|| format!("{name} takes a number")),
            None => Ok(default),
        }
    };
    Ok(Args {
        events: value("--events", 1_000_000)?,
        keys: value("--keys", 100_000)?.max(1),
        samples: usize::try_from(value("--samples", 200)?)?.max(1),
    })
}

/// SplitMix64: reproducible seeding without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next() as u8)
    }
}

/// The console only reads: no model is ever called.
struct NoBackend;

#[async_trait]
impl Upstream for NoBackend {
    async fn call(&self, _call: UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        Err(UpstreamError::Connect(
            "the benchmark calls no model".into(),
        ))
    }
}

fn key_record(key: &ApiKey, role: Role, created_at: u64) -> KeyRecord {
    KeyRecord {
        id: key.key_id(),
        public_id: key.public_id().to_owned(),
        secret_hash: key.hash(),
        tenant_id: Some(TENANT.into()),
        name: format!("key {}", key.public_id()),
        role,
        models: None,
        limits: RateLimits::default(),
        budgets: Vec::new(),
        credit_cap: None,
        created_at,
        expires_at: None,
        revoked_at: None,
    }
}

async fn seed(
    store: &Arc<SqliteStore>,
    args: &Args,
    now: u64,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut random = Random(7);
    store
        .create_tenant(&Tenant {
            id: TENANT.into(),
            name: "Bench Inc".into(),
            billing: Billing::Postpaid,
            created_at: now - 100 * DAY,
            limits: RateLimits::default(),
            budgets: Vec::new(),
            log_prompts: false,
        })
        .await?;
    let admin = ApiKey::generate(random.bytes(), random.bytes());
    store
        .create_key(&key_record(&admin, Role::TenantAdmin, now - 100 * DAY))
        .await?;

    let started = Instant::now();
    let mut key_ids = Vec::with_capacity(usize::try_from(args.keys)?);
    let keys: Vec<KeyRecord> = (0..args.keys)
        .map(|index| {
            let key = ApiKey::generate(random.bytes(), random.bytes());
            key_ids.push(key.key_id());
            key_record(
                &key,
                Role::Member,
                now - 95 * DAY + index * (90 * DAY) / args.keys,
            )
        })
        .collect();
    futures_util::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move { store.create_key(&key).await }
        })
        .buffer_unordered(64)
        .for_each(|created| async move {
            if let Err(error) = created {
                eprintln!("creating a key: {error}");
            }
        })
        .await;
    eprintln!(
        "seeded {} keys in {:.1} s",
        args.keys,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let events: Vec<UsageRecord> = (0..args.events)
        .map(|index| {
            let key = &key_ids[((args.keys as f64) * random.unit().powi(4)) as usize];
            let model = MODELS[((MODELS.len() as f64) * random.unit().powi(2)) as usize];
            let prompt_tokens = 20 + random.next() % 2_000;
            let completion_tokens = 1 + random.next() % 500;
            UsageRecord {
                request_id: format!("req_{index:010}"),
                tenant_id: TENANT.into(),
                key_id: Some(key.clone()),
                model: model.into(),
                deployment: "local".into(),
                endpoint: "chat.completions".into(),
                prompt_tokens,
                cached_tokens: 0,
                completion_tokens,
                cost: Money::from_nanos(
                    i64::try_from(prompt_tokens * 100 + completion_tokens * 400).unwrap_or(0),
                ),
                status: 200,
                latency_ms: 300,
                ttft_ms: Some(40),
                cache_status: "miss".into(),
                route: "weighted".into(),
                attempts: 1,
                created_at: now - 90 * DAY + random.next() % (90 * DAY),
                user: None,
                metadata: Default::default(),
            }
        })
        .collect();
    let settled = futures_util::stream::iter(events)
        .map(|event| {
            let store = store.clone();
            async move { store.settle(&event).await }
        })
        .buffer_unordered(128)
        .fold(0u64, |count, settled| async move {
            match settled {
                Ok(_) => count + 1,
                Err(error) => {
                    eprintln!("settling: {error}");
                    count
                }
            }
        })
        .await;
    ensure!(
        settled == args.events,
        "only {settled} of {} events settled",
        args.events
    );
    eprintln!(
        "seeded {} usage events in {:.1} s ({:.0}/s)",
        args.events,
        started.elapsed().as_secs_f64(),
        args.events as f64 / started.elapsed().as_secs_f64()
    );
    // The ledger: a top-up a day for years, so its pages are pages of a long history.
    let started = Instant::now();
    let postings = args.events / 10;
    futures_util::stream::iter(0..postings)
        .map(|index| {
            let store = store.clone();
            async move {
                store
                    .post(&PostRequest {
                        posting: Posting::top_up(TENANT, Money::from_nanos(1_000_000_000)),
                        idempotency_key: None,
                        memo: Some(format!("top-up {index}")),
                        now_ms: (now - 90 * DAY) * 1000 + index * 1000,
                    })
                    .await
            }
        })
        .buffer_unordered(64)
        .for_each(|posted| async move {
            if let Err(error) = posted {
                eprintln!("posting: {error}");
            }
        })
        .await;
    eprintln!(
        "seeded {postings} ledger top-ups in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((admin.expose(), key_ids))
}

struct Timing {
    call: String,
    p50: f64,
    p99: f64,
    max: f64,
    bytes: usize,
}

async fn time_call(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    samples: usize,
) -> anyhow::Result<Timing> {
    let get = || async {
        let response = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        Ok::<_, anyhow::Error>(response.bytes().await?.len())
    };
    let mut bytes = 0;
    for _ in 0..samples.div_ceil(10).max(3) {
        bytes = get().await?;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        get().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |quantile: f64| times[((times.len() as f64 - 1.0) * quantile).round() as usize];
    Ok(Timing {
        call: path.to_owned(),
        p50: at(0.5),
        p99: at(0.99),
        max: times[times.len() - 1],
        bytes,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = std::env::temp_dir().join(format!("ferry-bench-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(SqliteStore::open_with(
        &dir.join("ferry.db"),
        SqliteOptions::default(),
    )?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (admin_key, key_ids) = seed(&store, &args, now).await?;

    let auth = Authenticator::new(store.clone(), AuthConfig::default(), reqwest::Client::new())?;
    let mut state = AppState::for_tests(store.clone(), Arc::new(NoBackend));
    state.auth = Arc::new(auth);
    let app = ferry_functions::router(state, &RouterConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let signed_in = http
        .post(format!("{base}/admin/v1/session"))
        .json(&serde_json::json!({ "key": admin_key }))
        .send()
        .await?;
    ensure!(
        signed_in.status().is_success(),
        "sign-in: {}",
        signed_in.status()
    );
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .context("no session cookie")?
        .to_owned();

    let today = Date::of_unix(now);
    let month = Month::of_unix(now).first_day();
    let days_ago = |days: u64| Date::of_unix(now - days * DAY);
    // A key page deep in the list: the cursor the page before it gave.
    let middle_key = &key_ids[key_ids.len() / 2];
    let middle: KeyRecord = store
        .find_key(api_key::public_id_of(middle_key).context("key id")?)
        .await?
        .context("the middle key")?;
    let tenant = format!("/admin/v1/tenants/{TENANT}");
    let calls = [
        "/admin/v1/session".to_owned(),
        tenant.clone(),
        format!("{tenant}/usage?from={month}&to={today}"),
        format!("{tenant}/usage?from={month}&to={today}&group_by=day"),
        format!(
            "{tenant}/usage?from={}&to={today}&group_by=day,model",
            days_ago(29)
        ),
        format!(
            "{tenant}/usage?from={}&to={today}&group_by=day,model",
            days_ago(89)
        ),
        format!(
            "{tenant}/usage?from={}&to={today}&group_by=model",
            days_ago(29)
        ),
        format!("{tenant}/usage/keys?limit=20"),
        format!(
            "{tenant}/usage/keys?month={}&limit=20",
            Month::of_unix(now - 40 * DAY)
        ),
        format!("{tenant}/usage?from={today}&to={today}&group_by=key&limit=20"),
        format!(
            "{tenant}/usage?from={}&to={today}&key={middle_key}&group_by=day",
            days_ago(29)
        ),
        format!("{tenant}/keys?limit=50"),
        format!(
            "{tenant}/keys?limit=50&after={}:{}",
            middle.created_at, middle.id
        ),
        format!("{tenant}/ledger?limit=50"),
        format!("{tenant}/invoices"),
        format!("{tenant}/alerts"),
        format!("{tenant}/usage/events?from={today}&to={today}&limit=50"),
    ];
    let mut timings = Vec::new();
    for call in &calls {
        timings.push(time_call(&http, &base, &cookie, call, args.samples).await?);
    }
    println!(
        "\nconsole API calls, tenant with {} usage events and {} keys (SQLite file; {} samples each, sequential)\n",
        args.events, args.keys, args.samples
    );
    println!("| call | p50 ms | p99 ms | max ms | bytes |");
    println!("|---|---:|---:|---:|---:|");
    for timing in &timings {
        let call = timing
            .call
            .replace(TENANT, "{t}")
            .replace(&middle.id, "{key}")
            .replace(middle_key, "{key}");
        println!(
            "| `{call}` | {:.2} | {:.2} | {:.2} | {} |",
            timing.p50, timing.p99, timing.max, timing.bytes
        );
    }
    let worst = timings.iter().map(|timing| timing.p99).fold(0.0, f64::max);
    println!("\nworst p99: {worst:.2} ms");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
