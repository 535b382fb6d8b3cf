//! Request extractors whose rejections follow the error contract.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use ferry_core::{ApiError, ErrorKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Failure;

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
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Failure> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(ErrorKind::PayloadTooLarge, "request body is too large")
                        .with_code("request_too_large")
                } else {
                    ApiError::new(ErrorKind::InvalidRequest, "could not read the request body")
                }
            })?;
        let parsed = ferry_core::body::parse(&bytes)?;
        Ok(JsonBody {
            typed: parsed.typed,
            raw: parsed.raw,
            byte_len: bytes.len(),
        })
    }
}
