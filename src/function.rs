//! `ferry function gateway|admin|billing`: one stateless function, configured by its
//! environment (`ferry_functions::environment`), served on Lambda when the Lambda runtime API is
//! there (`AWS_LAMBDA_RUNTIME_API`), otherwise on `$PORT` (Knative, a container, a terminal).
//! The same routers as `ferry serve`; only the runtime and the stores differ.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::ports::{Accounts, ObjectStore, SharedCache, Store};
use ferry_functions::admin::{OperatorKey, ensure_operator_key};
use ferry_functions::auth::{AuthConfig, Authenticator, JwtConfig};
use ferry_functions::billing::Books;
use ferry_functions::edge::EdgeKeys;
use ferry_functions::environment::{self as env, Function, Variable};
use ferry_functions::metrics::Metrics;
use ferry_functions::server::{ConnectionLimits, Server};
use ferry_functions::store::{CachedStore, LeasedAccounts};
use ferry_functions::upstream::{HttpUpstream, UpstreamConfig};
use ferry_functions::{AppState, MoneyConfig, RouterConfig, Surface};
use ferry_store_sqlite::{LocalObjectStore, SqliteStore};
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct FunctionArgs {
    /// Which function: gateway, admin or billing.
    #[arg(value_parser = parse_function)]
    function: Function,
    /// Where to listen off Lambda (default 0.0.0.0:$PORT, or 8080).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Create the DynamoDB table if it does not exist: for local AWS-compatible servers (in
    /// AWS, the Terraform makes it).
    #[arg(long)]
    create_table: bool,
}

fn parse_function(name: &str) -> Result<Function, String> {
    Function::parse(name).ok_or_else(|| format!("`{name}`: expected gateway, admin or billing"))
}

/// The function Lambda asks for: a custom runtime's handler setting (`_HANDLER`) names it,
/// so one zip serves all three functions.
pub fn lambda_handler() -> Option<String> {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API")?;
    std::env::var("_HANDLER")
        .ok()
        .filter(|name| !name.is_empty())
}

/// A variable's value, if set and not empty.
fn value(variable: Variable) -> Option<String> {
    std::env::var(variable.name)
        .ok()
        .filter(|value| !value.is_empty())
}

fn flag(variable: Variable) -> bool {
    value(variable).is_some_and(|value| matches!(value.as_str(), "1" | "true" | "yes"))
}

fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// How admission treats money: the defaults, with `FERRY_HOLD_TTL_SECONDS` where it is set.
fn money_config() -> anyhow::Result<MoneyConfig> {
    let mut money = MoneyConfig::default();
    if let Some(seconds) = value(env::HOLD_TTL_SECONDS) {
        let seconds: u64 = seconds
            .parse()
            .ok()
            .filter(|seconds| *seconds > 0)
            .with_context(|| {
                format!(
                    "{} must be a whole number of seconds above 0, not {seconds:?}",
                    env::HOLD_TTL_SECONDS.name
                )
            })?;
        money.hold_ttl = Duration::from_secs(seconds);
    }
    Ok(money)
}

/// How long the read-mostly data (tenants, models, prices, keys) is trusted on one replica.
const READ_CACHE_TTL: Duration = Duration::from_secs(5);

