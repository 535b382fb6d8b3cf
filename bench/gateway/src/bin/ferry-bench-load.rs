//! An open-model, constant-rate load generator: request `i` is due at `start + i / rate`
//! whether or not earlier ones have answered, and its latency counts from when it was due, so
//! a slow server cannot hide its queue (no coordinated omission). Prints one JSON line:
//! offered and achieved rate, errors, and latency percentiles (and, for streams, time to first
//! byte, time from first to last byte, and the most streams open at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// The chat completions URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Sent as `Authorization: Bearer …`.
    #[arg(long, env = "FERRY_BENCH_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, default_value = "bench-model")]
    model: String,
    /// Requests per second, offered at a constant rate.
    #[arg(long)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Ask for a streamed answer.
    #[arg(long)]
    stream: bool,
    /// A label for the output line.
    #[arg(long, default_value = "target")]
    label: String,
}

struct Outcome {
    ok: bool,
    latency: Duration,
    first_byte: Option<Duration>,
}

/// Streams whose response has begun and not yet ended, and the most there have been.
#[derive(Default)]
struct OpenStreams {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl OpenStreams {
    fn opened(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.most.fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.now.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "--rate and --duration must be positive"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(100_000)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut body = json!({"model": args.model, "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 16});
    if args.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let body = bytes::Bytes::from(body.to_string());
    let auth = args.key.as_ref().map(|key| format!("Bearer {key}"));
    let url: Arc<str> = args.url.clone().into();
    let total = (args.rate * args.duration).round() as u64;
    let (sender, mut outcomes) = mpsc::unbounded_channel::<Outcome>();
    let open = Arc::new(OpenStreams::default());
    let started = tokio::time::Instant::now();
    for index in 0..total {
        let due = started + Duration::from_secs_f64(index as f64 / args.rate);
        tokio::time::sleep_until(due).await;
        let (client, body, auth, url, sender, open) = (
            client.clone(),
            body.clone(),
            auth.clone(),
            url.clone(),
            sender.clone(),
            open.clone(),
        );
        let stream = args.stream;
        tokio::spawn(async move {
            let mut request = client
                .post(&*url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    open.opened();
                    let mut chunks = response.bytes_stream();
                    let mut first_byte = None;
                    let mut tail = Vec::new();
                    let mut ok = true;
                    while let Some(chunk) = chunks.next().await {
                        match chunk {
                            Ok(chunk) => {
                                first_byte.get_or_insert_with(|| due.elapsed());
                                tail.extend_from_slice(&chunk);
                                let keep = tail.len().saturating_sub(64);
                                tail.drain(..keep);
                            }
                            Err(_) => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    open.closed();
                    // A stream is whole only if it ended with [DONE].
                    let whole = !stream || tail.windows(12).any(|window| window == b"data: [DONE]");
                    Outcome {
                        ok: ok && whole,
                        latency: due.elapsed(),
                        first_byte,
                    }
                }
                _ => Outcome {
                    ok: false,
                    latency: due.elapsed(),
                    first_byte: None,
                },
            };
            let _ = sender.send(outcome);
        });
    }
    drop(sender);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut first_bytes = Vec::new();
    let mut bodies = Vec::new();
    let mut errors = 0u64;
    let mut last_done = Instant::now();
    while let Some(outcome) = outcomes.recv().await {
        last_done = Instant::now();
        if outcome.ok {
            latencies.push(outcome.latency);
            first_bytes.extend(outcome.first_byte);
            bodies.extend(
                outcome
                    .first_byte
                    .map(|first| outcome.latency.saturating_sub(first)),
            );
        } else {
            errors += 1;
        }
    }
    let elapsed = last_done.duration_since(started.into_std()).as_secs_f64();
    latencies.sort_unstable();
    first_bytes.sort_unstable();
    bodies.sort_unstable();
    let percentile = |sorted: &[Duration], p: f64| -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
    };
    let line = json!({
        "label": args.label,
        "offered_rps": args.rate,
        "achieved_rps": latencies.len() as f64 / elapsed.max(f64::EPSILON),
        "requests": total,
        "ok": latencies.len(),
        "errors": errors,
        "p50_ms": percentile(&latencies, 50.0),
        "p90_ms": percentile(&latencies, 90.0),
        "p99_ms": percentile(&latencies, 99.0),
        "p999_ms": percentile(&latencies, 99.9),
        "max_ms": percentile(&latencies, 100.0),
        "ttfb_p50_ms": if args.stream { percentile(&first_bytes, 50.0) } else { f64::NAN },
        "ttfb_p99_ms": if args.stream { percentile(&first_bytes, 99.0) } else { f64::NAN },
        // First to last byte of the body: what relaying the chunks after the first costs.
        "body_p50_ms": if args.stream { percentile(&bodies, 50.0) } else { f64::NAN },
        "body_p99_ms": if args.stream { percentile(&bodies, 99.0) } else { f64::NAN },
        "max_open_streams": open.most.load(Ordering::Relaxed),
    });
    println!("{line}");
    Ok(())
}
