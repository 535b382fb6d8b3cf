//! A model call, top to bottom: plan (the core's rules) → admit → answer from the cache, or
//! forward along the route → settle. [`serve`] runs it in a span named and attributed as the
//! OpenTelemetry GenAI conventions say; a stream's span lasts until the stream ends.

use axum::Json;
use axum::response::{IntoResponse, Response};
use ferry_core::admission::RateStatus;
use ferry_core::cache::CacheStatus;
use ferry_core::call::{self, CallPlan, CallShape};
use ferry_core::model::{Deployment, ModelSpec, Price};
use ferry_core::openai::Usage;
use ferry_core::ports::{StoredModel, UpstreamReply};
use ferry_core::principal::Principal;
use ferry_core::route::Route;
use ferry_core::{ApiError, ErrorKind};
use serde_json::Value;
use tracing::Instrument;

use super::admit;
use super::cached::{self, Found};
use super::grants::{Served, add_grant};
use super::meter::{Meter, MeterParams};
use super::relay::relay;
use super::route::{self, Answered};
use crate::app::{AppState, RequestId, RequestLog};
use crate::cache::Keeper;
use crate::clock;
use crate::error::{ErrorResponse, HandlerResult, add_headers};
use ferry_core::call::{AdmissionAsk, Attribution};

/// Who is calling, as the handler knows them, and when the call began.
pub(super) struct Caller<'a> {
    state: &'a AppState,
    request_id: RequestId,
    log: &'a RequestLog,
    principal: &'a Principal,
    now_ms: u64,
}

impl<'a> Caller<'a> {
    pub fn new(
        state: &'a AppState,
        request_id: RequestId,
        log: &'a RequestLog,
        principal: &'a Principal,
    ) -> Caller<'a> {
        Caller {
            state,
            request_id,
            log,
            principal,
            now_ms: clock::unix_millis(),
        }
    }
}

/// Serves a call to `model_id` of `shape`, whose JSON is `body`.
pub(super) async fn serve(
    caller: Caller<'_>,
    model_id: &str,
    shape: CallShape,
    body: Value,
) -> HandlerResult<Response> {
    let operation = crate::telemetry::gen_ai_operation(shape.endpoint);
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
    run(caller, model_id, shape, body).instrument(span).await
}

/// The sequence.
async fn run(
    caller: Caller<'_>,
    model_id: &str,
    shape: CallShape,
    mut body: Value,
) -> HandlerResult<Response> {
    let (state, principal) = (caller.state, caller.principal);
    let model = usable_model(state, caller.log, principal, model_id, shape.endpoint).await?;
    let plan = call::plan(&model.spec, &shape, &body)?;
    if let Some(limit) = plan.set_max_tokens {
        body["max_tokens"] = Value::from(limit);
    }
    let now_ms = caller.now_ms;
    let (mut route, outage) =
        plan_route(state, principal, &model.spec, &shape, &plan, &body).await?;
    let mut prices = prices(state, &model.spec, &route, now_ms).await?;
    if shape.batch {
        for price in prices.iter_mut().flatten() {
            *price = price.for_batch();
        }
    }
    let deployment = route.candidates()[0];
    let rate = admit_call(
        &caller,
        &model.spec,
        deployment,
        &shape,
        &plan,
        &prices,
        &body,
    )
    .await?;
    let key = cached::key(principal, &model.spec, deployment, shape.endpoint, &body);
    if shape.stream {
        // Usage is always asked of the upstream, so every stream can be metered.
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut meter = meter(
        &caller,
        &model.spec,
        deployment,
        &shape,
        prices[0].clone(),
        now_ms,
        plan.attribution.clone(),
    );
    let served = Served {
        principal,
        model: &model.spec.id,
        deployment: &deployment.id,
        endpoint: shape.endpoint,
    };
    let deadline = meter.deadline();
    let keep = match cached::look(state, &plan.cache, key, shape.endpoint, deadline).await {
        Found::Hit(entry) => {
            return cached::serve(state, meter, &entry, &shape, &served, &rate).await;
        }
        Found::Miss(keep) => {
            meter.set_cache_status(CacheStatus::Miss);
            keep
        }
        Found::Bypass => None,
    };
    if let Some(outage) = outage {
        // The kept answer was gone by the time it was looked for.
        if let Some(keep) = keep {
            keep.finish(None);
        }
        let _ = meter
            .record(&Usage::default(), outage.kind.status(), None)
            .await;
        return Err(outage.into());
    }
    let answered = forward(
        state,
        &model.spec,
        &mut route,
        &mut meter,
        &shape,
        body,
        &prices,
    )
    .await;
    let mut response = respond(state, meter, answered, keep, &shape, &served).await?;
    add_headers(response.headers_mut(), &rate.headers());
    cached::set_status(&mut response, plan.cache.status());
    Ok(response)
}

/// What the route's answer becomes for the caller: a stream relayed, or a whole answer
/// settled; a failure settled as what it was.
async fn respond(
    state: &AppState,
    meter: Meter,
    answered: Result<Answered<'_>, ApiError>,
    keep: Option<Keeper>,
    shape: &CallShape,
    served: &Served<'_>,
) -> HandlerResult<Response> {
    let Answered {
        reply,
        deployment,
        permit,
        ..
    } = match answered {
        Ok(answered) => answered,
        Err(error) => {
            let _ = meter
                .record(&Usage::default(), error.kind.status(), None)
                .await;
            return Err(error.into());
        }
    };
    // The cache key names the first pick's backend: another's answer is not kept under it.
    let keep = match keep {
        Some(keep) if deployment.id != served.deployment => {
            keep.finish(None);
            None
        }
        keep => keep,
    };
    match (reply, shape.stream, permit) {
        (UpstreamReply::Stream(stream), true, permit) => {
            let timeout = state.money.stream_write_timeout;
            Ok(relay(
                stream,
                meter,
                permit,
                shape.include_usage,
                keep,
                timeout,
            ))
        }
        (UpstreamReply::Complete(answer), false, _) => {
            complete(state, meter, answer, keep, served).await
        }
        // A whole answer to a streamed request, or a stream to a plain one: the backend is broken.
        (_, _, permit) => {
            if let Some(permit) = permit {
                permit.finish(false);
            }
            let error = ApiError::new(
                ErrorKind::UpstreamFailed,
                "The model backend answered in the wrong mode.",
            );
            let _ = meter
                .record(&Usage::default(), error.kind.status(), None)
                .await;
            Err(error.into())
        }
    }
}

/// The model, if it exists and the caller may use it; the call's span and log line name it.
async fn usable_model(
    state: &AppState,
    log: &RequestLog,
    principal: &Principal,
    model_id: &str,
    endpoint: ferry_core::ports::Endpoint,
) -> HandlerResult<StoredModel> {
    let model = state
        .store
        .get_model(model_id)
        .await?
        .ok_or_else(|| ApiError::unknown_model(model_id))?;
    log.set_model(&model.spec.id);
    crate::telemetry::rename_current_span(format!(
        "{} {}",
        crate::telemetry::gen_ai_operation(endpoint),
        model.spec.id
    ));
    tracing::Span::current().record("gen_ai.request.model", model.spec.id.as_str());
    if !principal.may_use_model(model_id) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!("This key may not use the model `{model_id}`."),
        )
        .with_param("model")
        .with_code("model_not_allowed")
        .into());
    }
    Ok(model)
}