pub async fn run(args: FunctionArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init(flag(env::LOG_JSON), "ferry-function");
    let function = args.function;
    let stores = Stores::from_env(function, args.create_table).await?;
    if function == Function::Billing {
        let books = Books {
            store: stores.store,
            accounts: stores.accounts,
            objects: stores.objects,
        };
        return if on_lambda() {
            run_billing_on_lambda(books).await
        } else {
            serve(args.addr, ferry_functions::billing::router(books), None).await
        };
    }
    if function == Function::Admin {
        let configured = value(env::OPERATOR_KEY);
        anyhow::ensure!(
            configured.is_some() || !stores.shared,
            "{} must be set: on a shared store no key may be made and printed",
            env::OPERATOR_KEY.name
        );
        if let OperatorKey::Generated(key) =
            ensure_operator_key(stores.store.as_ref(), configured.as_deref())
                .await
                .context("operator key")?
        {
            println!("operator key (shown once; keep it, or set FERRY_OPERATOR_KEY): {key}");
        }
    }
    let cached = Arc::new(CachedStore::new(
        stores.store,
        stores.accounts,
        READ_CACHE_TTL,
    ));
    let auth = AuthConfig {
        jwt: jwt_from_env()?,
        ..AuthConfig::default()
    };
    let leased = leases(function, cached.clone()).await?;
    let accounts: Arc<dyn Accounts> = match &leased {
        Some(leased) => leased.clone(),
        None => cached.clone(),
    };
    let state = AppState {
        breakers: Default::default(),
        metrics: Default::default(),
        store: cached.clone(),
        accounts,
        upstream: Arc::new(
            HttpUpstream::new(UpstreamConfig::default()).context("upstream client")?,
        ),
        auth: Arc::new(Authenticator::new(
            cached,
            auth,
            reqwest::Client::builder().build().context("HTTP client")?,
        )?),
        money: money_config()?,
        cache: ferry_functions::cache::ResponseCache::with_shared(
            ferry_functions::cache::DEFAULT_CAPACITY_BYTES,
            stores.answers,
        ),
        edge: edge_keys()?,
        files: stores.files,
        // The deployed functions run no batches yet.
        runs_batches: false,
    };
    let surface = match function {
        Function::Gateway => Surface::Gateway,
        _ => Surface::Admin,
    };
    let answers = state.cache.clone();
    let metrics = state.metrics.clone();
    let config = RouterConfig {
        metrics_token: value(env::METRICS_TOKEN),
        pool_url: value(env::POOL_URL),
        ..RouterConfig::default()
    };
    let router = ferry_functions::router_for(surface, state, &config);
    if on_lambda() {
        // Lambda freezes the process once an answer is out: answers kept for the shared level
        // are written before the invocation ends (those of streams a moment after, at the
        // next invocation).
        let flushing = answers.clone();
        let router = router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let answers = flushing.clone();
                async move {
                    let response = next.run(request).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), answers.flush()).await;
                    response
                }
            },
        ));
        run_http_on_lambda(router).await
    } else {
        serve(args.addr, router, Some(metrics)).await?;
        if let Some(leased) = leased {
            // The calls have ended: their usage reaches the store and the leases go back.
            leased.close(Duration::from_secs(5)).await;
        }
        // Answers kept in the last moments still reach the shared level.
        let _ = tokio::time::timeout(Duration::from_secs(5), answers.flush()).await;
        Ok(())
    }
}

/// The gateway's credit leases, when `FERRY_LEASES` asks for them (never on Lambda), with a
/// journal where `FERRY_JOURNAL_DIR` names one.
async fn leases(
    function: Function,
    accounts: Arc<dyn Accounts>,
) -> anyhow::Result<Option<Arc<LeasedAccounts>>> {
    if function != Function::Gateway || !flag(env::LEASES) {
        return Ok(None);
    }
    if on_lambda() {
        tracing::warn!(
            "{} is ignored on Lambda: a frozen instance could not give its leases back",
            env::LEASES.name
        );
        return Ok(None);
    }
    let journal = value(env::JOURNAL_DIR).map(PathBuf::from);
    let journal = journal
        .as_deref()
        .map(|directory| (directory, ferry_journal::Durability::ProcessCrash));
    Ok(Some(
        LeasedAccounts::open(accounts, journal)
            .await
            .context("opening the usage journal")?,
    ))
}

