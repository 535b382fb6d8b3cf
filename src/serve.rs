//! `ferry serve`: the all-in-one process — gateway, admin API, embedded SQLite store, and a
//! local GPU pool of worker processes that scales to zero.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use ferry_core::model::{Deployment, ModelSpec, UpstreamTarget};
use ferry_core::ports::{Accounts, Store};
use ferry_functions::admin::{OperatorKey, ensure_operator_key, register_model};
use ferry_functions::auth::Authenticator;
use ferry_functions::clock;
use ferry_functions::edge::EdgeKeys;
use ferry_functions::server::Server;
use ferry_functions::store::CachedStore;
use ferry_functions::upstream::HttpUpstream;
use ferry_functions::{AppState, MoneyConfig, RouterConfig};
use ferry_scaler::provider::ProcessSpec;
use ferry_scaler::{LocalProcesses, Pool};
use ferry_store_sqlite::{Durability, SqliteOptions, SqliteStore};
use ferry_worker::source::ModelKind;
use ferry_worker::worker::{ModelRef, resolve};
use tokio::net::TcpListener;

use crate::config::{self, Config, Overrides};
use crate::models::{ModelChoiceArgs, ModelStoreArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where to listen (HOST:PORT; port 0 picks a free one). Default 127.0.0.1:8080.
    #[arg(long, env = "FERRY_ADDR")]
    addr: Option<SocketAddr>,
    /// Where the embedded store and the default config file live.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
    data_dir: PathBuf,
    /// A TOML config file (default: ferry.toml in the data directory, if present).
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// The operator key to accept; without it one is generated on first start and printed once.
    #[arg(long, env = "FERRY_OPERATOR_KEY", hide_env_values = true)]
    operator_key: Option<String>,
    /// Log as JSON lines instead of text.
    /// The secret shared with edge components (Spin): answers carry grants an edge may keep,
    /// and edges report their hits to `/v1/edge/hits` signed with it. Unset: no edges.
    #[arg(long, env = "FERRY_EDGE_SECRET", hide_env_values = true)]
    edge_secret: Option<String>,
    /// A bearer token a Prometheus scraper may read `/metrics` with (operator keys may too).
    #[arg(long, env = "FERRY_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    #[arg(long, env = "FERRY_LOG_JSON")]
    log_json: bool,
    /// Serve no local models: only upstreams registered through the admin API or config.
    #[arg(long, env = "FERRY_NO_LOCAL_MODELS")]
    no_local_models: bool,
    /// How long a call's credit hold waits for its settlement before it is released at no
    /// charge (the gateway died mid-call). Longer than any call may take.
    #[arg(long, env = "FERRY_HOLD_TTL_SECONDS", default_value_t = 900)]
    hold_ttl_seconds: u64,
    /// What a commit (a settled call above all) must survive before Ferry answers:
    /// `process-crash` (SQLite WAL, synchronous=NORMAL) or `power-loss` (fsync per commit).
    #[arg(
        long,
        env = "FERRY_DURABILITY",
        value_enum,
        default_value = "process-crash"
    )]
    durability: DurabilityArg,
    /// Admit and settle a busy tenant's calls in memory against credit leases, journaling
    /// their usage under the data directory (`journal/`) and writing it to the store in
    /// batches. Quiet tenants, and limits too small to share, are admitted call by call.
    /// `--leases false` (or FERRY_LEASES=0) admits every call by the store.
    #[arg(
        long,
        env = "FERRY_LEASES",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    leases: bool,
    #[command(flatten)]
    models: ModelChoiceArgs,
    #[command(flatten)]
    store: ModelStoreArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    ProcessCrash,
    PowerLoss,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init(args.log_json, "ferry");
    let config = config::load(Overrides {
        addr: args.addr,
        data_dir: args.data_dir.clone(),
        config_file: args.config.clone(),
    })?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let options = SqliteOptions {
        durability: match args.durability {
            DurabilityArg::ProcessCrash => Durability::ProcessCrash,
            DurabilityArg::PowerLoss => Durability::PowerLoss,
        },
        ..SqliteOptions::default()
    };
    let store = Arc::new(
        SqliteStore::open_with(&config.data_dir.join("ferry.db"), options)
            .context("opening the store")?,
    );
    let operator_key = ensure_operator_key(
        store.as_ref(),
        args.operator_key.as_deref().filter(|key| !key.is_empty()),
    )
    .await
    .context("operator key")?;
    for model in &config.models {
        register_model(store.as_ref(), store.as_ref(), model, clock::unix_millis()).await?;
    }
    let (pool, local_models, pool_url) = if args.no_local_models {
        (None, Vec::new(), None)
    } else {
        let (pool, ids, activator) = start_local_pool(&args, &config, store.as_ref()).await?;
        (Some(pool), ids, Some(activator))
    };
    let money = MoneyConfig {
        hold_ttl: Duration::from_secs(args.hold_ttl_seconds.max(1)),
        stream_write_timeout: config.stream_write_timeout,
    };
    tokio::spawn(expire_holds(store.clone(), money.hold_ttl));
    let http = reqwest::Client::builder().build().context("HTTP client")?;
    let cached = Arc::new(CachedStore::new(
        store.clone(),
        store,
        config.read_cache_ttl,
    ));
    let leased = if args.leases {
        let durability = match args.durability {
            DurabilityArg::ProcessCrash => ferry_journal::Durability::ProcessCrash,
            DurabilityArg::PowerLoss => ferry_journal::Durability::PowerLoss,
        };
        let journal = config.data_dir.join("journal");
        Some(
            ferry_functions::store::LeasedAccounts::open(
                cached.clone(),
                Some((&journal, durability)),
            )
            .await
            .context("opening the usage journal")?,
        )
    } else {
        None
    };
    let accounts: Arc<dyn ferry_core::ports::Accounts> = match &leased {
        Some(leased) => leased.clone(),
        None => cached.clone(),
    };
    let state = AppState {
        breakers: Default::default(),
        metrics: Default::default(),
        store: cached.clone(),
        accounts,
        upstream: Arc::new(HttpUpstream::new(config.upstream.clone()).context("upstream client")?),
        auth: Arc::new(Authenticator::new(cached, config.auth.clone(), http)?),
        money,
        // Kept answers also go to a SQLite file of their own (its own writer, so cache traffic
        // never queues behind admissions): they outlive a restart.
        cache: ferry_functions::cache::ResponseCache::with_shared(
            ferry_functions::cache::DEFAULT_CAPACITY_BYTES,
            Arc::new(
                SqliteStore::open(&config.data_dir.join("cache.db"))
                    .context("opening the cache store")?,
            ),
        ),
        edge: match args.edge_secret.as_deref() {
            Some(shared) => Some(
                EdgeKeys::new(shared.as_bytes(), &grant_key(&config.data_dir)?)
                    .map_err(anyhow::Error::msg)
                    .context("FERRY_EDGE_SECRET")?,
            ),
            None => None,
        },
        // Beside billing's exports: keys begin `files/` and `batches/`.
        files: Some(Arc::new(ferry_store_sqlite::LocalObjectStore::new(
            config.data_dir.join("objects"),
        ))),
        runs_batches: true,
    };
    if let Some(pool) = &pool {
        state
            .metrics
            .add_collector(Box::new(ferry_scaler::metrics::PoolCollector(pool.clone())));
    }
    let answers = state.cache.clone();
    let metrics = state.metrics.clone();
    // Batches run in this process, resumed where they were after a restart.
    tokio::spawn(ferry_functions::batch_runner::run(
        state.clone(),
        Duration::from_secs(1),
    ));
    let router = ferry_functions::router(
        state,
        &RouterConfig {
            max_request_body_bytes: config.max_request_body_bytes,
            max_calls_in_flight: config.max_calls_in_flight,
            metrics_token: args.metrics_token.clone().filter(|token| !token.is_empty()),
            pool_url,
            ..RouterConfig::default()
        },
    );
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let example_model = config
        .models
        .first()
        .map(|model| model.id.clone())
        .or_else(|| local_models.first().cloned());
    print_welcome(example_model.as_deref(), addr, &operator_key);
    // Last, so whoever waits for this line has the whole welcome already.
    println!("listening on http://{addr}");
    let server = Server::new(listener, router, config.connections.clone()).with_metrics(metrics);
    serve_until_signal(server, pool).await?;
    if let Some(leased) = leased {
        // The calls have ended: their usage reaches the store and the leases go back.
        leased.close(Duration::from_secs(5)).await;
    }
    // Answers kept in the last moments still reach the store.
    let _ = tokio::time::timeout(Duration::from_secs(5), answers.flush()).await;
    tracing::info!("stopped");
    Ok(())
}

