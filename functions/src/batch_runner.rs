//! Drives batches to completion: each request of each active batch runs through the gateway's
//! own handler for its endpoint, as the caller who created the batch, so admission, limits,
//! holds, routing, metering and billing are a call's. A few requests of a batch at a time:
//! batches fill idle capacity, they do not crowd out interactive calls.
//!
//! A request refused for now (a rate limit, an overloaded or unreachable backend: 429, 502,
//! 503, 504) is not a result: it is tried again after its `Retry-After`, while the batch's
//! window lasts, and the batch waits meanwhile.
//!
//! It survives restarts: what a request left is an object of its own, written once the call
//! has settled, and a restarted runner skips what is there; a request that was running when
//! the process died runs again under the same request id, which settlement is idempotent on,
//! so it is never charged twice. One gap is left: a request whose charge was settled in the
//! last moment before the process died, before its result was written, runs again and its
//! second answer is withheld as a duplicate (503 `not_billed` in the error file): billed once,
//! its answer lost. Closing it means keeping the answer before the charge settles.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use ferry_core::batches::{self, LineResult, StoredBatch};
use ferry_core::files::{self, BatchLine};
use ferry_core::ports::ObjectStore;
use ferry_core::principal::Credential;
use ferry_core::{ApiError, ErrorKind};
use futures_util::StreamExt;
use serde_json::Value;

use crate::app::{self, AppState, RequestId, RequestLog};
use crate::clock;
use crate::extract::JsonBody;
use crate::gateway;

/// Requests of one batch running at once.
const CONCURRENCY: usize = 4;
/// Results between two saves of a batch's counts (and looks at whether it was cancelled).
const CHECK_EVERY: usize = 16;
/// Statuses a request may get again later: an overloaded or unreachable backend.
const TRANSIENT: [u16; 3] = [502, 503, 504];
/// The longest a batch waits before its refused requests are tried again.
const MOST_BACKOFF: Duration = Duration::from_secs(60);

/// Runs until the process ends, looking for work every `interval`.
pub async fn run(state: AppState, interval: Duration) {
    let mut backoffs = HashMap::new();
    loop {
        if let Err(error) = tick(&state, &mut backoffs).await {
            tracing::warn!(%error, "batches: a pass failed; retrying");
        }
        tokio::time::sleep(interval).await;
    }
}

/// One pass over the active batches; `backoffs` holds when each batch whose requests were
/// refused for now may be tried again.
pub async fn tick(
    state: &AppState,
    backoffs: &mut HashMap<String, tokio::time::Instant>,
) -> Result<(), ApiError> {
    let Some(objects) = state.files.clone() else {
        return Ok(());
    };
    let now = tokio::time::Instant::now();
    backoffs.retain(|_, until| *until > now);
    for key in objects.list(batches::ACTIVE_FOLDER).await? {
        let Some(batch_id) = key.rsplit('/').next().map(str::to_owned) else {
            continue;
        };
        if backoffs.contains_key(&batch_id) {
            continue;
        }
        let Some(tenant) = objects.get(&key).await? else {
            continue;
        };
        let tenant = String::from_utf8_lossy(&tenant).into_owned();
        match drive(state, objects.as_ref(), &tenant, &batch_id).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                backoffs.insert(batch_id, now + wait);
            }
            Err(error) => {
                tracing::warn!(%error, batch = %batch_id, "batches: a batch failed to advance");
            }
        }
    }
    Ok(())
}

/// Whether an answer is a refusal that may not be one later: an overloaded or unreachable
/// backend, or a limit that says when to come back (`Retry-After`: a rate limit, an in-flight
/// budget). A 429 without one (a request larger than the limit allows) is final, as is an
/// answer withheld because its charge was not recorded: its request id may already be
/// settled (it ran before a restart), and trying again would be refused again.
fn refused_for_now(status: u16, retry_after: Option<Duration>, body: &Value) -> bool {
    if body["error"]["code"] == "not_billed" {
        return false;
    }
    TRANSIENT.contains(&status) || (matches!(status, 402 | 429) && retry_after.is_some())
}

