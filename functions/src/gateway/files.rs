//! OpenAI's Files API, for batch input: `POST /v1/files` (multipart, `purpose: "batch"`, the
//! JSON lines checked line by line before anything is kept), retrieve, list, the content, and
//! delete. Files are kept in the object store under their tenant (`ferry_core::files`): a
//! tenant never reads, lists or deletes another's.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use ferry_core::error::ErrorBody;
use ferry_core::files::{self, FileObject, StoredFile};
use ferry_core::ids::{self, IdKind};
use ferry_core::ports::ObjectStore;
use ferry_core::principal::Principal;
use ferry_core::{ApiError, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::app::{self, AppState};
use crate::clock;
use crate::error::HandlerResult;
use crate::extract::Query;

pub fn routes(max_file_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/files",
            post(upload)
                .layer(DefaultBodyLimit::max(max_file_bytes))
                .get(list),
        )
        .route("/v1/files/{id}", get(retrieve).delete(delete))
        .route("/v1/files/{id}/content", get(content))
}

/// The deployment's file store, or why there is none.
pub(crate) fn store(state: &AppState) -> Result<&Arc<dyn ObjectStore>, ApiError> {
    state.files.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::NoCapacity,
            "This deployment keeps no files: it has no object store configured.",
        )
        .with_code("files_unavailable")
    })
}

/// Uploads a file: multipart with `file` and `purpose` (`batch`). A batch file is checked line
/// by line; the first fault is a 400 naming its line, and nothing is kept.
#[utoipa::path(post, path = "/v1/files", tag = "gateway",
    request_body(content_type = "multipart/form-data", description = "`file` (JSON lines) and `purpose` (`batch`)"),
    responses((status = 200, body = FileObject), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    form: Result<Multipart, MultipartRejection>,
) -> HandlerResult<Json<FileObject>> {
    let objects = store(&state)?;
    let mut form = form.map_err(|rejection| {
        ApiError::invalid(
            "file",
            format!(
                "the upload must be multipart/form-data: {}",
                rejection.body_text()
            ),
        )
    })?;
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                file = Some((filename, field.bytes().await.map_err(multipart_error)?));
            }
            // Fields the SDKs may add (`expires_after`) are not kept.
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("purpose", "purpose is required"))?;
    if !files::UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            "purpose must be batch: files here are batch input",
        )
        .into());
    }
    let (filename, content) = file.ok_or_else(|| ApiError::invalid("file", "file is required"))?;
    files::parse_batch_input(&content)?;
    let owner = principal.credential.caller_id();
    Ok(Json(
        keep(
            objects.as_ref(),
            principal.billing_subject(),
            &owner,
            None,
            &filename,
            &purpose,
            content,
        )
        .await?,
    ))
}

/// Keeps `content` as a file of `tenant`'s (a new id unless `id` is given): the content first,
/// then its record, so a file that is listed has its content.
pub(crate) async fn keep(
    objects: &dyn ObjectStore,
    tenant: &str,
    owner: &str,
    id: Option<String>,
    filename: &str,
    purpose: &str,
    content: Bytes,
) -> Result<FileObject, ApiError> {
    let now_ms = clock::unix_millis();
    let record = FileObject {
        id: id.unwrap_or_else(|| ids::object_id(IdKind::File, now_ms, clock::random_bytes())),
        object: "file".into(),
        bytes: content.len() as u64,
        created_at: now_ms / 1000,
        filename: filename.chars().take(255).collect(),
        purpose: purpose.to_owned(),
        status: "processed".into(),
        status_details: None,
        expires_at: None,
    };
    objects
        .put(&files::content_key(tenant, &record.id), content)
        .await?;
    objects
        .put(
            &files::record_key(tenant, &record.id),
            record_bytes(&StoredFile {
                file: record.clone(),
                owner: Some(owner.to_owned()),
            })?,
        )
        .await?;
    Ok(record)
}

fn record_bytes(record: &StoredFile) -> Result<Bytes, ApiError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|error| ApiError::new(ErrorKind::Internal, error.to_string()))
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(ErrorKind::PayloadTooLarge, "the file is too large")
            .with_code("request_too_large");
    }
    ApiError::invalid(
        "file",
        format!("the upload is not valid multipart: {}", error.body_text()),
    )
}

