//! The response cache's part in a call (`crate::cache` is the cache itself): the key an answer
//! is kept under, looking for a kept answer or the lead on making it, serving a kept answer
//! (charged at the cache-hit price, replayed as SSE to a caller who streams), and a kept answer
//! that still serves while no deployment of the model takes calls.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ferry_core::admission::RateStatus;
use ferry_core::cache::{self, CacheKey, CacheStatus, Decision, Entry};
use ferry_core::call::CallShape;
use ferry_core::model::{Deployment, ModelSpec};
use ferry_core::openai::Usage;
use ferry_core::ports::Endpoint;
use ferry_core::principal::Principal;
use serde_json::Value;

use super::grants::{Served, add_grant};
use super::meter::Meter;
use crate::app::AppState;
use crate::cache::{Keeper, Lookup};
use crate::clock;
use crate::error::{HandlerResult, add_headers};

/// The response cache's key for a call answered by `deployment`. The tenant is part of it: no
/// lookup can reach another tenant's answers. So is the deployment's backend: a changed
/// backend never answers from its predecessor's entries.
pub(super) fn key(
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

/// What the cache has for a call.
pub(super) enum Found {
    /// A kept answer: serve it.
    Hit(std::sync::Arc<Entry>),
    /// None: the call goes upstream, and hands its answer to the keeper (if it may be kept).
    Miss(Option<Keeper>),
    /// The cache takes no part.
    Bypass,
}

/// Looks for the call's answer, or takes the lead on making it (identical calls in flight wait
/// for the leader's answer, no longer than the call itself may take).
pub(super) async fn look(
    state: &AppState,
    decision: &Decision,
    key: CacheKey,
    endpoint: Endpoint,
    deadline: tokio::time::Instant,
) -> Found {
    let Decision::Use {
        read,
        write,
        ttl_seconds,
    } = *decision
    else {
        return Found::Bypass;
    };
    let leader = if read {
        let looked = tokio::time::timeout_at(deadline, state.cache.lookup(key, clock::unix_millis))
            .await
            .unwrap_or_else(|_| Lookup::Lead(state.cache.alone(key)));
        match looked {
            Lookup::Hit(entry) => return Found::Hit(entry),
            Lookup::Lead(leader) => Some(leader),
        }
    } else {
        None
    };
    Found::Miss(write.then(|| Keeper {
        cache: state.cache.clone(),
        key,
        endpoint,
        expires_at_ms: clock::unix_millis().saturating_add(ttl_seconds.saturating_mul(1000)),
        leader,
    }))
}

/// While no deployment of `model` takes calls, a kept answer may still serve the call: the
/// deployment whose answer is kept, if any. Looked for before admission, so an outage costs
/// the store nothing.
pub(super) async fn kept_during_outage<'m>(
    state: &AppState,
    principal: &Principal,
    model: &'m ModelSpec,
    decision: &Decision,
    endpoint: Endpoint,
    body: &Value,
) -> Option<&'m Deployment> {
    if !matches!(decision, Decision::Use { read: true, .. }) {
        return None;
    }
    for deployment in &model.deployments {
        let key = key(principal, model, deployment, endpoint, body);
        if state.cache.peek(key, clock::unix_millis()).await.is_some() {
            return Some(deployment);
        }
    }
    None
}

/// Serves a kept answer: with the call's rate-limit headers, and (a plain answer) a grant
/// that lets an edge keep it too.
pub(super) async fn serve(
    state: &AppState,
    meter: Meter,
    entry: &Entry,
    shape: &CallShape,
    served: &Served<'_>,
    rate: &RateStatus,
) -> HandlerResult<Response> {
    let (mut response, kept_usage) = answer(meter, &entry.response, shape).await?;
    add_headers(response.headers_mut(), &rate.headers());
    if !shape.stream {
        add_grant(
            &mut response,
            state,
            served,
            &kept_usage,
            entry.expires_at_ms,
        );
    }
    Ok(response)
}

/// Answers from a kept answer: charged at the cache-hit price (settled before it is sent), with
/// the kept text and token counts; and its usage, for the edge's grant.
async fn answer(
    mut meter: Meter,
    kept: &Value,
    shape: &CallShape,
) -> HandlerResult<(Response, Usage)> {
    meter.set_cache_status(CacheStatus::Hit);
    let model_id = meter.model_id().to_owned();
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
    answer["model"] = Value::String(model_id);
    let mut response = if shape.stream {
        let events = cache::chat_as_sse(&answer, shape.include_usage);
        let mut response = Response::new(Body::from(events.concat()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    } else {
        Json(answer).into_response()
    };
    set_status(&mut response, CacheStatus::Hit);
    let kept_usage = kept
        .get("usage")
        .and_then(|usage| serde_json::from_value(usage.clone()).ok())
        .unwrap_or_default();
    Ok((response, kept_usage))
}

pub(super) fn set_status(response: &mut Response, status: CacheStatus) {
    response.headers_mut().insert(
        cache::STATUS_HEADER,
        HeaderValue::from_static(status.as_str()),
    );
}
