//! `ferry pool replay`: a recorded request trace through the real autoscaling policy on a
//! simulated clock, side by side with Knative's KPA and an always-on pool. `ferry pool
//! manifests`: a pool deployment as a Knative Service.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_core::autoscale::ScalingConfig;
use ferry_core::calendar::Date;
use ferry_core::replay::{self, ActivatorLimits, Capacity, Outcome, TraceRequest};
use ferry_scaler::knative::KnativeDeployment;

#[derive(clap::Subcommand)]
pub enum PoolCommand {
    /// Replay a trace (CSV: TIMESTAMP,ContextTokens,GeneratedTokens, as the Azure LLM
    /// inference traces of 2023) and print what each policy costs and makes callers wait.
    Replay(ReplayArgs),
    /// Print the Knative Service that runs a pool deployment on Kubernetes: `ferry worker`
    /// pods on GPU nodes, scaled from zero by Knative.
    Manifests(ManifestArgs),
}

#[derive(clap::Args)]
pub struct ManifestArgs {
    /// The Knative Service's name (its in-cluster host name).
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "ferry")]
    namespace: String,
    /// An image whose entry point is the `ferry` binary (a `cuda` build for GPUs).
    #[arg(long)]
    image: String,
    #[arg(long, default_value = "smollm2-135m-instruct")]
    chat_model: String,
    #[arg(long, default_value = "none")]
    embedding_model: String,
    #[arg(long, default_value_t = 16)]
    max_batch: u32,
    #[arg(long, default_value_t = 0)]
    min_replicas: u32,
    #[arg(long, default_value_t = 4)]
    max_replicas: u32,
    /// GPUs per replica; 0 for CPU nodes.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// A node label a replica must land on, LABEL=VALUE (repeatable), e.g.
    /// nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3.
    #[arg(long = "node-selector", value_parser = label)]
    node_selector: Vec<(String, String)>,
    #[arg(long, default_value = "32Gi")]
    memory: String,
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value_t = 45)]
    stable_window_seconds: u32,
    #[arg(long, default_value_t = 30)]
    scale_to_zero_grace_seconds: u32,
    /// How long a call may wait for its first byte, a cold start (node, image, model) included.
    #[arg(long, default_value_t = 600)]
    response_start_timeout_seconds: u32,
}

fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((label, value)) if !label.is_empty() => Ok((label.to_owned(), value.to_owned())),
        _ => Err(format!("expected LABEL=VALUE, got `{text}`")),
    }
}

fn manifests(args: ManifestArgs) {
    let deployment = KnativeDeployment {
        name: args.name,
        namespace: args.namespace,
        image: args.image,
        chat_model: args.chat_model,
        embedding_model: args.embedding_model,
        max_batch: args.max_batch,
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas.max(1),
        gpus: args.gpus,
        node_selector: args.node_selector,
        memory: args.memory,
        cpu: args.cpu,
        stable_window_seconds: args.stable_window_seconds,
        scale_to_zero_grace_seconds: args.scale_to_zero_grace_seconds,
        response_start_timeout_seconds: args.response_start_timeout_seconds,
    };
    print!("{}", deployment.to_yaml());
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PolicyArg {
    Ferry,
    Kpa,
    AlwaysOn,
    All,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long)]
    trace: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    policy: PolicyArg,
    /// Sequences one replica decodes at once.
    #[arg(long, default_value_t = 16)]
    max_batch: u32,
    /// Tokens per second one sequence generates at that batch (the native engine on an H200:
    /// 367 tok/s at batch 16, about 23 a sequence).
    #[arg(long, default_value_t = 23.0)]
    decode_tokens_per_s: f64,
    /// Prompt tokens per second a replica takes in (H200: a 40-token prompt in 7.7 ms).
    #[arg(long, default_value_t = 5000.0)]
    prefill_tokens_per_s: f64,
    /// Context tokens one replica's KV cache holds.
    #[arg(long, default_value_t = 131_072)]
    kv_tokens: u64,
    /// From asking for a replica to its first token (a GPU node and model load).
    #[arg(long, default_value_t = 20.0)]
    cold_start_seconds: f64,
    #[arg(long, default_value_t = 16)]
    max_replicas: u32,
    /// Requests that may wait for a replica before more get 503.
    #[arg(long, default_value_t = 10_000)]
    max_queue: usize,
    /// A request that waited this long gets 503.
    #[arg(long, default_value_t = 300.0)]
    deadline_seconds: f64,
}

