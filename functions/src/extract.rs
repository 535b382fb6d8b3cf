//! Request extractors whose rejections follow the error contract.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ferry_core::{ApiError, ErrorKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ErrorResponse;

/// A JSON body checked against `T` by [`ferry_core::body::parse`], keeping the caller's own
/// JSON for forwarding. A body over the limit is refused with 413 before it is read whole.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub typed: T,
    pub raw: Value,
    /// The body's size on the wire: an upper bound on its prompt tokens.
    pub byte_len: usize,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ErrorResponse;

    async fn from_request(request: Request, state: &S) -> Result<Self, ErrorResponse> {
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        let parsed = ferry_core::body::parse(&bytes)?;
        Ok(JsonBody {
            typed: parsed.typed,
            raw: parsed.raw,
            byte_len: bytes.len(),
        })
    }
}

/// A body read whole, as bytes; a body over the limit is 413, one that arrives too slowly 408,
/// in the error contract (axum's own `Bytes` answers plain text).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ErrorResponse;

    async fn from_request(request: Request, state: &S) -> Result<Self, ErrorResponse> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(ErrorKind::PayloadTooLarge, "request body is too large")
                        .with_code("request_too_large")
                } else if crate::body::too_slow(&rejection) {
                    ApiError::new(
                        ErrorKind::RequestTimeout,
                        "The request body arrived too slowly.",
                    )
                    .with_code("request_timeout")
                } else {
                    ApiError::new(ErrorKind::InvalidRequest, "could not read the request body")
                }
            })?;
        Ok(RawBody(bytes))
    }
}

/// Query parameters checked against `T`; a bad or unknown parameter is a 400 in the error
/// contract naming it (axum's own `Query` answers plain text).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ErrorResponse> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                // serde names the parameter first (`group_by: unknown field …`).
                let param = detail
                    .split_once(": ")
                    .map(|(name, _)| name)
                    .filter(|name| {
                        name.bytes()
                            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
                    })
                    .unwrap_or("query");
                Err(ErrorResponse::from(ApiError::invalid(
                    param,
                    format!("invalid query parameters: {detail}"),
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::response::IntoResponse as _;

    use super::*;
    use crate::body::{BodyRate, MinRateBody};

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_answered_408_in_the_error_contract() {
        let stalled = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let request = Request::builder()
            .method("POST")
            .body(Body::new(MinRateBody::new(stalled, BodyRate::default())))
            .unwrap();
        let rejected = JsonBody::<Value>::from_request(request, &()).await;
        let Err(ErrorResponse { error, .. }) = rejected else {
            unreachable!("a stalled body cannot be read");
        };
        assert_eq!(error.kind, ErrorKind::RequestTimeout);
        assert_eq!(error.code.as_deref(), Some("request_timeout"));
        let response = ErrorResponse::from(error).into_response();
        assert_eq!(response.status(), 408);
    }
}
