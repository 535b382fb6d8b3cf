//! Prometheus metrics (`GET /metrics`, OpenMetrics text): calls by model and status class,
//! latency, gateway overhead and time to first token, tokens by type, cache results,
//! admissions, money held and spent, upstream attempts and circuit breakers.
//!
//! Labels stay bounded: a model label is always a registered model's id (never what a caller
//! typed), a route label the matched route template, and no label carries a key, a tenant, a
//! prompt or anything else a caller supplies.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ferry_core::{ApiError, ErrorKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ErrorResponse;
use crate::gateway::route::Breakers;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub model: String,
    pub endpoint: &'static str,
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    /// `prompt`, `cached` (a part of prompt) or `completion`.
    pub r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub model: String,
    pub deployment: String,
    /// `ok`, `retryable`, `elsewhere` or `final` (`ferry_core::route::Recovery`).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `idle_timeout`, `header_timeout`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    pub model: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to about 82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn overhead_histogram() -> Histogram {
    // 0.1 ms to about 1.6 s: the gateway's own time is small, and its tail is what matters.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
}

/// Every series this process exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    breakers_registered: OnceLock<()>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Histograms<RouteLabels>,
    pub requests: Family<CallLabels, Counter>,
    pub request_duration: Histograms<ModelLabels>,
    pub overhead: Histograms<ModelLabels>,
    pub time_to_first_token: Histograms<ModelLabels>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cache: Family<ResultLabels, Counter>,
    pub admissions: Family<ResultLabels, Counter>,
    pub held_nanodollars: Counter,
    pub spend_nanodollars: Family<SpendLabels, Counter>,
    pub calls_in_flight: Gauge,
    pub attempts: Family<AttemptLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub connections_closed: Family<ConnectionLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            breakers_registered: OnceLock::new(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            overhead: Family::new_with_constructor(overhead_histogram),
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            cache: Family::default(),
            admissions: Family::default(),
            held_nanodollars: Counter::default(),
            spend_nanodollars: Family::default(),
            calls_in_flight: Gauge::default(),
            attempts: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            connections_closed: Family::default(),
        };
        registry.register(
            "ferry_http_requests",
            "HTTP requests by route template, method and status class",
            metrics.http_requests.clone(),
        );
        registry.register(
            "ferry_http_request_duration_seconds",
            "HTTP request latency by route template, until the response head",
            metrics.http_duration.clone(),
        );
        registry.register(
            "ferry_requests",
            "Model calls by model, endpoint and status class (499: the caller left)",
            metrics.requests.clone(),
        );
        registry.register(
            "ferry_request_duration_seconds",
            "Model call latency, admission to settlement (a stream: to its end)",
            metrics.request_duration.clone(),
        );
        registry.register(
            "ferry_gateway_overhead_seconds",
            "A call's time in Ferry: its whole latency less the time its backend took",
            metrics.overhead.clone(),
        );
        registry.register(
            "ferry_time_to_first_token_seconds",
            "Streamed calls: admission to the first generated token",
            metrics.time_to_first_token.clone(),
        );
        registry.register(
            "ferry_tokens",
            "Tokens by model and type (prompt, cached: the cached part of prompt, completion)",
            metrics.tokens.clone(),
        );
        registry.register(
            "ferry_cache_requests",
            "Response cache results (hit, miss, bypass)",
            metrics.cache.clone(),
        );
        registry.register(
            "ferry_admissions",
            "Admission decisions: admitted, rate_limited_requests, rate_limited_tokens, or the credit or budget limit that refused",
            metrics.admissions.clone(),
        );
        registry.register(
            "ferry_held_nanodollars",
            "Money held at admission (worst cases), in nanodollars",
            metrics.held_nanodollars.clone(),
        );
        registry.register(
            "ferry_spend_nanodollars",
            "Money charged at settlement by model, in nanodollars",
            metrics.spend_nanodollars.clone(),
        );
        registry.register(
            "ferry_calls_in_flight",
            "Model calls being served now",
            metrics.calls_in_flight.clone(),
        );
        registry.register(
            "ferry_upstream_attempts",
            "Attempts at a deployment by outcome (ok, retryable, elsewhere, final)",
            metrics.attempts.clone(),
        );
        registry.register(
            "ferry_connections_open",
            "Client connections open now",
            metrics.connections_open.clone(),
        );
        registry.register(
            "ferry_connections_refused",
            "Connections refused at once because max_connections were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "ferry_connections_timed_out",
            "Connections closed by a timeout (idle_timeout, header_timeout)",
            metrics.connections_closed.clone(),
        );
        *metrics
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = registry;
        metrics
    }

    /// Exports what `collector` reads at each scrape (the GPU pool's replicas, say).
    pub fn add_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(collector);
    }

    /// Exports the breakers' states; once, however many routers share these metrics.
    pub(crate) fn watch_breakers(&self, breakers: &Arc<Breakers>) {
        if self.breakers_registered.set(()).is_ok() {
            self.add_collector(Box::new(BreakerCollector(Arc::clone(breakers))));
        }
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// `2xx`, `4xx`, `5xx`, or `499` for a caller who left (neither their fault nor ours).
pub fn status_class(status: u16) -> &'static str {
    match status {
        499 => "499",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[derive(Debug)]
struct BreakerCollector(Arc<Breakers>);

impl Collector for BreakerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let readings = self.0.readings();
        let mut family = encoder.encode_descriptor(
            "ferry_breaker_state",
            "Each deployment's circuit breaker here: 0 closed, 1 half-open, 2 open",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for reading in readings {
            let labels = [
                ("model", reading.model.as_str()),
                ("deployment", reading.deployment.as_str()),
            ];
            let gauge = ConstGauge::new(i64::from(reading.state.gauge()));
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// `GET /metrics`, for the metrics token or an operator: series name models and deployments
/// and show spend, which is for the operator's eyes.
pub async fn serve(
    State(state): State<AppState>,
    headers: HeaderMap,
    token: Option<Arc<str>>,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let by_token = matches!((presented, &token), (Some(presented), Some(token))
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())));
    if !by_token {
        match crate::app::authenticate_request(&axum::http::Method::GET, &headers, &state).await {
            Ok(principal) if principal.is_operator() => {}
            Ok(_) => {
                return ErrorResponse::from(ApiError::new(
                    ErrorKind::PermissionDenied,
                    "Metrics are for the operator (or the metrics token).",
                ))
                .into_response();
            }
            Err(error) => return ErrorResponse::from(error).into_response(),
        }
    }
    let mut response = state.metrics.encode().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_labelled_as_documented() {
        let metrics = Metrics::new();
        let breakers = Arc::new(Breakers::default());
        metrics.watch_breakers(&breakers);
        metrics.watch_breakers(&breakers);
        metrics
            .tokens
            .get_or_create(&TokenLabels {
                model: "m".into(),
                r#type: "completion",
            })
            .inc_by(3);
        metrics
            .requests
            .get_or_create(&CallLabels {
                model: "m".into(),
                endpoint: "chat.completions",
                status: status_class(503),
            })
            .inc();
        metrics.held_nanodollars.inc_by(7);
        let text = metrics.encode();
        for line in [
            "ferry_tokens_total{model=\"m\",type=\"completion\"} 3",
            "ferry_requests_total{model=\"m\",endpoint=\"chat.completions\",status=\"5xx\"} 1",
            "ferry_held_nanodollars_total 7",
            "# TYPE ferry_breaker_state gauge",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE ferry_breaker_state gauge").count(),
            1,
            "registered once"
        );
    }

    #[test]
    fn status_classes_keep_a_departed_caller_apart() {
        let classes: Vec<&str> = [200, 400, 429, 499, 502, 504]
            .into_iter()
            .map(status_class)
            .collect();
        assert_eq!(classes, ["2xx", "4xx", "4xx", "499", "5xx", "5xx"]);
    }
}
