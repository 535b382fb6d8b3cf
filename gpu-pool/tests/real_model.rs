//! The native engines on the real default models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2),
//! pulled through the real source code into a cache shared by test runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_worker::embed::{EmbeddingEngine, EmbeddingInput, cosine};
use ferry_worker::engine::{
    Engine, EngineError, Event, EventStream, FinishReason, GenerateRequest, Prompt,
};
use ferry_worker::grammar::OutputConstraint;
use ferry_worker::native::{BatchingConfig, NativeEngine};
use ferry_worker::sampling::SamplingParams;
use ferry_worker::source::{self, PullOptions};
use ferry_worker::template::TemplateMessage;
use ferry_worker::worker::{self, ModelRef, WorkerConfig, WorkerError};

fn pull_options() -> PullOptions {
    let cache = std::env::var_os("FERRY_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ferry-models")
        });
    PullOptions {
        cache_dir: cache,
        python: std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into()),
        show_progress: false,
    }
}

/// The GPU in a `cuda` build (so these tests check the CUDA kernels on a real GPU), else the CPU.
fn test_device() -> candle_core::Device {
    if cfg!(feature = "cuda") {
        candle_core::Device::new_cuda(0).expect("a `cuda` build needs a GPU to test on")
    } else {
        candle_core::Device::Cpu
    }
}

fn chat_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| source::pull(&source::SMOLLM2, &pull_options()).expect("pull SmolLM2"))
        .clone()
}

fn load_engine() -> Arc<NativeEngine> {
    let config = BatchingConfig {
        max_batch: 16,
        max_queue: 64,
    };
    Arc::new(NativeEngine::load(&chat_path(), &test_device(), config).expect("load SmolLM2"))
}

/// One engine shared by the tests that only look at their own requests.
fn engine() -> Arc<NativeEngine> {
    static ENGINE: OnceLock<Arc<NativeEngine>> = OnceLock::new();
    ENGINE.get_or_init(load_engine).clone()
}

fn ask(question: &str, temperature: f64, seed: u64, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat(vec![TemplateMessage {
            role: "user".into(),
            content: question.into(),
        }]),
        sampling: SamplingParams {
            temperature,
            top_p: 1.0,
            top_k: None,
            seed,
        },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        n: 1,
        constraint: None,
        logprobs: None,
    }
}

struct Outcome {
    prompt_tokens: usize,
    text: String,
    reason: Option<FinishReason>,
    completion_tokens: usize,
}

async fn drain(mut events: EventStream) -> Outcome {
    let mut outcome = Outcome {
        prompt_tokens: 0,
        text: String::new(),
        reason: None,
        completion_tokens: 0,
    };
    while let Some(event) = events.recv().await {
        match event {
            Event::Started { prompt_tokens } => outcome.prompt_tokens = prompt_tokens,
            Event::Delta { text, .. } => outcome.text.push_str(&text),
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                outcome.reason = Some(reason);
                outcome.completion_tokens = completion_tokens;
            }
            Event::Usage { .. } => {}
            Event::Failed(message) => panic!("generation failed: {message}"),
        }
    }
    outcome
}

fn conversation(system: Option<&str>, question: &str, max_tokens: usize) -> GenerateRequest {
    let mut request = ask(question, 0.0, 0, max_tokens);
    if let (Some(system), Prompt::Chat(messages)) = (system, &mut request.prompt) {
        messages.insert(
            0,
            TemplateMessage {
                role: "system".into(),
                content: system.into(),
            },
        );
    }
    request
}

#[tokio::test]
async fn answers_the_capital_of_france_greedily() {
    let engine = engine();
    let request = conversation(
        Some("You are a helpful AI assistant."),
        "What is the capital of France?",
        30,
    );
    let rendered = engine.tokenize(&request.prompt).unwrap();
    let outcome = drain(engine.generate(request).await.unwrap()).await;
    assert_eq!(outcome.text, "The capital of France is Paris.");
    assert_eq!(outcome.reason, Some(FinishReason::Stop));
    // The prompt count is the tokenizer's count of the rendered template.
    assert_eq!(outcome.prompt_tokens, rendered.len());
    assert!(outcome.completion_tokens > 0);
}

