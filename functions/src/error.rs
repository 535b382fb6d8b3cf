//! Failures as responses: [`ErrorResponse`] (`ferry-http`, the one place an `ApiError` becomes
//! an HTTP response) and a handler's result.

pub use ferry_http::{ErrorResponse, ErrorTag, add_headers};

pub type HandlerResult<T> = Result<T, ErrorResponse>;
