//! Relays an upstream SSE stream to the caller as it arrives, metering on the way.
//!
//! A task reads the upstream and writes to a small channel that is the response body. When the
//! caller goes away the channel closes, the task stops and drops the upstream connection (so the
//! backend stops generating), and the tokens delivered so far are metered. Usage is always asked
//! of the upstream; the usage chunk is passed on only to callers who asked for it. The last
//! usage chunk and the final `[DONE]` are held back until the call is settled: a caller who saw
//! the end of the stream has been charged, durably, exactly once, and its usage says what.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use ferry_core::Money;
use ferry_core::cache::assemble_chat;
use ferry_core::openai::Usage;
use ferry_core::ports::{ByteStream, UpstreamError};
use ferry_core::sse::{DONE_EVENT, SseParser, data_event};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::meter::{CLIENT_CLOSED, Meter, NotSettled};
use super::route::BreakerPermit;
use crate::cache::Keeper;

/// Relays `upstream` to the caller; `keep`, if given, receives the whole answer once the
/// stream has finished and been settled.
/// `permit`, the answering deployment's breaker permit, is judged by how the stream ends.
pub fn relay(
    upstream: ByteStream,
    meter: Meter,
    permit: Option<BreakerPermit>,
    include_usage: bool,
    keep: Option<Keeper>,
    write_timeout: Duration,
) -> Response {
    let (sender, receiver) = mpsc::channel::<Bytes>(16);
    let sender = Caller {
        sender,
        write_timeout,
    };
    // The call's span lasts until the stream ends (its usage is recorded on it).
    let stream = Stream {
        upstream,
        meter,
        permit,
        include_usage,
        keep,
    };
    tokio::spawn(pump(stream, sender).in_current_span());
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), receiver))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells reverse proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The caller's end of the stream: a send waits at most `write_timeout` for room, so a reader
/// that stopped reading cannot hold the upstream, its hold and its in-flight slot forever.
struct Caller {
    sender: mpsc::Sender<Bytes>,
    write_timeout: Duration,
}

impl Caller {
    /// False when the caller is gone or has taken nothing for `write_timeout`.
    async fn send(&self, bytes: Bytes) -> bool {
        match tokio::time::timeout(self.write_timeout, self.sender.send(bytes)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::info!(
                    timeout_s = self.write_timeout.as_secs_f64(),
                    "the caller stopped reading: the stream is ended"
                );
                false
            }
        }
    }
}

struct Progress {
    usage: Option<Usage>,
    /// Chunks that carried generated text; the fallback count when no usage arrives.
    content_chunks: u64,
    first_token_after: Option<Duration>,
    /// The upstream sent its own error event (and so will send no `[DONE]`).
    upstream_failed: bool,
    /// Every chunk as priced, usage included, while the answer is to be kept.
    chunks: Option<Vec<Value>>,
    /// The latest chunk with usage for the caller, held back until the next event: the last
    /// one is sent after settlement, with the cost that was charged.
    usage_chunk: Option<Value>,
    /// A chunk with usage that had to go before the stream ended (more followed it), as sent.
    sent_usage_chunk: Option<Value>,
}

/// What one upstream event becomes for the caller.
enum Relayed {
    Send(String),
    /// A chunk with usage: sent when another follows, or at the end with the charged cost.
    HoldBack(Value),
    Drop,
}

/// What a relayed stream carries along.
struct Stream {
    upstream: ByteStream,
    meter: Meter,
    permit: Option<BreakerPermit>,
    include_usage: bool,
    keep: Option<Keeper>,
}

