//! W3C trace context on HTTP headers: read from callers, passed on to upstreams, so a trace
//! runs from the client through Ferry to the backend.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use ferry_core::ports::Endpoint;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Reading<'a>(&'a HeaderMap);

impl Extractor for Reading<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Writing<'a>(&'a mut HeaderMap);

impl Injector for Writing<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the caller's trace, if their headers carry one.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Reading(headers))
    });
    // Without a tracing layer there is no span to parent: nothing to do.
    let _ = span.set_parent(parent);
}

/// `traceparent` (and `tracestate`) for a call made within the current span.
pub fn trace_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Writing(&mut headers));
    });
    headers
}

/// The GenAI semantic conventions' name for what an endpoint does (`gen_ai.operation.name`).
pub fn gen_ai_operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
    }
}

/// Renames the current span in the trace (the `tracing` span keeps its name).
pub fn rename_current_span(name: String) {
    use opentelemetry::trace::TraceContextExt;
    tracing::Span::current().context().span().update_name(name);
}
