//! The OpenAI-compatible gateway: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`. Each call is authenticated, validated, routed to a deployment, dispatched,
//! and metered.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ferry_core::admission::{
    Admission, Draw, RateStatus, Refusal, TYPICAL_OUTPUT_TOKENS, TokenEstimate, spend_caps,
};
use ferry_core::cache::{self, CacheKey, CacheStatus, Decision, Directives};
use ferry_core::error::ErrorBody;
use ferry_core::model::Deployment;
use ferry_core::model::ModelSpec;
use ferry_core::openai::{
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
    EmbeddingRequest, EmbeddingResponse, ModelList, ModelObject, Usage,
};
use ferry_core::ports::{Endpoint, StoredModel, Tenant, UpstreamReply};
use ferry_core::principal::{Credential, Principal};
use ferry_core::ratelimit::{Bucket, Unit};
use ferry_core::route::{Availability, Route};
use ferry_core::{ApiError, ErrorKind, Money};
use serde_json::Value;

use crate::app::{AppState, Caller, RequestId, RequestLog};
use crate::cache::{Keeper, Lookup};
use crate::clock;
use crate::edge::{Served, grant_header};
use crate::error::{Failure, HandlerResult, add_headers};
use crate::extract::JsonBody;
use crate::meter::{Meter, MeterParams};
use crate::metrics::ResultLabels;
use crate::relay::relay;
use tracing::Instrument;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route(ferry_core::edge::HITS_PATH, post(crate::edge::report_hits))
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
    Caller(principal): Caller,
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
    let output = Output {
        requested,
        param,
        choices: request.n.unwrap_or(1),
        prompts: 1,
        default: None,
    };
    let call = Call {
        endpoint: Endpoint::ChatCompletions,
        model_id: &request.model,
        stream: request.is_stream(),
        include_usage,
        output: Some(output),
        body_bytes: body.byte_len,
        media_parts: request.media_parts(),
        directives: directives(&headers)?,
    };
    dispatch(&state, request_id, &log, &principal, call, body.raw).await
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
    Caller(principal): Caller,
    headers: HeaderMap,
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
        output: Some(Output {
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
    };
    dispatch(&state, request_id, &log, &principal, call, body.raw).await
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
    Caller(principal): Caller,
    headers: HeaderMap,
    body: JsonBody<EmbeddingRequest>,
) -> HandlerResult<Response> {
    body.typed.validate()?;
    let call = Call {
        endpoint: Endpoint::Embeddings,
        model_id: &body.typed.model,
        stream: false,
        include_usage: false,
        output: None,
        body_bytes: body.byte_len,
        media_parts: 0,
        directives: directives(&headers)?,
    };
    dispatch(&state, request_id, &log, &principal, call, body.raw).await
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
    /// What the call may generate; none for embeddings.
    output: Option<Output>,
    body_bytes: usize,
    /// Non-text content parts, each bounded apart from the body's bytes.
    media_parts: u64,
    /// What the caller asked of the response cache.
    directives: Directives,
}

fn directives(headers: &HeaderMap) -> Result<Directives, ApiError> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    Directives::parse(text("cache-control"), text(cache::TTL_HEADER))
}

struct Output {
    /// `max_tokens` as the caller set it, if they did.
    requested: Option<u32>,
    /// The field they set it in, for errors.
    param: &'static str,
    /// `n`: each choice may generate the maximum.
    choices: u32,
    /// Prompts in one call (legacy completions take a batch).
    prompts: u64,
    /// What the endpoint generates when `max_tokens` is absent; none: up to the model's cap.
    default: Option<u32>,
}

