//! OpenAI's Batch API: a file of requests run later, at a discount, with results in files.
//! What a batch is (its object and states), where its state lives in the object store, what a
//! finished request leaves behind, and the output and error files' lines. Pure; the gateway
//! and the runner that drives batches do the I/O.
//!
//! Restart safety rests on two things here: each request's call has a request id made from
//! the batch and the line ([`request_id`]), which settlement is idempotent on, so a request
//! re-run after a crash is never charged twice; and each finished request's result is an
//! object of its own ([`result_key`]), written whole, so a restarted runner skips what is done.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::principal::Principal;

/// The only completion window served, as OpenAI's.
pub const COMPLETION_WINDOW: &str = "24h";
pub const WINDOW_SECONDS: u64 = 24 * 60 * 60;

/// The batch object of OpenAI's Batch API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Batch {
    pub id: String,
    /// Always `batch`.
    pub object: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    /// `in_progress`, `finalizing`, `completed`, `expired`, `cancelling` or `cancelled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file_id: Option<String>,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizing_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelling_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    /// Why the batch failed as a whole (`{"object": "list", "data": [{"code", "message"}]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub errors: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl Batch {
    /// A batch accepted now: in progress at once (its file was checked when uploaded, and its
    /// requests when it was created).
    pub fn accepted(
        id: String,
        endpoint: String,
        input_file_id: String,
        total: u64,
        metadata: Option<BTreeMap<String, String>>,
        now: u64,
    ) -> Batch {
        Batch {
            id,
            object: "batch".into(),
            endpoint,
            input_file_id,
            completion_window: COMPLETION_WINDOW.into(),
            status: "in_progress".into(),
            output_file_id: None,
            error_file_id: None,
            created_at: now,
            in_progress_at: Some(now),
            expires_at: Some(now + WINDOW_SECONDS),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts {
                total,
                ..RequestCounts::default()
            },
            errors: None,
            metadata,
        }
    }

    /// Still running (or being cancelled): the runner has work here.
    pub fn is_active(&self) -> bool {
        matches!(self.status.as_str(), "in_progress" | "cancelling")
    }

    /// Whether its window has passed at `now`.
    pub fn has_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// A batch as kept: the object, whose it is, and the caller it runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub batch: Batch,
    pub tenant: String,
    pub principal: Principal,
}

/// `batches/{tenant}/{id}.json`: a tenant's batch.
pub fn record_key(tenant: &str, batch_id: &str) -> String {
    format!("batches/{tenant}/{batch_id}.json")
}

pub fn folder(tenant: &str) -> String {
    format!("batches/{tenant}")
}

/// The runner's index of batches with work left: `batches/active/{id}` holds the tenant.
pub const ACTIVE_FOLDER: &str = "batches/active";

pub fn active_key(batch_id: &str) -> String {
    format!("{ACTIVE_FOLDER}/{batch_id}")
}

/// Where the result of the request on `line` is kept once it has run.
pub fn result_key(tenant: &str, batch_id: &str, line: usize) -> String {
    format!("batches/{tenant}/{batch_id}/results/{line:07}.json")
}

pub fn results_folder(tenant: &str, batch_id: &str) -> String {
    format!("batches/{tenant}/{batch_id}/results")
}

