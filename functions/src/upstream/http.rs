//! `HttpUpstream`: any OpenAI-compatible server (vLLM, TGI, SGLang, a hosted API) over HTTP.
//! Streams are passed on chunk by chunk as they arrive, never buffered.

use std::time::Duration;

use async_trait::async_trait;
use ferry_core::ports::{Upstream, UpstreamCall, UpstreamError, UpstreamReply};
use futures_util::StreamExt;
use reqwest::header;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Until the whole body (non-streamed) or the response head (streamed) has arrived.
    pub request_timeout: Duration,
    /// Longest silence between two chunks of a stream.
    pub stream_idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpUpstream {
    client: reqwest::Client,
    config: UpstreamConfig,
}

impl HttpUpstream {
    pub fn new(config: UpstreamConfig) -> Result<HttpUpstream, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(HttpUpstream { client, config })
    }
}

fn classify(error: reqwest::Error) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout
    } else if error.is_connect() || error.is_request() || error.is_body() {
        // A connection that failed before or while the answer came (a pooled connection the
        // backend had closed, a reset): worth another attempt, like one never made.
        UpstreamError::Connect(error.to_string())
    } else {
        UpstreamError::Protocol(error.to_string())
    }
}

/// The upstream's own error message, if it sent an OpenAI-style error body.
/// An error body's message (OpenAI's shape, else its first bytes) and the field it names.
fn upstream_message(body: &[u8]) -> (String, Option<String>) {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |pointer: &str| {
        value
            .as_ref()
            .and_then(|value| value.pointer(pointer))
            .and_then(|text| text.as_str())
            .map(str::to_owned)
    };
    let message = field("/error/message")
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (message, field("/error/param"))
}

#[async_trait]
impl Upstream for HttpUpstream {
    async fn call(&self, call: UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        let url = format!(
            "{}{}",
            call.target.url.trim_end_matches('/'),
            call.endpoint.path()
        );
        let mut request = self
            .client
            .post(url)
            .headers(crate::telemetry::trace_headers())
            .json(&call.body);
        if let Some(api_key) = &call.target.api_key {
            request = request.bearer_auth(api_key);
        }
        if call.stream {
            request = request.header(header::ACCEPT, "text/event-stream");
        }
        let send = request.send();
        let response = tokio::time::timeout(self.config.request_timeout, send)
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after_seconds = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok());
            let body = response.bytes().await.unwrap_or_default();
            let (message, param) = upstream_message(&body);
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                message,
                param,
                retry_after_seconds,
            });
        }
        if call.stream {
            let idle = self.config.stream_idle_timeout;
            // The state is the body stream until it ends or fails; a failure is yielded once.
            let stream = futures_util::stream::unfold(
                Some(response.bytes_stream()),
                move |chunks| async move {
                    let mut chunks = chunks?;
                    match tokio::time::timeout(idle, chunks.next()).await {
                        Err(_) => Some((Err(UpstreamError::Timeout), None)),
                        Ok(None) => None,
                        Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(chunks))),
                        // Mid-stream: the answer broke off (never retried past its first byte).
                        Ok(Some(Err(error))) => Some((
                            Err(UpstreamError::Protocol(format!(
                                "the stream broke: {error}"
                            ))),
                            None,
                        )),
                    }
                },
            );
            return Ok(UpstreamReply::Stream(Box::pin(stream)));
        }
        let body = tokio::time::timeout(self.config.request_timeout, response.bytes())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(classify)?;
        let json = serde_json::from_slice(&body)
            .map_err(|error| UpstreamError::Protocol(format!("response is not JSON: {error}")))?;
        Ok(UpstreamReply::Complete(json))
    }
}