/// Route → admit → dispatch → meter, for every endpoint alike.
/// [`dispatch_call`] in a span of its own, named and attributed as the OpenTelemetry GenAI
/// conventions say; a stream's span lasts until the stream ends.
async fn dispatch(
    state: &AppState,
    request_id: RequestId,
    log: &RequestLog,
    principal: &Principal,
    call: Call<'_>,
    body: Value,
) -> HandlerResult<Response> {
    let operation = crate::telemetry::gen_ai_operation(call.endpoint);
    let span = tracing::info_span!(
        "gen_ai",
        // Named once the model is known to exist: never after a string a caller made up.
        otel.name = operation,
        "gen_ai.operation.name" = operation,
        "gen_ai.request.model" = tracing::field::Empty,
        "gen_ai.response.model" = tracing::field::Empty,
        "gen_ai.usage.input_tokens" = tracing::field::Empty,
        "gen_ai.usage.output_tokens" = tracing::field::Empty,
        "ferry.deployment" = tracing::field::Empty,
        "ferry.route" = tracing::field::Empty,
        "ferry.attempts" = tracing::field::Empty,
        "ferry.cache" = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    dispatch_call(state, request_id, log, principal, call, body)
        .instrument(span)
        .await
}

async fn dispatch_call(
    state: &AppState,
    request_id: RequestId,
    log: &RequestLog,
    principal: &Principal,
    call: Call<'_>,
    mut body: Value,
) -> HandlerResult<Response> {
    let model = state
        .store
        .get_model(call.model_id)
        .await?
        .ok_or_else(|| ApiError::unknown_model(call.model_id))?;
    log.set_model(&model.spec.id);
    let span = tracing::Span::current();
    crate::telemetry::rename_current_span(format!(
        "{} {}",
        crate::telemetry::gen_ai_operation(call.endpoint),
        model.spec.id
    ));
    span.record("gen_ai.request.model", model.spec.id.as_str());
    if !principal.may_use_model(call.model_id) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("This key may not use the model `{}`.", call.model_id),
        )
        .with_param("model")
        .with_code("model_not_allowed")
        .into());
    }
    let (output_max, output_likely) = match &call.output {
        Some(output) => {
            let cap = model.spec.output_cap();
            let each = u64::from(output.choices).saturating_mul(output.prompts);
            let (most, likely) = match output.requested {
                Some(requested) if requested > cap => {
                    return Err(ApiError::invalid(
                        output.param,
                        format!(
                            "{} is {requested}, above this model's limit of {cap}",
                            output.param
                        ),
                    )
                    .into());
                }
                Some(requested) => (u64::from(requested), u64::from(requested)),
                // The endpoint's own default (16 for legacy completions) is made explicit, so
                // every backend stops where the hold assumes. A chat call without
                // `max_tokens` is held at the model's cap and left as the caller sent it:
                // backends reject a `max_tokens` the prompt leaves no room for, and the
                // charge never exceeds the hold whatever the backend does.
                None => match output.default {
                    Some(default) => {
                        let limit = default.min(cap);
                        body["max_tokens"] = Value::from(limit);
                        (u64::from(limit), u64::from(limit))
                    }
                    None => (u64::from(cap), TYPICAL_OUTPUT_TOKENS),
                },
            };
            (most.saturating_mul(each), likely.saturating_mul(each))
        }
        None => (0, 0),
    };
    let now_ms = clock::unix_millis();
    let route_span = tracing::info_span!(
        "route",
        "ferry.route.first" = tracing::field::Empty,
        "ferry.route.candidates" = tracing::field::Empty,
    );
    let planned = route_span.in_scope(|| {
        Route::plan(&model.spec, clock::random_u64(), |deployment| {
            state.breakers.availability(&model.spec, deployment, now_ms)
        })
    });
    if let Ok(route) = &planned {
        let candidates: Vec<&str> = route.candidates().iter().map(|d| d.id.as_str()).collect();
        route_span.record("ferry.route.first", candidates[0]);
        route_span.record("ferry.route.candidates", candidates.join(",").as_str());
    }
    drop(route_span);
    let decision = cache::decide(call.endpoint, &body, &call.directives);
    let (mut route, unavailable) = match planned {
        Ok(route) => (route, None),
        Err(unavailable) => {
            let error = ApiError::new(
                ErrorKind::NoCapacity,
                "No deployment of this model is taking calls now; retry shortly.",
            )
            .with_code("deployments_unavailable");
            let error = match unavailable.retry_after_ms {
                Some(ms) => error.retry_after(ms.div_ceil(1000).max(1)),
                None => error,
            };
            // A kept answer may still serve it. Looked for before admission (so an outage
            // costs the store nothing), under each deployment's key; then the call is planned
            // onto the deployment whose answer was kept, and no backend is called.
            let mut kept_on = None;
            if matches!(decision, Decision::Use { read: true, .. }) {
                for deployment in &model.spec.deployments {
                    let key = cache_key(principal, &model.spec, deployment, call.endpoint, &body);
                    if state.cache.peek(key, clock::unix_millis()).await.is_some() {
                        kept_on = Some(deployment.id.as_str());
                        break;
                    }
                }
            }
            let Some(kept_on) = kept_on else {
                return Err(error.into());
            };
            let only_kept = |deployment: &Deployment| {
                if deployment.id == kept_on {
                    Availability::Available
                } else {
                    Availability::OpenFor(1)
                }
            };
            match Route::plan(&model.spec, clock::random_u64(), only_kept) {
                Ok(route) => (route, Some(error)),
                Err(_) => return Err(error.into()),
            }
        }
    };
    let deployment = route.candidates()[0];
    // A fallback may answer: the hold covers the dearest deployment the call may reach.
    let mut prices = Vec::with_capacity(route.candidates().len());
    for candidate in route.candidates() {
        prices.push(
            state
                .accounts
                .price_at(&model.spec.id, &candidate.id, now_ms)
                .await?,
        );
    }
    let estimate = TokenEstimate::new(call.body_bytes, call.media_parts, output_max, output_likely);
    let rate = match &principal.tenant_id {
        Some(tenant_id) => {
            let admission = AdmissionInput {
                request_id: &request_id.0,
                principal,
                caller: &principal.credential.caller_id(),
                tenant_id,
                model: &model.spec,
                deployment: &deployment.id,
                endpoint: call.endpoint,
                estimate,
                hold: prices
                    .iter()
                    .flatten()
                    .map(|price| estimate.worst_case_cost(price))
                    .max()
                    .unwrap_or(Money::ZERO),
                now_ms,
                rate_limited: true,
            };
            let admitted = admit(state, admission)
                .instrument(tracing::info_span!("admit"))
                .await?;
            // The tenant admission read: no second read to know whether to log the prompt.
            if admitted.tenant.log_prompts {
                log_prompt(&request_id, tenant_id, &model.spec.id, &body);
            }
            admitted.rate
        }
        // Operators' own calls are neither limited nor billed.
        None => RateStatus::default(),
    };
    let key = cache_key(principal, &model.spec, deployment, call.endpoint, &body);
    if call.stream {
        // Usage is always asked of the upstream, so every stream can be metered.
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut meter = Meter::new(MeterParams {
        accounts: state.accounts.clone(),
        request_id: request_id.0,
        principal,
        model_id: model.spec.id.clone(),
        deployment_id: deployment.id.clone(),
        endpoint: call.endpoint,
        price: prices[0].clone(),
        admitted_at: now_ms / 1000,
        time_limit: state.money.call_time_limit(),
        metrics: state.metrics.clone(),
    });
    // What an edge's grant says of this call, once its answer is known.
    let served = Served {
        principal,
        model: &model.spec.id,
        deployment: &deployment.id,
        endpoint: call.endpoint,
    };
    let mut keep = None;
    let status = match decision {
        Decision::Bypass(_) => CacheStatus::Bypass,
        Decision::Use {
            read,
            write,
            ttl_seconds,
        } => {
            let leader = if read {
                // Waiting for an identical call in flight is bounded like the call itself.
                let looked = tokio::time::timeout_at(
                    meter.deadline(),
                    state.cache.lookup(key, clock::unix_millis),
                )
                .await
                .unwrap_or_else(|_| Lookup::Lead(state.cache.alone(key)));
                match looked {
                    Lookup::Hit(entry) => {
                        meter.set_cache_status(CacheStatus::Hit);
                        let mut response =
                            answer_from_cache(meter, &entry.response, &call, &model.spec.id)
                                .await?;
                        add_headers(response.headers_mut(), &rate.headers());
                        if !call.stream {
                            let kept_usage: Usage = entry
                                .response
                                .get("usage")
                                .and_then(|usage| serde_json::from_value(usage.clone()).ok())
                                .unwrap_or_default();
                            add_grant(
                                &mut response,
                                state,
                                &served,
                                &kept_usage,
                                entry.expires_at_ms,
                            );
                        }
                        return Ok(response);
                    }
                    Lookup::Lead(leader) => Some(leader),
                }
            } else {
                None
            };
            if write {
                keep = Some(Keeper {
                    cache: state.cache.clone(),
                    key,
                    endpoint: call.endpoint,
                    expires_at_ms: clock::unix_millis()
                        .saturating_add(ttl_seconds.saturating_mul(1000)),
                    leader,
                });
            }
            CacheStatus::Miss
        }
    };
    meter.set_cache_status(status);
    if let Some(error) = unavailable {
        if let Some(keeper) = keep.take() {
            keeper.finish(None);
        }
        let _ = meter
            .record(&Usage::default(), error.kind.status(), None)
            .await;
        return Err(error.into());
    }
    let request = crate::route::Request {
        endpoint: call.endpoint,
        body,
        stream: call.stream,
        deadline: meter.deadline(),
        upstream: state.upstream.as_ref(),
        breakers: &state.breakers,
        metrics: &state.metrics,
    };
    let candidates = route.candidates().to_vec();
    let price_of = |served: &Deployment| {
        candidates
            .iter()
            .position(|candidate| candidate.id == served.id)
            .and_then(|index| prices.get(index).cloned().flatten())
    };
    meter.upstream_begins();
    let answered = crate::route::call(
        &model.spec,
        &mut route,
        request,
        &mut |trying, reason, attempts| {
            meter.set_route(&trying.id, price_of(trying), reason, attempts);
        },
    )
    .await;
    let attempts = route.attempts();
    let reply = match answered {
        Ok(answered) => {
            let span = tracing::Span::current();
            span.record(
                "gen_ai.response.model",
                answered.deployment.upstream.model.as_str(),
            );
            span.record("ferry.deployment", answered.deployment.id.as_str());
            span.record("ferry.route", answered.reason.as_str());
            span.record("ferry.attempts", i64::from(attempts));
            if let Some(permit) = answered.permit {
                meter.judge_on_record(permit);
            }
            // The cache key names the first pick's backend: another's answer is not kept under it.
            if answered.deployment.id != deployment.id
                && let Some(keeper) = keep.take()
            {
                keeper.finish(None);
            }
            answered.reply
        }
        Err(failed) => {
            let span = tracing::Span::current();
            span.record("ferry.deployment", failed.deployment.id.as_str());
            span.record("ferry.attempts", i64::from(attempts));
            meter.upstream_ends();
            let api_error = failed.error.to_api_error();
            let _ = meter
                .record(&Usage::default(), api_error.kind.status(), None)
                .await;
            return Err(api_error.into());
        }
    };
    let mut response = match (reply, call.stream) {
        (UpstreamReply::Stream(stream), true) => relay(
            stream,
            meter,
            call.include_usage,
            keep,
            state.money.stream_write_timeout,
        ),
        (UpstreamReply::Complete(mut response), false) => {
            meter.upstream_ends();
            let reported: Option<Usage> = response
                .get("usage")
                .and_then(|usage| serde_json::from_value(usage.clone()).ok());
            // An answer without the backend's own usage is served, but never kept: a replay
            // would charge for tokens nobody counted.
            let countable = reported.is_some();
            let mut usage = reported.unwrap_or_default();
            meter.price_usage(&mut usage);
            // Settled before the answer leaves: an answer the caller holds is already charged,
            // and its `usage.cost` is what was charged.
            match meter.record(&usage, 200, None).await {
                Ok(charged) => usage.cost = Some(charged),
                Err(not_settled) => return Err(not_settled.to_api_error().into()),
            }
            if let Some(object) = response.as_object_mut() {
                object.insert("model".into(), Value::String(model.spec.id.clone()));
                object.insert(
                    "usage".into(),
                    serde_json::to_value(&usage).unwrap_or(Value::Null),
                );
            }
            let kept_until = match keep {
                // Only an answer the cache keeps is granted to edges.
                Some(keep) if countable && cache::is_storable(call.endpoint, &response) => {
                    let expires_at_ms = keep.expires_at_ms;
                    keep.finish(Some(response.clone()));
                    Some(expires_at_ms)
                }
                Some(keep) => {
                    keep.finish(None);
                    None
                }
                None => None,
            };
            let mut answer = Json(response).into_response();
            if let Some(expires_at_ms) = kept_until {
                add_grant(&mut answer, state, &served, &usage, expires_at_ms);
            }
            answer
        }
        // A whole answer to a streamed request, or a stream to a plain one: the backend is broken.
        _ => {
            let error = wrong_mode();
            let _ = meter
                .record(&Usage::default(), error.0.kind.status(), None)
                .await;
            return Err(error);
        }
    };
    add_headers(response.headers_mut(), &rate.headers());
    set_cache_status(&mut response, status);
    Ok(response)
}

