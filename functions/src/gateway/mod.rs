//! The OpenAI-compatible gateway: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`, and the chat call's other dialects, OpenAI's `/v1/responses` and Anthropic's
//! `/v1/messages` (`responses`, `messages`; translated by `dialect`). Each handler validates its
//! request into a [`CallShape`] and hands it to [`call::serve`], the call's sequence — plan,
//! admit, answer from the cache or forward, settle — whose steps each have a module: `admit`
//! (shared with the billing of edge hits), `route` (attempts behind circuit breakers), `relay`
//! (streams), `meter` (usage, pricing, settlement, metrics), `cached` (the response cache's part
//! in a call) and `grants` (what an edge may keep).

mod admit;
pub mod batches;
mod cached;
mod call;
mod dialect;
pub mod files;
mod grants;
pub mod messages;
mod meter;
mod relay;
pub mod responses;
pub mod route;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ferry_core::ApiError;
use ferry_core::cache::{self, Directives};
use ferry_core::call::{CallShape, OutputAsk};
use ferry_core::error::ErrorBody;
use ferry_core::openai::{
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
    EmbeddingRequest, EmbeddingResponse, ModelList, ModelObject,
};
use ferry_core::ports::{Endpoint, StoredModel};

pub(crate) use admit::admit;

use crate::app::{self, AppState, RequestId, RequestLog};
use crate::error::HandlerResult;
use crate::extract::JsonBody;
use call::Caller;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::create_response))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route(ferry_core::edge::HITS_PATH, post(crate::edge::report_hits))
        .merge(messages::routes())
}

/// Creates a chat completion, streamed as server-sent events when `stream` is true.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or an SSE stream of `chat.completion.chunk` events", body = ChatCompletionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(log): Extension<RequestLog>,
    app::Caller(principal): app::Caller,
    batch: Option<Extension<BatchCall>>,
    headers: HeaderMap,
    body: JsonBody<ChatCompletionRequest>,
) -> HandlerResult<Response> {
    let request = &body.typed;
    request.validate()?;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage);
    // With both fields set, a backend may read either: hold for the larger.
    let (requested, param) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(completion), Some(max)) if max > completion => (Some(max), "max_tokens"),
        (Some(completion), _) => (Some(completion), "max_completion_tokens"),
        (None, max) => (max, "max_tokens"),
    };
    let shape = CallShape {
        endpoint: Endpoint::ChatCompletions,
        stream: request.is_stream(),
        include_usage,
        output: Some(OutputAsk {
            requested,
            param,
            choices: request.n.unwrap_or(1),
            prompts: 1,
            default: None,
        }),
        body_bytes: body.byte_len,
        media_parts: request.media_parts(),
        directives: directives(&headers)?,
        batch: batch.is_some(),
    };
    let caller = Caller::new(&state, request_id, &log, &principal);
    call::serve(caller, &request.model, shape, body.raw).await
}

/// Creates a text completion (the legacy API), streamed when `stream` is true.
#[utoipa::path(post, path = "/v1/completions", tag = "gateway", request_body = CompletionRequest,
    responses((status = 200, body = CompletionResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(log): Extension<RequestLog>,
    app::Caller(principal): app::Caller,
    batch: Option<Extension<BatchCall>>,
    headers: HeaderMap,
    body: JsonBody<CompletionRequest>,
) -> HandlerResult<Response> {
    let request = &body.typed;
    request.validate()?;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage);
    let shape = CallShape {
        endpoint: Endpoint::Completions,
        stream: request.is_stream(),
        include_usage,
        output: Some(OutputAsk {
            requested: request.max_tokens,
            param: "max_tokens",
            choices: request.n.unwrap_or(1),
            // Each prompt of a batch gets its own completions.
            prompts: request.prompt.count() as u64,
            // OpenAI's default for the legacy endpoint.
            default: Some(16),
        }),
        body_bytes: body.byte_len,
        media_parts: 0,
        directives: directives(&headers)?,
        batch: batch.is_some(),
    };
    let caller = Caller::new(&state, request_id, &log, &principal);
    call::serve(caller, &request.model, shape, body.raw).await
}

/// Creates embeddings for one or more inputs.
#[utoipa::path(post, path = "/v1/embeddings", tag = "gateway", request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Extension(log): Extension<RequestLog>,
    app::Caller(principal): app::Caller,
    batch: Option<Extension<BatchCall>>,
    headers: HeaderMap,
    body: JsonBody<EmbeddingRequest>,
) -> HandlerResult<Response> {
    body.typed.validate()?;
    let shape = CallShape {
        endpoint: Endpoint::Embeddings,
        stream: false,
        include_usage: false,
        output: None,
        body_bytes: body.byte_len,
        media_parts: 0,
        directives: directives(&headers)?,
        batch: batch.is_some(),
    };
    let caller = Caller::new(&state, request_id, &log, &principal);
    call::serve(caller, &body.typed.model, shape, body.raw).await
}

/// Lists the models the caller may use.
#[utoipa::path(get, path = "/v1/models", tag = "gateway",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
) -> HandlerResult<Json<ModelList>> {
    let models = state.store.list_models().await?;
    let data = models
        .iter()
        .filter(|model| principal.may_use_model(&model.spec.id))
        .map(model_object)
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

/// One model, if the caller may use it.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "gateway", params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = ModelObject), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_model(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<ModelObject>> {
    let model = state
        .store
        .get_model(&id)
        .await?
        .filter(|model| principal.may_use_model(&model.spec.id));
    Ok(Json(
        model
            .as_ref()
            .map(model_object)
            .ok_or_else(|| ApiError::unknown_model(&id))?,
    ))
}

fn model_object(model: &StoredModel) -> ModelObject {
    ModelObject {
        id: model.spec.id.clone(),
        object: "model".into(),
        created: model.created_at,
        owned_by: "ferry".into(),
    }
}

/// Marks a call as a request of a batch: set only by the batch runner, which calls the
/// handlers itself (an HTTP request never carries it).
#[derive(Debug, Clone, Copy)]
pub struct BatchCall;

fn directives(headers: &HeaderMap) -> Result<Directives, ApiError> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    Directives::parse(text("cache-control"), text(cache::TTL_HEADER))
}
