//! Times the engine's building blocks on a GGUF model: a prefill, and decoding steps at
//! several batch sizes, against candle's reference llama. `cargo run --release --example
//! decode_speed -p ferry-worker -- MODEL.gguf`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use ferry_worker::llama::{GgufFile, Llama, WeightFormat};

fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).expect("model path"));
    let file = GgufFile::open(&path).unwrap();
    let format = match std::env::args().nth(2).as_deref() {
        Some("fast") => WeightFormat::FastQuantized,
        Some("f32") => WeightFormat::F32,
        Some("hybrid") => WeightFormat::Hybrid,
        _ => WeightFormat::Native,
    };
    // The GPU in a `cuda` build, else the CPU.
    let device = Device::cuda_if_available(0).unwrap();
    println!("weights: {format:?} on {device:?}");
    let model = Llama::load(&file, &device, format).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    for batch in [1usize, 4, 16] {
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        let started = Instant::now();
        for cache in &mut caches {
            model.prefill(&prompt, cache).unwrap();
        }
        let prefill = started.elapsed();
        let steps = 32;
        let started = Instant::now();
        for _ in 0..steps {
            let tokens = vec![200u32; batch];
            let mut refs: Vec<_> = caches.iter_mut().collect();
            model.decode(&tokens, &mut refs).unwrap();
        }
        let per_step = started.elapsed().as_secs_f64() / steps as f64;
        println!(
            "batch {batch:>2}: prefill {:>6.1} ms/prompt, decode {:>6.1} ms/step, {:>6.1} tok/s",
            prefill.as_secs_f64() * 1000.0 / batch as f64,
            per_step * 1000.0,
            batch as f64 / per_step
        );
    }
    let mut reader = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader).unwrap();
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut reader,
        &device,
    )
    .unwrap();
    let x = Tensor::new(prompt.as_slice(), &device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    reference.forward(&x, 0).unwrap();
    let started = Instant::now();
    for step in 0..32 {
        let x = Tensor::new(&[200u32], &device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        reference.forward(&x, prompt.len() + step).unwrap();
    }
    // GPU work is queued: wait for it before reading the clock.
    device.synchronize().unwrap();
    let per_step = started.elapsed().as_secs_f64() / 32.0;
    println!(
        "candle reference: decode {:>6.1} ms/step, {:>6.1} tok/s",
        per_step * 1000.0,
        1.0 / per_step
    );
}