/// The most of a request's text one log line carries.
const MAX_LOGGED_PROMPT_BYTES: usize = 64 * 1024;

/// Logs what a call asked (its messages, prompt or input) for a tenant whose operator turned
/// prompt logging on; nothing of it reaches metrics or traces.
fn log_prompt(request_id: &RequestId, tenant_id: &str, model: &str, body: &Value) {
    let asked = ["messages", "prompt", "input"]
        .iter()
        .find_map(|field| body.get(*field))
        .map(Value::to_string)
        .unwrap_or_default();
    let mut end = asked.len().min(MAX_LOGGED_PROMPT_BYTES);
    while !asked.is_char_boundary(end) {
        end -= 1;
    }
    tracing::info!(
        target: "ferry::prompts",
        request_id = %request_id.0,
        tenant = %tenant_id,
        model = %model,
        truncated = end < asked.len(),
        prompt = %&asked[..end],
        "prompt"
    );
}

/// The response cache's key for a call answered by `deployment`. The tenant is part of it: no
/// lookup can reach another tenant's answers. So is the deployment's backend: a changed
/// backend never answers from its predecessor's entries.
fn cache_key(
    principal: &Principal,
    model: &ModelSpec,
    deployment: &Deployment,
    endpoint: Endpoint,
    body: &Value,
) -> CacheKey {
    let subject = match &principal.tenant_id {
        Some(tenant_id) => format!("tenant:{tenant_id}"),
        None => "operator".to_owned(),
    };
    let backend = format!(
        "{}\n{}\n{}\n{}",
        model.id, deployment.id, deployment.upstream.url, deployment.upstream.model
    );
    CacheKey::of(&subject, &backend, endpoint, body)
}