/// Off Lambda: `$PORT` on every interface, draining calls in flight at SIGTERM.
async fn serve(
    addr: Option<SocketAddr>,
    router: axum::Router,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => {
            let port = match value(env::PORT) {
                Some(port) => port.parse().context("PORT")?,
                None => 8080,
            };
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    // Behind Knative's queue-proxy (or another proxy), whose idle connections live 90 s: the
    // server lets go later than its proxy does.
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_secs(120),
        ..ConnectionLimits::default()
    };
    let mut server = Server::new(listener, router, limits);
    if let Some(metrics) = metrics {
        server = server.with_metrics(metrics);
    }
    crate::serve::serve_until_signal(server, None).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The edge secrets: both or neither.
fn edge_keys() -> anyhow::Result<Option<EdgeKeys>> {
    match (value(env::EDGE_SECRET), value(env::EDGE_GRANT_SECRET)) {
        (None, None) => Ok(None),
        (Some(shared), Some(grant)) => EdgeKeys::new(shared.as_bytes(), grant.as_bytes())
            .map(Some)
            .map_err(anyhow::Error::msg),
        _ => anyhow::bail!(
            "set both {} and {}, or neither",
            env::EDGE_SECRET.name,
            env::EDGE_GRANT_SECRET.name
        ),
    }
}

fn jwt_from_env() -> anyhow::Result<Option<JwtConfig>> {
    let values = [env::JWT_JWKS_URL, env::JWT_ISSUER, env::JWT_AUDIENCE].map(value);
    match values {
        [None, None, None] => Ok(None),
        [Some(jwks_url), Some(issuer), Some(audience)] => {
            let console = value(env::JWT_CONSOLE_CLIENT_ID).map(|client_id| {
                serde_json::json!({
                    "client_id": client_id,
                    "client_secret": value(env::JWT_CONSOLE_CLIENT_SECRET),
                })
            });
            Ok(Some(
                serde_json::from_value(serde_json::json!({
                    "jwks_url": jwks_url, "issuer": issuer, "audience": audience, "console": console,
                }))
                .context("OIDC settings")?,
            ))
        }
        _ => anyhow::bail!(
            "set all of {}, {} and {}, or none",
            env::JWT_JWKS_URL.name,
            env::JWT_ISSUER.name,
            env::JWT_AUDIENCE.name
        ),
    }
}

struct Stores {
    store: Arc<dyn Store>,
    accounts: Arc<dyn Accounts>,
    objects: Arc<dyn ObjectStore>,
    /// Uploaded files (the gateway's Files API), if this deployment keeps them.
    files: Option<Arc<dyn ObjectStore>>,
    /// The response cache's shared level.
    answers: Arc<dyn SharedCache>,
    /// Shared by many replicas (DynamoDB), not a file of this one.
    shared: bool,
}

impl Stores {
    async fn from_env(function: Function, create_table: bool) -> anyhow::Result<Stores> {
        let data_dir =
            PathBuf::from(value(env::DATA_DIR).unwrap_or_else(|| "./ferry-data".to_owned()));
        let kind = value(env::STORE).unwrap_or_else(|| "sqlite".to_owned());
        match kind.as_str() {
            // Each Lambda instance would have a database of its own, lost when it goes.
            "sqlite" if on_lambda() => anyhow::bail!(
                "{}=dynamodb is needed on Lambda: a SQLite file is not shared by instances",
                env::STORE.name
            ),
            "sqlite" => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                let store = Arc::new(
                    SqliteStore::open(&data_dir.join("ferry.db")).context("opening the store")?,
                );
                // The cache in a file of its own: its traffic never queues behind admissions.
                let answers = Arc::new(
                    SqliteStore::open(&data_dir.join("cache.db"))
                        .context("opening the cache store")?,
                );
                Ok(Stores {
                    store: store.clone(),
                    accounts: store,
                    answers,
                    objects: objects(function, &data_dir).await?,
                    files: files(function, &data_dir).await?,
                    shared: false,
                })
            }
            "dynamodb" => dynamodb(function, &data_dir, create_table).await,
            other => anyhow::bail!("{}={other:?}: expected dynamodb or sqlite", env::STORE.name),
        }
    }
}

#[cfg(feature = "aws")]
async fn dynamodb(
    function: Function,
    data_dir: &std::path::Path,
    create_table: bool,
) -> anyhow::Result<Stores> {
    let table = value(env::DYNAMODB_TABLE)
        .with_context(|| format!("{} must be set", env::DYNAMODB_TABLE.name))?;
    let config = ferry_aws::sdk_config().await;
    let store = Arc::new(ferry_aws::DynamoStore::from_config(&config, table));
    if create_table && store.create_table().await? {
        tracing::info!(table = store.table(), "created the table");
    }
    Ok(Stores {
        store: store.clone(),
        accounts: store.clone(),
        answers: store,
        objects: objects(function, data_dir).await?,
        files: files(function, data_dir).await?,
        shared: true,
    })
}

