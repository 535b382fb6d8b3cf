//! Calls a model's route (`ferry_core::route`): each attempt behind its deployment's circuit
//! breaker, with a per-attempt time to first byte; retries and fallbacks until an attempt
//! answers, the route gives up, or the call's deadline comes.
//!
//! Breakers are per process: each replica judges the deployments by what it sees itself, as
//! Envoy's outlier detection does, so no store round trip sits on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::model::{Deployment, ModelSpec};
use ferry_core::ports::{Endpoint, Upstream, UpstreamCall, UpstreamError, UpstreamReply};
use ferry_core::route::{
    Availability, Breaker, BreakerPolicy, BreakerState, Next, Permit, Reason, Recovery, Route,
};
use futures_util::StreamExt;
use serde_json::Value;

use crate::clock;
use crate::metrics::{AttemptLabels, Metrics};
use tracing::Instrument;

/// The circuit breakers of every deployment this process has called.
#[derive(Debug, Default)]
pub struct Breakers {
    by_deployment: Mutex<HashMap<(String, String), Breaker>>,
}

/// One breaker's state, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerReading {
    pub model: String,
    pub deployment: String,
    pub state: BreakerState,
}

impl Breakers {
    fn with<T>(&self, model: &str, deployment: &str, act: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut map = self
            .by_deployment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (model.to_owned(), deployment.to_owned());
        act(map.entry(key).or_default())
    }

    pub fn availability(
        &self,
        model: &ModelSpec,
        deployment: &Deployment,
        now_ms: u64,
    ) -> Availability {
        let policy = breaker_policy(model);
        let map = self
            .by_deployment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Deployments never called have a closed breaker; no need to make one to say so.
        map.get(&(model.id.clone(), deployment.id.clone()))
            .map_or(Availability::Available, |breaker| {
                breaker.availability(&policy, now_ms)
            })
    }

    /// Lets a call to `deployment` through, or says for how many milliseconds none will be.
    pub fn acquire(
        self: &Arc<Breakers>,
        model: &ModelSpec,
        deployment: &Deployment,
        now_ms: u64,
    ) -> Result<BreakerPermit, u64> {
        let policy = breaker_policy(model);
        let permit = self.with(&model.id, &deployment.id, |breaker| {
            breaker.acquire(&policy, now_ms)
        })?;
        Ok(BreakerPermit {
            breakers: Arc::clone(self),
            model: model.id.clone(),
            deployment: deployment.id.clone(),
            policy,
            permit: Some(permit),
        })
    }

    pub fn readings(&self) -> Vec<BreakerReading> {
        let map = self
            .by_deployment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut readings: Vec<BreakerReading> = map
            .iter()
            .map(|((model, deployment), breaker)| BreakerReading {
                model: model.clone(),
                deployment: deployment.clone(),
                state: breaker.state(),
            })
            .collect();
        readings.sort_by(|a, b| (&a.model, &a.deployment).cmp(&(&b.model, &b.deployment)));
        readings
    }
}

fn breaker_policy(model: &ModelSpec) -> BreakerPolicy {
    model
        .route
        .as_ref()
        .map(|route| route.breaker)
        .unwrap_or_default()
}

/// A call a breaker let through. Judge it with [`BreakerPermit::finish`]; dropped unjudged
/// (the caller left), it is given back without a verdict.
pub struct BreakerPermit {
    breakers: Arc<Breakers>,
    model: String,
    deployment: String,
    policy: BreakerPolicy,
    permit: Option<Permit>,
}

impl BreakerPermit {
    /// `ok` unless the deployment failed the call.
    pub fn finish(mut self, ok: bool) {
        if let Some(permit) = self.permit.take() {
            let policy = self.policy;
            self.breakers
                .with(&self.model, &self.deployment, |breaker| {
                    breaker.record(&policy, clock::unix_millis(), permit, ok);
                });
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breakers
                .with(&self.model, &self.deployment, |breaker| {
                    breaker.release(permit)
                });
        }
    }
}

/// The attempt that answered.
pub struct Answered<'a> {
    pub reply: UpstreamReply,
    pub deployment: &'a Deployment,
    pub reason: Reason,
    /// For a stream: its breaker is judged when the stream ends. A whole answer's already was.
    pub permit: Option<BreakerPermit>,
}

/// Every attempt failed, or the route gave up; `deployment` was the last one tried.
pub struct Failed<'a> {
    pub error: UpstreamError,
    pub deployment: &'a Deployment,
    pub reason: Reason,
}

/// What every attempt sends, but for the model name each deployment knows.
pub struct Request<'r> {
    pub endpoint: Endpoint,
    pub body: Value,
    pub stream: bool,
    pub deadline: tokio::time::Instant,
    pub upstream: &'r dyn Upstream,
    pub breakers: &'r Arc<Breakers>,
    pub metrics: &'r Metrics,
}

