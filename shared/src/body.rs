//! Request bodies: JSON checked against a wire type, with every rejection an OpenAI-style
//! error naming the parameter at fault.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ErrorKind};

/// A body checked against `T`, keeping the caller's own JSON for forwarding.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub typed: T,
    pub raw: Value,
}

/// Parses and checks a body: not UTF-8 or not a JSON object → 400 with a `code`; a field of
/// the wrong type or missing → 400 with `param` naming the field's path.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<JsonBody<T>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        ApiError::new(ErrorKind::InvalidRequest, "request body is not valid UTF-8")
            .with_code("invalid_encoding")
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body is empty; send a JSON object",
        )
        .with_code("invalid_json"));
    }
    let raw: Value = serde_json::from_str(text).map_err(|error| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("request body is not valid JSON: {error}"),
        )
        .with_code("invalid_json")
    })?;
    if !raw.is_object() {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        )
        .with_code("invalid_json"));
    }
    let typed = serde_path_to_error::deserialize(&raw).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        // serde names a missing field in its message; the path points at its parent.
        let param = missing_field(&inner).map_or(path.clone(), |field| join_path(&path, field));
        ApiError::invalid(
            param.clone(),
            format!("invalid value for `{param}`: {inner}"),
        )
    })?;
    Ok(JsonBody { typed, raw })
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn join_path(parent: &str, field: &str) -> String {
    if parent == "." || parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::ChatCompletionRequest;

    #[test]
    fn rejections_name_the_problem() {
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (b"{", "invalid_json", None),
            (b"", "invalid_json", None),
            (b"[1]", "invalid_json", None),
            (b"\xff\xfe", "invalid_encoding", None),
            (br#"{"messages": []}"#, "", Some("model")),
            (br#"{"model": 1, "messages": []}"#, "", Some("model")),
            (
                br#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#,
                "",
                Some("messages[0].role"),
            ),
            (
                br#"{"model": "m", "messages": [{"content": "x"}]}"#,
                "",
                Some("messages[0].role"),
            ),
            (
                br#"{"model": "m", "messages": [], "temperature": "hot"}"#,
                "",
                Some("temperature"),
            ),
        ];
        for (body, code, param) in cases {
            let error = parse::<ChatCompletionRequest>(body).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidRequest);
            if !code.is_empty() {
                assert_eq!(
                    error.code.as_deref(),
                    Some(*code),
                    "{:?}",
                    String::from_utf8_lossy(body)
                );
            }
            assert_eq!(
                error.param.as_deref(),
                *param,
                "{:?}: {}",
                String::from_utf8_lossy(body),
                error.message
            );
        }
    }

    #[test]
    fn keeps_unknown_fields_in_the_raw_json() {
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 2}}"#;
        let parsed = parse::<ChatCompletionRequest>(body).unwrap();
        assert_eq!(parsed.raw["logit_bias"]["1"], 2);
        assert_eq!(parsed.typed.model, "m");
    }
}
