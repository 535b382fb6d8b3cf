//! The response cache's rules: which calls may be answered from it, under which key, for how
//! long, which answers may be kept, and how a kept answer is replayed to a caller who streams
//! (or assembled from a stream for one who does not). No I/O: the gateway's levels and the
//! edge hold the entries.
//!
//! Tenant isolation is by construction: the tenant is part of every key, so no lookup can
//! reach another tenant's entry, whatever the request says.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};
use crate::ports::Endpoint;
use crate::sse::{DONE_EVENT, data_event};

/// `HIT`, `MISS` or `BYPASS`, on every answer the cache was asked about.
pub const STATUS_HEADER: &str = "x-ferry-cache";
/// A caller's lifetime for the entry its call makes, in seconds (`0`: bypass the cache).
pub const TTL_HEADER: &str = "x-ferry-cache-ttl";
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
pub const MAX_TTL_SECONDS: u64 = 30 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    /// As sent in `x-ferry-cache`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// As recorded on the usage event (`none`: the cache was not consulted).
    pub fn usage_label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "none",
        }
    }
}

/// What a caller asked of the cache, from `Cache-Control` and `x-ferry-cache-ttl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// Do not answer from the cache (the fresh answer may still be kept).
    pub no_cache: bool,
    /// Neither answer from the cache nor keep this answer.
    pub no_store: bool,
    pub ttl_seconds: Option<u64>,
}

impl Directives {
    pub fn parse(cache_control: Option<&str>, ttl: Option<&str>) -> Result<Directives, ApiError> {
        let mut directives = Directives::default();
        for directive in cache_control.unwrap_or_default().split(',') {
            match directive.trim().to_ascii_lowercase().as_str() {
                "no-cache" => directives.no_cache = true,
                "no-store" => directives.no_store = true,
                // Other directives (max-age, private, …) say nothing Ferry acts on.
                _ => {}
            }
        }
        if let Some(ttl) = ttl {
            let seconds = ttl
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|seconds| *seconds <= MAX_TTL_SECONDS)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!("{TTL_HEADER} must be whole seconds from 0 to {MAX_TTL_SECONDS}"),
                    )
                    .with_param(TTL_HEADER)
                })?;
            directives.ttl_seconds = Some(seconds);
        }
        Ok(directives)
    }
}

/// What the cache does for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Neither read nor written; the reason is for logs.
    Bypass(&'static str),
    Use {
        read: bool,
        write: bool,
        ttl_seconds: u64,
    },
}

impl Decision {
    /// What a call this decision applied to reports (`x-ferry-cache`) when it was not a hit:
    /// BYPASS when the cache took no part, MISS when it looked or will keep the answer.
    pub fn status(&self) -> CacheStatus {
        match self {
            Decision::Bypass(_) => CacheStatus::Bypass,
            Decision::Use { .. } => CacheStatus::Miss,
        }
    }
}

/// Deterministic calls only: an embedding, or a generation at temperature 0 or with a seed.
/// Anything else would replay one sample as if it were the only answer.
pub fn decide(endpoint: Endpoint, body: &Value, directives: &Directives) -> Decision {
    if directives.ttl_seconds == Some(0) {
        return Decision::Bypass("ttl 0");
    }
    let deterministic = match endpoint {
        Endpoint::Embeddings => true,
        Endpoint::ChatCompletions | Endpoint::Completions => {
            body.get("temperature").and_then(Value::as_f64) == Some(0.0)
                || body.get("seed").is_some_and(Value::is_number)
        }
    };
    if !deterministic {
        return Decision::Bypass("not deterministic");
    }
    // Log probabilities are not kept: a replay could not give them back.
    if body
        .get("logprobs")
        .is_some_and(|value| !value.is_null() && value != &Value::Bool(false))
        || body
            .get("top_logprobs")
            .is_some_and(|value| !value.is_null())
    {
        return Decision::Bypass("log probabilities are not replayed");
    }
    if endpoint == Endpoint::Completions && is_streamed(body) {
        return Decision::Bypass("streamed completions are not replayed");
    }
    let read = !directives.no_cache && !directives.no_store;
    let write = !directives.no_store;
    if !read && !write {
        return Decision::Bypass("no-store");
    }
    Decision::Use {
        read,
        write,
        ttl_seconds: directives.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS),
    }
}

