//! OpenAI wire types for chat completions, completions, embeddings and models.
//!
//! Requests are parsed into these types to validate them; the gateway forwards the caller's own
//! JSON (with `model` rewritten), so fields these types do not know still reach the backend.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::money::Money;

/// `stop`: one sequence or up to four.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn sequences(&self) -> Vec<String> {
        match self {
            Stop::One(sequence) => vec![sequence.clone()],
            Stop::Many(sequences) => sequences.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// Message content: plain text, or an array of typed parts (`{"type":"text","text":…}`, images…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContentPart {
    pub r#type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl MessageContent {
    /// The text of the message, parts joined; non-text parts are skipped.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|part| part.text.as_deref())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    pub role: ChatRole,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    pub r#type: String,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub tools: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub tool_choice: Option<Value>,
}

/// A prompt or embedding input: text, texts, tokens, or token arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TextOrTokens {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

impl TextOrTokens {
    /// How many separate inputs this holds.
    pub fn count(&self) -> usize {
        match self {
            TextOrTokens::Text(_) | TextOrTokens::Tokens(_) => 1,
            TextOrTokens::Texts(texts) => texts.len(),
            TextOrTokens::TokenArrays(arrays) => arrays.len(),
        }
    }

    fn has_empty_item(&self) -> bool {
        match self {
            TextOrTokens::Text(text) => text.is_empty(),
            TextOrTokens::Tokens(tokens) => tokens.is_empty(),
            TextOrTokens::Texts(texts) => texts.iter().any(String::is_empty),
            TextOrTokens::TokenArrays(arrays) => arrays.iter().any(Vec::is_empty),
        }
    }
}

/// `POST /v1/completions` (legacy text completions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: TextOrTokens,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: TextOrTokens,
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

/// The sampling knobs shared by chat and text completions, checked one way.
struct Sampling<'a> {
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<u32>,
    max_tokens: Option<(&'static str, u32)>,
    stop: Option<&'a Stop>,
    stream: Option<bool>,
    stream_options: Option<&'a StreamOptions>,
}

/// Upper bound on `n`: more choices than this is a mistake or an abuse, never a need.
pub const MAX_CHOICES: u32 = 16;
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence, in bytes: matching cost grows with it on every generated token.
pub const MAX_STOP_BYTES: usize = 256;

impl Sampling<'_> {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(temperature) = self.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        if let Some(top_p) = self.top_p
            && !(top_p > 0.0 && top_p <= 1.0)
        {
            return Err(ApiError::invalid(
                "top_p",
                "top_p must be greater than 0 and at most 1",
            ));
        }
        if let Some(n) = self.n
            && !(1..=MAX_CHOICES).contains(&n)
        {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {MAX_CHOICES}"),
            ));
        }
        if let Some((param, 0)) = self.max_tokens {
            return Err(ApiError::invalid(
                param,
                format!("{param} must be at least 1"),
            ));
        }
        if let Some(stop) = self.stop {
            let sequences = stop.sequences();
            if sequences.len() > MAX_STOP_SEQUENCES {
                return Err(ApiError::invalid(
                    "stop",
                    format!("stop takes at most {MAX_STOP_SEQUENCES} sequences"),
                ));
            }
            if sequences.iter().any(String::is_empty) {
                return Err(ApiError::invalid(
                    "stop",
                    "stop sequences must not be empty",
                ));
            }
            if sequences
                .iter()
                .any(|sequence| sequence.len() > MAX_STOP_BYTES)
            {
                return Err(ApiError::invalid(
                    "stop",
                    format!("stop sequences are at most {MAX_STOP_BYTES} bytes"),
                ));
            }
        }
        if self.stream_options.is_some() && self.stream != Some(true) {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        Ok(())
    }
}

fn validate_model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "model must not be empty"));
    }
    Ok(())
}

