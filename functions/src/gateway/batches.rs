//! OpenAI's Batch API: `POST /v1/batches` (an uploaded file of requests to one endpoint, run
//! within 24 hours), retrieve, list and cancel. Creating a batch checks every request against
//! the caller's models and keeps the batch in the object store under its tenant; the runner
//! (`crate::batch_runner`) drives it to completion as the caller who created it.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use ferry_core::batches::{self, Batch, StoredBatch};
use ferry_core::call::Attribution;
use ferry_core::error::ErrorBody;
use ferry_core::files;
use ferry_core::ids::{self, IdKind};
use ferry_core::principal::Principal;
use ferry_core::{ApiError, ErrorKind};
use serde::{Deserialize, Serialize};

use super::files::{find as find_file, record_ids, store};
use crate::app::{self, AppState};
use crate::clock;
use crate::error::HandlerResult;
use crate::extract::{JsonBody, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
}

/// `POST /v1/batches`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBatch {
    pub input_file_id: String,
    /// `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` or `/v1/responses`: every
    /// request of the file must call it.
    pub endpoint: String,
    /// Only `24h`.
    pub completion_window: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Creates a batch from an uploaded file. Every request must call `endpoint` with a model the
/// caller may use; the first that does not is a 400 naming its line.
#[utoipa::path(post, path = "/v1/batches", tag = "gateway", request_body = CreateBatch,
    responses((status = 200, body = Batch), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    body: JsonBody<CreateBatch>,
) -> HandlerResult<Json<Batch>> {
    let request = body.typed;
    let objects = store(&state)?;
    if !state.runs_batches {
        return Err(ApiError::new(
            ErrorKind::NoCapacity,
            "This deployment runs no batches: `ferry serve` does; the deployed functions do not yet.",
        )
        .with_code("batches_unavailable")
        .into());
    }
    if request.completion_window != batches::COMPLETION_WINDOW {
        return Err(ApiError::invalid("completion_window", "completion_window must be 24h").into());
    }
    if !files::BATCH_URLS.contains(&request.endpoint.as_str()) {
        return Err(ApiError::invalid(
            "endpoint",
            format!("endpoint must be one of {}", files::BATCH_URLS.join(", ")),
        )
        .into());
    }
    let metadata = Attribution::of(&serde_json::json!({"metadata": request.metadata}))?.metadata;
    let tenant = principal.billing_subject().to_owned();
    let file = find_file(&state, &principal, &request.input_file_id)
        .await
        .map_err(|error| error.with_param("input_file_id"))?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid("input_file_id", "the file's purpose is not batch").into());
    }
    let content = objects
        .get(&files::content_key(&tenant, &file.id))
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "the file's content is missing"))?;
    let lines = files::parse_batch_input(&content)?;
    check_requests(&state, &principal, &request.endpoint, &lines).await?;
    let now_ms = clock::unix_millis();
    let batch = Batch::accepted(
        ids::object_id(IdKind::Batch, now_ms, clock::random_bytes()),
        request.endpoint,
        file.id,
        lines.len() as u64,
        (!metadata.is_empty()).then_some(metadata),
        now_ms / 1000,
    );
    let stored = StoredBatch {
        batch: batch.clone(),
        tenant: tenant.clone(),
        principal,
    };
    save(&state, &stored).await?;
    // Indexed for the runner last: a batch it finds is whole.
    objects
        .put(&batches::active_key(&batch.id), Bytes::from(tenant))
        .await?;
    Ok(Json(batch))
}

/// Every request calls the batch's endpoint, with a model that exists and the caller may use.
async fn check_requests(
    state: &AppState,
    principal: &Principal,
    endpoint: &str,
    lines: &[files::BatchLine],
) -> Result<(), ApiError> {
    let mut checked = BTreeSet::new();
    for line in lines {
        let fault = |message: String| {
            ApiError::invalid("input_file_id", format!("line {}: {message}", line.line))
        };
        if line.url != endpoint {
            return Err(fault(format!(
                "url {} is not the batch's endpoint {endpoint}",
                line.url
            )));
        }
        let model = line.body["model"].as_str().unwrap_or_default();
        if checked.contains(model) {
            continue;
        }
        let known = state.store.get_model(model).await?.is_some();
        if !known || !principal.may_use_model(model) {
            return Err(fault(format!(
                "the model `{}` does not exist or you do not have access to it",
                ferry_core::error::echoed(model)
            )));
        }
        checked.insert(model.to_owned());
    }
    Ok(())
}

