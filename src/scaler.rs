//! `ferry scaler`: the GPU pool's activator and autoscaler as a service of their own, in front
//! of replicas made by a provider: local `ferry worker` processes, or ECS tasks (`aws` builds).
//! Register `http://SCALER/{deployment}/v1` as a model deployment's upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_functions::server::{ConnectionLimits, Server};
use ferry_scaler::provider::ProcessSpec;
use ferry_scaler::{LocalProcesses, Pool, Provider};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::config::{PoolSection, validate_pool};

#[derive(clap::Args)]
pub struct ScalerArgs {
    /// The scaler's TOML file: its provider and deployments.
    #[arg(
        long,
        env = "FERRY_SCALER_CONFIG",
        required_unless_present = "config_toml"
    )]
    config: Option<PathBuf>,
    /// The same TOML given inline (for containers configured by their environment).
    #[arg(
        long,
        env = "FERRY_SCALER_CONFIG_TOML",
        conflicts_with = "config",
        hide_env_values = true
    )]
    config_toml: Option<String>,
    /// Where the activator listens (wins over the file's `addr`).
    #[arg(long, env = "FERRY_SCALER_ADDR")]
    addr: Option<SocketAddr>,
    #[arg(long, env = "FERRY_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalerFile {
    addr: Option<SocketAddr>,
    provider: ProviderName,
    deployments: Vec<DeploymentEntry>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ProviderName {
    /// `ferry worker` processes on this machine.
    Local,
    /// ECS tasks (needs a build with the `aws` feature).
    Ecs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentEntry {
    name: String,
    /// The knobs of `ferry serve`'s `[pool]`.
    #[serde(default)]
    scaling: PoolSection,
    /// The worker's batch: the default calls per replica.
    #[serde(default = "default_batch")]
    max_batch: usize,
    /// Local provider: the arguments of `ferry worker` after `--addr` (models, batch, cache).
    #[serde(default)]
    worker_args: Vec<String>,
    /// ECS provider: where and how its tasks run.
    ecs: Option<EcsEntry>,
}

fn default_batch() -> usize {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
struct EcsEntry {
    cluster: String,
    task_definition: String,
    capacity_provider: Option<String>,
    launch_type: Option<String>,
    subnets: Vec<String>,
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default = "default_port")]
    port: u16,
}

fn default_port() -> u16 {
    8080
}

pub async fn run(args: ScalerArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init(args.log_json, "ferry-scaler");
    let file = match (&args.config, &args.config_toml) {
        (_, Some(text)) => parse(text, "FERRY_SCALER_CONFIG_TOML")?,
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse(&text, &path.display().to_string())?
        }
        (None, None) => bail!("give --config or FERRY_SCALER_CONFIG_TOML"),
    };
    let mut configs = Vec::new();
    for entry in &file.deployments {
        let scaling = validate_pool(entry.scaling.clone())
            .with_context(|| format!("deployment `{}`", entry.name))?;
        configs.push(scaling.deployment(&entry.name, entry.max_batch));
    }
    let provider = provider(&file).await?;
    let pool = Pool::new(configs, provider);
    let addr = args
        .addr
        .or(file.addr)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8090)));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    pool.spawn();
    println!("scaler listening on http://{}", listener.local_addr()?);
    // Behind the pool's load balancer (`iac/terraform/modules/gpu_pool`: idle connections kept
    // 900 s), and its calls wait for cold starts: the server lets go later than its proxy.
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_secs(960),
        ..ConnectionLimits::default()
    };
    let server = Server::new(listener, ferry_scaler::proxy::router(pool.clone()), limits);
    crate::serve::serve_until_signal(server, Some(pool)).await
}