/// What running a request came to.
enum Ran {
    /// Its result, kept.
    Kept(usize, LineResult),
    /// Refused for now: try again after this long.
    Later(Duration),
}

/// Runs what is left of one batch, then finishes it; or, if some requests were refused for
/// now, says how long the batch should wait before they are tried again.
async fn drive(
    state: &AppState,
    objects: &dyn ObjectStore,
    tenant: &str,
    batch_id: &str,
) -> Result<Option<Duration>, ApiError> {
    let mut stored = gateway::batches::load(state, tenant, batch_id).await?;
    if !stored.batch.is_active() {
        objects.delete(&batches::active_key(batch_id)).await?;
        return Ok(None);
    }
    refresh_creator(state, &mut stored).await?;
    let Some(content) = objects
        .get(&files::content_key(tenant, &stored.batch.input_file_id))
        .await?
    else {
        fail(
            state,
            objects,
            &mut stored,
            "input_file_missing",
            "The batch's input file was deleted before the batch finished.",
        )
        .await?;
        return Ok(None);
    };
    let lines = files::parse_batch_input(&content)?;
    let mut results = done(objects, tenant, batch_id).await?;
    let pending: Vec<&BatchLine> = lines
        .iter()
        .filter(|line| !results.contains_key(&line.line))
        .collect();
    for chunk in pending.chunks(CHECK_EVERY) {
        if stored.batch.status == "cancelling" || stored.batch.has_expired(clock::unix_seconds()) {
            break;
        }
        let calls: Vec<_> = chunk
            .iter()
            .map(|line| run_line(state, &stored, line))
            .collect();
        let ran: Vec<Ran> = futures_util::stream::iter(calls)
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut wait = None;
        for ran in ran {
            match ran {
                Ran::Kept(line, result) => {
                    results.insert(line, result);
                }
                Ran::Later(after) => wait = wait.max(Some(after)),
            }
        }
        // Counts for whoever polls, and a cancellation since the last look.
        let latest = gateway::batches::load(state, tenant, batch_id).await?;
        if latest.batch.status == "cancelling" {
            stored.batch.status = latest.batch.status;
            stored.batch.cancelling_at = latest.batch.cancelling_at;
        }
        refresh_creator(state, &mut stored).await?;
        count(&mut stored, &results);
        gateway::batches::save(state, &stored).await?;
        if wait.is_some() {
            return Ok(wait);
        }
    }
    finish(state, objects, &mut stored, &lines, &results).await?;
    Ok(None)
}

/// The batch runs as its creator is now, not as it was: a key revoked (or expired) since
/// stops its batch, as a cancellation would (what ran is kept); new limits, budgets or models
/// apply. A token's caller has no record to read again and runs as it was admitted.
async fn refresh_creator(state: &AppState, stored: &mut StoredBatch) -> Result<(), ApiError> {
    let Credential::ApiKey { key_id } = &stored.principal.credential else {
        return Ok(());
    };
    let public_id = key_id.strip_prefix("key_").unwrap_or(key_id);
    match state.store.find_key(public_id).await? {
        Some(record) if record.is_live(clock::unix_seconds()) => {
            stored.principal = crate::auth::key_principal(record);
        }
        _ if stored.batch.status == "in_progress" => {
            tracing::warn!(batch = %stored.batch.id, "batches: its key was revoked; stopping it");
            stored.batch.status = "cancelling".into();
            stored.batch.cancelling_at = Some(clock::unix_seconds());
        }
        _ => {}
    }
    Ok(())
}

