//! A chat call's answer in another API's shape (Anthropic's messages, OpenAI's Responses):
//! a whole answer translated at once, a stream chunk by chunk as it arrives. The call's
//! headers (cache status, rate limits) stay.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferry_core::sse::{SseParser, StreamDialect};
use ferry_core::{ApiError, ErrorKind};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::error::HandlerResult;

/// The non-text content parts (images) of a translated chat request: each is bounded apart
/// from the body's bytes (`CallShape::media_parts`).
pub(super) fn media_parts(chat: &Value) -> u64 {
    chat["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_array())
        .flatten()
        .filter(|part| part["type"] != "text")
        .count() as u64
}

/// A whole chat completion, translated by `translate`.
pub(super) async fn whole<T: Serialize>(
    response: Response,
    translate: impl FnOnce(&Value) -> T,
) -> HandlerResult<Response> {
    let (parts, body) = response.into_parts();
    let unreadable = || {
        ApiError::new(
            ErrorKind::UpstreamFailed,
            "The model backend's answer could not be read.",
        )
    };
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|_| unreadable())?;
    let chat: Value = serde_json::from_slice(&bytes).map_err(|_| unreadable())?;
    let mut translated = Json(translate(&chat)).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            translated.headers_mut().insert(name.clone(), value.clone());
        }
    }
    *translated.status_mut() = parts.status;
    Ok(translated)
}

/// A chat completion's stream, translated by `dialect` as each chunk arrives.
pub(super) fn stream(response: Response, dialect: impl StreamDialect + Send + 'static) -> Response {
    let (parts, body) = response.into_parts();
    let state = Translating {
        upstream: body.into_data_stream(),
        parser: SseParser::new(),
        dialect,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.dialect.ended() {
                return None;
            }
            let out = match state.upstream.next().await {
                Some(Ok(bytes)) => state.feed(&bytes),
                // The chat stream broke without its own error event.
                Some(Err(_)) | None => state.dialect.broken("The model's stream ended early."),
            };
            if !out.is_empty() {
                return Some((Ok::<_, Infallible>(Bytes::from(out)), state));
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(events))
}

struct Translating<D> {
    upstream: axum::body::BodyDataStream,
    parser: SseParser,
    dialect: D,
}

impl<D: StreamDialect> Translating<D> {
    fn feed(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        for event in self.parser.feed(bytes) {
            if event.is_done() {
                out.push_str(&self.dialect.done());
            } else if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
                out.push_str(&self.dialect.chunk(&chunk));
            }
        }
        out
    }
}