pub(crate) async fn save(state: &AppState, stored: &StoredBatch) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(stored)
        .map_err(|error| ApiError::new(ErrorKind::Internal, error.to_string()))?;
    store(state)?
        .put(
            &batches::record_key(&stored.tenant, &stored.batch.id),
            Bytes::from(bytes),
        )
        .await?;
    Ok(())
}

/// A batch the caller may see (its tenant's; a member's own), if there is one by that id.
async fn visible(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<StoredBatch, ApiError> {
    let stored = load(state, principal.billing_subject(), id).await?;
    if !principal.may_see_owned(Some(&stored.principal.credential.caller_id())) {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("No such batch: {}", ferry_core::error::echoed(id)),
        )
        .with_param("batch_id"));
    }
    Ok(stored)
}

/// A tenant's batch, if there is one by that id.
pub(crate) async fn load(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<StoredBatch, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorKind::NotFound,
            format!("No such batch: {}", ferry_core::error::echoed(id)),
        )
        .with_param("batch_id")
    };
    if !batches::is_batch_id(id) {
        return Err(missing());
    }
    let objects = store(state)?;
    let bytes = objects
        .get(&batches::record_key(tenant, id))
        .await?
        .ok_or_else(missing)?;
    let mut stored: StoredBatch = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::new(ErrorKind::Internal, format!("batch record: {error}")))?;
    // A cancellation asked for and not yet acted on.
    if stored.batch.status == "in_progress"
        && let Some(at) = objects.get(&batches::cancel_key(tenant, id)).await?
    {
        stored.batch.status = "cancelling".into();
        stored.batch.cancelling_at = String::from_utf8_lossy(&at).parse().ok();
    }
    Ok(stored)
}

/// A batch, with its progress.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "gateway", params(("id" = String, Path, description = "Batch id")),
    responses((status = 200, body = Batch), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn retrieve(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<Batch>> {
    Ok(Json(visible(&state, &principal, &id).await?.batch))
}

/// Cancels a batch: requests not yet run are not, and the files say so; what ran is kept and
/// billed.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "gateway", params(("id" = String, Path, description = "Batch id")),
    responses((status = 200, body = Batch), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<Batch>> {
    let tenant = principal.billing_subject();
    let mut stored = visible(&state, &principal, &id).await?;
    match stored.batch.status.as_str() {
        "cancelling" => {}
        "in_progress" => {
            // A marker the runner reads: it alone writes a running batch's record.
            let now = clock::unix_seconds();
            store(&state)?
                .put(
                    &batches::cancel_key(tenant, &stored.batch.id),
                    Bytes::from(now.to_string()),
                )
                .await?;
            stored.batch.status = "cancelling".into();
            stored.batch.cancelling_at = Some(now);
        }
        status => {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("A batch that is {status} cannot be cancelled."),
            )
            .into());
        }
    }
    Ok(Json(stored.batch))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchListQuery {
    /// At most this many (1 to 100; default 20).
    pub limit: Option<usize>,
    /// The batches after this one, newest first.
    pub after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Batch>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// The caller's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "gateway", params(BatchListQuery),
    responses((status = 200, body = BatchList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Query(query): Query<BatchListQuery>,
) -> HandlerResult<Json<BatchList>> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100").into());
    }
    let ids = record_ids(
        store(&state)?.as_ref(),
        &batches::folder(principal.billing_subject()),
        true,
        query.after.as_deref(),
    )
    .await?;
    let mut data = Vec::with_capacity(limit);
    let mut has_more = false;
    for id in &ids {
        let Ok(stored) = visible(&state, &principal, id).await else {
            continue;
        };
        if data.len() == limit {
            has_more = true;
            break;
        }
        data.push(stored.batch);
    }
    Ok(Json(BatchList {
        object: "list".into(),
        first_id: data.first().map(|batch| batch.id.clone()),
        last_id: data.last().map(|batch| batch.id.clone()),
        has_more,
        data,
    }))
}