/// Ends a batch that cannot run at all.
async fn fail(
    state: &AppState,
    objects: &dyn ObjectStore,
    stored: &mut StoredBatch,
    code: &str,
    message: &str,
) -> Result<(), ApiError> {
    stored.batch.status = "failed".into();
    stored.batch.failed_at = Some(clock::unix_seconds());
    stored.batch.errors = Some(serde_json::json!({
        "object": "list",
        "data": [{"code": code, "message": message, "param": null, "line": null}],
    }));
    gateway::batches::save(state, stored).await?;
    objects
        .delete(&batches::active_key(&stored.batch.id))
        .await?;
    tracing::warn!(batch = %stored.batch.id, code, "batch failed");
    Ok(())
}

/// The results already kept, by line.
async fn done(
    objects: &dyn ObjectStore,
    tenant: &str,
    batch_id: &str,
) -> Result<BTreeMap<usize, LineResult>, ApiError> {
    let mut results = BTreeMap::new();
    for key in objects
        .list(&batches::results_folder(tenant, batch_id))
        .await?
    {
        let (Some(line), Some(bytes)) = (batches::line_of_result(&key), objects.get(&key).await?)
        else {
            continue;
        };
        if let Ok(result) = serde_json::from_slice::<LineResult>(&bytes) {
            results.insert(line, result);
        }
    }
    Ok(results)
}

fn count(stored: &mut StoredBatch, results: &BTreeMap<usize, LineResult>) {
    let succeeded = results.values().filter(|result| result.succeeded()).count() as u64;
    stored.batch.request_counts.completed = succeeded;
    stored.batch.request_counts.failed = results.len() as u64 - succeeded;
}

/// Runs one request and keeps what it left, unless it was refused for now.
async fn run_line(
    state: &AppState,
    stored: &StoredBatch,
    line: &BatchLine,
) -> Result<Ran, ApiError> {
    let objects = gateway::files::store(state)?;
    let attempt_key = batches::attempt_key(&stored.tenant, &stored.batch.id, line.line);
    let attempt: u32 = match objects.get(&attempt_key).await? {
        Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
        None => 0,
    };
    let request_id = batches::request_id(&stored.batch.id, line.line, attempt);
    let response = dispatch(state, stored, &request_id, line).await;
    let status_code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(axum::http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|error| ApiError::new(ErrorKind::Internal, error.to_string()))?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if refused_for_now(status_code, retry_after, &body) {
        // The next attempt has an id of its own: this one may have been admitted.
        objects
            .put(&attempt_key, Bytes::from((attempt + 1).to_string()))
            .await?;
        tracing::debug!(batch = %stored.batch.id, line = line.line, status_code, "batches: refused for now");
        let after = retry_after.unwrap_or(Duration::from_secs(1));
        return Ok(Ran::Later(
            after.clamp(Duration::from_secs(1), MOST_BACKOFF),
        ));
    }
    let result = LineResult {
        custom_id: line.custom_id.clone(),
        request_id,
        status_code,
        body,
    };
    let kept = serde_json::to_vec(&result)
        .map_err(|error| ApiError::new(ErrorKind::Internal, error.to_string()))?;
    gateway::files::store(state)?
        .put(
            &batches::result_key(&stored.tenant, &stored.batch.id, line.line),
            Bytes::from(kept),
        )
        .await?;
    Ok(Ran::Kept(line.line, result))
}

/// The request, through its endpoint's own handler.
async fn dispatch(
    state: &AppState,
    stored: &StoredBatch,
    request_id: &str,
    line: &BatchLine,
) -> Response {
    let byte_len = line.body.to_string().len();
    let caller = app::Caller(stored.principal.clone());
    let (id, log) = (
        Extension(RequestId(request_id.to_owned())),
        Extension(RequestLog::default()),
    );
    let state = State(state.clone());
    let headers = HeaderMap::new();
    let batch = Some(Extension(gateway::BatchCall));
    let answer = match line.url.as_str() {
        "/v1/chat/completions" => match body(line, byte_len) {
            Ok(body) => {
                gateway::chat_completions(state, id, log, caller, batch, headers, body).await
            }
            Err(error) => Err(error.into()),
        },
        "/v1/completions" => match body(line, byte_len) {
            Ok(body) => gateway::completions(state, id, log, caller, batch, headers, body).await,
            Err(error) => Err(error.into()),
        },
        "/v1/embeddings" => match body(line, byte_len) {
            Ok(body) => gateway::embeddings(state, id, log, caller, batch, headers, body).await,
            Err(error) => Err(error.into()),
        },
        "/v1/responses" => match body(line, byte_len) {
            Ok(body) => {
                gateway::responses::create_response(state, id, log, caller, batch, headers, body)
                    .await
            }
            Err(error) => Err(error.into()),
        },
        other => Err(ApiError::invalid("url", format!("{other} is not served in a batch")).into()),
    };
    match answer {
        Ok(response) => response,
        Err(error) => axum::response::IntoResponse::into_response(error),
    }
}

