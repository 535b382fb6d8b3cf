//! `ferry-http`: the one place an [`ApiError`] becomes an HTTP response — the OpenAI error
//! body, its status, `Retry-After` and any extra headers — shared by the functions and the GPU
//! pool's worker, so every server of Ferry answers failures alike.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::ApiError;
use ferry_core::ports::StoreError;

/// A failure to answer with: the error the caller sees, and (never sent) what went wrong
/// underneath, for the request's one log line.
#[derive(Debug)]
pub struct ErrorResponse {
    pub error: ApiError,
    pub detail: Option<String>,
}

impl From<ApiError> for ErrorResponse {
    fn from(error: ApiError) -> ErrorResponse {
        ErrorResponse {
            error,
            detail: None,
        }
    }
}

/// A store's failure: the caller is told it is unavailable; the log line says why.
impl From<StoreError> for ErrorResponse {
    fn from(error: StoreError) -> ErrorResponse {
        let detail = match &error {
            StoreError::Unavailable(detail) => Some(detail.clone()),
            _ => None,
        };
        ErrorResponse {
            error: error.into(),
            detail,
        }
    }
}

/// What the request's log line says of a failed response: its error's type, and what went
/// wrong underneath (a store's failure), if known. An extension of the response.
#[derive(Debug, Clone)]
pub struct ErrorTag {
    pub kind: &'static str,
    pub detail: Option<Arc<str>>,
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let error = self.error;
        let status =
            StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(error.body())).into_response();
        if let Some(seconds) = error.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        add_headers(response.headers_mut(), error.headers());
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Errors do not log themselves: a middleware logs each request once, from this tag.
        response.extensions_mut().insert(ErrorTag {
            kind: error.kind.type_name(),
            detail: self.detail.map(Arc::from),
        });
        response
    }
}

/// Adds computed headers (`x-ratelimit-*` on 429s) to a response, skipping any that are not
/// valid.
pub fn add_headers(headers: &mut HeaderMap, pairs: &[(String, String)]) {
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}