/// One of the caller's files, if it is theirs to see (its tenant's; a member's own).
pub(crate) async fn find(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<FileObject, ApiError> {
    let tenant = principal.billing_subject();
    let missing = || {
        ApiError::new(
            ErrorKind::NotFound,
            format!("No such file: {}", ferry_core::error::echoed(id)),
        )
        .with_param("file_id")
    };
    if !files::is_file_id(id) {
        return Err(missing());
    }
    let bytes = store(state)?
        .get(&files::record_key(tenant, id))
        .await?
        .ok_or_else(missing)?;
    let stored: StoredFile = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::new(ErrorKind::Internal, format!("file record: {error}")))?;
    if !principal.may_see_owned(stored.owner.as_deref()) {
        return Err(missing());
    }
    Ok(stored.file)
}

/// A file's record.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "gateway", params(("id" = String, Path, description = "File id")),
    responses((status = 200, body = FileObject), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn retrieve(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<FileObject>> {
    Ok(Json(find(&state, &principal, &id).await?))
}

/// A file's content, as uploaded (or as a batch wrote it).
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "gateway", params(("id" = String, Path, description = "File id")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn content(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Path(id): Path<String>,
) -> HandlerResult<Response> {
    let tenant = principal.billing_subject();
    let record = find(&state, &principal, &id).await?;
    let bytes = store(&state)?
        .get(&files::content_key(tenant, &record.id))
        .await?
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "the file's content is missing"))?;
    let mut response = bytes.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeletedFile {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub deleted: bool,
}

/// Deletes a file.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "gateway", params(("id" = String, Path, description = "File id")),
    responses((status = 200, body = DeletedFile), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<DeletedFile>> {
    let tenant = principal.billing_subject();
    let record = find(&state, &principal, &id).await?;
    let objects = store(&state)?;
    // The record first: once it is gone the file is, whatever happens to the content.
    objects
        .delete(&files::record_key(tenant, &record.id))
        .await?;
    objects
        .delete(&files::content_key(tenant, &record.id))
        .await?;
    Ok(Json(DeletedFile {
        id: record.id,
        object: "file".into(),
        deleted: true,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FileListQuery {
    /// Only files of this purpose.
    pub purpose: Option<String>,
    /// At most this many (1 to 10,000; default 10,000).
    pub limit: Option<usize>,
    /// The files after this one, in the order asked for.
    pub after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    pub order: Option<String>,
}

/// The ids of the records (`{id}.json`) in `folder`, newest first or oldest first (ids sort by
/// creation time), from the one after `after`: what a page of a list reads.
pub(crate) async fn record_ids(
    objects: &dyn ObjectStore,
    folder: &str,
    newest_first: bool,
    after: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let mut ids: Vec<String> = objects
        .list(folder)
        .await?
        .iter()
        .filter_map(|key| key.rsplit('/').next()?.strip_suffix(".json"))
        .map(str::to_owned)
        .collect();
    if newest_first {
        ids.reverse();
    }
    if let Some(after) = after {
        let position = ids.iter().position(|id| id == after).ok_or_else(|| {
            ApiError::invalid("after", "after names nothing of yours in this list")
        })?;
        ids.drain(..=position);
    }
    Ok(ids)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<FileObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// The caller's files, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/files", tag = "gateway", params(FileListQuery),
    responses((status = 200, body = FileList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    app::Caller(principal): app::Caller,
    Query(query): Query<FileListQuery>,
) -> HandlerResult<Json<FileList>> {
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 10000").into());
    }
    let newest_first = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::invalid("order", "order must be asc or desc").into()),
    };
    let tenant = principal.billing_subject();
    let ids = record_ids(
        store(&state)?.as_ref(),
        &files::folder(tenant),
        newest_first,
        query.after.as_deref(),
    )
    .await?;
    let mut data = Vec::new();
    let mut has_more = false;
    for id in ids {
        let Ok(record) = find(&state, &principal, &id).await else {
            continue;
        };
        if query
            .purpose
            .as_ref()
            .is_some_and(|purpose| *purpose != record.purpose)
        {
            continue;
        }
        if data.len() == limit {
            has_more = true;
            break;
        }
        data.push(record);
    }
    Ok(Json(FileList {
        object: "list".into(),
        first_id: data.first().map(|file| file.id.clone()),
        last_id: data.last().map(|file| file.id.clone()),
        has_more,
        data,
    }))
}
