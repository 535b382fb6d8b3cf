//! The activator's HTTP surface: `/{deployment}/{path}` goes to a replica of that deployment
//! (waiting for one if need be), streamed both ways; `GET /pool` shows every deployment.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use ferry_core::{ApiError, ErrorKind};
use futures_util::StreamExt as _;
use serde_json::json;

use crate::control::Pool;

pub fn router(pool: Arc<Pool>) -> Router {
    Router::new()
        .route("/pool", get(status))
        .route("/metrics", get(metrics))
        .route("/pool/{deployment}/prewarm", post(prewarm))
        .route("/{deployment}/{*path}", any(forward))
        .with_state(pool)
}

async fn status(State(pool): State<Arc<Pool>>) -> Response {
    let deployments: Vec<_> = pool
        .deployments()
        .map(|deployment| {
            json!({
                "name": deployment.config().name,
                "queued": deployment.queued(),
                "replicas": deployment.replicas(),
            })
        })
        .collect();
    axum::Json(json!({ "deployments": deployments })).into_response()
}

async fn metrics(State(pool): State<Arc<Pool>>) -> Response {
    let mut response = crate::metrics::encode(&pool).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PrewarmRequest {
    replicas: u32,
    seconds: u64,
}

/// `{"replicas": N, "seconds": S}`: have N replicas ready for the next S seconds (a batch job
/// or a launch is coming), so no call waits for a cold start.
async fn prewarm(State(pool): State<Arc<Pool>>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(deployment) = pool.deployment(&name) else {
        return unknown_deployment(&name);
    };
    let request: PrewarmRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return error_response(&ApiError::invalid(
                "body",
                format!("expected {{\"replicas\": N, \"seconds\": S}}: {error}"),
            ));
        }
    };
    deployment.prewarm(request.replicas, Duration::from_secs(request.seconds));
    (
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"deployment": name, "replicas": request.replicas, "seconds": request.seconds}),
        ),
    )
        .into_response()
}

fn unknown_deployment(name: &str) -> Response {
    error_response(
        &ApiError::new(
            ErrorKind::NotFound,
            format!("no deployment `{name}` in this pool"),
        )
        .with_code("deployment_not_found"),
    )
}

/// Tries this many replicas when the one chosen turns out to be gone.
const ATTEMPTS: usize = 3;

async fn forward(
    State(pool): State<Arc<Pool>>,
    Path((name, path)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(deployment) = pool.deployment(&name) else {
        return unknown_deployment(&name);
    };
    let mut failure = None;
    for _ in 0..ATTEMPTS {
        let lease = match deployment.acquire().await {
            Ok(lease) => lease,
            Err(refusal) => return error_response(&refusal.to_api_error(&name)),
        };
        let mut url = format!("{}/{path}", lease.url());
        if let Some(query) = &query {
            url.push('?');
            url.push_str(query);
        }
        let request = pool
            .proxy_http
            .request(method.clone(), url)
            .headers(forwarded(&headers))
            .body(body.clone());
        match request.send().await {
            Ok(response) => return stream_back(response, lease),
            // No connection: the call never reached the replica, so another may take it.
            Err(error) if error.is_connect() => {
                tracing::warn!(deployment = %name, replica = %lease.replica(), %error, "replica unreachable; trying another");
                lease.lost();
                failure = Some(error);
            }
            // It may have begun generating: not run twice.
            Err(error) => {
                tracing::warn!(deployment = %name, replica = %lease.replica(), %error, "replica failed mid-call");
                return error_response(
                    &ApiError::new(
                        ErrorKind::UpstreamFailed,
                        "the model replica failed to answer",
                    )
                    .retry_after(1),
                );
            }
        }
    }
    tracing::error!(deployment = %name, error = ?failure, "no replica answered");
    error_response(
        &ApiError::new(
            ErrorKind::UpstreamFailed,
            "no replica of the model answered",
        )
        .retry_after(1),
    )
}

/// The replica's answer, streamed as it comes; the call stays in flight on the replica
/// until the last byte has gone (or the caller left).
fn stream_back(response: reqwest::Response, lease: crate::deployment::Lease) -> Response {
    let status = response.status();
    let mut headers = response.headers().clone();
    for hop in [header::CONNECTION, header::TRANSFER_ENCODING] {
        headers.remove(hop);
    }
    let body = response.bytes_stream().map(move |chunk| {
        let _in_flight = &lease;
        chunk.map_err(std::io::Error::other)
    });
    let mut reply = Response::new(Body::from_stream(body));
    *reply.status_mut() = status;
    *reply.headers_mut() = headers;
    reply
}

fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    for hop in [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(hop);
    }
    headers
}

fn error_response(error: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(error.body())).into_response();
    if let Some(seconds) = error.retry_after_seconds {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
