//! Anthropic's door: `POST /v1/messages`. The request is translated into a chat completion
//! (`ferry_core::anthropic`) and served by [`call::serve`] like any other, so admission,
//! limits, holds, routing, the cache, metering and billing are the chat call's; its answer,
//! whole or streamed, is translated back. The routes speak Anthropic's dialect at the edges
//! too: `x-api-key` authenticates, and every failure has Anthropic's error shape.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use ferry_core::anthropic::{self, Message, MessagesRequest, StreamTranslator};
use ferry_core::call::{CallShape, OutputAsk};
use ferry_core::error::ErrorBody;
use ferry_core::ports::Endpoint;
use serde_json::Value;

use super::call::{self, Caller};
use super::dialect;
use super::directives;
use crate::app::{self, AppState, RequestId, RequestLog};
use crate::error::HandlerResult;
use crate::extract::JsonBody;

/// Error bodies are small; anything larger is not one of ours.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(create_message))
        .layer(middleware::from_fn(anthropic_dialect))
}

/// Creates a message (Anthropic's Messages API), streamed as Anthropic's server-sent events
/// when `stream` is true. Authenticates with `x-api-key` or `Authorization: Bearer`.
#[utoipa::path(post, path = "/v1/messages", tag = "gateway", request_body = MessagesRequest,
    responses(
        (status = 200, description = "A message, or an SSE stream of Anthropic's message events", body = Message),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 402, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_message(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(log): Extension<RequestLog>,
    app::Caller(principal): app::Caller,
    headers: HeaderMap,
    body: JsonBody<MessagesRequest>,
) -> HandlerResult<Response> {
    let request = &body.typed;
    let chat = request.to_chat()?;
    let shape = CallShape {
        endpoint: Endpoint::ChatCompletions,
        stream: request.is_stream(),
        // The usage chunk carries what `message_delta` reports.
        include_usage: true,
        output: Some(OutputAsk {
            requested: Some(request.max_tokens),
            param: "max_tokens",
            choices: 1,
            prompts: 1,
            default: None,
        }),
        body_bytes: body.byte_len,
        media_parts: dialect::media_parts(&chat),
        directives: directives(&headers)?,
        batch: false,
    };
    let caller = Caller::new(&state, request_id, &log, &principal);
    let response = call::serve(caller, &request.model, shape, chat).await?;
    let stops = request.stop_sequences.clone().unwrap_or_default();
    if !response.status().is_success() {
        return Ok(response);
    }
    if request.is_stream() {
        Ok(dialect::stream(
            response,
            StreamTranslator::new(&request.model, &stops),
        ))
    } else {
        dialect::whole(response, |chat| {
            anthropic::message_from_chat(chat, &request.model, &stops)
        })
        .await
    }
}

/// Anthropic's dialect at the edges of its routes: its SDKs send the key in `x-api-key`, and
/// read failures as `{"type":"error","error":{"type","message"}}`.
async fn anthropic_dialect(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(key) = headers.get("x-api-key").and_then(|key| key.to_str().ok())
        && let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {key}"))
    {
        headers.insert(header::AUTHORIZATION, bearer);
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/json"));
    if status.is_success() || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let message = match axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string()),
        Err(_) => status.to_string(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = anthropic::error_body(status.as_u16(), &message).to_string();
    Response::from_parts(parts, Body::from(body))
}
