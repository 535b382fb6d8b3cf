//! An engine that wraps an external OpenAI-compatible server (vLLM, TGI, SGLang…), so a pool
//! replica can run a third-party engine behind the same worker API and stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ferry_core::sse::SseParser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::engine::{
    Engine, EngineError, EngineStats, Event, EventStream, FinishReason, GenerateRequest, Prompt,
};
use crate::grammar::OutputConstraint;

pub struct ExternalEngine {
    base_url: String,
    model: String,
    http: reqwest::Client,
    active: Arc<AtomicUsize>,
}

impl ExternalEngine {
    /// `base_url` up to `/v1`; `model` is the name the external server serves.
    pub fn new(base_url: &str, model: &str, http: reqwest::Client) -> ExternalEngine {
        ExternalEngine {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            http,
            active: Arc::default(),
        }
    }
}

#[async_trait]
impl Engine for ExternalEngine {
    async fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        // An `auto` tool choice is a grammar only Ferry's engine runs: refused, not served
        // unconstrained. (`required` and a named function are JSON schemas, forwarded below.)
        if matches!(request.constraint, Some(OutputConstraint::Lark(_))) {
            return Err(EngineError::Unsupported {
                param: "tool_choice",
                message: "this worker's external engine cannot choose between text and a tool call under Ferry's grammar; use tool_choice required or a named function, or register the external server as an upstream to use its own tool calling".into(),
            });
        }
        if request.logprobs.is_some() {
            return Err(EngineError::Unsupported {
                param: "logprobs",
                message: "this worker does not relay log probabilities from its external engine"
                    .into(),
            });
        }
        let (path, mut body) = match &request.prompt {
            Prompt::Chat(messages) => ("/chat/completions", json!({"messages": messages})),
            Prompt::Text(text) => ("/completions", json!({"prompt": text})),
            Prompt::Tokens(tokens) => ("/completions", json!({"prompt": tokens})),
        };
        let sampling = &request.sampling;
        body["model"] = json!(self.model);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        body["temperature"] = json!(sampling.temperature);
        body["top_p"] = json!(sampling.top_p);
        // OpenAI-style servers take a signed 64-bit seed: keep all the bits.
        body["seed"] = json!(sampling.seed as i64);
        body["n"] = json!(request.n);
        if let Some(top_k) = sampling.top_k {
            body["top_k"] = json!(top_k);
        }
        if let Some(max_tokens) = request.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        // The external engine enforces it (vLLM, SGLang and TGI do, with the same libraries).
        match &request.constraint {
            Some(OutputConstraint::JsonObject) => {
                body["response_format"] = json!({"type": "json_object"});
            }
            Some(OutputConstraint::JsonSchema(schema)) => {
                body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}});
            }
            Some(OutputConstraint::Lark(_)) | None => {}
        }
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .json(&body)
            .send()
            .await
            .map_err(|error| {
                EngineError::Unavailable(format!("the external engine is unreachable: {error}"))
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        {
            return Err(EngineError::Overloaded);
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(if status.is_client_error() {
                EngineError::Invalid(text)
            } else {
                EngineError::Unavailable(text)
            });
        }
        let (sender, events) = mpsc::unbounded_channel();
        let active = self.active.clone();
        active.fetch_add(1, Ordering::Relaxed);
        let n = request.n.max(1);
        tokio::spawn(async move {
            relay(response, &sender, n).await;
            active.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(events)
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            active_sequences: self.active.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }
}

/// Turns the external server's SSE chunks into engine events; stops when the caller leaves.
/// Finishes are held until the stream ends, so they follow the upstream's exact usage.
async fn relay(response: reqwest::Response, sender: &mpsc::UnboundedSender<Event>, n: usize) {
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut chunks_by_choice = vec![0usize; n];
    let mut finishes: Vec<Option<FinishReason>> = vec![None; n];
    let mut stops: Vec<Option<String>> = vec![None; n];
    let mut usage = None;
    if sender.send(Event::Started { prompt_tokens: 0 }).is_err() {
        return;
    }
    'stream: while let Some(chunk) = body.next().await {
        let Ok(bytes) = chunk else {
            let _ = sender.send(Event::Failed("the external engine's stream broke".into()));
            return;
        };
        for event in parser.feed(&bytes) {
            if event.is_done() {
                break 'stream;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if let Some(reported) = chunk.get("usage").filter(|usage| usage.is_object()) {
                let count =
                    |key: &str| reported.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
                usage = Some((count("prompt_tokens"), count("completion_tokens")));
            }
            for choice in chunk
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // An index beyond the choices asked for is the upstream's bug: ignore it.
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if index >= n {
                    continue;
                }
                let text = choice
                    .pointer("/delta/content")
                    .or_else(|| choice.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !text.is_empty() {
                    chunks_by_choice[index] += 1;
                    if sender
                        .send(Event::Delta {
                            logprobs: Vec::new(),
                            index,
                            text: text.to_owned(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    finishes[index] = Some(if reason == "length" {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    });
                    // vLLM names the stop sequence that ended it (a token id is not one).
                    stops[index] = choice
                        .get("stop_reason")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
            }
        }
    }
    if finishes.iter().any(Option::is_none) {
        let _ = sender.send(Event::Failed(
            "the external engine ended before finishing".into(),
        ));
        return;
    }
    if let Some((prompt_tokens, completion_tokens)) = usage {
        let _ = sender.send(Event::Usage {
            prompt_tokens,
            completion_tokens,
        });
    }
    for ((index, reason), stop_sequence) in finishes.into_iter().enumerate().zip(stops) {
        let reason = reason.unwrap_or(FinishReason::Stop);
        let _ = sender.send(Event::Finished {
            index,
            reason,
            completion_tokens: chunks_by_choice[index],
            stop_sequence,
        });
    }
}