pub fn is_streamed(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

/// An entry's key: SHA-256 of the tenant, the resolved deployment (so a changed backend never
/// answers from its predecessor's entries), the endpoint and the canonical request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn of(tenant_id: &str, deployment: &str, endpoint: Endpoint, body: &Value) -> CacheKey {
        let canonical = canonical_body(body);
        let mut hasher = Sha256::new();
        // Each part length-prefixed: no two different tuples hash the same bytes.
        for part in [
            "ferry-cache-v1",
            tenant_id,
            deployment,
            endpoint.name(),
            &canonical,
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        CacheKey(hasher.finalize().into())
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The body as the key sees it: without what does not change the answer (`user`, and whether
/// or how it streams: a stream and a whole answer share an entry), objects in key order, and
/// whole numbers written one way (`0` and `0.0` are one temperature).
pub fn canonical_body(body: &Value) -> String {
    let mut body = body.clone();
    if let Value::Object(fields) = &mut body {
        for ignored in ["user", "stream", "stream_options"] {
            fields.remove(ignored);
        }
    }
    let mut out = String::new();
    write_canonical(&body, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&fields[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(number) => match number.as_f64() {
            Some(float) if number.is_f64() && float.fract() == 0.0 && float.abs() < 9.0e15 => {
                // Whole and exactly representable: print as an integer.
                out.push_str(&format!("{}", float as i64));
            }
            _ => out.push_str(&number.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// A kept answer: the whole JSON response (usage included), and when it expires, kept in the
/// value so a store without expiry of its own (the edge's key-value) can judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub expires_at_ms: u64,
    pub response: Value,
}

impl Entry {
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Whether an answer may be kept: whole, successful and with its usage. A choice that ended
/// in an error, or did not end, is never replayed as if it had.
pub fn is_storable(endpoint: Endpoint, response: &Value) -> bool {
    if !response.get("usage").is_some_and(Value::is_object) {
        return false;
    }
    match endpoint {
        Endpoint::Embeddings => response
            .get("data")
            .and_then(Value::as_array)
            .is_some_and(|data| !data.is_empty()),
        Endpoint::ChatCompletions | Endpoint::Completions => response
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| {
                !choices.is_empty()
                    && choices.iter().all(|choice| {
                        choice
                            .get("finish_reason")
                            .and_then(Value::as_str)
                            .is_some_and(|reason| reason != "error")
                            && is_empty(choice.get("logprobs"))
                            && choice
                                .get("message")
                                .is_none_or(|message| only_text(message, &["role", "content"]))
                    })
            }),
    }
}

fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(fields)) => fields.is_empty(),
        Some(_) => false,
    }
}

/// A message (or delta) with nothing but `allowed` fields (others empty): the text a replay
/// gives back whole. Tool calls, refusals, audio and the like are not kept.
fn only_text(message: &Value, allowed: &[&str]) -> bool {
    message.as_object().is_some_and(|fields| {
        fields
            .iter()
            .all(|(name, value)| allowed.contains(&name.as_str()) || is_empty(Some(value)))
    })
}

/// The whole chat answer a finished stream of chunks adds up to, or `None` if it did not
/// finish (a choice without a finish reason), failed, or streamed tool calls.
pub fn assemble_chat(chunks: &[Value]) -> Option<Value> {
    let first = chunks.first()?;
    let mut choices: std::collections::BTreeMap<u64, (String, String, Option<String>)> =
        std::collections::BTreeMap::new();
    let mut usage = None;
    for chunk in chunks {
        if let Some(found) = chunk.get("usage").filter(|usage| usage.is_object()) {
            usage = Some(found.clone());
        }
        for choice in chunk.get("choices").and_then(Value::as_array)? {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let delta = choice.get("delta");
            if !delta.is_none_or(|delta| only_text(delta, &["role", "content"]))
                || !is_empty(choice.get("logprobs"))
            {
                return None;
            }
            let entry = choices
                .entry(index)
                .or_insert_with(|| ("assistant".to_owned(), String::new(), None));
            if let Some(role) = delta
                .and_then(|delta| delta.get("role"))
                .and_then(Value::as_str)
            {
                entry.0 = role.to_owned();
            }
            if let Some(content) = delta
                .and_then(|delta| delta.get("content"))
                .and_then(Value::as_str)
            {
                entry.1.push_str(content);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                entry.2 = Some(reason.to_owned());
            }
        }
    }
    if choices.is_empty() {
        return None;
    }
    let mut assembled = Vec::new();
    for (index, (role, content, finish_reason)) in choices {
        let finish_reason = finish_reason.filter(|reason| reason != "error")?;
        assembled.push(json!({
            "index": index,
            "message": {"role": role, "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason,
        }));
    }
    let mut response = Map::new();
    for field in ["id", "created", "model", "system_fingerprint"] {
        if let Some(value) = first.get(field) {
            response.insert(field.to_owned(), value.clone());
        }
    }
    response.insert("object".into(), json!("chat.completion"));
    response.insert("choices".into(), Value::Array(assembled));
    response.insert("usage".into(), usage?);
    Some(Value::Object(response))
}

/// A whole chat answer as the SSE events a stream of it sends: per choice its role and text,
/// then its finish reason; the usage chunk if asked for; `[DONE]`. Its text and usage are the
/// answer's, exactly (only plain text answers are kept: see `is_storable`).
pub fn chat_as_sse(response: &Value, include_usage: bool) -> Vec<String> {
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut chunk = json!({
            "id": response.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": response.get("created").cloned().unwrap_or(Value::Null),
            "model": response.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage.clone();
        }
        data_event(&chunk.to_string())
    };
    let mut events = Vec::new();
    for choice in response
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let delta = json!({
            "role": message.get("role").cloned().unwrap_or(json!("assistant")),
            "content": message.get("content").cloned().unwrap_or(Value::Null),
        });
        events.push(chunk(
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
            None,
        ));
        events.push(chunk(
            json!([{"index": index, "delta": {}, "logprobs": null,
                    "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null)}]),
            None,
        ));
    }
    if include_usage && let Some(usage) = response.get("usage") {
        events.push(chunk(json!([]), Some(usage)));
    }
    events.push(DONE_EVENT.to_owned());
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn chat(body: Value) -> Value {
        let mut base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, body) {
            base.extend(extra);
        }
        base
    }

    #[test]
    fn only_deterministic_calls_are_cached_and_callers_can_opt_out() {
        let none = Directives::default();
        let use_it = |ttl| Decision::Use {
            read: true,
            write: true,
            ttl_seconds: ttl,
        };
        let cases = [
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0}),
                none,
                use_it(3600),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0.0}),
                none,
                use_it(3600),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"seed": 7, "temperature": 1}),
                none,
                use_it(3600),
            ),
            (
                Endpoint::ChatCompletions,
                json!({}),
                none,
                Decision::Bypass("not deterministic"),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0.7}),
                none,
                Decision::Bypass("not deterministic"),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"seed": null}),
                none,
                Decision::Bypass("not deterministic"),
            ),
            (Endpoint::Embeddings, json!({}), none, use_it(3600)),
            (
                Endpoint::Completions,
                json!({"temperature": 0, "stream": true}),
                none,
                Decision::Bypass("streamed completions are not replayed"),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0}),
                Directives {
                    no_cache: true,
                    ..none
                },
                Decision::Use {
                    read: false,
                    write: true,
                    ttl_seconds: 3600,
                },
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0}),
                Directives {
                    no_store: true,
                    ..none
                },
                Decision::Bypass("no-store"),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0}),
                Directives {
                    ttl_seconds: Some(60),
                    ..none
                },
                use_it(60),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0}),
                Directives {
                    ttl_seconds: Some(0),
                    ..none
                },
                Decision::Bypass("ttl 0"),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0, "logprobs": true}),
                none,
                Decision::Bypass("log probabilities are not replayed"),
            ),
            (
                Endpoint::ChatCompletions,
                json!({"temperature": 0, "logprobs": false}),
                none,
                use_it(3600),
            ),
        ];
        for (endpoint, body, directives, expected) in cases {
            assert_eq!(
                decide(endpoint, &chat(body.clone()), &directives),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn directives_come_from_cache_control_and_the_ttl_header() {
        let parsed = Directives::parse(Some("max-age=0, No-Cache"), Some(" 90 ")).unwrap();
        assert_eq!(
            parsed,
            Directives {
                no_cache: true,
                no_store: false,
                ttl_seconds: Some(90)
            }
        );
        assert!(Directives::parse(Some("no-store"), None).unwrap().no_store);
        for bad in ["-1", "soon", "99999999999"] {
            let error = Directives::parse(None, Some(bad)).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(TTL_HEADER), "{bad}");
        }
    }

    #[test]
    fn the_key_ignores_what_does_not_change_the_answer_and_nothing_else() {
        let key = |tenant: &str, deployment: &str, endpoint, body: Value| {
            CacheKey::of(tenant, deployment, endpoint, &body)
        };
        let base = key(
            "t1",
            "d1",
            Endpoint::ChatCompletions,
            chat(json!({"temperature": 0})),
        );
        // The same call, streamed, from another end user, with fields in another order.
        let same = json!({"temperature": 0.0, "stream": true, "stream_options": {"include_usage": true},
                          "user": "u42", "messages": [{"content": "hi", "role": "user"}], "model": "m"});
        assert_eq!(key("t1", "d1", Endpoint::ChatCompletions, same), base);
        // Another tenant, deployment, endpoint or prompt: another entry.
        assert_ne!(
            key(
                "t2",
                "d1",
                Endpoint::ChatCompletions,
                chat(json!({"temperature": 0}))
            ),
            base
        );
        assert_ne!(
            key(
                "t1",
                "d2",
                Endpoint::ChatCompletions,
                chat(json!({"temperature": 0}))
            ),
            base
        );
        assert_ne!(
            key(
                "t1",
                "d1",
                Endpoint::Completions,
                chat(json!({"temperature": 0}))
            ),
            base
        );
        assert_ne!(
            key(
                "t1",
                "d1",
                Endpoint::ChatCompletions,
                chat(json!({"temperature": 0, "max_tokens": 5}))
            ),
            base
        );
        // Length-prefixed parts: moving text between tenant and deployment changes the key.
        assert_ne!(
            key(
                "t1d",
                "1",
                Endpoint::ChatCompletions,
                chat(json!({"temperature": 0}))
            ),
            base
        );
        assert_eq!(base.to_string().len(), 64);
    }

    fn streamed_chunks() -> Vec<Value> {
        let chunk = |choices: Value, usage: Option<Value>| {
            let mut chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": choices});
            if let Some(usage) = usage {
                chunk["usage"] = usage;
            }
            chunk
        };
        vec![
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                None,
            ),
            chunk(
                json!([{"index": 0, "delta": {"content": "Par"}, "finish_reason": null}]),
                None,
            ),
            chunk(
                json!([{"index": 0, "delta": {"content": "is."}, "finish_reason": null}]),
                None,
            ),
            chunk(
                json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                None,
            ),
            chunk(
                json!([]),
                Some(
                    json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12, "cost": "0.000015"}),
                ),
            ),
        ]
    }

    #[test]
    fn a_finished_stream_assembles_into_the_whole_answer_and_replays_as_the_same_stream() {
        let whole = assemble_chat(&streamed_chunks()).unwrap();
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(whole["choices"][0]["message"]["content"], "Paris.");
        assert_eq!(whole["choices"][0]["finish_reason"], "stop");
        assert_eq!(whole["usage"]["completion_tokens"], 3);
        assert!(is_storable(Endpoint::ChatCompletions, &whole));

        let events = chat_as_sse(&whole, true);
        assert_eq!(events.last().map(String::as_str), Some(DONE_EVENT));
        let mut parser = SseParser::new();
        let replayed: Vec<Value> = events
            .iter()
            .flat_map(|event| parser.feed(event.as_bytes()))
            .filter(|event| !event.is_done())
            .map(|event| serde_json::from_str(&event.data).unwrap())
            .collect();
        // Replayed and assembled again: the same text, finish reason and usage.
        assert_eq!(assemble_chat(&replayed).unwrap(), whole);
        // Without include_usage, no usage chunk.
        assert!(
            chat_as_sse(&whole, false)
                .iter()
                .all(|event| !event.contains("\"usage\""))
        );
    }

    #[test]
    fn unfinished_failed_or_usage_less_answers_are_never_kept() {
        let chunks = streamed_chunks();
        // Cut off before the finish reason.
        assert_eq!(assemble_chat(&chunks[..3]), None);
        // No usage chunk.
        assert_eq!(assemble_chat(&chunks[..4]), None);
        // Ended in an error event.
        let mut failed = chunks.clone();
        failed[3]["choices"][0]["finish_reason"] = json!("error");
        assert_eq!(assemble_chat(&failed), None);

        let whole = assemble_chat(&chunks).unwrap();
        let mut no_usage = whole.clone();
        no_usage.as_object_mut().unwrap().remove("usage");
        assert!(!is_storable(Endpoint::ChatCompletions, &no_usage));
        let mut errored = whole.clone();
        errored["choices"][0]["finish_reason"] = json!("error");
        assert!(!is_storable(Endpoint::ChatCompletions, &errored));
        assert!(!is_storable(
            Endpoint::ChatCompletions,
            &json!({"error": {"message": "x"}})
        ));
        assert!(is_storable(
            Endpoint::Embeddings,
            &json!({"data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 1}})
        ));
        // What a replay could not give back whole: tool calls, refusals, log probabilities.
        let mut tool_call = whole.clone();
        tool_call["choices"][0]["message"]["tool_calls"] = json!([{"id": "c", "type": "function"}]);
        assert!(!is_storable(Endpoint::ChatCompletions, &tool_call));
        let mut refusal = whole.clone();
        refusal["choices"][0]["message"]["refusal"] = json!("no");
        assert!(!is_storable(Endpoint::ChatCompletions, &refusal));
        let mut with_logprobs = whole.clone();
        with_logprobs["choices"][0]["logprobs"] = json!({"content": [{"token": "P"}]});
        assert!(!is_storable(Endpoint::ChatCompletions, &with_logprobs));
        let mut nulls = whole.clone();
        nulls["choices"][0]["message"]["refusal"] = Value::Null;
        nulls["choices"][0]["message"]["tool_calls"] = json!([]);
        assert!(
            is_storable(Endpoint::ChatCompletions, &nulls),
            "empty extras are fine"
        );
        let mut streamed_refusal = chunks.clone();
        streamed_refusal[1]["choices"][0]["delta"] = json!({"refusal": "no"});
        assert_eq!(assemble_chat(&streamed_refusal), None);
    }

    #[test]
    fn an_entry_expires_at_its_time() {
        let entry = Entry {
            expires_at_ms: 1_000,
            response: json!({}),
        };
        assert!(entry.is_fresh(999));
        assert!(!entry.is_fresh(1_000));
        let round_trip: Entry =
            serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(round_trip, entry);
    }
}
