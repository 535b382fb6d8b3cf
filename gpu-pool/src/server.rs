//! The worker's HTTP API: OpenAI-compatible `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`, plus `/healthz`, `/readyz` and `/stats` for the scaler.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::openai::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, EmbeddingVector, EncodingFormat,
    MessageContent, ModelList, ModelObject, PromptTokensDetails, Stop, StreamOptions, TextOrTokens,
    Usage,
};
use ferry_core::sse::{DONE_EVENT, data_event};
use ferry_core::{ApiError, ErrorKind};
use ferry_http::ErrorResponse;
use serde_json::{Value, json};

use crate::embed::{EmbedError, EmbeddingEngine, EmbeddingInput};
use crate::engine::{
    Engine, EngineError, Event, EventStream, GenerateRequest, Prompt, TokenLogprob,
};
use crate::grammar::OutputConstraint;
use crate::sampling::SamplingParams;
use crate::template::TemplateMessage;
use crate::tools::{self, CALL_CLOSE, CALL_OPEN, Tools};

pub struct ChatModel {
    pub id: String,
    pub engine: Arc<dyn Engine>,
}

pub struct EmbeddingModel {
    pub id: String,
    pub engine: Arc<EmbeddingEngine>,
}

/// What one worker serves.
#[derive(Clone, Default)]
pub struct WorkerModels {
    pub chat: Option<Arc<ChatModel>>,
    pub embedding: Option<Arc<EmbeddingModel>>,
}

pub fn router(models: WorkerModels) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/stats", get(stats))
        .with_state(models)
}

/// An engine refusal as the caller sees it; `prompt_param` names the field holding the prompt.
fn engine_failure(error: EngineError, prompt_param: &str) -> ErrorResponse {
    ErrorResponse::from(match error {
        EngineError::Invalid(message) => ApiError::invalid(prompt_param, message),
        EngineError::Unsupported { param, message } => ApiError::invalid(param, message),
        EngineError::ContextExceeded(message) => {
            ApiError::invalid("max_tokens", message).with_code("context_length_exceeded")
        }
        EngineError::Overloaded => ApiError::new(
            ErrorKind::NoCapacity,
            "The worker's queue is full; retry shortly.",
        )
        .retry_after(1),
        EngineError::Unavailable(message) => {
            ApiError::new(ErrorKind::NoCapacity, message).retry_after(5)
        }
    })
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Ids and default seeds only: a clock-derived fallback is acceptable here.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = (nanos >> ((index % 16) * 8)) as u8;
        }
    }
    bytes
}

fn response_id(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    format!(
        "{prefix}-{}",
        ferry_core::ids::uuid_v7(millis, random()).simple()
    )
}

fn chat_model(models: &WorkerModels, requested: &str) -> Result<Arc<ChatModel>, ApiError> {
    models
        .chat
        .clone()
        .filter(|model| model.id == requested)
        .ok_or_else(|| ApiError::unknown_model(requested))
}

/// Sampling settings from a request; `top_k` is an extension many servers accept.
fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    raw: &Value,
) -> SamplingParams {
    SamplingParams {
        temperature: temperature.unwrap_or(1.0),
        top_p: top_p.unwrap_or(1.0),
        top_k: raw.get("top_k").and_then(Value::as_u64).map(|k| k as usize),
        seed: seed.map_or_else(|| u64::from_le_bytes(random()), |seed| seed as u64),
    }
}

/// How a response is shaped: chat chunks with deltas, or text completion choices.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Text,
}

struct Reply {
    shape: Shape,
    id: String,
    model: String,
    created: u64,
    n: usize,
    include_usage: bool,
    /// The tools the model may call: its answers may be calls.
    tools: Option<Tools>,
    /// Log probabilities were asked for.
    logprobs: bool,
}

fn call_id() -> String {
    format!("call_{}", ferry_core::ids::uuid_v7(0, random()).simple())
}