impl ChatCompletionRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_model(&self.model)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must contain at least one message",
            ));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(value), _) => Some(("max_completion_tokens", value)),
            (None, Some(value)) => Some(("max_tokens", value)),
            (None, None) => None,
        };
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            max_tokens,
            stop: self.stop.as_ref(),
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
        }
        .validate()?;
        if let Some(format) = &self.response_format
            && !["text", "json_object", "json_schema"].contains(&format.r#type.as_str())
        {
            return Err(ApiError::invalid(
                "response_format.type",
                "response_format.type must be text, json_object or json_schema",
            ));
        }
        Ok(())
    }

    /// The completion budget the caller set, whichever field they used.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Content parts that are not text (images, audio): their tokens are not bounded by their
    /// bytes.
    pub fn media_parts(&self) -> u64 {
        self.messages
            .iter()
            .filter_map(|message| match &message.content {
                Some(MessageContent::Parts(parts)) => Some(parts),
                _ => None,
            })
            .flatten()
            .filter(|part| part.r#type != "text")
            .count() as u64
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }
}

impl CompletionRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_model(&self.model)?;
        if self.prompt.count() == 0 {
            return Err(ApiError::invalid("prompt", "prompt must not be empty"));
        }
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            max_tokens: self.max_tokens.map(|value| ("max_tokens", value)),
            stop: self.stop.as_ref(),
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
        }
        .validate()
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }
}

/// Most inputs one embeddings call may carry (OpenAI's own limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

