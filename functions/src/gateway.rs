//! The OpenAI-compatible gateway: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`. Each call is authenticated, validated, routed to a deployment, dispatched,
//! and metered.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ferry_core::error::ErrorBody;
use ferry_core::openai::{
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
    EmbeddingRequest, EmbeddingResponse, ModelList, ModelObject, Usage,
};
use ferry_core::ports::{Endpoint, StoredModel, UpstreamCall, UpstreamReply};
use ferry_core::principal::Principal;
use ferry_core::{ApiError, ErrorKind};
use serde_json::Value;

use crate::app::{AppState, Caller, RequestId};
use crate::clock;
use crate::error::{Failure, HandlerResult};
use crate::extract::JsonBody;
use crate::meter::{Meter, MeterParams};
use crate::relay::relay;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
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
    Caller(principal): Caller,
    body: JsonBody<ChatCompletionRequest>,
) -> HandlerResult<Response> {
    let request = &body.typed;
    request.validate()?;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage);
    let call = Call {
        endpoint: Endpoint::ChatCompletions,
        model_id: &request.model,
        stream: request.is_stream(),
        include_usage,
    };
    dispatch(&state, request_id, &principal, call, body.raw).await
}

/// Creates a text completion (the legacy API), streamed when `stream` is true.
#[utoipa::path(post, path = "/v1/completions", tag = "gateway", request_body = CompletionRequest,
    responses((status = 200, body = CompletionResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(principal): Caller,
    body: JsonBody<CompletionRequest>,
) -> HandlerResult<Response> {
    let request = &body.typed;
    request.validate()?;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage);
    let call = Call {
        endpoint: Endpoint::Completions,
        model_id: &request.model,
        stream: request.is_stream(),
        include_usage,
    };
    dispatch(&state, request_id, &principal, call, body.raw).await
}

/// Creates embeddings for one or more inputs.
#[utoipa::path(post, path = "/v1/embeddings", tag = "gateway", request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(principal): Caller,
    body: JsonBody<EmbeddingRequest>,
) -> HandlerResult<Response> {
    body.typed.validate()?;
    let call = Call {
        endpoint: Endpoint::Embeddings,
        model_id: &body.typed.model,
        stream: false,
        include_usage: false,
    };
    dispatch(&state, request_id, &principal, call, body.raw).await
}

/// Lists the models the caller may use.
#[utoipa::path(get, path = "/v1/models", tag = "gateway",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    Caller(principal): Caller,
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
    Caller(principal): Caller,
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

struct Call<'a> {
    endpoint: Endpoint,
    model_id: &'a str,
    stream: bool,
    include_usage: bool,
}

/// Route → dispatch → meter, for every endpoint alike.
async fn dispatch(
    state: &AppState,
    request_id: RequestId,
    principal: &Principal,
    call: Call<'_>,
    mut body: Value,
) -> HandlerResult<Response> {
    let model = state
        .store
        .get_model(call.model_id)
        .await?
        .ok_or_else(|| ApiError::unknown_model(call.model_id))?;
    if !principal.may_use_model(call.model_id) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("This key may not use the model `{}`.", call.model_id),
        )
        .with_param("model")
        .with_code("model_not_allowed")
        .into());
    }
    let deployment = model
        .spec
        .choose_deployment(clock::random_u64())
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NoCapacity,
                "The model has no deployment taking traffic.",
            )
            .retry_after(5)
        })?;
    body["model"] = Value::String(deployment.upstream.model.clone());
    if call.stream {
        // Usage is always asked of the upstream, so every stream can be metered.
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let meter = Meter::new(MeterParams {
        store: state.store.clone(),
        request_id: request_id.0,
        principal,
        model_id: model.spec.id.clone(),
        deployment_id: deployment.id.clone(),
        endpoint: call.endpoint,
        price: model.spec.price.clone(),
    });
    let upstream_call = UpstreamCall {
        target: deployment.upstream.clone(),
        endpoint: call.endpoint,
        body,
        stream: call.stream,
    };
    let reply = match state.upstream.call(upstream_call).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, model = %model.spec.id, deployment = %deployment.id, "upstream call failed");
            let api_error = error.to_api_error();
            meter
                .record(&Usage::default(), api_error.kind.status(), None)
                .await;
            return Err(api_error.into());
        }
    };
    match reply {
        UpstreamReply::Stream(stream) if call.stream => {
            Ok(relay(stream, meter, call.include_usage))
        }
        // A whole answer to a streamed request, or a stream to a plain one: the backend is broken.
        UpstreamReply::Complete(_) if call.stream => Err(wrong_mode()),
        UpstreamReply::Stream(_) => Err(wrong_mode()),
        UpstreamReply::Complete(mut response) => {
            let mut usage: Usage = response
                .get("usage")
                .and_then(|usage| serde_json::from_value(usage.clone()).ok())
                .unwrap_or_default();
            meter.price_usage(&mut usage);
            if let Some(object) = response.as_object_mut() {
                object.insert("model".into(), Value::String(model.spec.id.clone()));
                object.insert(
                    "usage".into(),
                    serde_json::to_value(&usage).unwrap_or(Value::Null),
                );
            }
            meter.record(&usage, 200, None).await;
            Ok(Json(response).into_response())
        }
    }
}

fn wrong_mode() -> Failure {
    ApiError::new(
        ErrorKind::UpstreamFailed,
        "The model backend answered in the wrong mode.",
    )
    .into()
}
