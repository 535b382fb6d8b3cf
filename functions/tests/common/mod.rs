//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::panic)]

use serde_json::Value;

/// Asserts the OpenAI error shape — exactly `message`, `type`, `param` and `code` under
/// `error`, a non-empty message, string-or-null `param` and `code` — and returns the error.
pub fn openai_error(body: &Value) -> &serde_json::Map<String, Value> {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object in {body}"));
    let mut fields: Vec<&str> = error.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["code", "message", "param", "type"], "{body}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    for nullable in ["param", "code"] {
        assert!(
            error[nullable].is_null() || error[nullable].is_string(),
            "{body}"
        );
    }
    error
}
