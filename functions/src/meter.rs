//! Metering: one usage record per request, priced at the price in effect when the call was
//! admitted, and settled against its hold in the same store transaction, once per request id.
//!
//! A `Meter` is made when a call is dispatched and must be finished with [`Meter::record`].
//! If it is dropped instead (the caller went away while a plain call was waiting on the
//! backend), it settles on its own as status 499 with nothing delivered, so the hold is
//! released now rather than when it expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::cache::CacheStatus;
use ferry_core::model::Price;
use ferry_core::openai::{PromptTokensDetails, Usage};
use ferry_core::ports::{Accounts, Endpoint, NO_ROUTE, Settled, StoreError, UsageRecord};
use ferry_core::principal::Principal;
use ferry_core::route::Reason;
use ferry_core::{ApiError, ErrorKind, Money};

use crate::metrics::{
    CallLabels, Metrics, ModelLabels, ResultLabels, SpendLabels, TokenLabels, status_class,
};
use crate::route::BreakerPermit;
use tracing::Instrument;

/// Status recorded for a call its caller abandoned (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;
/// Attempts at writing a settlement before giving up to the hold's expiry.
const SETTLE_ATTEMPTS: u32 = 4;

/// Everything needed to meter one call, fixed when it is dispatched.
pub struct Meter {
    accounts: Arc<dyn Accounts>,
    request_id: String,
    tenant_id: String,
    key_id: Option<String>,
    model_id: String,
    deployment_id: String,
    endpoint: Endpoint,
    price: Option<Price>,
    started: Instant,
    admitted_at: u64,
    deadline: tokio::time::Instant,
    recorded: bool,
    /// Its metrics are counted (once, even if it is dropped while settling).
    observed: bool,
    cache: CacheStatus,
    route: &'static str,
    attempts: u32,
    /// The breaker of the deployment streaming the answer, judged when the stream ends.
    breaker: Option<BreakerPermit>,
    metrics: Arc<Metrics>,
    /// When the first attempt at a backend began, and how long the backends took in all.
    upstream_began: Option<Instant>,
    upstream_took: Option<Duration>,
}

/// The call's charge could not be recorded (the store failed, or its hold had already
/// expired): its answer must not be delivered as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSettled;

pub struct MeterParams<'a> {
    pub accounts: Arc<dyn Accounts>,
    pub request_id: String,
    pub principal: &'a Principal,
    pub model_id: String,
    pub deployment_id: String,
    pub endpoint: Endpoint,
    pub price: Option<Price>,
    /// Unix seconds.
    pub admitted_at: u64,
    /// How long the call may run: its hold expires soon after, and a call that outlives its
    /// hold would be free.
    pub time_limit: Duration,
    pub metrics: Arc<Metrics>,
}

impl Meter {
    pub fn new(params: MeterParams<'_>) -> Meter {
        // A token's calls are its subject's, as a key's are the key's.
        let key_id = Some(params.principal.credential.caller_id());
        Meter {
            accounts: params.accounts,
            request_id: params.request_id,
            tenant_id: params.principal.billing_subject().to_owned(),
            key_id,
            model_id: params.model_id,
            deployment_id: params.deployment_id,
            endpoint: params.endpoint,
            price: params.price,
            started: Instant::now(),
            admitted_at: params.admitted_at,
            deadline: tokio::time::Instant::now() + params.time_limit,
            recorded: false,
            observed: false,
            cache: CacheStatus::Bypass,
            route: NO_ROUTE,
            attempts: 0,
            breaker: None,
            metrics: {
                params.metrics.calls_in_flight.inc();
                params.metrics
            },
            upstream_began: None,
            upstream_took: None,
        }
    }

    /// The first attempt at a backend begins now.
    pub fn upstream_begins(&mut self) {
        self.upstream_began.get_or_insert_with(Instant::now);
    }

    /// The backends are done: the answer (or a stream's last event) has arrived, or every
    /// attempt failed. What is left of the call's time is the gateway's own.
    pub fn upstream_ends(&mut self) {
        if let Some(began) = self.upstream_began
            && self.upstream_took.is_none()
        {
            self.upstream_took = Some(began.elapsed());
        }
    }

    /// The deployment that answers (a fallback may differ from the one admitted), why it was
    /// tried, its price, and the attempts made so far.
    pub fn set_route(
        &mut self,
        deployment_id: &str,
        price: Option<Price>,
        reason: Reason,
        attempts: u32,
    ) {
        deployment_id.clone_into(&mut self.deployment_id);
        self.price = price;
        self.route = reason.as_str();
        self.attempts = attempts;
    }

