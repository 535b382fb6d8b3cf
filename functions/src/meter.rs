//! Metering: one usage record per request, priced at the model's price, written idempotently
//! under the request id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::Money;
use ferry_core::model::Price;
use ferry_core::openai::{PromptTokensDetails, Usage};
use ferry_core::ports::{Endpoint, Store, UsageRecord};
use ferry_core::principal::{Credential, Principal};

use crate::clock;

/// Everything needed to meter one call, fixed when it is dispatched.
pub struct Meter {
    store: Arc<dyn Store>,
    request_id: String,
    tenant_id: String,
    key_id: Option<String>,
    model_id: String,
    deployment_id: String,
    endpoint: Endpoint,
    price: Option<Price>,
    started: Instant,
}

pub struct MeterParams<'a> {
    pub store: Arc<dyn Store>,
    pub request_id: String,
    pub principal: &'a Principal,
    pub model_id: String,
    pub deployment_id: String,
    pub endpoint: Endpoint,
    pub price: Option<Price>,
}

impl Meter {
    pub fn new(params: MeterParams<'_>) -> Meter {
        let key_id = match &params.principal.credential {
            Credential::ApiKey { key_id } => Some(key_id.clone()),
            Credential::Jwt { .. } => None,
        };
        Meter {
            store: params.store,
            request_id: params.request_id,
            tenant_id: params.principal.billing_subject().to_owned(),
            key_id,
            model_id: params.model_id,
            deployment_id: params.deployment_id,
            endpoint: params.endpoint,
            price: params.price,
            started: Instant::now(),
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

    /// Writes the usage record. A failure is logged, not returned: the caller already has
    /// their answer, and the record's request id makes a later replay safe.
    pub async fn record(&self, usage: &Usage, status: u16, time_to_first_token: Option<Duration>) {
        let record = UsageRecord {
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
            ttft_ms: time_to_first_token.map(millis),
            created_at: clock::unix_seconds(),
        };
        if let Err(error) = self.store.record_usage(&record).await {
            tracing::error!(request_id = %self.request_id, %error, "usage record not written");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