async fn pump(stream: Stream, sender: Caller) {
    let Stream {
        mut upstream,
        mut meter,
        permit,
        include_usage,
        keep,
    } = stream;
    let mut parser = SseParser::new();
    let mut progress = Progress {
        usage: None,
        content_chunks: 0,
        first_token_after: None,
        upstream_failed: false,
        chunks: keep.as_ref().map(|_| Vec::new()),
        usage_chunk: None,
        sent_usage_chunk: None,
    };
    let mut saw_done = false;
    // How the stream ended, and the error event to end it with (sent after settlement).
    let (status, failure) = loop {
        let next = tokio::time::timeout_at(meter.deadline(), upstream.next())
            .await
            .unwrap_or(Some(Err(UpstreamError::Timeout)));
        let chunk = match next {
            Some(chunk) => chunk,
            // Every OpenAI-compatible server ends with `[DONE]`; ending without it means the
            // upstream died mid-generation (a close-delimited body looks complete otherwise).
            // The caller already has the upstream's error event: one is enough.
            None if progress.upstream_failed => break (502, None),
            None => Err(UpstreamError::Protocol(
                "the stream ended before [DONE]".into(),
            )),
        };
        let bytes = match chunk {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "upstream stream broke");
                let api_error = error.to_api_error();
                break (api_error.kind.status(), Some(api_error));
            }
        };
        let mut out = String::new();
        for event in parser.feed(&bytes) {
            if event.is_done() {
                saw_done = true;
                break;
            }
            let relayed = rewrite(&event.data, &meter, include_usage, &mut progress);
            if matches!(relayed, Relayed::Drop) {
                continue;
            }
            if let Some(earlier) = progress.usage_chunk.take() {
                out.push_str(&data_event(&earlier.to_string()));
                progress.sent_usage_chunk = Some(earlier);
            }
            match relayed {
                Relayed::Send(data) => out.push_str(&data_event(&data)),
                Relayed::HoldBack(chunk) => progress.usage_chunk = Some(chunk),
                Relayed::Drop => {}
            }
        }
        if !out.is_empty() && !sender.send(Bytes::from(out)).await {
            break (CLIENT_CLOSED, None);
        }
        if saw_done {
            break (200, None);
        }
    };
    meter.upstream_ends();
    if let Some(permit) = permit {
        match status {
            // The caller left: no verdict on the backend.
            CLIENT_CLOSED => drop(permit),
            _ => permit.finish(status < 500),
        }
    }
    let end = settle(meter, progress, keep, status, failure).await;
    // The caller may have left after the last chunk; there is no one to tell then.
    if let Some(end) = end {
        sender.send(Bytes::from(end)).await;
    }
}

/// Settles the stream for what it delivered, and what the caller is sent to end it: the
/// held-back usage chunk with the cost that was charged, then `[DONE]`, or the error event;
/// nothing to a caller who left.
async fn settle(
    meter: Meter,
    mut progress: Progress,
    keep: Option<Keeper>,
    status: u16,
    failure: Option<ferry_core::ApiError>,
) -> Option<String> {
    let usage = match progress.usage.take() {
        Some(usage) => usage,
        None => {
            // The upstream never reported usage (the caller left, or it broke): charge for
            // what was delivered, one token per content chunk, as OpenAI-style servers send.
            let mut usage = Usage {
                completion_tokens: progress.content_chunks,
                ..Usage::default()
            };
            meter.price_usage(&mut usage);
            usage
        }
    };
    let model_id = meter.model_id().to_owned();
    let settled = meter
        .record(&usage, status, progress.first_token_after)
        .await;
    if status == CLIENT_CLOSED {
        return None;
    }
    let mut end = String::new();
    if let Some(chunk) = charged_usage_chunk(&mut progress, &usage, &settled) {
        end.push_str(&data_event(&chunk.to_string()));
    }
    if let (Some(keep), Some(chunks), Ok(_)) = (keep, &progress.chunks, &settled)
        && status == 200
        && !progress.upstream_failed
    {
        keep.finish(assemble_chat(chunks));
    }
    match (failure, settled) {
        (Some(failure), _) => end.push_str(&error_event(&model_id, &failure)),
        (None, _) if status != 200 => {}
        (None, Ok(_)) => end.push_str(DONE_EVENT),
        // An answer that could not be charged does not end as complete.
        (None, Err(not_settled)) => {
            end.push_str(&error_event(&model_id, &not_settled.to_api_error()));
        }
    }
    (!end.is_empty()).then_some(end)
}