#[cfg(not(feature = "aws"))]
async fn dynamodb(_: Function, _: &std::path::Path, _: bool) -> anyhow::Result<Stores> {
    anyhow::bail!("this build has no AWS support: build with `--features aws`")
}

/// Billing's exports: the S3 bucket if one is set, else a directory in the data directory.
async fn objects(
    function: Function,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let bucket = if function == Function::Billing {
        value(env::S3_BUCKET)
    } else {
        None
    };
    match bucket {
        None => Ok(Arc::new(LocalObjectStore::new(data_dir.join("objects")))),
        Some(bucket) => s3(bucket, S3Prefix::Exports).await,
    }
}

/// The gateway's uploaded files and batches: under `files/` and `batches/` in the S3 bucket if
/// one is set, else in the data directory's `objects/`; on Lambda without a bucket, none (an instance's disk is
/// its own).
async fn files(
    function: Function,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<Arc<dyn ObjectStore>>> {
    if function != Function::Gateway {
        return Ok(None);
    }
    match value(env::S3_BUCKET) {
        Some(bucket) => Ok(Some(s3(bucket, S3Prefix::Files).await?)),
        None if on_lambda() => Ok(None),
        None => Ok(Some(Arc::new(LocalObjectStore::new(
            data_dir.join("objects"),
        )))),
    }
}

#[derive(Debug, Clone, Copy)]
enum S3Prefix {
    Exports,
    Files,
}

#[cfg(feature = "aws")]
async fn s3(bucket: String, prefix: S3Prefix) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let config = ferry_aws::sdk_config().await;
    let prefix = match prefix {
        S3Prefix::Exports => ferry_aws::schema::EXPORTS_PREFIX,
        S3Prefix::Files => ferry_aws::schema::GATEWAY_PREFIX,
    };
    Ok(Arc::new(ferry_aws::S3ObjectStore::from_config(
        &config,
        bucket,
        prefix,
        flag(env::S3_FORCE_PATH_STYLE),
    )))
}

#[cfg(not(feature = "aws"))]
async fn s3(_: String, _: S3Prefix) -> anyhow::Result<Arc<dyn ObjectStore>> {
    anyhow::bail!(
        "{} is set but this build has no AWS support: build with `--features aws`",
        env::S3_BUCKET.name
    )
}

/// Each invocation is one HTTP request from a function URL; answers stream (SSE) as they are
/// made (`RESPONSE_STREAM` invoke mode).
#[cfg(feature = "aws")]
async fn run_http_on_lambda(router: axum::Router) -> anyhow::Result<()> {
    lambda_http::run_with_streaming_response(router)
        .await
        .map_err(|error| anyhow::anyhow!("Lambda runtime: {error}"))
}

/// Each invocation is a job, as EventBridge sends it (the rule's input: `{"job": …}`). A
/// failed job fails the invocation, so EventBridge retries it and then dead-letters it.
#[cfg(feature = "aws")]
async fn run_billing_on_lambda(books: Books) -> anyhow::Result<()> {
    use lambda_http::{LambdaEvent, service_fn};
    let handler = service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let books = books.clone();
        async move {
            let job: ferry_functions::billing::Job = serde_json::from_value(event.payload)?;
            let outcome = books
                .run_logged(&job, ferry_functions::clock::unix_millis())
                .await?;
            if outcome.is_failure() {
                return Err(format!("the books disagree: {}", serde_json::json!(outcome)).into());
            }
            Ok::<_, lambda_http::Error>(serde_json::json!(outcome))
        }
    });
    lambda_http::lambda_runtime::run(handler)
        .await
        .map_err(|error| anyhow::anyhow!("Lambda runtime: {error}"))
}

#[cfg(not(feature = "aws"))]
async fn run_http_on_lambda(_: axum::Router) -> anyhow::Result<()> {
    anyhow::bail!("this build has no Lambda support: build with `--features aws`")
}

#[cfg(not(feature = "aws"))]
async fn run_billing_on_lambda(_: Books) -> anyhow::Result<()> {
    anyhow::bail!("this build has no Lambda support: build with `--features aws`")
}
