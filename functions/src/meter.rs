//! Metering: one usage record per request, priced at the price in effect when the call was
//! admitted, and settled against its hold in the same store transaction, once per request id.
//!
//! A `Meter` is made when a call is dispatched and must be finished with [`Meter::record`].
//! If it is dropped instead (the caller went away while a plain call was waiting on the
//! backend), it settles on its own as status 499 with nothing delivered, so the hold is
//! released now rather than when it expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::Money;
use ferry_core::model::Price;
use ferry_core::openai::{PromptTokensDetails, Usage};
use ferry_core::ports::{Accounts, Endpoint, Settled, StoreError, UsageRecord};
use ferry_core::principal::{Credential, Principal};

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
}

impl Meter {
    pub fn new(params: MeterParams<'_>) -> Meter {
        let key_id = match &params.principal.credential {
            Credential::ApiKey { key_id } => Some(key_id.clone()),
            Credential::Jwt { .. } => None,
        };
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
            recorded: false,
        }
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
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
            cache_status: "none".into(),
            created_at: self.admitted_at,
        }
    }

    /// Records the usage and settles the hold; returns once both are durable, so the caller's
    /// answer is final only after its charge is. A store failure is retried, then logged: the
    /// hold then expires and the call is charged nothing.
    pub async fn record(mut self, usage: &Usage, status: u16, ttft: Option<Duration>) -> Money {
        self.recorded = true;
        let record = self.usage_record(usage, status, ttft);
        settle(self.accounts.as_ref(), &record).await
    }
}

async fn settle(accounts: &dyn Accounts, record: &UsageRecord) -> Money {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=SETTLE_ATTEMPTS {
        match accounts.settle(record).await {
            Ok(Settled::Recorded { charged }) => return charged,
            Ok(Settled::Duplicate) => {
                tracing::warn!(request_id = %record.request_id, "settled already; ignored the replay");
                return Money::ZERO;
            }
            Err(StoreError::Unavailable(error)) if attempt < SETTLE_ATTEMPTS => {
                tracing::warn!(request_id = %record.request_id, %error, attempt, "settlement not written; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            Err(error) => {
                tracing::error!(request_id = %record.request_id, %error, "settlement not written; the hold will expire");
                return Money::ZERO;
            }
        }
    }
    Money::ZERO
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let mut usage = Usage::default();
        self.price_usage(&mut usage);
        // Nothing was delivered, so nothing but a per-call fee is owed; a departed caller is
        // not charged even that.
        usage.cost = Some(Money::ZERO);
        let record = self.usage_record(&usage, CLIENT_CLOSED, None);
        let accounts = Arc::clone(&self.accounts);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                settle(accounts.as_ref(), &record).await;
            });
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