pub fn run(command: PoolCommand) -> anyhow::Result<()> {
    let args = match command {
        PoolCommand::Replay(args) => args,
        PoolCommand::Manifests(args) => {
            manifests(args);
            return Ok(());
        }
    };
    let trace = read_trace(&args.trace)?;
    let capacity = Capacity {
        max_batch: args.max_batch,
        prefill_tokens_per_s: args.prefill_tokens_per_s,
        decode_tokens_per_s: args.decode_tokens_per_s,
        kv_tokens: args.kv_tokens,
        cold_start_ms: (args.cold_start_seconds * 1000.0) as u64,
    };
    let limits = ActivatorLimits {
        max_queue: args.max_queue,
        deadline_ms: (args.deadline_seconds * 1000.0) as u64,
    };
    let target = f64::from(args.max_batch);
    let policies: Vec<(&str, ScalingConfig)> = [
        (
            PolicyArg::Ferry,
            "ferry",
            ScalingConfig::llm_aware(target, args.max_replicas),
        ),
        (
            PolicyArg::Kpa,
            "kpa",
            ScalingConfig::kpa(target, args.max_replicas),
        ),
        // Always-on at the peak the others needed: sized by hand in practice.
        (
            PolicyArg::AlwaysOn,
            "always-on",
            ScalingConfig::always_on(0),
        ),
    ]
    .into_iter()
    .filter(|(which, _, _)| args.policy == PolicyArg::All || args.policy == *which)
    .map(|(_, name, config)| (name, config))
    .collect();
    let span_s = trace.last().map_or(0, |request| request.arrival_ms) as f64 / 1000.0;
    println!(
        "{}: {} requests over {:.0} s; replicas of {} sequences at {} tok/s each, prefill {} tok/s, cold start {} s",
        args.trace.display(),
        trace.len(),
        span_s,
        args.max_batch,
        args.decode_tokens_per_s,
        args.prefill_tokens_per_s,
        args.cold_start_seconds
    );
    println!(
        "{:<10} {:>12} {:>12} {:>13} {:>14} {:>14} {:>8}",
        "policy",
        "GPU-seconds",
        "cold starts",
        "most replicas",
        "queue p50 ms",
        "queue p99 ms",
        "dropped"
    );
    let mut peak = 1;
    let mut results: Vec<(&str, Outcome)> = Vec::new();
    for (name, config) in policies {
        let config = if name == "always-on" {
            ScalingConfig::always_on(peak)
        } else {
            config
        };
        let outcome = replay::replay(&trace, config, capacity, limits);
        peak = peak.max(outcome.most_replicas);
        println!(
            "{:<10} {:>12.0} {:>12} {:>13} {:>14} {:>14} {:>8}",
            name,
            outcome.gpu_seconds,
            outcome.cold_starts,
            outcome.most_replicas,
            outcome.queue_p50_ms,
            outcome.queue_p99_ms,
            outcome.dropped
        );
        results.push((name, outcome));
    }
    if results.iter().any(|(_, outcome)| outcome.served == 0) {
        bail!("a policy served nothing: check the trace and the capacity");
    }
    Ok(())
}

/// `TIMESTAMP,ContextTokens,GeneratedTokens` with timestamps like `2023-11-16 18:17:03.9799600`,
/// as milliseconds from the first request, in arrival order.
fn read_trace(path: &Path) -> anyhow::Result<Vec<TraceRequest>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trace {}", path.display()))?;
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let row = || -> Option<(f64, u64, u64)> {
            let mut fields = line.split(',');
            let at = unix_seconds(fields.next()?.trim())?;
            let prompt = fields.next()?.trim().parse().ok()?;
            let output = fields.next()?.trim().parse().ok()?;
            Some((at, prompt, output))
        };
        let parsed =
            row().with_context(|| format!("{}:{}: not a trace row", path.display(), number + 1))?;
        rows.push(parsed);
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(first) = rows.first().map(|row| row.0) else {
        bail!("{}: no requests", path.display());
    };
    Ok(rows
        .into_iter()
        .map(|(at, prompt_tokens, output_tokens)| TraceRequest {
            arrival_ms: ((at - first) * 1000.0).round() as u64,
            prompt_tokens,
            output_tokens,
        })
        .collect())
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC) as seconds since the epoch.
fn unix_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.split_once(' ')?;
    let date: Date = date.parse().ok()?;
    let mut time = time.split(':');
    let hours = time.next()?.parse::<u32>().ok()?;
    let minutes = time.next()?.parse::<u32>().ok()?;
    let seconds = time.next()?.parse::<f64>().ok()?;
    Some(date.start_unix() as f64 + f64::from(hours * 3_600 + minutes * 60) + seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_azure_timestamps() {
        assert_eq!(unix_seconds("1970-01-01 00:00:01.5"), Some(1.5));
        assert_eq!(unix_seconds("2023-11-16 18:17:03.0"), Some(1_700_158_623.0));
        assert_eq!(unix_seconds("2023-11-16"), None);
        assert_eq!(unix_seconds("2023-11-16 18:xx:03"), None);
    }
}
