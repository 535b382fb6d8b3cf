//! `ferry pool replay`: a recorded request trace through the real autoscaling policy on a
//! simulated clock, side by side with Knative's KPA and an always-on pool; with `--sweep`,
//! each policy's frontier of GPU-seconds against p99 queueing delay. `ferry pool manifests`: a
//! pool deployment as a Knative Service.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_core::autoscale::ScalingConfig;
use ferry_core::replay::{
    self, ActivatorLimits, Capacity, Knobs, Outcome, SweepPoint, TimeUnit, TraceRequest,
};
use ferry_scaler::knative::KnativeDeployment;

#[derive(clap::Subcommand)]
pub enum PoolCommand {
    /// Replay a trace and print what each policy costs and makes callers wait. A trace is a
    /// CSV with an arrival time and prompt and output token counts (the Azure LLM inference
    /// traces' TIMESTAMP,ContextTokens,GeneratedTokens; BurstGPT's columns) or JSON lines
    /// (Mooncake's timestamp, input_length, output_length).
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TimeUnitArg {
    S,
    Ms,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long)]
    trace: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    policy: PolicyArg,
    /// Sweep each policy's target utilisation and window over the same grid and print its
    /// frontier (the settings nothing beats on both GPU-seconds and p99 queueing delay), then
    /// Ferry's against KPA's at matched p99.
    #[arg(long)]
    sweep: bool,
    /// With --sweep: write every setting's outcome here as CSV (bench/replay/plot.py draws
    /// the frontiers from it).
    #[arg(long, requires = "sweep")]
    csv: Option<PathBuf>,
    /// What a bare number in the trace's time column counts (default: ms for JSON lines, s
    /// for CSV).
    #[arg(long, value_enum)]
    time_unit: Option<TimeUnitArg>,
    /// Spread arrivals out by this factor (4: four times slower, so idle gaps appear).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
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
    let trace = read_trace(&args)?;
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
    let span_s = trace.last().map_or(0, |request| request.arrival_ms) as f64 / 1000.0;
    println!(
        "{}: {} requests over {:.0} s; replicas of {} sequences and {} KV tokens at {} tok/s each, prefill {} tok/s, cold start {} s",
        args.trace.display(),
        trace.len(),
        span_s,
        args.max_batch,
        args.kv_tokens,
        args.decode_tokens_per_s,
        args.prefill_tokens_per_s,
        args.cold_start_seconds
    );
    if args.sweep {
        return sweep(&args, &trace, capacity, limits);
    }
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

fn read_trace(args: &ReplayArgs) -> anyhow::Result<Vec<TraceRequest>> {
    let path = &args.trace;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trace {}", path.display()))?;
    let unit = args.time_unit.map(|unit| match unit {
        TimeUnitArg::S => TimeUnit::Seconds,
        TimeUnitArg::Ms => TimeUnit::Milliseconds,
    });
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        bail!("--time-scale must be a positive number");
    }
    replay::parse_trace(&text, unit, args.time_scale)
        .with_context(|| format!("reading trace {}", path.display()))
}

