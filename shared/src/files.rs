//! Uploaded files (OpenAI's Files API), as the Batch API takes its input: what a file record
//! says, where a tenant's files live in the object store, and the check every batch input file
//! passes before it is kept — JSON lines, each a request Ferry can run, with errors that name
//! the line.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// The file object of OpenAI's Files API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub filename: String,
    /// `batch` (input) or `batch_output` (a batch's results and errors).
    pub purpose: String,
    /// Always `processed`: a file is checked before it is kept.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_details: Option<String>,
    /// Unix seconds; files are kept until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A file as kept: the object, and the caller who made it (members see only their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    #[serde(flatten)]
    pub file: FileObject,
    #[serde(default)]
    pub owner: Option<String>,
}

/// The purposes a file may be uploaded for.
pub const UPLOAD_PURPOSES: [&str; 1] = ["batch"];

/// Requests one batch input file may hold (OpenAI's limit).
pub const MAX_BATCH_REQUESTS: usize = 50_000;

/// The endpoints a batch request may call.
pub const BATCH_URLS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// Where a tenant's files are kept: `files/{tenant}/{id}.json` (the record) beside
/// `files/{tenant}/{id}.jsonl` (the content). The tenant in the key keeps tenants apart.
pub fn folder(tenant_id: &str) -> String {
    format!("files/{tenant_id}")
}

pub fn record_key(tenant_id: &str, file_id: &str) -> String {
    format!("files/{tenant_id}/{file_id}.json")
}

pub fn content_key(tenant_id: &str, file_id: &str) -> String {
    format!("files/{tenant_id}/{file_id}.jsonl")
}

/// Whether `id` could name a file (and so be part of a key): a caller's text never becomes a
/// path of its choosing.
pub fn is_file_id(id: &str) -> bool {
    id.strip_prefix("file_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// One request of a batch input file.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchLine {
    /// 1-based, as editors count.
    pub line: usize,
    pub custom_id: String,
    pub url: String,
    pub body: Value,
}

/// Checks a batch input file line by line: each non-empty line a JSON object with a
/// `custom_id` (unique in the file), `method: "POST"`, a `url` Ferry serves and a `body` naming
/// a `model`. The first fault is a 400 naming its line.
pub fn parse_batch_input(content: &[u8]) -> Result<Vec<BatchLine>, ApiError> {
    let text = std::str::from_utf8(content)
        .map_err(|_| ApiError::invalid("file", "the file is not UTF-8 text"))?;
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let fault = |message: &str| ApiError::invalid("file", format!("line {number}: {message}"));
        let value: Value = serde_json::from_str(raw)
            .map_err(|error| fault(&format!("not a JSON object ({error})")))?;
        let Value::Object(object) = value else {
            return Err(fault("not a JSON object"));
        };
        let custom_id = match object.get("custom_id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 512 => id.clone(),
            _ => return Err(fault("custom_id must be a string of 1 to 512 characters")),
        };
        if !seen.insert(custom_id.clone()) {
            return Err(fault(&format!(
                "custom_id `{}` is used by an earlier line",
                crate::error::echoed(&custom_id)
            )));
        }
        if object.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(fault("method must be POST"));
        }
        let url = match object.get("url").and_then(Value::as_str) {
            Some(url) if BATCH_URLS.contains(&url) => url.to_owned(),
            _ => {
                return Err(fault(&format!(
                    "url must be one of {}",
                    BATCH_URLS.join(", ")
                )));
            }
        };
        let body = match object.get("body") {
            Some(body @ Value::Object(fields))
                if fields.get("model").and_then(Value::as_str).is_some() =>
            {
                body.clone()
            }
            _ => return Err(fault("body must be an object naming a model")),
        };
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(fault("a batch request cannot stream"));
        }
        lines.push(BatchLine {
            line: number,
            custom_id,
            url,
            body,
        });
        if lines.len() > MAX_BATCH_REQUESTS {
            return Err(fault(&format!(
                "a batch file holds at most {MAX_BATCH_REQUESTS} requests"
            )));
        }
    }
    if lines.is_empty() {
        return Err(ApiError::invalid("file", "the file holds no requests"));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(custom_id: &str) -> String {
        serde_json::json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    }

    #[test]
    fn a_good_file_is_read_line_by_line() {
        let file = format!("{}\n\n{}\n", line("a"), line("b"));
        let lines = parse_batch_input(file.as_bytes()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[1].line, lines[1].custom_id.as_str()), (3, "b"));
        assert_eq!(lines[0].body["model"], "m");
    }

    #[test]
    fn the_first_fault_names_its_line() {
        let fault = |file: String| parse_batch_input(file.as_bytes()).unwrap_err().message;
        assert!(fault(format!("{}\nnot json", line("a"))).starts_with("line 2: not a JSON object"));
        assert!(
            fault(format!("{}\n{}", line("a"), line("a"))).starts_with("line 2: custom_id `a`")
        );
        let get = line("a").replace("POST", "GET");
        assert!(fault(get).starts_with("line 1: method"));
        let other = line("a").replace("/v1/chat/completions", "/v1/images");
        assert!(fault(other).starts_with("line 1: url"));
        let no_model =
            r#"{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}"#;
        assert!(fault(no_model.into()).starts_with("line 1: body"));
        let streamed = line("a").replace(r#""model":"m""#, r#""model":"m","stream":true"#);
        assert!(fault(streamed).starts_with("line 1: a batch request cannot stream"));
        assert_eq!(fault(String::new()), "the file holds no requests");
        assert_eq!(
            parse_batch_input(&[0xff, 0xfe])
                .unwrap_err()
                .param
                .as_deref(),
            Some("file")
        );
    }

    #[test]
    fn only_file_ids_become_keys() {
        assert!(is_file_id("file_0190f3abc"));
        for bad in ["file_", "file_../x", "tnt_1", "file_a/b", ""] {
            assert!(!is_file_id(bad), "{bad}");
        }
        assert_eq!(content_key("tnt_a", "file_1"), "files/tnt_a/file_1.jsonl");
    }
}
