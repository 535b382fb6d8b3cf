//! `/admin/v1/pool`: the GPU pool as its control plane sees it (replicas by state, queue),
//! and prewarming, for operators. The admin API relays to the pool's own `GET /pool` and
//! `POST /pool/{deployment}/prewarm` (the activator in `ferry serve`, `ferry scaler` when
//! deployed), so the pool's port stays on the private network.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::error::ErrorBody;
use ferry_core::{ApiError, ErrorKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admin::require_operator;
use crate::app::{AppState, Caller};
use crate::error::HandlerResult;
use crate::extract::JsonBody;

#[derive(Clone)]
pub struct PoolLink {
    url: Option<Arc<str>>,
    http: reqwest::Client,
}

pub fn routes(url: Option<String>) -> axum::Router<AppState> {
    let link = PoolLink {
        url: url.map(|url| Arc::from(url.trim_end_matches('/'))),
        http: reqwest::Client::new(),
    };
    let status_link = link.clone();
    Router::new()
        .route(
            "/pool",
            get(move |caller| status(caller, status_link.clone())),
        )
        .route(
            "/pool/{deployment}/prewarm",
            post(move |caller, path, body| prewarm(caller, path, link.clone(), body)),
        )
}

fn no_pool() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "No GPU pool is attached to this Ferry.",
    )
    .with_code("no_pool")
}

fn unreachable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "the pool's control plane did not answer");
    ApiError::new(
        ErrorKind::NoCapacity,
        "The pool's control plane did not answer; try again.",
    )
    .retry_after(2)
}

/// What the pool's control plane says of its deployments: read into these types (so a pool
/// that answers otherwise is a 502, not a console page that breaks) and passed on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    pub deployments: Vec<PoolDeployment>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolDeployment {
    pub name: String,
    /// Calls waiting for a replica with room.
    pub queued: u64,
    pub replicas: Vec<PoolReplica>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolReplica {
    pub id: u64,
    pub state: ReplicaState,
    /// Where it listens; `null` until it has started.
    pub url: Option<String>,
    /// Calls the activator sent it that have not finished.
    pub in_flight: u64,
    pub load: WorkerLoad,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Starting,
    Ready,
    Draining,
    Lost,
}

/// What the replica's last `/stats` said.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerLoad {
    pub queued: u64,
    pub running: u64,
    /// The share of its KV cache in use, 0 to 1.
    pub kv_use: f64,
}

/// `POST /admin/v1/pool/{deployment}/prewarm`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prewarm {
    /// Replicas to have ready.
    pub replicas: u32,
    /// For this long, from now.
    pub seconds: u64,
}

/// The pool's deployments: each one's replicas (with their state and calls in flight) and
/// the calls queued for one.
#[utoipa::path(get, path = "/admin/v1/pool", tag = "admin",
    responses((status = 200, body = PoolStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn status(Caller(principal): Caller, link: PoolLink) -> HandlerResult<Json<PoolStatus>> {
    require_operator(&principal)?;
    let url = link.url.as_deref().ok_or_else(no_pool)?;
    let answer: PoolStatus = link
        .http
        .get(format!("{url}/pool"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unreachable)?
        .json()
        .await
        .map_err(|error| {
            tracing::warn!(%error, "the pool's status is not what the admin API knows");
            ApiError::new(
                ErrorKind::UpstreamFailed,
                "The pool answered in a form this Ferry does not know.",
            )
        })?;
    Ok(Json(answer))
}

/// `{"replicas": N, "seconds": S}`: have N replicas of the deployment ready for S seconds.
#[utoipa::path(post, path = "/admin/v1/pool/{deployment}/prewarm", tag = "admin",
    params(("deployment" = String, Path, description = "Pool deployment")), request_body = Prewarm,
    responses((status = 202, body = Prewarm), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn prewarm(
    Caller(principal): Caller,
    Path(deployment): Path<String>,
    link: PoolLink,
    body: JsonBody<Prewarm>,
) -> HandlerResult<Response> {
    require_operator(&principal)?;
    let url = link.url.as_deref().ok_or_else(no_pool)?;
    if deployment.is_empty()
        || !deployment
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte))
    {
        return Err(ApiError::invalid("deployment", "not a deployment name").into());
    }
    let answer = link
        .http
        .post(format!("{url}/pool/{deployment}/prewarm"))
        .json(&body.typed)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(unreachable)?;
    // The pool's own answers (202, or its 400/404 in the error contract) go through as they are.
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = answer.bytes().await.map_err(unreachable)?;
    Ok((status, [("content-type", "application/json")], bytes).into_response())
}
