//! The one place where an [`ApiError`] becomes an HTTP response.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::ApiError;
use ferry_core::ports::StoreError;

/// A handler's failure; renders the OpenAI error body with the status its kind names.
#[derive(Debug)]
pub struct Failure(pub ApiError);

pub type HandlerResult<T> = Result<T, Failure>;

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Failure {
        Failure(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        if let StoreError::Unavailable(detail) = &error {
            tracing::error!(%detail, "store failure");
        }
        Failure(error.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let error = self.0;
        let status =
            StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(error.body())).into_response();
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
        // Handlers' errors are logged once, by the request middleware, from this marker.
        response
            .extensions_mut()
            .insert(ErrorKindTag(error.kind.type_name()));
        response
    }
}

/// Adds computed headers (`x-ratelimit-*`) to a response, skipping any that are not valid.
pub(crate) fn add_headers(headers: &mut HeaderMap, pairs: &[(String, String)]) {
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// The error type of a failed response, for the one log line per request.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKindTag(pub &'static str);