    /// Hands the answering deployment's breaker permit over, to be judged by the final status.
    pub fn judge_on_record(&mut self, permit: BreakerPermit) {
        self.breaker = Some(permit);
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// What the response cache did for this call, for its usage event.
    pub fn set_cache_status(&mut self, status: CacheStatus) {
        self.cache = status;
    }

    /// Completes `usage` as a cache hit is charged: at the model's cache-hit price.
    pub fn price_hit(&self, usage: &mut Usage) {
        self.price_usage(usage);
        if let Some(price) = &self.price {
            usage.cost = Some(ferry_core::usage::hit_cost(price, usage));
        }
    }

    /// When the call must be over (its answer delivered, or cut off).
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Completes `usage` as callers see it: totals, cached-token details and the exact cost.
    pub fn price_usage(&self, usage: &mut Usage) {
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
        usage
            .prompt_tokens_details
            .get_or_insert(PromptTokensDetails::default());
        usage.cost = Some(
            self.price
                .as_ref()
                .map_or(Money::ZERO, |price| ferry_core::usage::cost(price, usage)),
        );
    }

    fn usage_record(&self, usage: &Usage, status: u16, ttft: Option<Duration>) -> UsageRecord {
        UsageRecord {
            request_id: self.request_id.clone(),
            tenant_id: self.tenant_id.clone(),
            key_id: self.key_id.clone(),
            model: self.model_id.clone(),
            deployment: self.deployment_id.clone(),
            endpoint: self.endpoint.name().to_owned(),
            prompt_tokens: usage.prompt_tokens,
            cached_tokens: usage.cached_tokens(),
            completion_tokens: usage.completion_tokens,
            cost: usage.cost.unwrap_or(Money::ZERO),
            status,
            latency_ms: millis(self.started.elapsed()),
            ttft_ms: ttft.map(millis),
            cache_status: self.cache.usage_label().into(),
            route: self.route.to_owned(),
            attempts: self.attempts,
            created_at: self.admitted_at,
        }
    }

    /// Records the usage and settles the hold; returns once both are durable, so the caller's
    /// answer is final only after its charge is. A store failure is retried; if it persists
    /// (or the hold had expired) the answer must be withheld: the hold expires and the call
    /// is charged nothing.
    pub async fn record(
        mut self,
        usage: &Usage,
        status: u16,
        ttft: Option<Duration>,
    ) -> Result<Money, NotSettled> {
        self.recorded = true;
        if let Some(permit) = self.breaker.take() {
            match status {
                // The caller left: no verdict on the backend.
                CLIENT_CLOSED => drop(permit),
                _ => permit.finish(status < 500),
            }
        }
        let record = self.usage_record(usage, status, ttft);
        let call = tracing::Span::current();
        // Integers as i64: OpenTelemetry has no unsigned attribute (a u64 would become text).
        let (input_tokens, output_tokens) = (
            i64::try_from(record.prompt_tokens).unwrap_or(i64::MAX),
            i64::try_from(record.completion_tokens).unwrap_or(i64::MAX),
        );
        call.record("gen_ai.usage.input_tokens", input_tokens);
        call.record("gen_ai.usage.output_tokens", output_tokens);
        call.record("ferry.cache", record.cache_status.as_str());
        if status >= 500 {
            call.record("otel.status_code", "error");
        }
        let settled = settle(self.accounts.as_ref(), &record)
            .instrument(tracing::info_span!(
                "settle",
                "gen_ai.usage.input_tokens" = input_tokens,
                "gen_ai.usage.output_tokens" = output_tokens,
                "ferry.cost_nanodollars" = record.cost.nanos(),
                "http.response.status_code" = i64::from(record.status),
            ))
            .await;
        self.observe(&record, settled.ok());
        settled
    }

    /// The call's metrics, once it is over.
    fn observe(&mut self, record: &UsageRecord, charged: Option<Money>) {
        if std::mem::replace(&mut self.observed, true) {
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
                        model: model(),
                        r#type: kind,
                    })
                    .inc_by(count);
            }
        }
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
}

async fn settle(accounts: &dyn Accounts, record: &UsageRecord) -> Result<Money, NotSettled> {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=SETTLE_ATTEMPTS {
        match accounts.settle(record).await {
            Ok(Settled::Recorded { charged }) => return Ok(charged),
            Ok(Settled::Duplicate) => {
                tracing::warn!(request_id = %record.request_id, "settled already (its hold expired?); not charged again");
                return Err(NotSettled);
            }
            Err(StoreError::Unavailable(error)) if attempt < SETTLE_ATTEMPTS => {
                tracing::warn!(request_id = %record.request_id, %error, attempt, "settlement not written; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            Err(error) => {
                tracing::error!(request_id = %record.request_id, %error, "settlement not written; the hold will expire");
                return Err(NotSettled);
            }
        }
    }
    Err(NotSettled)
}

impl NotSettled {
    /// What the caller gets instead of an answer that could not be charged.
    pub fn to_api_error(self) -> ApiError {
        ApiError::new(
            ErrorKind::NoCapacity,
            "This call's charge could not be recorded, so its answer was withheld; it was not billed. Retry shortly.",
        )
        .with_code("not_billed")
        .retry_after(1)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.recorded && self.observed {
            return;
        }
        // Nothing was delivered: a departed caller is not charged, not even the per-call fee.
        let record = self.usage_record(&Usage::default(), CLIENT_CLOSED, None);
        // Dropped while its settlement was being written: counted as the caller leaving.
        self.observe(&record, None);
        if self.recorded {
            return;
        }
        let accounts = Arc::clone(&self.accounts);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = settle(accounts.as_ref(), &record).await;
            });
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
