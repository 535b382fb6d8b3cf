//! A call's observation: its timings (whole, at the backends, to the first token), how the
//! cache and the route served it, recorded once as its span's fields and its metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::Money;
use ferry_core::cache::CacheStatus;
use ferry_core::ports::{Endpoint, NO_ROUTE, UsageRecord};
use ferry_core::route::Reason;

use crate::metrics::{
    CallLabels, Metrics, ModelLabels, ResultLabels, SpendLabels, TokenLabels, status_class,
};

pub(super) struct Observation {
    pub metrics: Arc<Metrics>,
    pub endpoint: Endpoint,
    pub started: Instant,
    pub cache: CacheStatus,
    pub route: &'static str,
    pub attempts: u32,
    /// When the first attempt at a backend began, and how long the backends took in all.
    upstream_began: Option<Instant>,
    upstream_took: Option<Duration>,
    /// Its metrics are counted (once, even if the call is dropped while settling).
    done: bool,
}

impl Observation {
    /// A call begins: it counts as in flight until it is observed.
    pub fn begin(metrics: Arc<Metrics>, endpoint: Endpoint) -> Observation {
        metrics.calls_in_flight.inc();
        Observation {
            metrics,
            endpoint,
            started: Instant::now(),
            cache: CacheStatus::Bypass,
            route: NO_ROUTE,
            attempts: 0,
            upstream_began: None,
            upstream_took: None,
            done: false,
        }
    }

    pub fn routed(&mut self, reason: Reason, attempts: u32) {
        self.route = reason.as_str();
        self.attempts = attempts;
    }

    pub fn upstream_begins(&mut self) {
        self.upstream_began.get_or_insert_with(Instant::now);
    }

    pub fn upstream_ends(&mut self) {
        if let Some(began) = self.upstream_began
            && self.upstream_took.is_none()
        {
            self.upstream_took = Some(began.elapsed());
        }
    }

    /// The usage on the call's span (the GenAI conventions' attributes).
    pub fn record_span(&self, record: &UsageRecord) {
        let call = tracing::Span::current();
        // Integers as i64: OpenTelemetry has no unsigned attribute (a u64 would become text).
        call.record("gen_ai.usage.input_tokens", signed(record.prompt_tokens));
        call.record(
            "gen_ai.usage.output_tokens",
            signed(record.completion_tokens),
        );
        call.record("ferry.cache", record.cache_status.as_str());
        if record.status >= 500 {
            call.record("otel.status_code", "error");
        }
    }

    /// The call's metrics, once it is over (and `charged`, if it was).
    pub fn finish(&mut self, record: &UsageRecord, charged: Option<Money>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let metrics = &self.metrics;
        metrics.calls_in_flight.dec();
        let model = || record.model.clone();
        let endpoint = self.endpoint.name();
        metrics
            .requests
            .get_or_create(&CallLabels {
                model: model(),
                endpoint,
                status: status_class(record.status),
            })
            .inc();
        let labels = ModelLabels {
            model: model(),
            endpoint,
        };
        let total = self.started.elapsed();
        metrics
            .request_duration
            .get_or_create(&labels)
            .observe(total.as_secs_f64());
        if let Some(upstream) = self.upstream_took {
            metrics
                .overhead
                .get_or_create(&labels)
                .observe(total.saturating_sub(upstream).as_secs_f64());
        }
        if let Some(ttft_ms) = record.ttft_ms {
            metrics
                .time_to_first_token
                .get_or_create(&labels)
                .observe(Duration::from_millis(ttft_ms).as_secs_f64());
        }
        count_tokens(metrics, record);
        let result = match self.cache {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        };
        metrics.cache.get_or_create(&ResultLabels { result }).inc();
        if let Some(charged) = charged.and_then(|money| u64::try_from(money.nanos()).ok()) {
            metrics
                .spend_nanodollars
                .get_or_create(&SpendLabels { model: model() })
                .inc_by(charged);
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

fn count_tokens(metrics: &Metrics, record: &UsageRecord) {
    let uncached = record.prompt_tokens.saturating_sub(record.cached_tokens);
    for (kind, count) in [
        ("prompt", uncached),
        ("cached", record.cached_tokens),
        ("completion", record.completion_tokens),
    ] {
        if count > 0 {
            metrics
                .tokens
                .get_or_create(&TokenLabels {
                    model: record.model.clone(),
                    r#type: kind,
                })
                .inc_by(count);
        }
    }
}

fn signed(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
