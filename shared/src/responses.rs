//! OpenAI's Responses API (`POST /v1/responses`), stateless, as another door to the chat call:
//! a request becomes a chat completion request, and the chat completion, whole or streamed,
//! becomes a `response` object or its `response.*` events. Nothing is stored, so
//! `previous_response_id` and `store: true` are refused. Pure translation; the gateway does the
//! I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::openai::ChatCompletionRequest;
use crate::sse::{StreamDialect, named_event};

/// `POST /v1/responses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or input items: messages (`role`, `content` as a string or
    /// `input_text`/`input_image`/`output_text` parts), `function_call` and
    /// `function_call_output`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: Value,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Only `false` (or absent): responses are not stored.
    #[serde(default)]
    pub store: Option<bool>,
    /// Refused: responses are not stored.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Function tools: `{"type": "function", "name", "description", "parameters", "strict"}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "name"}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub text: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub user: Option<String>,
}

impl ResponsesRequest {
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The chat completion request this asks for, checked by the chat completion's own rules.
    pub fn to_chat(&self) -> Result<Value, ApiError> {
        if let Some(id) = &self.previous_response_id {
            return Err(ApiError::invalid(
                "previous_response_id",
                format!(
                    "Responses are not stored here, so `{}` cannot be continued: send the whole conversation as `input`.",
                    crate::error::echoed(id)
                ),
            ));
        }
        if self.store == Some(true) {
            return Err(ApiError::invalid(
                "store",
                "Responses are not stored here: send `store: false` (or leave it out).",
            ));
        }
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        match &self.input {
            Value::String(text) => messages.push(json!({"role": "user", "content": text})),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    chat_message(item, &format!("input[{index}]"), &mut messages)?;
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "input",
                    "input must be a string or an array of input items",
                ));
            }
        }
        if messages.is_empty() {
            return Err(ApiError::invalid("input", "input must not be empty"));
        }
        let mut chat = Map::new();
        chat.insert("model".into(), Value::from(self.model.clone()));
        chat.insert("messages".into(), Value::Array(messages));
        if let Some(limit) = self.max_output_tokens {
            chat.insert("max_tokens".into(), Value::from(limit));
        }
        for (name, value) in [("temperature", self.temperature), ("top_p", self.top_p)] {
            if let Some(value) = value {
                chat.insert(name.into(), Value::from(value));
            }
        }
        if self.is_stream() {
            chat.insert("stream".into(), Value::Bool(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Some(tools) = &self.tools {
            chat.insert("tools".into(), chat_tools(tools)?);
        }
        if let Some(choice) = &self.tool_choice {
            chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
        if let Some(parallel) = self.parallel_tool_calls {
            chat.insert("parallel_tool_calls".into(), Value::Bool(parallel));
        }
        if let Some(format) = self.text.as_ref().and_then(|text| text.get("format"))
            && let Some(format) = chat_response_format(format)?
        {
            chat.insert("response_format".into(), format);
        }
        if let Some(user) = &self.user {
            chat.insert("user".into(), Value::from(user.clone()));
        }
        // Carried to the call's usage (`call::Attribution`), as a chat call's metadata is.
        if let Some(metadata) = self.metadata.as_ref().filter(|m| !m.is_empty()) {
            chat.insert("metadata".into(), Value::Object(metadata.clone()));
        }
        let chat = Value::Object(chat);
        let typed: ChatCompletionRequest = serde_json::from_value(chat.clone())
            .map_err(|error| ApiError::invalid("input", error.to_string()))?;
        typed
            .validate()
            .map_err(|error| match error.param.as_deref() {
                Some("max_tokens") => error.with_param("max_output_tokens"),
                _ => error,
            })?;
        Ok(chat)
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// One input item as a chat message.
fn chat_message(item: &Value, param: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(role @ ("user" | "assistant" | "system" | "developer")) => role,
                _ => {
                    return Err(invalid(
                        &format!("{param}.role"),
                        "role must be user, assistant, system or developer",
                    ));
                }
            };
            let content = match item.get("content") {
                Some(Value::String(text)) => Value::from(text.clone()),
                Some(Value::Array(parts)) => chat_content(parts, &format!("{param}.content"))?,
                _ => {
                    return Err(invalid(
                        &format!("{param}.content"),
                        "content must be a string or an array of content parts",
                    ));
                }
            };
            out.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let field = |name: &str| {
                item.get(name).and_then(Value::as_str).ok_or_else(|| {
                    invalid(&format!("{param}.{name}"), format!("{name} is required"))
                })
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            // Consecutive calls are one assistant turn.
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("{param}.call_id"), "call_id is required"))?;
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => {
                    return Err(invalid(&format!("{param}.output"), "output is required"));
                }
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // What this door does not keep: reasoning items and the like carry nothing to send.
        "reasoning" => {}
        other => {
            return Err(invalid(
                &format!("{param}.type"),
                format!(
                    "input items of type `{}` are not served here",
                    crate::error::echoed(other)
                ),
            ));
        }
    }
    Ok(())
}

fn chat_content(parts: &[Value], param: &str) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                out.push(json!({"type": "text", "text": text}));
            }
            Some("refusal") => {
                let text = part
                    .get("refusal")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
                Some(url) => out.push(json!({"type": "image_url", "image_url": {"url": url}})),
                None => {
                    return Err(invalid(
                        &format!("{param}[{index}].image_url"),
                        "an input_image needs an image_url (file ids are not served here)",
                    ));
                }
            },
            _ => {
                return Err(invalid(
                    &format!("{param}[{index}].type"),
                    "content parts must be input_text, output_text or input_image",
                ));
            }
        }
    }
    // Text alone as a string: what every backend reads.
    if out.iter().all(|part| part["type"] == "text") {
        let texts: Vec<&str> = out.iter().filter_map(|p| p["text"].as_str()).collect();
        return Ok(Value::from(texts.join("\n")));
    }
    Ok(Value::Array(out))
}