/// Greedy continuations recorded from llama.cpp (llama-cpp-python 0.3.36) on the same file
/// and chat template. With the weights as stored, our llama reproduces them token for token.
/// The first shows why the other tests pass a system message: under the template's default
/// system prompt this Q4_1 135M model answers the question wrongly, in llama.cpp too.
///
/// The engine itself runs widened (Q8_0) weights and f32 prefill for speed, so its numbers
/// differ in the last bits and long greedy runs may part ways with llama.cpp's.
#[test]
#[cfg_attr(
    feature = "cuda",
    ignore = "llama.cpp's reference text was computed on the CPU; GPU arithmetic differs"
)]
fn greedy_output_matches_llama_cpp() {
    use ferry_worker::llama::{GgufFile, Llama, WeightFormat};
    let engine = engine();
    let file = GgufFile::open(&chat_path()).unwrap();
    let model = Llama::load(&file, &test_device(), WeightFormat::Native).unwrap();
    let tokenizer = ferry_worker::tokenizer::from_gguf(&file.content).unwrap();
    let cases = [
        (
            None,
            "L'Étoile, la Marseillaise, la femme, la femme au martyre, la femme au martyre,",
        ),
        (
            Some("You are a helpful assistant. Answer concisely."),
            "The capital of France is Paris.",
        ),
    ];
    for (system, expected) in cases {
        let prompt = engine
            .tokenize(&conversation(system, "What is the capital of France?", 30).prompt)
            .unwrap();
        let mut cache = model.new_cache();
        let mut logits = model.prefill(&prompt, &mut cache).unwrap();
        let mut generated = Vec::new();
        for _ in 0..30 {
            let next = ferry_worker::sampling::Sampler::new(SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            })
            .sample(&logits);
            if next == 2 {
                break;
            }
            generated.push(next);
            logits = model.decode(&[next], &mut [&mut cache]).unwrap().remove(0);
        }
        assert_eq!(
            tokenizer.decode(&generated, true).unwrap(),
            expected,
            "system prompt {system:?}"
        );
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_text() {
    let engine = engine();
    let first = drain(
        engine
            .generate(ask("Tell me a story about a cat.", 0.9, 1234, 24))
            .await
            .unwrap(),
    )
    .await;
    let second = drain(
        engine
            .generate(ask("Tell me a story about a cat.", 0.9, 1234, 24))
            .await
            .unwrap(),
    )
    .await;
    let other = drain(
        engine
            .generate(ask("Tell me a story about a cat.", 0.9, 999, 24))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first.text, second.text);
    assert_ne!(first.text, other.text);
    assert_eq!(first.reason, Some(FinishReason::Length));
    assert_eq!(first.completion_tokens, 24);
}

#[tokio::test]
async fn sixteen_concurrent_streams_all_complete() {
    let engine = engine();
    let solo = drain(
        engine
            .generate(ask("Name a colour.", 0.0, 0, 12))
            .await
            .unwrap(),
    )
    .await;
    let mut handles = Vec::new();
    for _ in 0..16 {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            drain(
                engine
                    .generate(ask("Name a colour.", 0.0, 0, 12))
                    .await
                    .unwrap(),
            )
            .await
        }));
    }
    for handle in handles {
        let outcome = handle.await.unwrap();
        assert!(outcome.reason.is_some());
        // Batched decoding must give the same greedy text as decoding alone. On a GPU it need
        // not: candle picks its quantized CUDA kernels by batch size, and their arithmetic
        // differs in the last bits (seen on an H200: one of 16 stopped early).
        if !cfg!(feature = "cuda") {
            assert_eq!(outcome.text, solo.text);
        } else {
            assert!(!outcome.text.is_empty());
        }
    }
}

