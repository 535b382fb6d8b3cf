//! `ferry serve`: the all-in-one process — gateway, admin API and embedded SQLite store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use ferry_core::model::{Deployment, ModelSpec, UpstreamTarget};
use ferry_core::ports::{Accounts, Store};
use ferry_functions::admin::{OperatorKey, ensure_operator_key, register_model};
use ferry_functions::auth::Authenticator;
use ferry_functions::clock;
use ferry_functions::store::{CachedStore, Durability, SqliteOptions, SqliteStore};
use ferry_functions::upstream::HttpUpstream;
use ferry_functions::{AppState, MoneyConfig, RouterConfig};
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
    init_logging(args.log_json);
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
    let local_models = if args.no_local_models {
        Vec::new()
    } else {
        start_local_worker(&args, &config, store.as_ref()).await?
    };
    let money = MoneyConfig {
        hold_ttl: Duration::from_secs(args.hold_ttl_seconds.max(1)),
    };
    tokio::spawn(expire_holds(store.clone(), money.hold_ttl));
    let http = reqwest::Client::builder().build().context("HTTP client")?;
    let cached = Arc::new(CachedStore::new(
        store.clone(),
        store,
        config.read_cache_ttl,
    ));
    let state = AppState {
        store: cached.clone(),
        accounts: cached.clone(),
        upstream: Arc::new(HttpUpstream::new(config.upstream.clone()).context("upstream client")?),
        auth: Arc::new(Authenticator::new(cached, config.auth.clone(), http)?),
        money,
    };
    let router = ferry_functions::router(
        state,
        &RouterConfig {
            max_request_body_bytes: config.max_request_body_bytes,
            max_calls_in_flight: config.max_calls_in_flight,
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
    axum::serve(no_delay(listener), router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
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

/// Loads the local models (pulling them on first start), serves them on a loopback port as a
/// pool replica, and points their models' deployments at it. Returns the model ids.
async fn start_local_worker(
    args: &ServeArgs,
    config: &Config,
    store: &dyn Store,
) -> anyhow::Result<Vec<String>> {
    let worker_config = args
        .models
        .worker_config(args.store.pull_options(&config.data_dir));
    let models = tokio::task::spawn_blocking(move || ferry_worker::worker::load(&worker_config))
        .await?
        .context("local models")?;
    let ids: Vec<String> = models
        .chat
        .iter()
        .map(|model| model.id.clone())
        .chain(models.embedding.iter().map(|model| model.id.clone()))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the local worker")?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(error) =
            axum::serve(no_delay(listener), ferry_worker::server::router(models)).await
        {
            tracing::error!(%error, "local worker stopped");
        }
    });
    for id in &ids {
        let deployment = Deployment {
            id: "local".into(),
            upstream: UpstreamTarget {
                url: url.clone(),
                model: id.clone(),
                api_key: None,
            },
            weight: 1,
        };
        // The worker's port changes every start: only the `local` deployment is replaced;
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
            },
        };
        store.put_model(&spec, clock::unix_seconds()).await?;
        tracing::info!(model = %id, %url, "serving local model");
    }
    Ok(ids)
}

pub(crate) fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
}

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