/// A request's body as its endpoint's handler takes it.
fn body<T: serde::de::DeserializeOwned>(
    line: &BatchLine,
    byte_len: usize,
) -> Result<JsonBody<T>, ApiError> {
    let typed = serde_json::from_value(line.body.clone())
        .map_err(|error| ApiError::invalid("body", error.to_string()))?;
    Ok(JsonBody {
        typed,
        raw: line.body.clone(),
        byte_len,
    })
}

/// Writes the output and error files and ends the batch: completed, or cancelled or expired
/// with what ran.
async fn finish(
    state: &AppState,
    objects: &dyn ObjectStore,
    stored: &mut StoredBatch,
    lines: &[BatchLine],
    results: &BTreeMap<usize, LineResult>,
) -> Result<(), ApiError> {
    let now = clock::unix_seconds();
    let (status, not_run) = if results.len() == lines.len() {
        ("completed", "")
    } else if stored.batch.status == "cancelling" {
        ("cancelled", "batch_cancelled")
    } else if stored.batch.has_expired(now) {
        ("expired", "batch_expired")
    } else {
        // More to do on the next pass.
        return Ok(());
    };
    let batch_id = stored.batch.id.clone();
    let (mut output, mut errors) = (String::new(), String::new());
    for line in lines {
        let text = match results.get(&line.line) {
            Some(result) => result.output_line(&batch_id, line.line),
            None => batches::not_run_line(&batch_id, line.line, &line.custom_id, not_run),
        };
        let file = match results.get(&line.line) {
            Some(result) if result.succeeded() => &mut output,
            _ => &mut errors,
        };
        file.push_str(&text);
        file.push('\n');
    }
    stored.batch.finalizing_at = Some(now);
    stored.batch.output_file_id = keep_file(objects, stored, &batch_id, "output", output).await?;
    stored.batch.error_file_id = keep_file(objects, stored, &batch_id, "error", errors).await?;
    count(stored, results);
    stored.batch.status = status.into();
    match status {
        "completed" => stored.batch.completed_at = Some(now),
        "cancelled" => stored.batch.cancelled_at = Some(now),
        _ => stored.batch.expired_at = Some(now),
    }
    gateway::batches::save(state, stored).await?;
    objects.delete(&batches::active_key(&batch_id)).await?;
    tracing::info!(batch = %batch_id, status, requests = lines.len(), "batch finished");
    Ok(())
}

/// A batch's output or error file, kept as the tenant's file; none when it would be empty.
async fn keep_file(
    objects: &dyn ObjectStore,
    stored: &StoredBatch,
    batch_id: &str,
    kind: &str,
    content: String,
) -> Result<Option<String>, ApiError> {
    if content.is_empty() {
        return Ok(None);
    }
    let filename = format!("{batch_id}_{kind}.jsonl");
    // The creator's, as the batch is.
    let owner = stored.principal.credential.caller_id();
    let record = gateway::files::keep(
        objects,
        &stored.tenant,
        &owner,
        Some(batches::result_file_id(batch_id, kind)),
        &filename,
        "batch_output",
        Bytes::from(content),
    )
    .await?;
    Ok(Some(record.id))
}