async fn chat_completions(
    State(models): State<WorkerModels>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    let parsed = ferry_core::body::parse::<ChatCompletionRequest>(&body)?;
    let request = parsed.typed;
    request.validate()?;
    let model = chat_model(&models, &request.model)?;
    let logprobs = chat_logprobs(&parsed.raw)?;
    let tools = Tools::from_request(&parsed.raw)?;
    let mut constraint = output_constraint(&parsed.raw)?;
    if let Some(tools) = &tools {
        if constraint.is_some() {
            return Err(ApiError::invalid(
                "response_format",
                "this model cannot combine response_format with tools; send one or the other (or tool_choice none)",
            )
            .into());
        }
        constraint = Some(tools.constraint());
    }
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    for (index, message) in request.messages.iter().enumerate() {
        if let Some(MessageContent::Parts(parts)) = &message.content
            && let Some(part) = parts.iter().find(|part| part.r#type != "text")
        {
            return Err(ApiError::invalid(
                format!("messages[{index}].content"),
                format!(
                    "this model reads text only; a `{}` part cannot be given to it",
                    part.r#type
                ),
            )
            .into());
        }
        let mut content = message
            .content
            .as_ref()
            .map(MessageContent::text)
            .unwrap_or_default();
        // The model's own earlier calls, in the shape it writes them.
        if let Some(Value::Array(calls)) = &message.tool_calls {
            for call in calls {
                let function = &call["function"];
                let arguments = match &function["arguments"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                content.push_str(&format!(
                    "{CALL_OPEN}{{\"name\": {}, \"arguments\": {arguments}}}{CALL_CLOSE}",
                    function["name"]
                ));
            }
        }
        messages.push(TemplateMessage {
            role: serde_json::to_value(message.role)
                .ok()
                .and_then(|role| role.as_str().map(str::to_owned))
                .unwrap_or_default(),
            content,
        });
    }
    // What the answer must be, told to the model as well as enforced: a model that knows
    // the shape it writes closes its strings and arrays sooner than one steered blind (SmolLM2
    // on unbounded schemas: 95 % of answers end by themselves instead of 88 %). `json_object`
    // is left to the caller's prompt, as OpenAI asks of it.
    let instructions = match (&tools, &constraint) {
        (Some(tools), _) => Some(tools.instructions()),
        (None, Some(OutputConstraint::JsonSchema(schema))) => Some(format!(
            "Answer with JSON only, matching this JSON Schema:\n{schema}"
        )),
        _ => None,
    };
    if let Some(instructions) = instructions {
        match messages.first_mut() {
            Some(first) if first.role == "system" || first.role == "developer" => {
                first.content = format!("{}\n\n{instructions}", first.content);
            }
            _ => messages.insert(
                0,
                TemplateMessage {
                    role: "system".into(),
                    content: instructions,
                },
            ),
        }
    }
    let n = request.n.unwrap_or(1) as usize;
    let generate = GenerateRequest {
        prompt: Prompt::Chat(messages),
        sampling: sampling(
            request.temperature,
            request.top_p,
            request.seed,
            &parsed.raw,
        ),
        max_tokens: request.max_output_tokens().map(|tokens| tokens as usize),
        stop: stop_sequences(&request.stop),
        n,
        constraint,
        logprobs,
    };
    respond(
        &model,
        generate,
        Shape::Chat,
        &request.stream_options,
        request.is_stream(),
        tools,
    )
    .await
}

async fn completions(
    State(models): State<WorkerModels>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    let parsed = ferry_core::body::parse::<CompletionRequest>(&body)?;
    let request = parsed.typed;
    request.validate()?;
    let model = chat_model(&models, &request.model)?;
    let logprobs = completion_logprobs(&parsed.raw)?;
    let prompt = match &request.prompt {
        TextOrTokens::Text(text) => Prompt::Text(text.clone()),
        TextOrTokens::Tokens(tokens) => Prompt::Tokens(tokens.clone()),
        TextOrTokens::Texts(texts) if texts.len() == 1 => Prompt::Text(texts[0].clone()),
        TextOrTokens::TokenArrays(arrays) if arrays.len() == 1 => Prompt::Tokens(arrays[0].clone()),
        _ => {
            return Err(
                ApiError::invalid("prompt", "this worker takes one prompt per request").into(),
            );
        }
    };
    let n = request.n.unwrap_or(1) as usize;
    let generate = GenerateRequest {
        prompt,
        sampling: sampling(
            request.temperature,
            request.top_p,
            request.seed,
            &parsed.raw,
        ),
        // The legacy API's default is 16 tokens.
        max_tokens: Some(request.max_tokens.unwrap_or(16) as usize),
        stop: stop_sequences(&request.stop),
        n,
        constraint: None,
        logprobs,
    };
    respond(
        &model,
        generate,
        Shape::Text,
        &request.stream_options,
        request.is_stream(),
        None,
    )
    .await
}

/// Queues the generation and answers with one JSON body or an SSE stream.
async fn respond(
    model: &ChatModel,
    generate: GenerateRequest,
    shape: Shape,
    stream_options: &Option<StreamOptions>,
    streamed: bool,
    tools: Option<Tools>,
) -> Result<Response, ErrorResponse> {
    let n = generate.n;
    let logprobs = generate.logprobs.is_some();
    let prompt_param = match shape {
        Shape::Chat => "messages",
        Shape::Text => "prompt",
    };
    let events = model
        .engine
        .generate(generate)
        .await
        .map_err(|error| engine_failure(error, prompt_param))?;
    let reply = Reply {
        shape,
        id: response_id(match shape {
            Shape::Chat => "chatcmpl",
            Shape::Text => "cmpl",
        }),
        model: model.id.clone(),
        created: unix_seconds(),
        n,
        include_usage: stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage),
        tools,
        logprobs,
    };
    if streamed {
        Ok(stream(events, reply))
    } else {
        whole(events, reply).await
    }
}

/// Chat's `logprobs: true` and `top_logprobs` (0 to 20 alternatives a token).
fn chat_logprobs(raw: &Value) -> Result<Option<usize>, ApiError> {
    let top = match &raw["top_logprobs"] {
        Value::Null => None,
        value => match value.as_u64().filter(|top| *top <= 20) {
            Some(top) => Some(top as usize),
            None => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs is a whole number from 0 to 20",
                ));
            }
        },
    };
    match &raw["logprobs"] {
        Value::Bool(true) => Ok(Some(top.unwrap_or(0))),
        Value::Null | Value::Bool(false) if top.is_none() => Ok(None),
        Value::Null | Value::Bool(false) => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        _ => Err(ApiError::invalid("logprobs", "logprobs is true or false")),
    }
}

