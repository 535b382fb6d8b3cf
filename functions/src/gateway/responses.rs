//! OpenAI's Responses API: `POST /v1/responses`, stateless. The request is translated into a
//! chat completion (`ferry_core::responses`) and served by [`call::serve`] like any other, so
//! admission, limits, holds, routing, the cache, metering and billing are the chat call's; the
//! answer, whole or streamed, is translated back into a `response` or its `response.*` events.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use ferry_core::call::{CallShape, OutputAsk};
use ferry_core::error::ErrorBody;
use ferry_core::ports::Endpoint;
use ferry_core::responses::{self, ResponseContext, ResponsesRequest, StreamTranslator};
use serde_json::Value;

use super::call::{self, Caller};
use super::{BatchCall, dialect, directives};
use crate::app::{self, AppState, RequestId, RequestLog};
use crate::clock;
use crate::error::HandlerResult;
use crate::extract::JsonBody;

/// Creates a model response (OpenAI's Responses API, without stored state: `store: false`),
/// streamed as `response.*` server-sent events when `stream` is true.
#[utoipa::path(post, path = "/v1/responses", tag = "gateway", request_body = ResponsesRequest,
    responses(
        (status = 200, description = "A `response` object, or an SSE stream of `response.*` events", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 402, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_response(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(log): Extension<RequestLog>,
    app::Caller(principal): app::Caller,
    batch: Option<Extension<BatchCall>>,
    headers: HeaderMap,
    body: JsonBody<ResponsesRequest>,
) -> HandlerResult<Response> {
    let request = &body.typed;
    let chat = request.to_chat()?;
    let shape = CallShape {
        endpoint: Endpoint::ChatCompletions,
        stream: request.is_stream(),
        // The usage chunk carries what `response.completed` reports.
        include_usage: true,
        output: Some(OutputAsk {
            requested: request.max_output_tokens,
            param: "max_output_tokens",
            choices: 1,
            prompts: 1,
            default: None,
        }),
        body_bytes: body.byte_len,
        media_parts: dialect::media_parts(&chat),
        directives: directives(&headers)?,
        batch: batch.is_some(),
    };
    let caller = Caller::new(&state, request_id, &log, &principal);
    let response = call::serve(caller, &request.model, shape, chat).await?;
    if !response.status().is_success() {
        return Ok(response);
    }
    let context = ResponseContext::new(request, clock::unix_millis() / 1000);
    if request.is_stream() {
        Ok(dialect::stream(response, StreamTranslator::new(context)))
    } else {
        dialect::whole(response, |chat: &Value| {
            responses::response_from_chat(chat, &context)
        })
        .await
    }
}
