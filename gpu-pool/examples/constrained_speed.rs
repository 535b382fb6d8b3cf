//! What constrained decoding costs per token: the native engine generating with and without a
//! JSON schema, at 1 and 8 concurrent sequences, alternating, side by side.
//! `cargo run --release --example constrained_speed -p ferry-worker -- MODEL.gguf [ROUNDS]`
//!
//! Both ask for a long answer (a story; the schema's array has exactly 200 digits) and stop at
//! 128 tokens; the figures are tokens/s over all sequences, and the time a sequence waits per
//! token after its first (so prefill is not in it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use ferry_worker::engine::{Engine, Event, GenerateRequest, Prompt};
use ferry_worker::grammar::OutputConstraint;
use ferry_worker::native::{BatchingConfig, NativeEngine};
use ferry_worker::sampling::SamplingParams;
use ferry_worker::template::TemplateMessage;

const MAX_TOKENS: usize = 128;

fn request(seed: u64, constrained: bool) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat(vec![TemplateMessage {
            role: "user".into(),
            content: "Tell me a long story about a ship at sea, in many paragraphs.".into(),
        }]),
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            seed,
        },
        max_tokens: Some(MAX_TOKENS),
        stop: Vec::new(),
        n: 1,
        logprobs: None,
        constraint: constrained.then(|| {
            OutputConstraint::JsonSchema(serde_json::json!({
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "minItems": 200,
                "maxItems": 200
            }))
        }),
    }
}

/// (tokens/s over all sequences, mean ms a sequence waits per token, tokens).
async fn run(
    engine: &Arc<NativeEngine>,
    concurrency: usize,
    constrained: bool,
) -> (f64, f64, usize) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for seed in 0..concurrency as u64 {
        let mut events = engine.generate(request(seed, constrained)).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut first = None;
            let mut tokens = 0;
            while let Some(event) = events.recv().await {
                match event {
                    Event::Delta { .. } if first.is_none() => first = Some(Instant::now()),
                    Event::Finished {
                        completion_tokens, ..
                    } => tokens = completion_tokens,
                    _ => {}
                }
            }
            let decoding = first.map_or(0.0, |first| first.elapsed().as_secs_f64());
            (tokens, decoding)
        }));
    }
    let mut total = 0;
    let mut per_token = 0.0;
    for task in tasks {
        let (tokens, seconds) = task.await.unwrap();
        total += tokens;
        per_token += seconds * 1000.0 / tokens.saturating_sub(1).max(1) as f64;
    }
    let wall = started.elapsed().as_secs_f64();
    (total as f64 / wall, per_token / concurrency as f64, total)
}

#[tokio::main]
async fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).expect("model path"));
    let rounds: usize = std::env::args()
        .nth(2)
        .map_or(2, |text| text.parse().expect("rounds"));
    let device = candle_core::Device::cuda_if_available(0).unwrap();
    let engine = Arc::new(NativeEngine::load(&path, &device, BatchingConfig::default()).unwrap());
    // The first constrained request builds the vocabulary's tables (~0.1 s): a warm-up.
    run(&engine, 1, true).await;
    println!("concurrency  mode         tokens/s  ms/token/sequence  tokens");
    for concurrency in [1, 8] {
        for round in 0..rounds {
            for constrained in [false, true] {
                let (rate, per_token, tokens) = run(&engine, concurrency, constrained).await;
                println!(
                    "{concurrency:>11}  {:<11} {rate:>9.1}  {per_token:>17.2}  {tokens:>6}  (round {})",
                    if constrained { "json schema" } else { "free" },
                    round + 1
                );
            }
        }
    }
}