/// Parses and checks a scaler config; `source` names it in errors.
fn parse(text: &str, source: &str) -> anyhow::Result<ScalerFile> {
    let file: ScalerFile = toml::from_str(text).with_context(|| format!("config {source}"))?;
    if file.deployments.is_empty() {
        bail!("{source}: no deployments");
    }
    let mut names = std::collections::HashSet::new();
    for entry in &file.deployments {
        if entry.name.is_empty() || entry.name == "pool" || entry.name.contains('/') {
            bail!(
                "deployment name `{}`: not empty, not `pool`, no `/`",
                entry.name
            );
        }
        if !names.insert(&entry.name) {
            bail!("deployment `{}` twice", entry.name);
        }
        match (file.provider, &entry.ecs) {
            (ProviderName::Ecs, None) => bail!(
                "deployment `{}`: the ecs provider needs [deployments.ecs]",
                entry.name
            ),
            (ProviderName::Local, Some(_)) => bail!(
                "deployment `{}`: [deployments.ecs] with the local provider",
                entry.name
            ),
            _ => {}
        }
    }
    Ok(file)
}

async fn provider(file: &ScalerFile) -> anyhow::Result<Arc<dyn Provider>> {
    match file.provider {
        ProviderName::Local => {
            let program = std::env::current_exe().context("locating the ferry binary")?;
            let specs = file
                .deployments
                .iter()
                .map(|entry| {
                    let mut args = vec![
                        "worker".to_owned(),
                        "--addr".into(),
                        "127.0.0.1:0".into(),
                        "--exit-with-stdin".into(),
                    ];
                    args.extend(entry.worker_args.iter().cloned());
                    let spec = ProcessSpec {
                        program: program.clone(),
                        args,
                        env: crate::serve::share_cores(entry.scaling.max_replicas.unwrap_or(1)),
                    };
                    (entry.name.clone(), spec)
                })
                .collect::<HashMap<_, _>>();
            Ok(Arc::new(LocalProcesses::new(specs)))
        }
        ProviderName::Ecs => ecs(file).await,
    }
}

#[cfg(feature = "aws")]
async fn ecs(file: &ScalerFile) -> anyhow::Result<Arc<dyn Provider>> {
    use ferry_scaler::ecs::{EcsTasks, TaskSpec};
    let specs = file
        .deployments
        .iter()
        .filter_map(|entry| {
            let ecs = entry.ecs.as_ref()?;
            Some((
                entry.name.clone(),
                TaskSpec {
                    cluster: ecs.cluster.clone(),
                    task_definition: ecs.task_definition.clone(),
                    capacity_provider: ecs.capacity_provider.clone(),
                    launch_type: ecs.launch_type.clone(),
                    subnets: ecs.subnets.clone(),
                    security_groups: ecs.security_groups.clone(),
                    port: ecs.port,
                },
            ))
        })
        .collect();
    let tasks = EcsTasks::from_env(specs).await;
    tasks.stop_strays().await;
    Ok(Arc::new(tasks))
}

#[cfg(not(feature = "aws"))]
async fn ecs(_: &ScalerFile) -> anyhow::Result<Arc<dyn Provider>> {
    bail!("the ecs provider needs a ferry built with `--features aws`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_providers_and_refuses_mismatches() {
        let local: ScalerFile = toml::from_str(
            r#"
            provider = "local"
            [[deployments]]
            name = "smollm2"
            worker_args = ["--chat-model", "smollm2-135m-instruct"]
            scaling = { max_replicas = 2, scale_to_zero_grace_seconds = 10 }
            "#,
        )
        .unwrap();
        assert_eq!(local.deployments[0].scaling.max_replicas, Some(2));
        let ecs: ScalerFile = toml::from_str(
            r#"
            provider = "ecs"
            [[deployments]]
            name = "llama"
            [deployments.ecs]
            cluster = "ferry-gpu"
            task_definition = "ferry-worker:3"
            capacity_provider = "gpu-asg"
            subnets = ["subnet-1"]
            "#,
        )
        .unwrap();
        assert_eq!(ecs.deployments[0].ecs.as_ref().unwrap().port, 8080);
        assert!(toml::from_str::<ScalerFile>("provider = \"k8s\"\ndeployments = []").is_err());
    }
}