#[tokio::test]
async fn a_dropped_stream_frees_its_slot() {
    // Its own engine: the counters must see this request alone.
    let engine = load_engine();
    let mut events = engine
        .generate(ask("Count from one to one thousand.", 0.0, 0, 2000))
        .await
        .unwrap();
    let mut deltas = 0;
    while deltas < 3 {
        if let Some(Event::Delta { .. }) = events.recv().await {
            deltas += 1;
        }
    }
    drop(events);
    let generated_at_drop = engine.stats().generated_tokens_total;
    for _ in 0..100 {
        if engine.stats().active_sequences == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.stats().active_sequences, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        engine.stats().generated_tokens_total - generated_at_drop <= 2,
        "kept generating for nobody"
    );
}

#[tokio::test]
async fn a_json_schema_holds_for_every_sampled_answer() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "population": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"enum": ["big", "small", "old"]}, "maxItems": 3}
        },
        "required": ["city", "population", "tags"],
        "additionalProperties": false
    });
    // Sampled at temperature 1 on a 135M model: left alone it rarely writes this JSON.
    let engine = engine();
    let mut requests = Vec::new();
    for seed in 0..4 {
        let mut request = ask("Describe Paris as JSON.", 1.0, seed, 96);
        request.constraint = Some(OutputConstraint::JsonSchema(schema.clone()));
        requests.push(engine.generate(request).await.unwrap());
    }
    for events in requests {
        let outcome = drain(events).await;
        assert_eq!(outcome.reason, Some(FinishReason::Stop), "{}", outcome.text);
        let answer: serde_json::Value = serde_json::from_str(&outcome.text)
            .unwrap_or_else(|error| panic!("{error}: {}", outcome.text));
        let object = answer.as_object().unwrap();
        assert_eq!(object.len(), 3, "{answer}");
        assert!(object["city"].as_str().unwrap().chars().count() <= 40);
        assert!(object["population"].as_u64().is_some(), "{answer}");
        for tag in object["tags"].as_array().unwrap() {
            assert!(
                ["big", "small", "old"].contains(&tag.as_str().unwrap()),
                "{answer}"
            );
        }
    }
}

#[tokio::test]
async fn log_probabilities_come_with_each_token_greedy_ones_the_likeliest() {
    let mut request = ask("What is the capital of France?", 0.0, 0, 12);
    request.logprobs = Some(3);
    let mut events = engine().generate(request).await.unwrap();
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(event) = events.recv().await {
        if let Event::Delta {
            text: piece,
            logprobs,
            ..
        } = event
        {
            text.push_str(&piece);
            tokens.extend(logprobs);
        }
    }
    assert!(!tokens.is_empty());
    assert_eq!(
        tokens.iter().map(|t| t.token.as_str()).collect::<String>(),
        text
    );
    for token in &tokens {
        assert!(token.logprob <= 0.0, "{token:?}");
        assert_eq!(token.top.len(), 3, "{token:?}");
        // Greedy: the chosen token is the likeliest, first among the alternatives.
        assert_eq!(token.top[0].0, token.token, "{token:?}");
        assert!((token.top[0].1 - token.logprob).abs() < 1e-4, "{token:?}");
        assert!(token.top.windows(2).all(|pair| pair[0].1 >= pair[1].1));
    }
}