/// Lets an edge keep this answer (and bill its replays), when edges are configured.
fn add_grant(
    response: &mut Response,
    state: &AppState,
    served: &Served<'_>,
    usage: &Usage,
    expires_at_ms: u64,
) {
    if let Some(grant) = grant_header(state, served, usage, expires_at_ms) {
        response
            .headers_mut()
            .insert(ferry_core::edge::GRANT_HEADER, grant);
    }
}

fn set_cache_status(response: &mut Response, status: CacheStatus) {
    response.headers_mut().insert(
        cache::STATUS_HEADER,
        HeaderValue::from_static(status.as_str()),
    );
}

/// Answers from a kept answer: charged at the cache-hit price (settled before it is sent),
/// replayed as SSE to a caller who streams, with the kept text and token counts.
async fn answer_from_cache(
    meter: Meter,
    kept: &Value,
    call: &Call<'_>,
    model_id: &str,
) -> HandlerResult<Response> {
    let mut answer = kept.clone();
    let mut usage: Usage = answer
        .get("usage")
        .and_then(|usage| serde_json::from_value(usage.clone()).ok())
        .unwrap_or_default();
    meter.price_hit(&mut usage);
    match meter.record(&usage, 200, None).await {
        Ok(charged) => usage.cost = Some(charged),
        Err(not_settled) => return Err(not_settled.to_api_error().into()),
    }
    answer["usage"] = serde_json::to_value(&usage).unwrap_or(Value::Null);
    answer["model"] = Value::String(model_id.to_owned());
    let mut response = if call.stream {
        let events = cache::chat_as_sse(&answer, call.include_usage);
        let mut response = Response::new(Body::from(events.concat()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    } else {
        Json(answer).into_response()
    };
    set_cache_status(&mut response, CacheStatus::Hit);
    Ok(response)
}

pub(crate) struct AdmissionInput<'a> {
    pub request_id: &'a str,
    pub principal: &'a Principal,
    /// Whom the call's usage is attributed to (`Credential::caller_id`).
    pub caller: &'a str,
    pub tenant_id: &'a str,
    pub model: &'a ModelSpec,
    pub deployment: &'a str,
    pub endpoint: Endpoint,
    pub estimate: TokenEstimate,
    pub hold: Money,
    pub now_ms: u64,
    /// False for calls already served (edge hits, reported after the fact): billed, but no
    /// rate limit can refuse what was delivered.
    pub rate_limited: bool,
}

/// Takes from every rate-limit bucket that applies (key, tenant, model) and holds the
/// worst-case cost, in one atomic store operation; or refuses with 429 or 402.
/// An admitted call: its rate-limit status, and the tenant as admission read it.
pub(crate) struct Admitted {
    pub rate: RateStatus,
    pub tenant: Tenant,
}

pub(crate) async fn admit(state: &AppState, input: AdmissionInput<'_>) -> HandlerResult<Admitted> {
    let tenant = state
        .store
        .get_tenant(input.tenant_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "This key's tenant no longer exists.",
            )
        })?;
    let key_id = match &input.principal.credential {
        Credential::ApiKey { key_id } => Some(key_id.as_str()),
        Credential::Jwt { .. } => None,
    };
    let policy = &input.principal.key_policy;
    let mut scopes = vec![(format!("tenant:{}", tenant.id), tenant.limits)];
    if let Some(key_id) = key_id {
        scopes.push((format!("key:{key_id}"), policy.limits));
    }
    scopes.push((format!("model:{}", input.model.id), input.model.limits));
    let scopes = if input.rate_limited {
        scopes
    } else {
        Vec::new()
    };
    let draws = scopes
        .iter()
        .flat_map(|(scope, limits)| Bucket::all_for(scope, *limits))
        .map(|bucket| {
            let amount = match bucket.unit {
                Unit::Requests => 1,
                Unit::Tokens => input.estimate.rate_tokens(),
            };
            Draw { bucket, amount }
        })
        .collect();
    let caps = spend_caps(
        &tenant.id,
        &tenant.budgets,
        key_id.map(|key_id| (key_id, policy.budgets.as_slice(), policy.credit_cap)),
        input.now_ms / 1000,
    );
    let admission = Admission {
        request_id: input.request_id.to_owned(),
        tenant_id: tenant.id.clone(),
        key_id: Some(input.caller.to_owned()),
        model: input.model.id.clone(),
        deployment: input.deployment.to_owned(),
        endpoint: input.endpoint.name().to_owned(),
        billing: tenant.billing,
        hold: input.hold,
        draws,
        caps,
        now_ms: input.now_ms,
        expires_at_ms: input.now_ms.saturating_add(state.money.hold_ttl_ms()),
    };
    let decided = state.accounts.admit(&admission).await?;
    let result = match &decided {
        Ok(_) => "admitted",
        Err(Refusal::RateLimited {
            unit: Unit::Requests,
            ..
        }) => "rate_limited_requests",
        Err(Refusal::RateLimited {
            unit: Unit::Tokens, ..
        }) => "rate_limited_tokens",
        Err(Refusal::Credit { source, .. }) => source.as_str(),
    };
    state
        .metrics
        .admissions
        .get_or_create(&ResultLabels { result })
        .inc();
    match decided {
        Ok(grant) => {
            if let Ok(held) = u64::try_from(input.hold.nanos()) {
                state.metrics.held_nanodollars.inc_by(held);
            }
            Ok(Admitted {
                rate: grant.rate,
                tenant,
            })
        }
        Err(refusal) => Err(refusal.to_api_error().into()),
    }
}

fn wrong_mode() -> Failure {
    ApiError::new(
        ErrorKind::UpstreamFailed,
        "The model backend answered in the wrong mode.",
    )
    .into()
}