/// The call's route past the breakers' current verdicts. When no deployment takes calls, a
/// kept answer may still serve it: the call is routed onto the deployment it was kept for (no
/// backend is called), with the outage to answer if the cache turns out to have nothing.
async fn plan_route<'m>(
    state: &AppState,
    principal: &Principal,
    model: &'m ModelSpec,
    shape: &CallShape,
    plan: &CallPlan,
    body: &Value,
) -> HandlerResult<(Route<'m>, Option<ApiError>)> {
    let now_ms = clock::unix_millis();
    let span = tracing::info_span!(
        "route",
        "ferry.route.first" = tracing::field::Empty,
        "ferry.route.candidates" = tracing::field::Empty,
    );
    let planned = span.in_scope(|| {
        Route::plan(model, clock::random_u64(), |deployment| {
            state.breakers.availability(model, deployment, now_ms)
        })
    });
    let unavailable = match planned {
        Ok(route) => {
            let candidates: Vec<&str> = route.candidates().iter().map(|d| d.id.as_str()).collect();
            span.record("ferry.route.first", candidates[0]);
            span.record("ferry.route.candidates", candidates.join(",").as_str());
            return Ok((route, None));
        }
        Err(unavailable) => unavailable,
    };
    let error = ApiError::new(
        ErrorKind::NoCapacity,
        "No deployment of this model is taking calls now; retry shortly.",
    )
    .with_code("deployments_unavailable");
    let error = match unavailable.retry_after_ms {
        Some(ms) => error.retry_after(ms.div_ceil(1000).max(1)),
        None => error,
    };
    let kept_on =
        cached::kept_during_outage(state, principal, model, &plan.cache, shape.endpoint, body)
            .await;
    match kept_on.map(|kept_on| Route::onto(model, &kept_on.id, clock::random_u64())) {
        Some(Ok(route)) => Ok((route, Some(error))),
        _ => Err(error.into()),
    }
}

/// Each candidate deployment's price in effect now.
async fn prices(
    state: &AppState,
    model: &ModelSpec,
    route: &Route<'_>,
    now_ms: u64,
) -> HandlerResult<Vec<Option<Price>>> {
    let mut prices = Vec::with_capacity(route.candidates().len());
    for candidate in route.candidates() {
        prices.push(
            state
                .accounts
                .price_at(&model.id, &candidate.id, now_ms)
                .await?,
        );
    }
    Ok(prices)
}

