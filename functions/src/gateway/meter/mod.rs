//! Metering: one usage record per request, priced at the price in effect when the call was
//! admitted, and settled against its hold in the same store transaction, once per request id.
//! Its concerns each have a part: pricing (here), the usage record and its settlement
//! ([`settle`]), the call's span fields and metrics ([`observe`]).
//!
//! A `Meter` is made when a call is dispatched and must be finished with [`Meter::record`].
//! If it is dropped instead (the caller went away while a plain call was waiting on the
//! backend), it settles on its own as status 499 with nothing delivered, so the hold is
//! released now rather than when it expires.

mod observe;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Money;
use ferry_core::cache::CacheStatus;
use ferry_core::call::Attribution;
use ferry_core::model::Price;
use ferry_core::openai::{PromptTokensDetails, Usage};
use ferry_core::ports::{Accounts, Endpoint};
use ferry_core::principal::Principal;
use ferry_core::route::Reason;
use tracing::Instrument;

use crate::metrics::Metrics;
use observe::{Observation, millis};
pub use settle::NotSettled;
use settle::{Outcome, Settlement};

/// Status recorded for a call its caller abandoned (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Everything needed to meter one call, fixed when it is dispatched.
pub struct Meter {
    settlement: Settlement,
    observation: Observation,
    /// The answering deployment's price.
    price: Option<Price>,
    deadline: tokio::time::Instant,
    recorded: bool,
}

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
    /// Whom the caller says the call is for.
    pub attribution: Attribution,
}

impl Meter {
    pub fn new(params: MeterParams<'_>) -> Meter {
        Meter {
            settlement: Settlement {
                accounts: params.accounts,
                request_id: params.request_id,
                tenant_id: params.principal.billing_subject().to_owned(),
                // A token's calls are its subject's, as a key's are the key's.
                caller: params.principal.credential.caller_id(),
                model_id: params.model_id,
                deployment_id: params.deployment_id,
                endpoint: params.endpoint,
                admitted_at: params.admitted_at,
                attribution: params.attribution,
            },
            observation: Observation::begin(params.metrics, params.endpoint),
            price: params.price,
            deadline: tokio::time::Instant::now() + params.time_limit,
            recorded: false,
        }
    }

    /// The first attempt at a backend begins now.
    pub fn upstream_begins(&mut self) {
        self.observation.upstream_begins();
    }

    /// The backends are done: the answer (or a stream's last event) has arrived, or every
    /// attempt failed. What is left of the call's time is the gateway's own.
    pub fn upstream_ends(&mut self) {
        self.observation.upstream_ends();
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
        deployment_id.clone_into(&mut self.settlement.deployment_id);
        self.price = price;
        self.observation.routed(reason, attempts);
    }

    pub fn model_id(&self) -> &str {
        &self.settlement.model_id
    }

    /// What the response cache did for this call, for its usage event.
    pub fn set_cache_status(&mut self, status: CacheStatus) {
        self.observation.cache = status;
    }

    /// When the call must be over (its answer delivered, or cut off).
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    pub fn elapsed(&self) -> Duration {
        self.observation.started.elapsed()
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

    /// Completes `usage` as a cache hit is charged: at the model's cache-hit price.
    pub fn price_hit(&self, usage: &mut Usage) {
        self.price_usage(usage);
        if let Some(price) = &self.price {
            usage.cost = Some(ferry_core::usage::hit_cost(price, usage));
        }
    }

    /// Records the usage and settles the hold; returns what was charged once both are durable,
    /// so the caller's answer is final only after its charge is. A store failure is retried;
    /// if it persists (or the hold had expired) the answer must be withheld: the hold expires
    /// and the call is charged nothing.
    pub async fn record(
        mut self,
        usage: &Usage,
        status: u16,
        ttft: Option<Duration>,
    ) -> Result<Money, NotSettled> {
        self.recorded = true;
        let record = self.settlement.record(&self.outcome(usage, status, ttft));
        self.observation.record_span(&record);
        let settled = settle::settle(self.settlement.accounts.as_ref(), &record)
            .instrument(tracing::info_span!(
                "settle",
                "gen_ai.usage.input_tokens" =
                    i64::try_from(record.prompt_tokens).unwrap_or(i64::MAX),
                "gen_ai.usage.output_tokens" =
                    i64::try_from(record.completion_tokens).unwrap_or(i64::MAX),
                "ferry.cost_nanodollars" = record.cost.nanos(),
                "http.response.status_code" = i64::from(record.status),
            ))
            .await;
        self.observation.finish(&record, settled.ok());
        settled
    }

    fn outcome<'u>(&self, usage: &'u Usage, status: u16, ttft: Option<Duration>) -> Outcome<'u> {
        Outcome {
            usage,
            status,
            latency_ms: millis(self.observation.started.elapsed()),
            ttft_ms: ttft.map(millis),
            cache_status: self.observation.cache.usage_label(),
            route: self.observation.route,
            attempts: self.observation.attempts,
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.recorded && self.observation.is_done() {
            return;
        }
        // Nothing was delivered: a departed caller is not charged, not even the per-call fee.
        let nothing = Usage::default();
        let record = self
            .settlement
            .record(&self.outcome(&nothing, CLIENT_CLOSED, None));
        // Dropped while its settlement was being written: counted as the caller leaving.
        self.observation.finish(&record, None);
        if self.recorded {
            return;
        }
        let accounts = Arc::clone(&self.settlement.accounts);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = settle::settle(accounts.as_ref(), &record).await;
            });
        }
    }
}