fn chat_tools(tools: &[Value]) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(
                &format!("tools[{index}].type"),
                "only function tools are served here",
            ));
        }
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Err(invalid(&format!("tools[{index}].name"), "name is required"));
        };
        let mut function = Map::new();
        function.insert("name".into(), Value::from(name));
        for field in ["description", "parameters", "strict"] {
            if let Some(value) = tool.get(field).filter(|value| !value.is_null()) {
                function.insert(field.into(), value.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(mode) if ["auto", "none", "required"].contains(&mode.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(object) if object.get("type") == Some(&json!("function")) => {
            match object.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(invalid("tool_choice.name", "name is required")),
            }
        }
        _ => Err(invalid(
            "tool_choice",
            "tool_choice must be auto, none, required or a function",
        )),
    }
}

fn chat_response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            let name = format
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("output");
            schema.insert("name".into(), Value::from(name));
            for field in ["schema", "strict", "description"] {
                if let Some(value) = format.get(field).filter(|value| !value.is_null()) {
                    schema.insert(field.into(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid(
            "text.format.type",
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

/// What the answer echoes of its request, and its identity.
#[derive(Debug, Clone)]
pub struct ResponseContext {
    model: String,
    created_at: u64,
    instructions: Option<String>,
    max_output_tokens: Option<u32>,
    temperature: f64,
    top_p: f64,
    tools: Vec<Value>,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    metadata: Map<String, Value>,
}

impl ResponseContext {
    /// `created_at`: seconds since the epoch.
    pub fn new(request: &ResponsesRequest, created_at: u64) -> ResponseContext {
        ResponseContext {
            model: request.model.clone(),
            created_at,
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            temperature: request.temperature.unwrap_or(1.0),
            top_p: request.top_p.unwrap_or(1.0),
            tools: request.tools.clone().unwrap_or_default(),
            tool_choice: request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            text: request
                .text
                .clone()
                .filter(|text| text.get("format").is_some())
                .unwrap_or_else(|| json!({"format": {"type": "text"}})),
            metadata: request.metadata.clone().unwrap_or_default(),
        }
    }

    /// The `response` object, as it stands.
    fn response(
        &self,
        id: &str,
        state: &Outcome,
        output: &[Value],
        usage: Option<&Value>,
    ) -> Value {
        let (status, incomplete) = match state {
            Outcome::InProgress => ("in_progress", Value::Null),
            Outcome::Completed => ("completed", Value::Null),
            Outcome::Incomplete(reason) => ("incomplete", json!({"reason": reason})),
            Outcome::Failed(_) => ("failed", Value::Null),
        };
        let error = match state {
            Outcome::Failed(message) => json!({"code": "server_error", "message": message}),
            _ => Value::Null,
        };
        let mut response = json!({
            "id": id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": null,
            "store": false,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "metadata": self.metadata,
        });
        if let Some(usage) = usage {
            response["usage"] = response_usage(usage);
        }
        response
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    InProgress,
    Completed,
    Incomplete(&'static str),
    Failed(String),
}

impl Outcome {
    /// The status of the output item the answer ended in.
    fn item_status(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::InProgress => "in_progress",
            Outcome::Incomplete(_) | Outcome::Failed(_) => "incomplete",
        }
    }
}

fn outcome(finish_reason: Option<&str>) -> Outcome {
    match finish_reason {
        Some("length") => Outcome::Incomplete("max_output_tokens"),
        Some("content_filter") => Outcome::Incomplete("content_filter"),
        _ => Outcome::Completed,
    }
}

fn response_usage(usage: &Value) -> Value {
    let tokens = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (tokens("prompt_tokens"), tokens("completion_tokens"));
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    let mut out = json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    });
    if let Some(cost) = usage.get("cost").filter(|cost| !cost.is_null()) {
        out["cost"] = cost.clone();
    }
    out
}

fn suffix(chat_id: Option<&str>) -> String {
    let id = chat_id.unwrap_or_default();
    id.strip_prefix("chatcmpl-").unwrap_or(id).to_owned()
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

/// A whole chat completion as a `response` object.
pub fn response_from_chat(chat: &Value, context: &ResponseContext) -> Value {
    let suffix = suffix(chat["id"].as_str());
    let choice = &chat["choices"][0];
    let reply = &choice["message"];
    let mut output = Vec::new();
    let text = reply["content"].as_str().unwrap_or_default();
    let calls = reply["tool_calls"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let mut content = Vec::new();
    if let Some(refusal) = reply["refusal"].as_str() {
        content.push(json!({"type": "refusal", "refusal": refusal}));
    }
    if !text.is_empty() || (calls.is_empty() && content.is_empty()) {
        content.push(text_part(text));
    }
    let outcome = outcome(choice["finish_reason"].as_str());
    let status = outcome.item_status();
    if !content.is_empty() && (!text.is_empty() || calls.is_empty()) {
        output.push(message_item(&format!("msg_{suffix}"), status, content));
    }
    for call in calls {
        output.push(call_item(
            call["id"].as_str().unwrap_or_default(),
            call["function"]["name"].as_str().unwrap_or_default(),
            call["function"]["arguments"].as_str().unwrap_or("{}"),
            status,
        ));
    }
    let mut response = context.response(
        &format!("resp_{suffix}"),
        &outcome,
        &output,
        Some(&chat["usage"]),
    );
    if outcome == Outcome::Completed {
        response["completed_at"] = Value::from(context.created_at);
    }
    response
}

/// The item being streamed.
#[derive(Debug)]
enum Open {
    Text {
        id: String,
        text: String,
    },
    Call {
        chat_index: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns a chat completion's chunks, in order, into the Responses API's events:
/// `response.created`, `response.in_progress`, per output item `response.output_item.added`,
/// its parts and deltas and `response.output_item.done`, then `response.completed` (or
/// `response.incomplete`, or `response.failed`), each with its `sequence_number`.
#[derive(Debug)]
pub struct StreamTranslator {
    context: ResponseContext,
    id: Option<String>,
    suffix: String,
    sequence: u64,
    open: Option<Open>,
    output: Vec<Value>,
    finish_reason: Option<String>,
    usage: Value,
    ended: bool,
}

impl StreamTranslator {
    pub fn new(context: ResponseContext) -> StreamTranslator {
        StreamTranslator {
            context,
            id: None,
            suffix: String::new(),
            sequence: 0,
            open: None,
            output: Vec::new(),
            finish_reason: None,
            usage: Value::Null,
            ended: false,
        }
    }

    fn emit(&mut self, out: &mut String, name: &str, mut data: Value) {
        data["type"] = Value::from(name);
        data["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        out.push_str(&named_event(name, &data.to_string()));
    }

    fn start(&mut self, chunk: &Value, out: &mut String) {
        if self.id.is_some() {
            return;
        }
        self.suffix = suffix(chunk["id"].as_str());
        let id = format!("resp_{}", self.suffix);
        let response = self.context.response(&id, &Outcome::InProgress, &[], None);
        self.id = Some(id);
        self.emit(out, "response.created", json!({"response": response}));
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    fn open_text(&mut self, out: &mut String) {
        if matches!(self.open, Some(Open::Text { .. })) {
            return;
        }
        self.close(out, "completed");
        // One message item an answer: a second text after a call is its own item.
        let id = if self.output.iter().any(|item| item["type"] == "message") {
            format!("msg_{}_{}", self.suffix, self.output.len())
        } else {
            format!("msg_{}", self.suffix)
        };
        let index = self.output_index();
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": message_item(&id, "in_progress", vec![])}),
        );
        self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part("")}));
        self.open = Some(Open::Text {
            id,
            text: String::new(),
        });
    }

    /// Ends the open item: `completed` while more may follow, else as the answer ended.
    fn close(&mut self, out: &mut String, status: &str) {
        let index = self.output_index();
        match self.open.take() {
            None => {}
            Some(Open::Text { id, text }) => {
                self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part(&text)}));
                let item = message_item(&id, status, vec![text_part(&text)]);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
            Some(Open::Call {
                call_id,
                name,
                arguments,
                ..
            }) => {
                let item_id = format!("fc_{call_id}");
                self.emit(out, "response.function_call_arguments.done", json!({"item_id": item_id, "output_index": index, "name": name, "arguments": arguments}));
                let item = call_item(&call_id, &name, &arguments, status);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
        }
    }

    fn finish(&mut self, out: &mut String, outcome: Outcome) {
        self.close(out, outcome.item_status());
        let id = self.id.clone().unwrap_or_default();
        let usage = (!self.usage.is_null()).then_some(&self.usage);
        let mut response = self.context.response(&id, &outcome, &self.output, usage);
        let name = match outcome {
            Outcome::Completed => {
                response["completed_at"] = Value::from(self.context.created_at);
                "response.completed"
            }
            Outcome::Incomplete(_) => "response.incomplete",
            Outcome::Failed(_) | Outcome::InProgress => "response.failed",
        };
        self.emit(out, name, json!({"response": response}));
        self.ended = true;
    }
}

impl StreamDialect for StreamTranslator {
    fn chunk(&mut self, chunk: &Value) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.start(chunk, &mut out);
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            let message = error["message"].as_str().unwrap_or("The stream failed.");
            self.finish(&mut out, Outcome::Failed(message.to_owned()));
            return out;
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| !usage.is_null()) {
            self.usage = usage.clone();
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|choices| {
            choices
                .iter()
                .find(|c| c["index"].as_u64().unwrap_or(0) == 0)
        }) else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
            self.open_text(&mut out);
            let index = self.output_index();
            if let Some(Open::Text { id, text: all }) = &mut self.open {
                all.push_str(text);
                let id = id.clone();
                self.emit(&mut out, "response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}));
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let chat_index = call["index"].as_u64().unwrap_or(0);
            let same = matches!(&self.open, Some(Open::Call { chat_index: open, .. }) if *open == chat_index);
            if !same {
                self.close(&mut out, "completed");
                let call_id = call["id"].as_str().unwrap_or_default().to_owned();
                let name = call["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let index = self.output_index();
                self.emit(&mut out, "response.output_item.added", json!({"output_index": index, "item": call_item(&call_id, &name, "", "in_progress")}));
                self.open = Some(Open::Call {
                    chat_index,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            if let Some(piece) = call["function"]["arguments"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                let index = self.output_index();
                if let Some(Open::Call {
                    call_id, arguments, ..
                }) = &mut self.open
                {
                    arguments.push_str(piece);
                    let item_id = format!("fc_{call_id}");
                    self.emit(
                        &mut out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": piece}),
                    );
                }
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        out
    }

    fn done(&mut self) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.start(&Value::Null, &mut out);
        if self.output.is_empty() && self.open.is_none() {
            // An empty answer is still a message, as the whole answer's is.
            self.open_text(&mut out);
        }
        let outcome = outcome(self.finish_reason.as_deref());
        self.finish(&mut out, outcome);
        out
    }

    fn broken(&mut self, message: &str) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.start(&Value::Null, &mut out);
        self.finish(&mut out, Outcome::Failed(message.to_owned()));
        out
    }

    fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_string_input_with_instructions_becomes_a_chat_request() {
        let chat = request(json!({
            "model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 20,
            "temperature": 0.2, "store": false, "user": "u",
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}},
        }))
        .to_chat()
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "max_tokens": 20, "temperature": 0.2,
                "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
                "user": "u",
            })
        );
    }

    #[test]
    fn items_with_function_calls_and_outputs_become_chat_messages() {
        let chat = request(json!({
            "model": "m", "stream": true,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            ],
        }))
        .to_chat()
        .unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
                {"role": "assistant", "content": "Sunny."},
            ])
        );
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn what_is_not_served_is_refused_naming_the_field() {
        let param = |body: Value| request(body).to_chat().unwrap_err().param;
        assert_eq!(
            param(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})).as_deref(),
            Some("previous_response_id")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "store": true})).as_deref(),
            Some("store")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}))
                .as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            param(json!({"model": "m", "input": [{"type": "file_search_call"}]})).as_deref(),
            Some("input[0].type")
        );
        assert_eq!(
            param(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]})).as_deref(),
            Some("input[0].role")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "max_output_tokens": 0})).as_deref(),
            Some("max_output_tokens")
        );
        assert_eq!(
            param(json!({"model": "m", "input": []})).as_deref(),
            Some("input")
        );
    }

    fn context() -> ResponseContext {
        ResponseContext::new(&request(json!({"model": "m", "input": "x"})), 1_700_000_000)
    }

    #[test]
    fn a_chat_completion_becomes_a_response() {
        let chat = json!({
            "id": "chatcmpl-7", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Paris", "refusal": null}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1, "cost": "0.01"},
        });
        let response = response_from_chat(&chat, &context());
        assert_eq!(response["id"], "resp_7");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["completed_at"], 1_700_000_000);
        assert_eq!(
            response["output"],
            json!([{"type": "message", "id": "msg_7", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Paris", "annotations": [], "logprobs": []}]}])
        );
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": 1,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5, "cost": "0.01"})
        );
        let called = json!({"id": "chatcmpl-8", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]});
        let response = response_from_chat(&called, &context());
        assert_eq!(
            response["output"],
            json!([{"type": "function_call", "id": "fc_call_1", "call_id": "call_1", "name": "f", "arguments": "{}", "status": "completed"}])
        );
        let cut = json!({"id": "chatcmpl-9", "choices": [{"index": 0, "finish_reason": "length", "message": {"content": "Par"}}]});
        let response = response_from_chat(&cut, &context());
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
    }

    fn events(out: &str) -> Vec<Value> {
        SseParser::new()
            .feed(out.as_bytes())
            .into_iter()
            .map(|event| {
                let data: Value = serde_json::from_str(&event.data).unwrap();
                assert_eq!(event.event.as_deref(), data["type"].as_str());
                data
            })
            .collect()
    }

    #[test]
    fn chunks_become_response_events_in_order() {
        let mut stream = StreamTranslator::new(context());
        let mut out = String::new();
        for chunk in [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}),
        ] {
            out.push_str(&stream.chunk(&chunk));
        }
        out.push_str(&stream.done());
        let events = events(&out);
        let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..15).collect::<Vec<_>>());
        assert_eq!(events[6]["text"], "Hello");
        assert_eq!(events[12]["arguments"], "{\"a\":1}");
        let response = &events[14]["response"];
        assert_eq!(response["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(response["output"][1]["call_id"], "c1");
        assert_eq!(response["usage"]["total_tokens"], 14);
        assert!(stream.ended() && stream.done().is_empty());
    }

    #[test]
    fn a_failed_stream_ends_with_response_failed() {
        let mut stream = StreamTranslator::new(context());
        let mut out =
            stream.chunk(&json!({"id": "1", "choices": [{"index": 0, "delta": {"content": "a"}}]}));
        out.push_str(
            &stream.chunk(&json!({"id": "1", "choices": [], "error": {"message": "gone"}})),
        );
        let events = events(&out);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["message"], "gone");
        assert!(stream.ended());
    }
}