/// The legacy completions' `logprobs`: how many alternatives a token (0 to 5).
fn completion_logprobs(raw: &Value) -> Result<Option<usize>, ApiError> {
    match &raw["logprobs"] {
        Value::Null => Ok(None),
        value => match value.as_u64().filter(|top| *top <= 5) {
            Some(top) => Ok(Some(top as usize)),
            None => Err(ApiError::invalid(
                "logprobs",
                "logprobs is a whole number from 0 to 5",
            )),
        },
    }
}

/// Log probabilities as a chat answer carries them (`{"content": [...], "refusal": null}`).
fn chat_logprobs_value(tokens: &[TokenLogprob]) -> Value {
    let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|token| {
            let mut value = entry(&token.token, token.logprob);
            value["top_logprobs"] = token
                .top
                .iter()
                .map(|(text, logprob)| entry(text, *logprob))
                .collect();
            value
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// As a legacy completion carries them: parallel lists, offsets into the choice's text.
fn text_logprobs_value(tokens: &[TokenLogprob], start: usize) -> Value {
    let mut offset = start;
    let mut offsets = Vec::with_capacity(tokens.len());
    for token in tokens {
        offsets.push(offset);
        offset += token.token.len();
    }
    json!({
        "tokens": tokens.iter().map(|token| &token.token).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|token| token.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|token| token.top.iter().map(|(text, logprob)| (text.clone(), json!(logprob))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// `response_format` as a constraint on the output: `json_object`, or `json_schema` with its
/// `schema` (OpenAI's `strict` or not, the engine enforces the schema either way).
fn output_constraint(raw: &Value) -> Result<Option<OutputConstraint>, ApiError> {
    let format = &raw["response_format"];
    match format["type"].as_str() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputConstraint::JsonObject)),
        Some("json_schema") => match &format["json_schema"]["schema"] {
            schema @ (Value::Object(_) | Value::Bool(true)) => {
                Ok(Some(OutputConstraint::JsonSchema(schema.clone())))
            }
            Value::Null => Err(ApiError::invalid(
                "response_format.json_schema.schema",
                "response_format json_schema needs json_schema.schema, a JSON Schema object",
            )),
            _ => Err(ApiError::invalid(
                "response_format.json_schema.schema",
                "json_schema.schema must be a JSON Schema object",
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "response_format.type",
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

fn stop_sequences(stop: &Option<Stop>) -> Vec<String> {
    stop.as_ref().map(Stop::sequences).unwrap_or_default()
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Usage {
    Usage {
        prompt_tokens: prompt_tokens as u64,
        completion_tokens: completion_tokens as u64,
        total_tokens: (prompt_tokens + completion_tokens) as u64,
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 0 }),
        cost: None,
    }
}

async fn whole(mut events: EventStream, reply: Reply) -> Result<Response, ErrorResponse> {
    let mut texts = vec![String::new(); reply.n];
    let mut token_logprobs: Vec<Vec<TokenLogprob>> = vec![Vec::new(); reply.n];
    let mut reasons = vec![None; reply.n];
    // vLLM's extension: the stop sequence that ended a choice, if one did.
    let mut stops: Vec<Option<String>> = vec![None; reply.n];
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut exact = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Started {
                prompt_tokens: count,
            } => prompt_tokens = count,
            Event::Delta {
                index,
                text,
                logprobs,
            } => {
                if let Some(choice) = texts.get_mut(index) {
                    choice.push_str(&text);
                }
                if let Some(choice) = token_logprobs.get_mut(index) {
                    choice.extend(logprobs);
                }
            }
            Event::Finished {
                index,
                reason,
                completion_tokens: count,
                stop_sequence,
            } => {
                if let Some(slot) = reasons.get_mut(index) {
                    *slot = Some(reason.as_str());
                }
                if let Some(slot) = stops.get_mut(index) {
                    *slot = stop_sequence;
                }
                completion_tokens += count;
            }
            Event::Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            } => exact = Some((prompt, completion)),
            Event::Failed(message) => {
                return Err(ApiError::new(ErrorKind::Internal, message).into());
            }
        }
    }
    if let Some((prompt, completion)) = exact {
        (prompt_tokens, completion_tokens) = (prompt, completion);
    }
    if reasons.iter().any(Option::is_none) {
        // The engine went away mid-generation: an answer cut short is not a success.
        return Err(
            ApiError::new(ErrorKind::Internal, "the engine stopped before finishing").into(),
        );
    }
    let choices: Vec<Value> = texts
        .into_iter()
        .zip(reasons)
        .zip(stops)
        .enumerate()
        .map(|(index, ((text, reason), stop))| {
            let tokens = token_logprobs.get(index).map_or(&[][..], Vec::as_slice);
            let logprobs = match (reply.logprobs, reply.shape) {
                (false, _) => Value::Null,
                (true, Shape::Chat) => chat_logprobs_value(tokens),
                (true, Shape::Text) => text_logprobs_value(tokens, 0),
            };
            (index, text, reason, logprobs, stop)
        })
        .map(|(index, text, reason, logprobs, stop)| match reply.shape {
            Shape::Chat => match reply
                .tools
                .as_ref()
                .filter(|_| reason == Some("stop"))
                .and_then(|tools| tools::read_call(&text, tools))
            {
                Some(call) => json!({"index": index, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": call_id(), "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
                    "finish_reason": "tool_calls", "logprobs": logprobs}),
                None => json!({"index": index, "message": {"role": "assistant", "content": text, "refusal": null}, "finish_reason": reason, "logprobs": logprobs, "stop_reason": stop}),
            },
            Shape::Text => json!({"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs, "stop_reason": stop}),
        })
        .collect();
    let object = match reply.shape {
        Shape::Chat => "chat.completion",
        Shape::Text => "text_completion",
    };
    Ok(Json(json!({
        "id": reply.id, "object": object, "created": reply.created, "model": reply.model,
        "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

/// One streamed choice's progress through a possible tool call.
#[derive(Default)]
struct CallStream {
    /// Text not yet sent: the start of an answer that may be a call, or a call's last bytes.
    held: String,
    /// Known to be text: sent as content from here on.
    text: bool,
    /// The call's header went out (its id and name); arguments follow.
    header_sent: bool,
}

struct StreamState {
    events: EventStream,
    reply: Reply,
    calls: Vec<CallStream>,
    /// Bytes of text each choice has streamed (a legacy completion's `text_offset`).
    text_offsets: Vec<usize>,
    prompt_tokens: usize,
    completion_tokens: usize,
    finished: usize,
    exact: Option<(usize, usize)>,
    over: bool,
}

impl StreamState {
    fn chunk(&self, choices: Value, usage: Option<Usage>) -> String {
        let object = match self.reply.shape {
            Shape::Chat => "chat.completion.chunk",
            Shape::Text => "text_completion",
        };
        let mut chunk = json!({"id": self.reply.id, "object": object, "created": self.reply.created, "model": self.reply.model, "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = serde_json::to_value(usage).unwrap_or(Value::Null);
        }
        data_event(&chunk.to_string())
    }

    fn choice(&self, index: usize, text: Option<&str>, role: bool, reason: Option<&str>) -> Value {
        match self.reply.shape {
            Shape::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                json!({"index": index, "delta": delta, "finish_reason": reason, "logprobs": null})
            }
            Shape::Text => {
                json!({"index": index, "text": text.unwrap_or_default(), "finish_reason": reason, "logprobs": null})
            }
        }
    }

    /// A text delta of an answer that may be a tool call: text passes as content once it is
    /// clearly text; a call's header (id, name) goes out once its name is whole, then its
    /// arguments as they come, holding back the call's closing bytes; `last` flushes.
    fn tool_delta(&mut self, index: usize, text: &str, last: bool) -> String {
        let Some((open, close)) = self.reply.tools.as_ref().map(Tools::markers) else {
            return String::new();
        };
        let Some(call) = self.calls.get_mut(index) else {
            return String::new();
        };
        call.held.push_str(text);
        if call.text {
            let content = std::mem::take(&mut call.held);
            return if content.is_empty() {
                String::new()
            } else {
                self.chunk(
                    json!([self.choice(index, Some(&content), false, None)]),
                    None,
                )
            };
        }
        let mut out = String::new();
        if !call.header_sent {
            let undecided = !open.is_empty() && open.starts_with(call.held.as_str());
            let is_call = open.is_empty() || call.held.starts_with(open);
            if !is_call && (last || !undecided) {
                // Text after all (an `auto` answer that did not open a call).
                call.text = true;
                let content = std::mem::take(&mut call.held);
                if !content.is_empty() {
                    out.push_str(&self.chunk(
                        json!([self.choice(index, Some(&content), false, None)]),
                        None,
                    ));
                }
                return out;
            }
            let Some((name, head)) = call.held.strip_prefix(open).and_then(tools::name_in_head)
            else {
                if last {
                    // Cut off before its name was whole: what there is, as text.
                    call.text = true;
                    let content = std::mem::take(&mut call.held);
                    out.push_str(&self.chunk(
                        json!([self.choice(index, Some(&content), false, None)]),
                        None,
                    ));
                }
                return out;
            };
            call.held.drain(..open.len() + head);
            call.header_sent = true;
            let header = json!({"index": 0, "id": call_id(), "type": "function", "function": {"name": name, "arguments": ""}});
            out.push_str(&self.tool_chunk(index, header));
        }
        let Some(call) = self.calls.get_mut(index) else {
            return out;
        };
        // The call's JSON ends with `}` and the closing marker: never part of the arguments.
        let keep = if last { 0 } else { 1 + close.len() };
        let mut send = call.held.len().saturating_sub(keep);
        while !call.held.is_char_boundary(send) {
            send -= 1;
        }
        let mut fragment: String = call.held.drain(..send).collect();
        if last {
            let tail = format!("}}{close}");
            if let Some(stripped) = fragment.strip_suffix(tail.as_str()) {
                fragment = stripped.to_owned();
            }
        }
        if !fragment.is_empty() {
            let delta = json!({"index": 0, "function": {"arguments": fragment}});
            out.push_str(&self.tool_chunk(index, delta));
        }
        out
    }

    fn tool_chunk(&self, index: usize, call: Value) -> String {
        self.chunk(
            json!([{"index": index, "delta": {"tool_calls": [call]}, "finish_reason": null, "logprobs": null}]),
            None,
        )
    }

    /// The SSE text for one engine event (possibly several chunks), and whether the stream ends.
    fn render(&mut self, event: Event) -> String {
        match event {
            Event::Started { prompt_tokens } => {
                self.prompt_tokens = prompt_tokens;
                if self.reply.shape == Shape::Chat {
                    (0..self.reply.n)
                        .map(|index| {
                            self.chunk(json!([self.choice(index, Some(""), true, None)]), None)
                        })
                        .collect()
                } else {
                    String::new()
                }
            }
            Event::Delta {
                index,
                text,
                logprobs,
            } => {
                if self.reply.tools.is_some() && self.reply.shape == Shape::Chat {
                    return self.tool_delta(index, &text, false);
                }
                let mut choice = self.choice(index, Some(&text), false, None);
                if self.reply.logprobs {
                    choice["logprobs"] = match self.reply.shape {
                        Shape::Chat => chat_logprobs_value(&logprobs),
                        Shape::Text => {
                            let start = self.text_offsets.get(index).copied().unwrap_or(0);
                            text_logprobs_value(&logprobs, start)
                        }
                    };
                }
                if let Some(offset) = self.text_offsets.get_mut(index) {
                    *offset += text.len();
                }
                self.chunk(json!([choice]), None)
            }
            Event::Finished {
                index,
                reason,
                completion_tokens,
                stop_sequence,
            } => {
                self.completion_tokens += completion_tokens;
                self.finished += 1;
                let mut out = String::new();
                let mut reason = reason.as_str();
                if self.reply.tools.is_some() && self.reply.shape == Shape::Chat {
                    out.push_str(&self.tool_delta(index, "", true));
                    if self.calls.get(index).is_some_and(|call| call.header_sent)
                        && reason == "stop"
                    {
                        reason = "tool_calls";
                    }
                }
                let mut last = self.choice(index, None, false, Some(reason));
                last["stop_reason"] = json!(stop_sequence);
                out.push_str(&self.chunk(json!([last]), None));
                if self.finished == self.reply.n {
                    if self.reply.include_usage {
                        let (prompt, completion) = self
                            .exact
                            .unwrap_or((self.prompt_tokens, self.completion_tokens));
                        out.push_str(&self.chunk(json!([]), Some(usage(prompt, completion))));
                    }
                    out.push_str(DONE_EVENT);
                    self.over = true;
                }
                out
            }
            Event::Usage {
                prompt_tokens,
                completion_tokens,
            } => {
                self.exact = Some((prompt_tokens, completion_tokens));
                String::new()
            }
            Event::Failed(message) => {
                self.over = true;
                let error = ApiError::new(ErrorKind::Internal, message).body();
                // The product's contract: one last event with the error and finish_reason "error".
                let choice = self.choice(0, None, false, Some("error"));
                data_event(&json!({"error": error.error, "choices": [choice]}).to_string())
            }
        }
    }
}

/// Streams events as SSE. The body owns the event stream: when the caller disconnects the
/// body is dropped, the stream with it, and the engine frees the sequence's slot.
fn stream(events: EventStream, reply: Reply) -> Response {
    let calls = (0..reply.n).map(|_| CallStream::default()).collect();
    let state = StreamState {
        events,
        calls,
        text_offsets: vec![0; reply.n],
        reply,
        prompt_tokens: 0,
        completion_tokens: 0,
        finished: 0,
        exact: None,
        over: false,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        if state.over {
            return None;
        }
        // The engine closing the stream before every choice finished is a failure too.
        let event = state
            .events
            .recv()
            .await
            .unwrap_or_else(|| Event::Failed("the engine stopped before finishing".into()));
        let text = state.render(event);
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), state))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn embeddings(
    State(models): State<WorkerModels>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    let request = ferry_core::body::parse::<EmbeddingRequest>(&body)?.typed;
    request.validate()?;
    let model = models
        .embedding
        .clone()
        .filter(|model| model.id == request.model)
        .ok_or_else(|| ApiError::unknown_model(&request.model))?;
    if request.dimensions.is_some() {
        return Err(ApiError::invalid(
            "dimensions",
            "this model does not support choosing dimensions",
        )
        .into());
    }
    let inputs: Vec<EmbeddingInput> = match request.input {
        TextOrTokens::Text(text) => vec![EmbeddingInput::Text(text)],
        TextOrTokens::Texts(texts) => texts.into_iter().map(EmbeddingInput::Text).collect(),
        TextOrTokens::Tokens(tokens) => vec![EmbeddingInput::Tokens(tokens)],
        TextOrTokens::TokenArrays(arrays) => {
            arrays.into_iter().map(EmbeddingInput::Tokens).collect()
        }
    };
    let engine = model.engine.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || engine.embed(&inputs))
        .await
        .map_err(|error| ApiError::new(ErrorKind::Internal, error.to_string()))?
        .map_err(|error| match error {
            EmbedError::BadInput(message) => ApiError::invalid("input", message),
            EmbedError::Busy => ApiError::new(
                ErrorKind::NoCapacity,
                "The embeddings engine is busy; retry shortly.",
            )
            .retry_after(1),
            other => ApiError::new(ErrorKind::Internal, other.to_string()),
        })?;
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                EmbeddingVector::Base64(ferry_core::openai::embedding_to_base64(vector))
            } else {
                EmbeddingVector::Float(vector.clone())
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    Ok(
        Json(json!({"object": "list", "data": data, "model": model.id, "usage": usage}))
            .into_response(),
    )
}

async fn list_models(State(models): State<WorkerModels>) -> Json<ModelList> {
    let ids = models
        .chat
        .iter()
        .map(|model| model.id.clone())
        .chain(models.embedding.iter().map(|model| model.id.clone()));
    let data = ids
        .map(|id| ModelObject {
            id,
            object: "model".into(),
            created: 0,
            owned_by: "ferry-worker".into(),
        })
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// The router exists only once the models have loaded, so answering at all means ready.
async fn readyz(State(models): State<WorkerModels>) -> Json<Value> {
    Json(
        json!({"status": "ready", "chat": models.chat.as_ref().map(|model| &model.id), "embedding": models.embedding.as_ref().map(|model| &model.id)}),
    )
}

async fn stats(State(models): State<WorkerModels>) -> Json<Value> {
    Json(json!({
        "chat": models.chat.as_ref().map(|model| json!({"model": model.id, "engine": model.engine.stats()})),
        "embedding": models.embedding.as_ref().map(|model| json!({"model": model.id})),
    }))
}