/// How long calls in flight may take to finish once a shutdown signal came.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves until SIGINT or SIGTERM. Then no new connection is taken, the pool (if any) turns
/// away calls that have no replica yet and drains its replicas, calls in flight get
/// `SHUTDOWN_GRACE` to finish, and the replicas are stopped: a platform that kills this
/// process after its own grace (ECS, Kubernetes: 30 s) finds no replica left running.
pub(crate) async fn serve_until_signal(
    server: Server,
    pool: Option<Arc<Pool>>,
) -> anyhow::Result<()> {
    let (stopping, mut signalled) = tokio::sync::watch::channel(false);
    let server = server.serve(async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    });
    let closing = pool.clone();
    let grace = async move {
        let _ = signalled.wait_for(|signalled| *signalled).await;
        if let Some(pool) = &closing {
            pool.close().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace => tracing::warn!("calls still in flight after the shutdown grace; stopping anyway"),
    }
    if let Some(pool) = pool {
        pool.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// Releases the holds of calls that never settled (a gateway process died mid-call), now and
/// then for as long as the process runs. Any replica may do it: each hold is released once.
async fn expire_holds(accounts: Arc<SqliteStore>, hold_ttl: Duration) {
    let every = (hold_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match accounts.expire_holds(clock::unix_millis()).await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(count, "released holds whose calls never settled"),
            Err(error) => tracing::warn!(%error, "could not expire holds"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The local models' pool: pulls the models (so no cold start waits for a download), runs the
/// activator on a loopback port with `ferry worker` processes as its replicas, started on
/// demand and stopped when idle, and points the models' `local` deployments at it.
async fn start_local_pool(
    args: &ServeArgs,
    config: &Config,
    store: &dyn Store,
) -> anyhow::Result<(Arc<Pool>, Vec<String>, String)> {
    let pull = args.store.pull_options(&config.data_dir);
    let worker_config = args.models.worker_config(pull.clone());
    let models: Vec<(ModelRef, ModelKind)> = worker_config
        .chat
        .iter()
        .map(|model| (model.clone(), ModelKind::Chat))
        .chain(
            worker_config
                .embedding
                .iter()
                .map(|model| (model.clone(), ModelKind::Embedding)),
        )
        .collect();
    let ids: Vec<String> = models.iter().map(|(model, _)| model.id.clone()).collect();
    if ids.is_empty() {
        anyhow::bail!("no local models chosen: pass --no-local-models to serve none");
    }
    let to_pull = models.clone();
    let resolve_with = pull.clone();
    tokio::task::spawn_blocking(move || {
        to_pull
            .iter()
            .try_for_each(|(model, kind)| resolve(model, *kind, &resolve_with).map(drop))
    })
    .await?
    .context("local models")?;

    let mut worker_args = vec![
        "worker".to_owned(),
        "--addr".into(),
        "127.0.0.1:0".into(),
        "--exit-with-stdin".into(),
        "--models-dir".into(),
        pull.cache_dir.display().to_string(),
        "--python".into(),
        pull.python.clone(),
        "--data-dir".into(),
        config.data_dir.display().to_string(),
    ];
    worker_args.extend(args.models.worker_args());
    let deployment = config.pool.deployment(LOCAL, args.models.max_batch);
    let spec = ProcessSpec {
        program: std::env::current_exe().context("locating the ferry binary")?,
        args: worker_args,
        env: share_cores(deployment.scaling.max_replicas),
    };
    tracing::info!(
        min_replicas = deployment.scaling.min_replicas,
        max_replicas = deployment.scaling.max_replicas,
        idle_grace_seconds = deployment.scaling.scale_to_zero_grace_ms / 1000,
        "local models run in worker processes started on demand; with no replica kept, the first call after an idle spell waits for a cold start"
    );
    let provider = LocalProcesses::new(HashMap::from([(LOCAL.to_owned(), spec)]));
    let pool = Pool::new(vec![deployment], Arc::new(provider));
    let activator_addr = config
        .pool
        .activator_addr
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(activator_addr)
        .await
        .with_context(|| format!("binding the pool's activator on {activator_addr}"))?;
    let activator_addr = listener.local_addr()?;
    tracing::info!(
        "pool activator on http://{activator_addr} (GET /pool: replicas and queue; POST /pool/{LOCAL}/prewarm {{\"replicas\":N,\"seconds\":S}})"
    );
    let url = format!("http://{activator_addr}/{LOCAL}/v1");
    let activator = ferry_scaler::proxy::router(pool.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(no_delay(listener), activator).await {
            tracing::error!(%error, "the pool's activator stopped");
        }
    });
    pool.spawn();
    for id in &ids {
        let deployment = Deployment {
            id: LOCAL.into(),
            upstream: UpstreamTarget {
                url: url.clone(),
                model: id.clone(),
                api_key: None,
            },
            weight: 1,
        };
        // The activator's port changes every start: only the `local` deployment is replaced;
        // the operator's price and other deployments of the model are kept.
        let spec = match store.get_model(id).await? {
            Some(existing) => {
                let mut spec = existing.spec;
                spec.deployments.retain(|other| other.id != deployment.id);
                spec.deployments.insert(0, deployment);
                spec
            }
            None => ModelSpec {
                id: id.clone(),
                deployments: vec![deployment],
                price: None,
                max_output_tokens: None,
                limits: Default::default(),
                route: None,
            },
        };
        store.put_model(&spec, clock::unix_seconds()).await?;
        tracing::info!(model = %id, %url, "serving local model");
    }
    Ok((pool, ids, format!("http://{activator_addr}")))
}

/// Workers on one machine share its cores: each gets its part for its CPU kernels, since
/// thread pools that each take every core spin against one another (on 2 cores, two workers
/// decoded 8 times slower than with a core each). An operator's own setting wins.
pub(crate) fn share_cores(max_replicas: u32) -> Vec<(String, String)> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return Vec::new();
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let replicas = usize::try_from(max_replicas).unwrap_or(1).max(1);
    vec![(
        "RAYON_NUM_THREADS".into(),
        (cores / replicas).max(1).to_string(),
    )]
}

/// The pool deployment of `ferry serve`'s own models.
const LOCAL: &str = "local";

fn print_welcome(example_model: Option<&str>, addr: SocketAddr, operator_key: &OperatorKey) {
    let key = match operator_key {
        OperatorKey::Generated(key) => {
            println!("operator key (shown once; keep it, or set FERRY_OPERATOR_KEY): {key}");
            key.clone()
        }
        OperatorKey::Configured => "$FERRY_OPERATOR_KEY".to_owned(),
        OperatorKey::Existing => {
            println!(
                "an operator key was printed on first start; set FERRY_OPERATOR_KEY to use a key of your own"
            );
            "$FERRY_OPERATOR_KEY".to_owned()
        }
    };
    let model = example_model.unwrap_or("my-model");
    let base = format!("http://{addr}");
    println!(
        r#"
Register an OpenAI-compatible upstream (vLLM, TGI, llama.cpp, a hosted API) as a model:
  curl {base}/admin/v1/models -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
    -d '{{"id":"my-model","deployments":[{{"id":"primary","upstream":{{"url":"http://127.0.0.1:8000/v1","model":"served-model-name"}}}}]}}'

Call it:
  curl {base}/v1/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \
    -d '{{"model":"{model}","messages":[{{"role":"user","content":"Hello!"}}]}}'

Or from Python (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
  print(client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)
"#
    );
}

/// Sends small writes at once: an SSE chunk held back by Nagle's algorithm waits for the
/// peer's delayed ACK, which added 40 ms to every stream's first token.
pub(crate) fn no_delay(listener: TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    })
}

pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: no new connections, finishing the ones in flight");
}

/// The key edge grants are signed with: the origin's alone, kept in the data directory so
/// grants handed out before a restart can still be billed after it.
fn grant_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("edge-grant.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => anyhow::bail!("{} is shorter than 32 bytes", path.display()),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("reading {}", path.display()));
        }
        Err(_) => {}
    }
    let key = clock::secret_bytes::<32>().context("no randomness for the edge grant key")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, &key)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key.to_vec())
}