/// The line a result key names.
pub fn line_of_result(key: &str) -> Option<usize> {
    key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

/// Whether `id` could name a batch (and so be part of a key).
pub fn is_batch_id(id: &str) -> bool {
    id.strip_prefix("batch_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The request id of attempt `attempt` of the call for `line`: the same on every run of that
/// attempt, so one re-run after a crash settles as the duplicate it is; a new one for each
/// attempt after a refusal, since the refused attempt may have been admitted (its hold and its
/// zero-cost usage keep its id).
pub fn request_id(batch_id: &str, line: usize, attempt: u32) -> String {
    match attempt {
        0 => format!("{batch_id}-{line}"),
        _ => format!("{batch_id}-{line}.{attempt}"),
    }
}

/// Where the next attempt of a refused request is noted.
pub fn attempt_key(tenant: &str, batch_id: &str, line: usize) -> String {
    format!("batches/{tenant}/{batch_id}/attempts/{line:07}")
}

/// A cancellation asked for: a marker of its own, so the runner stays the batch record's only
/// writer once the batch is running.
pub fn cancel_key(tenant: &str, batch_id: &str) -> String {
    format!("batches/{tenant}/{batch_id}/cancel")
}

/// The id of a batch's output or error file (`kind`: `output`, `error`): made from the batch's,
/// so finishing twice writes the same file again rather than another.
pub fn result_file_id(batch_id: &str, kind: &str) -> String {
    format!("file_{}{kind}", batch_id.trim_start_matches("batch_"))
}

/// What one request left: its answer (or error) as the endpoint gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineResult {
    pub custom_id: String,
    pub request_id: String,
    pub status_code: u16,
    pub body: Value,
}

impl LineResult {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// Its line in the output file (a success) or the error file.
    pub fn output_line(&self, batch_id: &str, line: usize) -> String {
        json!({
            "id": format!("batch_req_{}_{line}", batch_id.trim_start_matches("batch_")),
            "custom_id": self.custom_id,
            "response": {"status_code": self.status_code, "request_id": self.request_id, "body": self.body},
            "error": null,
        })
        .to_string()
    }
}

/// The error file's line for a request that never ran (the batch expired or was cancelled).
pub fn not_run_line(batch_id: &str, line: usize, custom_id: &str, code: &str) -> String {
    let message = match code {
        "batch_expired" => {
            "This request could not be executed before the completion window expired."
        }
        _ => "This request was not executed because the batch was cancelled.",
    };
    json!({
        "id": format!("batch_req_{}_{line}", batch_id.trim_start_matches("batch_")),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids_are_stable_and_safe() {
        assert_eq!(request_id("batch_1", 7, 0), "batch_1-7");
        assert_eq!(request_id("batch_1", 7, 2), "batch_1-7.2");
        assert!(crate::files::is_file_id(&result_file_id(
            "batch_01ab",
            "output"
        )));
        let key = result_key("tnt_a", "batch_1", 42);
        assert_eq!(key, "batches/tnt_a/batch_1/results/0000042.json");
        assert_eq!(line_of_result(&key), Some(42));
        assert!(is_batch_id("batch_0190abc"));
        for bad in ["batch_", "batch_../x", "file_1", "batch_a/b"] {
            assert!(!is_batch_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_result_becomes_its_output_or_error_line() {
        let ok = LineResult {
            custom_id: "a".into(),
            request_id: "batch_1-3".into(),
            status_code: 200,
            body: json!({"id": "chatcmpl-1"}),
        };
        assert!(ok.succeeded());
        let line: Value = serde_json::from_str(&ok.output_line("batch_1", 3)).unwrap();
        assert_eq!(
            line,
            json!({"id": "batch_req_1_3", "custom_id": "a",
                "response": {"status_code": 200, "request_id": "batch_1-3", "body": {"id": "chatcmpl-1"}}, "error": null})
        );
        let expired: Value =
            serde_json::from_str(&not_run_line("batch_1", 4, "b", "batch_expired")).unwrap();
        assert_eq!(expired["error"]["code"], "batch_expired");
        assert_eq!(expired["response"], Value::Null);
    }

    #[test]
    fn a_batch_is_active_until_it_ends_and_expires_after_its_window() {
        let batch = Batch::accepted(
            "batch_1".into(),
            "/v1/chat/completions".into(),
            "file_1".into(),
            3,
            None,
            100,
        );
        assert!(batch.is_active());
        assert!(!batch.has_expired(100 + WINDOW_SECONDS - 1));
        assert!(batch.has_expired(100 + WINDOW_SECONDS));
        assert_eq!(batch.request_counts.total, 3);
    }
}