impl EmbeddingRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_model(&self.model)?;
        let count = self.input.count();
        if count == 0 || self.input.has_empty_item() {
            return Err(ApiError::invalid("input", "input must not be empty"));
        }
        if count > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!("input holds at most {MAX_EMBEDDING_INPUTS} items"),
            ));
        }
        if self.dimensions == Some(0) {
            return Err(ApiError::invalid(
                "dimensions",
                "dimensions must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

/// `usage` in responses and in the last streamed chunk; Ferry adds `cost` (USD, exact).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Money>,
}

impl Usage {
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .map_or(0, |details| details.cached_tokens)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssistantMessage {
    pub role: ChatRole,
    pub content: Option<String>,
    /// Always present (OpenAI's description requires it); null unless the model refused.
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub tool_calls: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: Option<String>,
    /// Always present; null unless the backend gives log probabilities.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub logprobs: Option<Value>,
}

/// Adds to an answer (`chat.completion`, `text_completion`) or a streamed chunk, as a backend
/// sent it, the fields OpenAI's description requires that may be null and that some
/// OpenAI-compatible servers leave out: a choice's `logprobs`, a chat message's `content` and
/// `refusal`, a streamed choice's `finish_reason` (and `delta`). Each is added as null (an
/// empty delta); nothing the backend sent is changed or removed, since clients ignore fields
/// they do not know.
pub fn fill_required_fields(answer: &mut serde_json::Map<String, Value>) {
    let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices.iter_mut().filter_map(Value::as_object_mut) {
        // A choice with neither a message nor text is a streamed one, even without its delta
        // (an empty last chunk: `{"index": 0, "finish_reason": "stop"}`).
        let streamed = choice.contains_key("delta")
            || !(choice.contains_key("message") || choice.contains_key("text"));
        if streamed {
            choice
                .entry("delta")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            choice.entry("finish_reason").or_insert(Value::Null);
            continue;
        }
        choice.entry("logprobs").or_insert(Value::Null);
        if let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) {
            message.entry("content").or_insert(Value::Null);
            message.entry("refusal").or_insert(Value::Null);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ChatRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    pub finish_reason: Option<String>,
}

/// One `data:` event of a streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<String>,
    /// Always present; null unless the backend gives log probabilities.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
}

/// An embedding as floats, or as base64 of little-endian f32s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Embedding {
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Option<Usage>,
}

/// Base64 of the little-endian bytes of `values`, as `encoding_format: base64` sends them.
pub fn embedding_to_base64(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn required_nullable_fields_a_backend_left_out_are_added_as_null() {
        let filled = |answer: Value| {
            let mut answer = answer.as_object().cloned().unwrap_or_default();
            fill_required_fields(&mut answer);
            Value::Object(answer)
        };
        let chat = json!({"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "tool_calls": []}, "finish_reason": "tool_calls",
             "logprobs": {"content": [], "refusal": null}},
        ], "usage": {"cost": "0.1"}});
        assert_eq!(
            filled(chat),
            json!({"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                 "finish_reason": "stop", "logprobs": null},
                {"index": 1, "message": {"role": "assistant", "tool_calls": [], "content": null, "refusal": null},
                 "finish_reason": "tool_calls", "logprobs": {"content": [], "refusal": null}},
            ], "usage": {"cost": "0.1"}})
        );
        let text = json!({"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]});
        assert_eq!(
            filled(text),
            json!({"choices": [{"index": 0, "text": "hi", "finish_reason": "length", "logprobs": null}]})
        );
        let chunks = json!({"choices": [{"index": 0, "delta": {"content": "h"}}, {"index": 1, "finish_reason": "stop"}]});
        assert_eq!(
            filled(chunks),
            json!({"choices": [
                {"index": 0, "delta": {"content": "h"}, "finish_reason": null},
                {"index": 1, "finish_reason": "stop", "delta": {}},
            ]})
        );
        let embeddings = json!({"object": "list", "data": [{"embedding": [0.5]}]});
        assert_eq!(filled(embeddings.clone()), embeddings);
    }

    use super::*;
    use serde_json::json;

    fn chat(extra: Value) -> Result<(), ApiError> {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let request: ChatCompletionRequest = serde_json::from_value(body)
            .map_err(|error| ApiError::invalid("body", error.to_string()))?;
        request.validate()
    }

    #[test]
    fn chat_validation_names_the_bad_param() {
        let cases: &[(Value, Option<&str>)] = &[
            (json!({}), None),
            (
                json!({"temperature": 0, "top_p": 1, "n": 2, "max_tokens": 5, "seed": 7}),
                None,
            ),
            (
                json!({"stream": true, "stream_options": {"include_usage": true}}),
                None,
            ),
            (json!({"stop": ["a", "b"]}), None),
            (json!({"response_format": {"type": "json_object"}}), None),
            (json!({"messages": []}), Some("messages")),
            (json!({"model": " "}), Some("model")),
            (json!({"temperature": 2.5}), Some("temperature")),
            (json!({"temperature": -0.1}), Some("temperature")),
            (json!({"top_p": 0}), Some("top_p")),
            (json!({"n": 0}), Some("n")),
            (json!({"n": 99}), Some("n")),
            (json!({"max_tokens": 0}), Some("max_tokens")),
            (
                json!({"max_completion_tokens": 0, "max_tokens": 4}),
                Some("max_completion_tokens"),
            ),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), Some("stop")),
            (json!({"stop": ""}), Some("stop")),
            (json!({"stop": "x".repeat(257)}), Some("stop")),
            (
                json!({"stream_options": {"include_usage": true}}),
                Some("stream_options"),
            ),
            (
                json!({"response_format": {"type": "yaml"}}),
                Some("response_format.type"),
            ),
        ];
        for (extra, expected_param) in cases {
            let result = chat(extra.clone());
            assert_eq!(
                result.err().and_then(|error| error.param).as_deref(),
                *expected_param,
                "{extra}"
            );
        }
    }

    #[test]
    fn content_can_be_text_or_parts() {
        let request: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c"}]}
            ]
        }))
        .unwrap();
        let texts: Vec<String> = request
            .messages
            .iter()
            .map(|message| {
                message
                    .content
                    .as_ref()
                    .map(MessageContent::text)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(texts, ["be brief", "ab", ""]);
    }

    #[test]
    fn inputs_come_in_four_shapes() {
        let cases = [
            (json!("one"), 1, true),
            (json!(["a", "b"]), 2, true),
            (json!([1, 2, 3]), 1, true),
            (json!([[1], [2, 3]]), 2, true),
            (json!(""), 1, false),
            (json!([]), 0, false),
            (json!(["a", ""]), 2, false),
        ];
        for (input, count, valid) in cases {
            let request: EmbeddingRequest =
                serde_json::from_value(json!({"model": "e", "input": input})).unwrap();
            assert_eq!(request.input.count(), count, "{input}");
            assert_eq!(request.validate().is_ok(), valid, "{input}");
        }
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        assert_eq!(embedding_to_base64(&[1.0]), "AACAPw==");
    }

    #[test]
    fn usage_reads_cached_tokens_and_omits_absent_cost() {
        let usage: Usage = serde_json::from_value(json!({
            "prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 4}
        }))
        .unwrap();
        assert_eq!(usage.cached_tokens(), 4);
        assert!(serde_json::to_value(&usage).unwrap().get("cost").is_none());
    }
}