/// The last chunk with usage, as it should reach the caller once the call is settled: with
/// the cost that was charged; or, if the charge could not be written, without its usage (its
/// text still belongs to the answer). If the chunk with usage had to go before the end and
/// the charge differs from what it said, a usage chunk of its own says what was charged.
fn charged_usage_chunk(
    progress: &mut Progress,
    usage: &Usage,
    settled: &Result<Money, NotSettled>,
) -> Option<Value> {
    let set_cost = |chunk: &mut Value, charged: &Money| {
        if let Some(usage) = chunk.get_mut("usage").and_then(Value::as_object_mut) {
            usage.insert("cost".into(), Value::String(charged.to_string()));
        }
    };
    match (progress.usage_chunk.take(), settled) {
        (Some(mut chunk), Ok(charged)) => {
            set_cost(&mut chunk, charged);
            Some(chunk)
        }
        (Some(mut chunk), Err(_)) => {
            let has_text = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|choices| !choices.is_empty());
            chunk.as_object_mut()?.remove("usage");
            has_text.then_some(chunk)
        }
        (None, Ok(charged)) if usage.cost != Some(*charged) => {
            let mut chunk = progress.sent_usage_chunk.take()?;
            chunk["choices"] = Value::Array(Vec::new());
            set_cost(&mut chunk, charged);
            Some(chunk)
        }
        (None, _) => None,
    }
}

/// The one error event a failed stream ends with.
fn error_event(model_id: &str, error: &ferry_core::ApiError) -> String {
    let event = json!({
        "object": "chat.completion.chunk",
        "model": model_id,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        "error": error.body().error,
    });
    data_event(&event.to_string())
}

/// One upstream event as the caller should see it.
fn rewrite(data: &str, meter: &Meter, include_usage: bool, progress: &mut Progress) -> Relayed {
    let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
        return Relayed::Send(data.to_owned());
    };
    let Some(object) = chunk.as_object_mut() else {
        return Relayed::Send(data.to_owned());
    };
    if object.contains_key("error") {
        progress.upstream_failed = true;
    }
    let has_content = object
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices.iter().any(|choice| {
                choice
                    .pointer("/delta/content")
                    .and_then(Value::as_str)
                    .is_some_and(|text| !text.is_empty())
                    || choice
                        .get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|text| !text.is_empty())
            })
        });
    if has_content {
        progress.content_chunks += 1;
        progress
            .first_token_after
            .get_or_insert_with(|| meter.elapsed());
    }
    ferry_core::openai::fill_required_fields(object);
    object.insert("model".into(), Value::String(meter.model_id().to_owned()));
    let reported = object
        .get("usage")
        .filter(|usage| usage.is_object())
        .cloned();
    if let Some(reported) = reported {
        let mut usage: Usage = serde_json::from_value(reported).unwrap_or_default();
        meter.price_usage(&mut usage);
        if let Some(chunks) = &mut progress.chunks {
            let mut priced = Value::Object(object.clone());
            priced["usage"] = serde_json::to_value(&usage).unwrap_or(Value::Null);
            chunks.push(priced);
        }
        let only_usage = object
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if !include_usage {
            progress.usage = Some(usage);
            if only_usage {
                return Relayed::Drop;
            }
            object.remove("usage");
        } else {
            object.insert(
                "usage".into(),
                serde_json::to_value(&usage).unwrap_or(Value::Null),
            );
            progress.usage = Some(usage);
            return Relayed::HoldBack(chunk);
        }
    } else {
        if let Some(chunks) = &mut progress.chunks {
            chunks.push(Value::Object(object.clone()));
        }
        if !include_usage {
            object.remove("usage");
        }
    }
    Relayed::Send(chunk.to_string())
}
