//! The error contract: every failure a caller sees is an [`ApiError`], rendered as
//! `{"error":{"message","type","param","code"}}` with the status its [`ErrorKind`] names.

use serde::Serialize;

/// What went wrong, from the caller's point of view. Each kind has one HTTP status and one
/// stable `type` string, which is also the bounded label used in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Unauthenticated,
    InsufficientCredit,
    PermissionDenied,
    NotFound,
    MethodNotAllowed,
    Conflict,
    /// The request (its body) did not arrive in time.
    RequestTimeout,
    PayloadTooLarge,
    RateLimited,
    Internal,
    UpstreamFailed,
    NoCapacity,
    UpstreamTimeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::InsufficientCredit => 402,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::UpstreamFailed => 502,
            ErrorKind::NoCapacity => 503,
            ErrorKind::UpstreamTimeout => 504,
        }
    }

    /// The OpenAI-style `type` field.
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Conflict
            | ErrorKind::RequestTimeout
            | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::InsufficientCredit => "insufficient_quota",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Internal => "server_error",
            ErrorKind::UpstreamFailed => "upstream_error",
            ErrorKind::NoCapacity => "service_unavailable_error",
            ErrorKind::UpstreamTimeout => "timeout_error",
        }
    }
}

/// A failure to show the caller. The message must never carry another tenant's data or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds, for `Retry-After` on transient failures.
    pub retry_after_seconds: Option<u64>,
    /// Rarely set, so boxed: keeps `Result<_, ApiError>` small on every happy path.
    pub extras: Option<Box<ErrorExtras>>,
}

/// What a few errors carry beyond the four fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorExtras {
    /// Which limit refused the call (402s).
    pub limit_source: Option<String>,
    /// Extra response headers (`x-ratelimit-*` on 429s).
    pub headers: Vec<(String, String)>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_seconds: None,
            extras: None,
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> ApiError {
        self.code = Some(code.into());
        self
    }

    pub fn with_limit_source(mut self, source: &str) -> ApiError {
        self.extras.get_or_insert_default().limit_source = Some(source.to_owned());
        self
    }

    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> ApiError {
        self.extras.get_or_insert_default().headers = headers;
        self
    }

    pub fn limit_source(&self) -> Option<&str> {
        self.extras.as_ref()?.limit_source.as_deref()
    }

    pub fn headers(&self) -> &[(String, String)] {
        self.extras
            .as_ref()
            .map_or(&[], |extras| extras.headers.as_slice())
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_seconds = Some(seconds);
        self
    }

    pub fn unknown_model(model: &str) -> ApiError {
        ApiError::new(
            ErrorKind::NotFound,
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                echoed(model)
            ),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                r#type: self.kind.type_name().to_owned(),
                param: self.param.clone(),
                code: self.code.clone(),
                limit_source: self.limit_source().map(str::to_owned),
            },
        }
    }
}

/// `{"error": {...}}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: String,
    /// Always present, `null` when no single parameter is at fault (as OpenAI does).
    pub param: Option<String>,
    pub code: Option<String>,
    /// On 402s: the limit that refused the call (`tenant_balance`, `key_credit_cap`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_source: Option<String>,
}

/// What an error message may repeat of the caller's own text: a bounded prefix, so that a
/// 5 MB model name is not answered with a 5 MB error.
pub fn echoed(text: &str) -> std::borrow::Cow<'_, str> {
    const MOST: usize = 64;
    match text.char_indices().nth(MOST) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_all_four_fields_even_when_null() {
        let error = ApiError::new(ErrorKind::Unauthenticated, "no key");
        let json = serde_json::to_value(error.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "no key", "type": "authentication_error", "param": null, "code": null}})
        );
    }

    #[test]
    fn statuses_match_the_contract() {
        let cases = [
            (ErrorKind::InvalidRequest, 400),
            (ErrorKind::Unauthenticated, 401),
            (ErrorKind::InsufficientCredit, 402),
            (ErrorKind::PermissionDenied, 403),
            (ErrorKind::NotFound, 404),
            (ErrorKind::RequestTimeout, 408),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::RateLimited, 429),
            (ErrorKind::UpstreamFailed, 502),
            (ErrorKind::NoCapacity, 503),
            (ErrorKind::UpstreamTimeout, 504),
        ];
        for (kind, status) in cases {
            assert_eq!(kind.status(), status, "{kind:?}");
        }
    }

    #[test]
    fn unknown_model_names_the_param() {
        let error = ApiError::unknown_model("gpt-x");
        assert_eq!(error.kind.status(), 404);
        assert_eq!(error.param.as_deref(), Some("model"));
        assert_eq!(error.code.as_deref(), Some("model_not_found"));
    }

    #[test]
    fn errors_echo_a_bounded_prefix_of_what_the_caller_sent() {
        assert_eq!(echoed("gpt-4o"), "gpt-4o");
        let long = "é".repeat(5_000_000);
        let shown = echoed(&long);
        assert_eq!(shown.chars().count(), 65, "64 characters and an ellipsis");
        assert!(shown.ends_with('…'));
        let error = ApiError::unknown_model(&long);
        assert!(error.message.len() < 300, "{}", error.message.len());
    }
}