/// Admits a tenant's call, holding for the dearest deployment it may reach; operators' own
/// calls are neither limited nor billed.
async fn admit_call(
    caller: &Caller<'_>,
    model: &ModelSpec,
    deployment: &Deployment,
    shape: &CallShape,
    plan: &CallPlan,
    prices: &[Option<Price>],
    body: &Value,
) -> HandlerResult<RateStatus> {
    let Some(tenant_id) = &caller.principal.tenant_id else {
        return Ok(RateStatus::default());
    };
    let admitted = admit(
        caller.state,
        AdmissionAsk {
            request_id: &caller.request_id.0,
            principal: caller.principal,
            caller: &caller.principal.credential.caller_id(),
            tenant_id,
            model,
            deployment: &deployment.id,
            endpoint: shape.endpoint,
            estimate: plan.estimate,
            hold: call::hold(&plan.estimate, prices),
            now_ms: caller.now_ms,
            rate_limited: true,
        },
    )
    .instrument(tracing::info_span!("admit"))
    .await?;
    // The tenant admission read: no second read to know whether to log the prompt.
    if admitted.tenant.log_prompts {
        log_prompt(&caller.request_id, tenant_id, &model.id, body);
    }
    Ok(admitted.rate)
}

fn meter(
    caller: &Caller<'_>,
    model: &ModelSpec,
    deployment: &Deployment,
    shape: &CallShape,
    price: Option<Price>,
    now_ms: u64,
    attribution: Attribution,
) -> Meter {
    Meter::new(MeterParams {
        accounts: caller.state.accounts.clone(),
        request_id: caller.request_id.0.clone(),
        principal: caller.principal,
        model_id: model.id.clone(),
        deployment_id: deployment.id.clone(),
        endpoint: shape.endpoint,
        price,
        admitted_at: now_ms / 1000,
        time_limit: caller.state.money.call_time_limit(),
        metrics: caller.state.metrics.clone(),
        attribution,
    })
}

/// Tries the route until a deployment answers; the meter hears of each attempt.
async fn forward<'m>(
    state: &AppState,
    model: &'m ModelSpec,
    route: &mut Route<'m>,
    meter: &mut Meter,
    shape: &CallShape,
    body: Value,
    prices: &[Option<Price>],
) -> Result<Answered<'m>, ApiError> {
    let request = route::Request {
        endpoint: shape.endpoint,
        body,
        stream: shape.stream,
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
    let answered = route::call(model, route, request, &mut |trying, reason, attempts| {
        meter.set_route(&trying.id, price_of(trying), reason, attempts);
    })
    .await;
    let span = tracing::Span::current();
    span.record("ferry.attempts", i64::from(route.attempts()));
    match answered {
        Ok(answered) => {
            span.record(
                "gen_ai.response.model",
                answered.deployment.upstream.model.as_str(),
            );
            span.record("ferry.deployment", answered.deployment.id.as_str());
            span.record("ferry.route", answered.reason.as_str());
            Ok(answered)
        }
        Err(failed) => {
            span.record("ferry.deployment", failed.deployment.id.as_str());
            meter.upstream_ends();
            Err(failed.error.to_api_error())
        }
    }
}

/// A whole answer: priced, settled before it leaves (an answer the caller holds is already
/// charged, and its `usage.cost` is what was charged), kept if it may be, and granted to edges
/// when kept.
async fn complete(
    state: &AppState,
    mut meter: Meter,
    mut answer: Value,
    keep: Option<Keeper>,
    served: &Served<'_>,
) -> HandlerResult<Response> {
    meter.upstream_ends();
    let model_id = meter.model_id().to_owned();
    let reported: Option<Usage> = answer
        .get("usage")
        .and_then(|usage| serde_json::from_value(usage.clone()).ok());
    // An answer without the backend's own usage is served, but never kept: a replay would
    // charge for tokens nobody counted.
    let countable = reported.is_some();
    let mut usage = reported.unwrap_or_default();
    meter.price_usage(&mut usage);
    match meter.record(&usage, 200, None).await {
        Ok(charged) => usage.cost = Some(charged),
        Err(not_settled) => return Err(ErrorResponse::from(not_settled.to_api_error())),
    }
    if let Some(object) = answer.as_object_mut() {
        ferry_core::openai::fill_required_fields(object);
        object.insert("model".into(), Value::String(model_id));
        object.insert(
            "usage".into(),
            serde_json::to_value(&usage).unwrap_or(Value::Null),
        );
    }
    let kept_until = match keep {
        // Only an answer the cache keeps is granted to edges.
        Some(keep) if countable && ferry_core::cache::is_storable(served.endpoint, &answer) => {
            let expires_at_ms = keep.expires_at_ms;
            keep.finish(Some(answer.clone()));
            Some(expires_at_ms)
        }
        Some(keep) => {
            keep.finish(None);
            None
        }
        None => None,
    };
    let mut response = Json(answer).into_response();
    if let Some(expires_at_ms) = kept_until {
        add_grant(&mut response, state, served, &usage, expires_at_ms);
    }
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