/// Each policy over the same grid of knobs: its frontier, and Ferry's against KPA's.
fn sweep(
    args: &ReplayArgs,
    trace: &[TraceRequest],
    capacity: Capacity,
    limits: ActivatorLimits,
) -> anyhow::Result<()> {
    let target = f64::from(args.max_batch);
    let grid = Knobs::grid();
    // The two policies' sweeps on two threads: each is a few hundred pure replays.
    let (ferry, kpa) = std::thread::scope(|scope| {
        let ferry = scope.spawn(|| {
            replay::sweep(
                trace,
                ScalingConfig::llm_aware(target, args.max_replicas),
                &grid,
                capacity,
                limits,
            )
        });
        let kpa = replay::sweep(
            trace,
            ScalingConfig::kpa(target, args.max_replicas),
            &grid,
            capacity,
            limits,
        );
        let ferry = ferry
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (ferry, kpa)
    });
    let (ferry_frontier, kpa_frontier) = (replay::frontier(&ferry), replay::frontier(&kpa));
    println!(
        "sweep: target utilisation 50-100 % x window 15-240 s, {} settings a policy; frontier (settings nothing beats on both GPU-seconds and p99; none dropped a request):",
        grid.len()
    );
    println!(
        "{:<7} {:>12} {:>8} {:>12} {:>12} {:>12} {:>13}",
        "policy",
        "utilisation",
        "window s",
        "GPU-seconds",
        "queue p99 ms",
        "cold starts",
        "most replicas"
    );
    for (name, frontier) in [("ferry", &ferry_frontier), ("kpa", &kpa_frontier)] {
        for point in frontier {
            println!(
                "{:<7} {:>11.0}% {:>8} {:>12.0} {:>12} {:>12} {:>13}",
                name,
                point.knobs.target_utilization * 100.0,
                point.knobs.stable_window_ms / 1000,
                point.outcome.gpu_seconds,
                point.outcome.queue_p99_ms,
                point.outcome.cold_starts,
                point.outcome.most_replicas
            );
        }
    }
    if let Some(path) = &args.csv {
        write_sweep_csv(
            path,
            &[
                ("ferry", &ferry, &ferry_frontier),
                ("kpa", &kpa, &kpa_frontier),
            ],
        )?;
        println!("every setting: {}", path.display());
    }
    match replay::compare(&ferry_frontier, &kpa_frontier) {
        Some(comparison) => {
            println!(
                "ferry against kpa at matched p99 (the least GPU-seconds each spends for that p99 or better):"
            );
            println!(
                "{:>12} {:>12} {:>12} {:>7}",
                "queue p99 ms", "ferry GPU-s", "kpa GPU-s", "ratio"
            );
            for (p99, ours, theirs) in &comparison.matched {
                println!(
                    "{:>12} {:>12.0} {:>12.0} {:>7.2}",
                    p99,
                    ours,
                    theirs,
                    ours / theirs.max(f64::EPSILON)
                );
            }
            println!(
                "ferry / kpa GPU-seconds at matched p99: {:.3} to {:.3} ({})",
                comparison.best_ratio(),
                comparison.worst_ratio(),
                if comparison.worst_ratio() <= 1.0 {
                    "ferry's frontier is at or below kpa's"
                } else {
                    "ferry's frontier is above kpa's somewhere"
                }
            );
            // What any policy could still save: how far the frontiers sit above the work.
            let bound = replay::work_bound_gpu_seconds(trace, &capacity);
            let over_bound = |pick: fn(&(u64, f64, f64)) -> f64| {
                let spent = comparison.matched.iter().map(pick);
                let (low, high) = spent.fold((f64::INFINITY, 0.0_f64), |(low, high), gpu| {
                    (low.min(gpu), high.max(gpu))
                });
                (
                    low / bound.max(f64::EPSILON),
                    high / bound.max(f64::EPSILON),
                )
            };
            let ((ferry_low, ferry_high), (kpa_low, kpa_high)) =
                (over_bound(|point| point.1), over_bound(|point| point.2));
            println!(
                "work bound: no policy spends less than {bound:.0} GPU-seconds here (the trace's work perfectly packed, no replica idle, none cold); over the matched range ferry spends {ferry_low:.2}x to {ferry_high:.2}x that, kpa {kpa_low:.2}x to {kpa_high:.2}x"
            );
        }
        None => println!("no comparison: a policy has no setting that served every request"),
    }
    Ok(())
}

/// Every setting of each sweep, marked where it is on that sweep's frontier.
fn write_sweep_csv(
    path: &Path,
    sweeps: &[(&str, &Vec<SweepPoint>, &Vec<SweepPoint>)],
) -> anyhow::Result<()> {
    let mut csv = String::from(
        "policy,target_utilization,stable_window_s,gpu_seconds,queue_p50_ms,queue_p99_ms,cold_starts,most_replicas,dropped,on_frontier\n",
    );
    for (name, points, frontier) in sweeps {
        for point in points.iter() {
            let outcome = &point.outcome;
            csv.push_str(&format!(
                "{name},{},{},{:.1},{},{},{},{},{},{}\n",
                point.knobs.target_utilization,
                point.knobs.stable_window_ms / 1000,
                outcome.gpu_seconds,
                outcome.queue_p50_ms,
                outcome.queue_p99_ms,
                outcome.cold_starts,
                outcome.most_replicas,
                outcome.dropped,
                frontier.contains(point)
            ));
        }
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}