#[tokio::test]
async fn a_schema_the_engine_cannot_enforce_is_refused_before_it_runs() {
    let mut request = ask("A list, please.", 0.0, 0, 16);
    request.constraint = Some(OutputConstraint::JsonSchema(
        serde_json::json!({"type": "array", "uniqueItems": true}),
    ));
    match engine().generate(request).await {
        Err(EngineError::Unsupported { param, message }) => {
            assert_eq!(param, "response_format");
            assert!(message.contains("uniqueItems"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn stop_sequences_and_n_choices() {
    let engine = engine();
    let mut request = ask("List three fruits, one per line.", 0.0, 0, 60);
    request.stop = vec!["\n".into()];
    let outcome = drain(engine.generate(request).await.unwrap()).await;
    assert!(!outcome.text.contains('\n'), "{:?}", outcome.text);
    assert_eq!(outcome.reason, Some(FinishReason::Stop));

    let mut request = ask("Say something.", 1.0, 5, 8);
    request.n = 3;
    let mut events = engine.generate(request).await.unwrap();
    let mut finished = Vec::new();
    while let Some(event) = events.recv().await {
        if let Event::Finished { index, .. } = event {
            finished.push(index);
        }
    }
    finished.sort();
    assert_eq!(finished, [0, 1, 2]);
}

#[test]
fn embeddings_match_the_reference_similarity() {
    let directory = source::pull(&source::MINILM, &pull_options()).expect("pull MiniLM");
    let engine = EmbeddingEngine::load(&directory, &test_device()).unwrap();
    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply on Tuesday.",
    ];
    let inputs: Vec<EmbeddingInput> = texts
        .iter()
        .map(|text| EmbeddingInput::Text(text.to_string()))
        .collect();
    let (vectors, tokens) = engine.embed(&inputs).unwrap();
    assert!(tokens > 0);
    assert_eq!(vectors[0].len(), 384);
    let similar = cosine(&vectors[0], &vectors[1]);
    assert!((similar - 0.755).abs() < 0.01, "{similar}");
    let unrelated = cosine(&vectors[0], &vectors[2]);
    assert!(unrelated.abs() < 0.15, "{unrelated}");
    // Token ids outside the vocabulary are the caller's error, not an out-of-bounds read.
    let out_of_range = engine.embed(&[EmbeddingInput::Tokens(vec![101, 40_000, 102])]);
    assert!(matches!(
        out_of_range,
        Err(ferry_worker::embed::EmbedError::BadInput(_))
    ));
    // One input alone embeds the same as inside a padded batch.
    let (alone, _) = engine.embed(&inputs[1..2]).unwrap();
    assert!(cosine(&alone[0], &vectors[1]) > 0.9999);
}

fn config_for(chat: ModelRef) -> WorkerConfig {
    WorkerConfig {
        chat: Some(chat),
        embedding: None,
        batching: BatchingConfig::default(),
        pull: pull_options(),
        memory_limit_bytes: None,
    }
}

#[test]
fn a_corrupt_or_mismatched_model_file_is_a_clear_error() {
    let directory = std::env::temp_dir().join(format!("ferry-bad-models-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let truncated = directory.join("truncated.gguf");
    let bytes = std::fs::read(chat_path()).unwrap();
    std::fs::write(&truncated, &bytes[..4 << 20]).unwrap();
    let garbage = directory.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    for path in [&truncated, &garbage] {
        let error = worker::load(&config_for(ModelRef {
            id: "bad".into(),
            source: path.display().to_string(),
            sha256: None,
        }))
        .err()
        .unwrap();
        assert!(matches!(error, WorkerError::Chat { .. }), "{error}");
    }
    let wrong_checksum = ModelRef {
        id: "m".into(),
        source: chat_path().display().to_string(),
        sha256: Some("0".repeat(64)),
    };
    let error = worker::load(&config_for(wrong_checksum)).err().unwrap();
    assert!(error.to_string().contains("checksum"), "{error}");
    let embedding_as_chat = ModelRef {
        id: "m".into(),
        source: "all-minilm-l6-v2".into(),
        sha256: None,
    };
    assert!(matches!(
        worker::load(&config_for(embedding_as_chat)),
        Err(WorkerError::Kind(..))
    ));
    std::fs::remove_dir_all(directory).unwrap();
}

#[test]
fn a_model_too_large_for_the_device_is_refused() {
    let mut config = config_for(ModelRef {
        id: "smollm2".into(),
        source: chat_path().display().to_string(),
        sha256: None,
    });
    config.memory_limit_bytes = Some(16 << 20);
    let error = worker::load(&config).err().unwrap();
    assert!(matches!(error, WorkerError::Placement { .. }), "{error}");
    assert!(error.to_string().contains("needs"), "{error}");
}

/// Our batched llama must compute what candle's reference implementation computes: the same
/// greedy continuation, token for token, prefill and decode alike.
#[tokio::test]
async fn matches_candle_reference_implementation() {
    use candle_core::Tensor;
    let engine = engine();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let tokens = engine.tokenize(&Prompt::Text(prompt.into())).unwrap();
    let mut file = std::fs::File::open(chat_path()).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let tokenizer = ferry_worker::tokenizer::from_gguf(&content).unwrap();
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &test_device(),
    )
    .unwrap();
    let (mut input, mut position, mut expected) = (tokens.clone(), 0, Vec::new());
    for _ in 0..12 {
        let x = Tensor::new(input.as_slice(), &test_device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = reference.forward(&x, position).unwrap().squeeze(0).unwrap();
        position += input.len();
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        if next == 2 {
            break;
        }
        expected.push(next);
        input = vec![next];
    }
    let expected = tokenizer.decode(&expected, true).unwrap();
    let mut request = ask("", 0.0, 0, 12);
    request.prompt = Prompt::Tokens(tokens);
    let ours = drain(engine.generate(request).await.unwrap()).await;
    assert_eq!(ours.text, expected);
    assert!(expected.contains("Paris"), "{expected}");
}

#[test]
fn detokenizing_token_by_token_rebuilds_the_text_exactly() {
    let file = std::fs::File::open(chat_path()).unwrap();
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut std::io::BufReader::new(file))
            .unwrap();
    let tokenizer = ferry_worker::tokenizer::from_gguf(&content).unwrap();
    for text in [
        "café au lait, 東京タワー 🙂🚀 and 12345 digits",
        "  leading spaces\n\ttabs",
        "<|im_start|>user\nhi<|im_end|>",
    ] {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let mut detokenizer = ferry_worker::tokenizer::Detokenizer::new();
        let mut pieces: Vec<String> = ids
            .iter()
            .map(|id| detokenizer.push(&tokenizer, *id))
            .collect();
        pieces.push(detokenizer.finish(&tokenizer));
        assert!(
            pieces.iter().all(|piece| !piece.contains('\u{FFFD}')),
            "{pieces:?}"
        );
        // Special tokens are skipped when decoding, as in generated text.
        let expected = text.replace("<|im_start|>", "").replace("<|im_end|>", "");
        assert_eq!(pieces.concat(), expected);
    }
}

#[tokio::test]
async fn the_worker_api_reports_load_and_refuses_bad_input() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use ferry_worker::server::{ChatModel, WorkerModels, router};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let chat = ChatModel {
        id: "smol".into(),
        engine: engine(),
    };
    let app = router(WorkerModels {
        chat: Some(Arc::new(chat)),
        embedding: None,
    });
    let call = |method: &str, path: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let json = |response: axum::response::Response| async move {
        serde_json::from_slice::<serde_json::Value>(
            &response.into_body().collect().await.unwrap().to_bytes(),
        )
        .unwrap()
    };

    let stats = app
        .clone()
        .oneshot(call("GET", "/stats", ""))
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    let engine_stats = json(stats).await["chat"]["engine"].clone();
    for field in [
        "queue_depth",
        "active_sequences",
        "kv_cache_tokens",
        "kv_cache_capacity_tokens",
        "tokens_per_second",
    ] {
        assert!(
            engine_stats.get(field).is_some(),
            "{field} missing from {engine_stats}"
        );
    }
    assert_eq!(engine_stats["max_batch"], 16);

    let bad_tokens = app
        .clone()
        .oneshot(call(
            "POST",
            "/v1/completions",
            r#"{"model": "smol", "prompt": [4000000]}"#,
        ))
        .await
        .unwrap();
    assert_eq!(bad_tokens.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(bad_tokens).await["error"]["param"], "prompt");

    let too_long = app.clone().oneshot(call("POST", "/v1/chat/completions", r#"{"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9000}"#)).await.unwrap();
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(too_long).await["error"]["param"], "max_tokens");

    let unknown = app
        .clone()
        .oneshot(call(
            "POST",
            "/v1/chat/completions",
            r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}"#,
        ))
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.oneshot(call("GET", "/readyz", ""))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

/// The external-engine wrapper, driven against a real OpenAI-compatible server: a worker
/// serving the real model on loopback.
#[tokio::test]
async fn the_external_engine_wraps_an_openai_compatible_server() {
    use ferry_worker::external::ExternalEngine;
    use ferry_worker::server::{ChatModel, WorkerModels, router};

    let chat = ChatModel {
        id: "smol".into(),
        engine: engine(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router(WorkerModels {
                chat: Some(Arc::new(chat)),
                embedding: None,
            }),
        )
        .await
    });

    let external = ExternalEngine::new(&base, "smol", reqwest::Client::new());
    let request = conversation(
        Some("You are a helpful AI assistant."),
        "What is the capital of France?",
        30,
    );
    let mut events = external.generate(request.clone()).await.unwrap();
    let (mut text, mut usage, mut finished) = (String::new(), None, None);
    while let Some(event) = events.recv().await {
        match event {
            Event::Delta { text: piece, .. } => text.push_str(&piece),
            Event::Usage {
                prompt_tokens,
                completion_tokens,
            } => usage = Some((prompt_tokens, completion_tokens)),
            Event::Finished { reason, .. } => finished = Some(reason),
            Event::Started { .. } => {}
            Event::Failed(message) => panic!("{message}"),
        }
    }
    let direct = drain(engine().generate(request).await.unwrap()).await;
    assert_eq!(text, direct.text);
    assert_eq!(finished, Some(FinishReason::Stop));
    // Exact counts come from the upstream's usage chunk, not from counting chunks.
    assert_eq!(
        usage,
        Some((direct.prompt_tokens, direct.completion_tokens))
    );

    // A schema goes to the external server as response_format, and holds.
    let mut structured = ask("Describe Paris as JSON.", 0.0, 0, 60);
    let schema = serde_json::json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"], "additionalProperties": false});
    structured.constraint = Some(OutputConstraint::JsonSchema(schema));
    let mut events = external.generate(structured).await.unwrap();
    let mut json_text = String::new();
    while let Some(event) = events.recv().await {
        if let Event::Delta { text: piece, .. } = event {
            json_text.push_str(&piece);
        }
    }
    let answer: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert!(answer["city"].is_string(), "{answer}");
    // What it cannot pass on is refused, not served unconstrained or without.
    let mut auto_tools = ask("hi", 0.0, 0, 4);
    auto_tools.constraint = Some(OutputConstraint::Lark("start: \"a\"".into()));
    assert!(matches!(
        external.generate(auto_tools).await,
        Err(EngineError::Unsupported {
            param: "tool_choice",
            ..
        })
    ));
    let mut with_logprobs = ask("hi", 0.0, 0, 4);
    with_logprobs.logprobs = Some(1);
    assert!(matches!(
        external.generate(with_logprobs).await,
        Err(EngineError::Unsupported {
            param: "logprobs",
            ..
        })
    ));

    let unreachable = ExternalEngine::new("http://127.0.0.1:9/v1", "smol", reqwest::Client::new());
    assert!(unreachable.generate(ask("hi", 0.0, 0, 4)).await.is_err());
}