/// Tries the route until an attempt answers. A stream counts as answered once its first chunk
/// has arrived (and is handed on with it): after that, nothing is retried.
/// `on_attempt` hears of each attempt as it starts (the deployment, why, attempts so far), so
/// a call abandoned midway is still recorded against the deployment it was on.
pub async fn call<'a>(
    model: &ModelSpec,
    route: &mut Route<'a>,
    mut request: Request<'_>,
    on_attempt: &mut (dyn FnMut(&'a Deployment, Reason, u32) + Send),
) -> Result<Answered<'a>, Failed<'a>> {
    let (mut deployment, mut reason) = route.first();
    loop {
        on_attempt(deployment, reason, route.attempts());
        let refused = request
            .breakers
            .acquire(model, deployment, clock::unix_millis());
        let (error, recovery) = match refused {
            // Another call took the half-open breaker's probe since the plan was made: no
            // backend was called; another deployment may take the call.
            Err(open_ms) => (
                UpstreamError::Status {
                    status: 503,
                    message: "the deployment's circuit breaker is open".into(),
                    param: None,
                    retry_after_seconds: Some(open_ms.div_ceil(1000)),
                },
                Recovery::Elsewhere,
            ),
            Ok(permit) => match attempt(deployment, route, &mut request).await {
                Ok(reply) => {
                    count_attempt(request.metrics, model, deployment, "ok");
                    let permit = match reply {
                        UpstreamReply::Complete(_) => {
                            permit.finish(true);
                            None
                        }
                        UpstreamReply::Stream(_) => Some(permit),
                    };
                    return Ok(Answered {
                        reply,
                        deployment,
                        reason,
                        permit,
                    });
                }
                Err(error) => {
                    let recovery = error.recovery();
                    permit.finish(recovery == Recovery::Final);
                    let outcome = match recovery {
                        Recovery::Retryable { .. } => "retryable",
                        Recovery::Elsewhere => "elsewhere",
                        Recovery::Final => "final",
                    };
                    count_attempt(request.metrics, model, deployment, outcome);
                    (error, recovery)
                }
            },
        };
        // The kind and status only: a backend's own message may quote the request.
        let status = match &error {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        };
        tracing::warn!(error = error.kind(), status, model = %model.id, deployment = %deployment.id, attempt = route.attempts(), "upstream attempt failed");
        let now_ms = clock::unix_millis();
        let left = request
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let deadline_ms =
            now_ms.saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        let next = route.after_failure(
            recovery,
            now_ms,
            deadline_ms,
            clock::random_u64(),
            |candidate| {
                request.breakers.availability(model, candidate, now_ms) == Availability::Available
            },
        );
        match next {
            Next::Try {
                deployment: next,
                reason: why,
                wait_ms,
            } => {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                deployment = next;
                reason = why;
            }
            Next::GiveUp => {
                return Err(Failed {
                    error,
                    deployment,
                    reason,
                });
            }
        }
    }
}

fn count_attempt(
    metrics: &Metrics,
    model: &ModelSpec,
    deployment: &Deployment,
    outcome: &'static str,
) {
    metrics
        .attempts
        .get_or_create(&AttemptLabels {
            model: model.id.clone(),
            deployment: deployment.id.clone(),
            outcome,
        })
        .inc();
}

/// One attempt, bounded by the route's time to first byte and the call's deadline.
async fn attempt(
    deployment: &Deployment,
    route: &Route<'_>,
    request: &mut Request<'_>,
) -> Result<UpstreamReply, UpstreamError> {
    request.body["model"] = Value::String(deployment.upstream.model.clone());
    let call = UpstreamCall {
        target: deployment.upstream.clone(),
        endpoint: request.endpoint,
        body: request.body.clone(),
        stream: request.stream,
    };
    let until = match route.policy().try_timeout_ms {
        Some(ms) => request
            .deadline
            .min(tokio::time::Instant::now() + Duration::from_millis(ms)),
        None => request.deadline,
    };
    let upstream = request.upstream;
    let operation = crate::telemetry::gen_ai_operation(request.endpoint);
    // The call to the backend, as a GenAI client span; its context travels in `traceparent`.
    let span = tracing::info_span!(
        "upstream",
        otel.name = %format!("{operation} {}", deployment.upstream.model),
        otel.kind = "client",
        "gen_ai.operation.name" = operation,
        "gen_ai.request.model" = deployment.upstream.model.as_str(),
        "ferry.deployment" = deployment.id.as_str(),
        "ferry.attempt" = i64::from(route.attempts()),
        "error.type" = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let first_byte = async move {
        match upstream.call(call).await? {
            UpstreamReply::Stream(mut stream) => match stream.next().await {
                Some(Ok(first)) => {
                    let rest =
                        futures_util::stream::once(
                            async move { Ok::<Bytes, UpstreamError>(first) },
                        )
                        .chain(stream);
                    Ok(UpstreamReply::Stream(Box::pin(rest)))
                }
                Some(Err(error)) => Err(error),
                None => Err(UpstreamError::Protocol(
                    "the stream ended before its first event".into(),
                )),
            },
            complete => Ok(complete),
        }
    };
    let outcome = tokio::time::timeout_at(until, first_byte.instrument(span.clone()))
        .await
        .unwrap_or(Err(UpstreamError::Timeout));
    if let Err(error) = &outcome {
        span.record("error.type", error.kind());
        span.record("otel.status_code", "error");
    }
    outcome
}
