//! Anthropic's Messages API (`POST /v1/messages`) as another door to the one call Ferry serves:
//! a Messages request becomes a chat completion request, and the chat completion, whole or
//! streamed, becomes Anthropic's message or its event sequence. So every model answers it, and
//! admission, limits, holds, routing, the cache, metering and billing apply unchanged. Pure
//! translation; the gateway does the I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::openai::ChatCompletionRequest;
use crate::sse::{StreamDialect, named_event};

/// `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagesRequest {
    pub model: String,
    /// The most tokens to generate; required, as Anthropic's API requires it.
    pub max_tokens: u32,
    pub messages: Vec<InputMessage>,
    #[serde(default)]
    pub system: Option<SystemPrompt>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// `format`: a JSON schema the answer follows (structured outputs); `effort` is a hint
    /// these models have no use for.
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputConfig {
    #[serde(default)]
    pub format: Option<OutputFormat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutputFormat {
    JsonSchema {
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        schema: Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputMessage {
    pub role: Role,
    pub content: Content,
}

/// A message's content: a string, or content blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Content {
    Text(String),
    Blocks(Vec<InputBlock>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum InputBlock {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        /// A string or content blocks (described loosely: the blocks hold this one).
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
        content: Option<ToolResultContent>,
        #[serde(default)]
        is_error: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<InputBlock>),
}

/// `system`: a string or text blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SystemPrompt {
    Text(String),
    Blocks(Vec<InputBlock>),
}

/// A client tool (Anthropic's server tools, which have their own `type`, are not served).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tool {
    #[serde(default)]
    pub r#type: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub input_schema: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Metadata {
    /// The caller's own end user, recorded on the call's usage as OpenAI's `user` is.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// The answer: Anthropic's `message` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub id: String,
    /// Always `message`.
    pub r#type: String,
    /// Always `assistant`.
    pub role: String,
    pub content: Vec<OutputBlock>,
    pub model: String,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use` or `refusal`.
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: MessageUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutputBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        input: Value,
    },
}

/// Tokens in and out; Ferry adds `cost` (USD, exact), as on its OpenAI answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub cost: Option<Value>,
}

/// `POST /v1/messages/count_tokens`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCount {
    pub input_tokens: u64,
}

/// Anthropic's error body: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

impl MessagesRequest {
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The chat completion request this asks for, checked by the chat completion's own rules.
    pub fn to_chat(&self) -> Result<Value, ApiError> {
        if self.max_tokens == 0 {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must contain at least one message",
            ));
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            let text = match system {
                SystemPrompt::Text(text) => text.clone(),
                SystemPrompt::Blocks(blocks) => texts_only(blocks, "system")?,
            };
            messages.push(json!({"role": "system", "content": text}));
        }
        for (index, message) in self.messages.iter().enumerate() {
            chat_messages(message, index, &mut messages)?;
        }
        let mut chat = Map::new();
        chat.insert("model".into(), Value::from(self.model.clone()));
        chat.insert("messages".into(), Value::Array(messages));
        chat.insert("max_tokens".into(), Value::from(self.max_tokens));
        if let Some(stops) = &self.stop_sequences {
            chat.insert("stop".into(), json!(stops));
        }
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if let Some(value) = value {
                chat.insert(name.into(), Value::from(value));
            }
        }
        if let Some(top_k) = self.top_k {
            chat.insert("top_k".into(), Value::from(top_k));
        }
        if self.is_stream() {
            chat.insert("stream".into(), Value::Bool(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Some(tools) = &self.tools {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = &self.tool_choice {
            let (choice, parallel) = chat_tool_choice(choice);
            chat.insert("tool_choice".into(), choice);
            if parallel == Some(true) {
                chat.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
        if let Some(OutputFormat::JsonSchema { schema }) = self
            .output_config
            .as_ref()
            .and_then(|config| config.format.as_ref())
        {
            chat.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
            );
        }
        if let Some(user) = self.metadata.as_ref().and_then(|m| m.user_id.as_ref()) {
            chat.insert("user".into(), Value::from(user.clone()));
        }
        let chat = Value::Object(chat);
        let typed: ChatCompletionRequest = serde_json::from_value(chat.clone())
            .map_err(|error| ApiError::invalid("messages", error.to_string()))?;
        typed
            .validate()
            .map_err(|error| match error.param.as_deref() {
                Some("stop") => error.with_param("stop_sequences"),
                _ => error,
            })?;
        Ok(chat)
    }
}

fn texts_only(blocks: &[InputBlock], param: &str) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(blocks.len());
    for block in blocks {
        match block {
            InputBlock::Text { text } => texts.push(text.as_str()),
            _ => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} may hold only text blocks"),
                ));
            }
        }
    }
    Ok(texts.join("\n"))
}

/// One Anthropic message as chat messages: a user's tool results become `tool` messages (ahead
/// of the rest of its content, which answers them), an assistant's tool uses its `tool_calls`.
fn chat_messages(
    message: &InputMessage,
    index: usize,
    out: &mut Vec<Value>,
) -> Result<(), ApiError> {
    let role = match message.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let blocks = match &message.content {
        Content::Text(text) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Content::Blocks(blocks) => blocks,
    };
    let param = format!("messages[{index}].content");
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match (block, message.role) {
            (InputBlock::Text { text }, _) => parts.push(json!({"type": "text", "text": text})),
            (InputBlock::Image { source }, Role::User) => {
                let url = match source {
                    ImageSource::Base64 { media_type, data } => {
                        format!("data:{media_type};base64,{data}")
                    }
                    ImageSource::Url { url } => url.clone(),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            (
                InputBlock::ToolUse {
                    id, name, input, ..
                },
                Role::Assistant,
            ) => calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            (
                InputBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                },
                Role::User,
            ) => {
                let text = match content {
                    None => String::new(),
                    Some(ToolResultContent::Text(text)) => text.clone(),
                    Some(ToolResultContent::Blocks(blocks)) => texts_only(blocks, &param)?,
                };
                // Chat messages have no error flag: the model is told in words.
                let text = if *is_error == Some(true) {
                    format!("Error: {text}")
                } else {
                    text
                };
                out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": text}));
            }
            (block, role) => {
                let kind = match block {
                    InputBlock::Image { .. } => "image",
                    InputBlock::ToolUse { .. } => "tool_use",
                    InputBlock::ToolResult { .. } => "tool_result",
                    InputBlock::Text { .. } => "text",
                };
                return Err(ApiError::invalid(
                    param,
                    format!("a {role:?} message cannot hold a {kind} block").to_lowercase(),
                ));
            }
        }
    }
    let only_text = parts.iter().all(|part| part["type"] == "text");
    let content = if only_text {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        (!texts.is_empty()).then(|| Value::from(texts.join("\n")))
    } else {
        Some(Value::Array(parts))
    };
    match (message.role, content) {
        (Role::Assistant, content) if !calls.is_empty() => out.push(json!({
            "role": "assistant",
            "content": content.unwrap_or(Value::Null),
            "tool_calls": calls,
        })),
        (_, Some(content)) => out.push(json!({"role": role, "content": content})),
        // Only tool results: nothing more to say.
        (_, None)
            if blocks
                .iter()
                .any(|b| matches!(b, InputBlock::ToolResult { .. })) => {}
        (_, None) => out.push(json!({"role": role, "content": ""})),
    }
    Ok(())
}

fn chat_tools(tools: &[Tool]) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if let Some(kind) = tool.r#type.as_deref().filter(|kind| *kind != "custom") {
            return Err(ApiError::invalid(
                format!("tools[{index}].type"),
                format!(
                    "Anthropic's server tool `{kind}` is not served here; define the tool with an input_schema"
                ),
            ));
        }
        let parameters = tool
            .input_schema
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        let mut function = json!({"name": tool.name, "parameters": parameters});
        if let Some(description) = &tool.description {
            function["description"] = Value::from(description.clone());
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// The chat `tool_choice`, and whether parallel tool use was turned off.
fn chat_tool_choice(choice: &ToolChoice) -> (Value, Option<bool>) {
    match choice {
        ToolChoice::Auto {
            disable_parallel_tool_use,
        } => (Value::from("auto"), *disable_parallel_tool_use),
        ToolChoice::Any {
            disable_parallel_tool_use,
        } => (Value::from("required"), *disable_parallel_tool_use),
        ToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        } => (
            json!({"type": "function", "function": {"name": name}}),
            *disable_parallel_tool_use,
        ),
        ToolChoice::None => (Value::from("none"), None),
    }
}

/// Why generation stopped, in Anthropic's words, from a chat choice's `finish_reason` (and
/// `stop_reason`, the matched stop sequence, where the backend says it as vLLM does).
fn stop_reason(
    finish_reason: Option<&str>,
    matched: Option<&str>,
    stops: &[String],
) -> (Option<String>, Option<String>) {
    let reason = match finish_reason {
        None => return (None, None),
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        Some(_) => match matched.filter(|matched| stops.iter().any(|stop| stop == matched)) {
            Some(matched) => return (Some("stop_sequence".into()), Some(matched.to_owned())),
            None => "end_turn",
        },
    };
    (Some(reason.to_owned()), None)
}

/// A backend that called a tool but said only `stop`: agent loops wait for `tool_use`.
fn tool_finish(finish_reason: Option<&str>, called: bool) -> Option<&str> {
    match finish_reason {
        Some("stop") if called => Some("tool_calls"),
        other => other,
    }
}

/// A chat completion's id as a message's.
fn message_id(chat_id: Option<&str>) -> String {
    let id = chat_id.unwrap_or_default();
    let id = id.strip_prefix("chatcmpl-").unwrap_or(id);
    format!("msg_{id}")
}

fn usage(usage: &Value) -> MessageUsage {
    let tokens = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    MessageUsage {
        input_tokens: tokens("prompt_tokens"),
        output_tokens: tokens("completion_tokens"),
        cost: usage.get("cost").filter(|cost| !cost.is_null()).cloned(),
    }
}

/// A whole chat completion as Anthropic's message; `model` is the one the caller named.
pub fn message_from_chat(chat: &Value, model: &str, stops: &[String]) -> Message {
    let choice = &chat["choices"][0];
    let reply = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = reply["content"].as_str().filter(|text| !text.is_empty()) {
        content.push(OutputBlock::Text {
            text: text.to_owned(),
        });
    }
    for call in reply["tool_calls"].as_array().into_iter().flatten() {
        content.push(tool_use(call));
    }
    if content.is_empty() {
        // Clients read `content[0].text`: an empty answer is an empty text block.
        content.push(OutputBlock::Text {
            text: String::new(),
        });
    }
    let called = content
        .iter()
        .any(|block| matches!(block, OutputBlock::ToolUse { .. }));
    let (stop_reason, stop_sequence) = stop_reason(
        tool_finish(choice["finish_reason"].as_str(), called),
        choice["stop_reason"].as_str(),
        stops,
    );
    Message {
        id: message_id(chat["id"].as_str()),
        r#type: "message".into(),
        role: "assistant".into(),
        content,
        model: model.to_owned(),
        stop_reason,
        stop_sequence,
        usage: usage(&chat["usage"]),
    }
}

fn tool_use(call: &Value) -> OutputBlock {
    let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
    OutputBlock::ToolUse {
        id: call["id"].as_str().unwrap_or_default().to_owned(),
        name: call["function"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        // Arguments that are not JSON are passed on as they came, as a string.
        input: serde_json::from_str(arguments).unwrap_or_else(|_| Value::from(arguments)),
    }
}

/// One event of Anthropic's stream: its name and its data.
pub type StreamEvent = (&'static str, Value);

/// Turns a chat completion's chunks, in order, into Anthropic's event sequence: `message_start`,
/// for each content block `content_block_start`, its deltas and `content_block_stop`, then
/// `message_delta` (the stop reason and usage) and `message_stop`.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    stops: Vec<String>,
    started: bool,
    /// The open content block: its index, and the chat tool call it carries (`None`: text).
    open: Option<(u64, Option<u64>)>,
    next_index: u64,
    finish_reason: Option<String>,
    matched_stop: Option<String>,
    usage: Value,
    ended: bool,
    /// A tool_use block was sent.
    called: bool,
}

impl StreamTranslator {
    pub fn new(model: &str, stops: &[String]) -> StreamTranslator {
        StreamTranslator {
            model: model.to_owned(),
            stops: stops.to_vec(),
            started: false,
            open: None,
            next_index: 0,
            finish_reason: None,
            matched_stop: None,
            usage: Value::Null,
            ended: false,
            called: false,
        }
    }

    /// The events one chunk makes.
    pub fn events(&mut self, chunk: &Value) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if self.ended {
            return events;
        }
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            let message = error["message"].as_str().unwrap_or("The stream failed.");
            // Ferry's error types (the OpenAI surface's), back to the statuses they go with.
            let status = match error["type"].as_str() {
                Some("rate_limit_error") => 429,
                Some("timeout_error") => 504,
                Some("service_unavailable_error") => 503,
                Some("insufficient_quota") => 402,
                _ => 500,
            };
            return self.error_events(status, message);
        }
        self.start(chunk, &mut events);
        if let Some(usage) = chunk.get("usage").filter(|usage| !usage.is_null()) {
            self.usage = usage.clone();
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|choices| {
            choices
                .iter()
                .find(|c| c["index"].as_u64().unwrap_or(0) == 0)
        }) else {
            return events;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
            if !matches!(self.open, Some((_, None))) {
                let index = self.open_block(json!({"type": "text", "text": ""}), &mut events);
                self.open = Some((index, None));
            }
            let index = self.open.map_or(0, |(index, _)| index);
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let call_index = call["index"].as_u64().unwrap_or(0);
            let same = matches!(self.open, Some((_, Some(open))) if open == call_index);
            if !same {
                let block = json!({
                    "type": "tool_use",
                    "id": call["id"].as_str().unwrap_or_default(),
                    "name": call["function"]["name"].as_str().unwrap_or_default(),
                    "input": {},
                });
                let index = self.open_block(block, &mut events);
                self.open = Some((index, Some(call_index)));
                self.called = true;
            }
            if let Some(arguments) = call["function"]["arguments"]
                .as_str()
                .filter(|arguments| !arguments.is_empty())
            {
                let index = self.open.map_or(0, |(index, _)| index);
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                ));
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
            self.matched_stop = choice["stop_reason"].as_str().map(str::to_owned);
        }
        events
    }

    /// The events that end a stream whose `[DONE]` arrived.
    pub fn end_events(&mut self) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if self.ended {
            return events;
        }
        self.start(&Value::Null, &mut events);
        self.close_block(&mut events);
        let (stop_reason, stop_sequence) = stop_reason(
            tool_finish(self.finish_reason.as_deref().or(Some("stop")), self.called),
            self.matched_stop.as_deref(),
            &self.stops,
        );
        let usage = usage(&self.usage);
        let mut usage_out =
            json!({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens});
        if let Some(cost) = usage.cost {
            usage_out["cost"] = cost;
        }
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage_out}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        self.ended = true;
        events
    }

    /// The one event a failed stream ends with.
    pub fn error_events(&mut self, status: u16, message: &str) -> Vec<StreamEvent> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        vec![("error", error_body(status, message))]
    }

    fn start(&mut self, chunk: &Value, events: &mut Vec<StreamEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        events.push((
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(chunk["id"].as_str()),
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": self.model,
                "stop_reason": null,
                "stop_sequence": null,
                // Counted at the end (message_delta): the backend says them with the last chunk.
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
    }

    fn open_block(&mut self, block: Value, events: &mut Vec<StreamEvent>) -> u64 {
        self.close_block(events);
        let index = self.next_index;
        self.next_index += 1;
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn close_block(&mut self, events: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }
}

fn render(events: &[StreamEvent]) -> String {
    events
        .iter()
        .map(|(name, data)| named_event(name, &data.to_string()))
        .collect()
}

impl StreamDialect for StreamTranslator {
    fn chunk(&mut self, chunk: &Value) -> String {
        render(&self.events(chunk))
    }

    fn done(&mut self) -> String {
        render(&self.end_events())
    }

    fn broken(&mut self, message: &str) -> String {
        render(&self.error_events(502, message))
    }

    fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> MessagesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_plain_request_becomes_a_chat_request() {
        let chat = request(json!({
            "model": "m", "max_tokens": 64, "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "stop_sequences": ["\n\n"], "temperature": 0.5, "top_k": 5,
            "metadata": {"user_id": "u-1"},
            "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        }))
        .to_chat()
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "max_tokens": 64, "stop": ["\n\n"], "temperature": 0.5, "top_k": 5,
                "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": true}},
                "user": "u-1",
            })
        );
    }

    #[test]
    fn tool_use_and_results_become_tool_calls_and_tool_messages() {
        let chat = request(json!({
            "model": "m", "max_tokens": 64, "stream": true,
            "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ]},
            ],
        }))
        .to_chat()
        .unwrap();
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "description": "Weather"}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "Sunny"},
                {"role": "user", "content": "And tomorrow?"},
            ])
        );
    }

    #[test]
    fn what_cannot_be_served_is_refused_naming_the_field() {
        let refused = |body: Value| request(body).to_chat().unwrap_err();
        let error = refused(
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        let error = refused(json!({"model": "m", "max_tokens": 5, "messages": []}));
        assert_eq!(error.param.as_deref(), Some("messages"));
        let error = refused(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}));
        assert_eq!(error.param.as_deref(), Some("messages[0].content"));
        let error = refused(json!({"model": "m", "max_tokens": 5, "temperature": 3.0,
            "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(error.param.as_deref(), Some("temperature"));
        let error = refused(
            json!({"model": "m", "max_tokens": 5, "stop_sequences": ["a", "b", "c", "d", "e"],
            "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(error.param.as_deref(), Some("stop_sequences"));
        let error = refused(
            json!({"model": "m", "max_tokens": 5, "tools": [{"type": "bash_20250124", "name": "bash"}],
            "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(error.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn a_chat_completion_becomes_a_message() {
        let chat = json!({
            "id": "chatcmpl-abc", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "stop_reason": "END",
                "message": {"role": "assistant", "content": "Hello", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "cost": "0.000001"},
        });
        let message = message_from_chat(&chat, "m", &["END".into()]);
        // A call made: `tool_use`, whatever else the backend said.
        assert_eq!(
            serde_json::to_value(message).unwrap(),
            json!({
                "id": "msg_abc", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}],
                "model": "m", "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 3, "cost": "0.000001"},
            })
        );
        let stopped = json!({"id": "chatcmpl-abc", "choices": [{"index": 0, "finish_reason": "stop",
            "stop_reason": "END", "message": {"role": "assistant", "content": "Hello"}}]});
        let message = message_from_chat(&stopped, "m", &["END".into()]);
        assert_eq!(
            (
                message.stop_reason.as_deref(),
                message.stop_sequence.as_deref()
            ),
            (Some("stop_sequence"), Some("END"))
        );
        let cut = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "length", "message": {"content": ""}}]});
        let message = message_from_chat(&cut, "m", &[]);
        assert_eq!(message.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(
            message.content,
            vec![OutputBlock::Text {
                text: String::new()
            }]
        );
    }

    fn names(events: &[StreamEvent]) -> Vec<&'static str> {
        events.iter().map(|(name, _)| *name).collect()
    }

    #[test]
    fn chunks_become_anthropic_events_in_order() {
        let mut stream = StreamTranslator::new("m", &[]);
        let mut events = Vec::new();
        for chunk in [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}),
        ] {
            events.extend(stream.events(&chunk));
        }
        events.extend(stream.end_events());
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_1");
        assert_eq!(events[5].1["content_block"]["name"], "f");
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(events[7].1["delta"]["partial_json"], "1}");
        assert_eq!(
            events[9].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 5, "output_tokens": 9}})
        );
        assert!(stream.ended());
        assert!(stream.end_events().is_empty());
    }

    #[test]
    fn an_error_chunk_ends_the_stream_with_an_error_event() {
        let mut stream = StreamTranslator::new("m", &[]);
        stream.events(&json!({"id": "1", "choices": [{"index": 0, "delta": {"content": "a"}}]}));
        let events = stream.events(
            &json!({"id": "1", "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
            "error": {"message": "backend went away", "type": "upstream_error"}}),
        );
        assert_eq!(
            events,
            vec![(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": "backend went away"}})
            )]
        );
        assert!(stream.end_events().is_empty());
    }

    #[test]
    fn statuses_map_to_anthropic_error_types() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
        ] {
            assert_eq!(error_type(status), kind, "{status}");
        }
    }
}
