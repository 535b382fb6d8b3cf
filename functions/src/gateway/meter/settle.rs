//! Settlement: the call's usage record, written with its hold's settlement in one store
//! transaction, once per request id; retried while the store is briefly unavailable.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::call::Attribution;
use ferry_core::openai::Usage;
use ferry_core::ports::{Accounts, Endpoint, Settled, StoreError, UsageRecord};
use ferry_core::{ApiError, ErrorKind, Money};

/// Attempts at writing a settlement before giving up to the hold's expiry.
const SETTLE_ATTEMPTS: u32 = 4;

/// Who a call's usage belongs to and where it ran: its usage record, but for what it used.
pub(super) struct Settlement {
    pub accounts: Arc<dyn Accounts>,
    pub request_id: String,
    pub tenant_id: String,
    pub caller: String,
    pub model_id: String,
    pub deployment_id: String,
    pub endpoint: Endpoint,
    /// Unix seconds.
    pub admitted_at: u64,
    pub attribution: Attribution,
}

/// What the call did, for its usage record.
pub(super) struct Outcome<'a> {
    pub usage: &'a Usage,
    pub status: u16,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub cache_status: &'static str,
    pub route: &'static str,
    pub attempts: u32,
}

impl Settlement {
    pub fn record(&self, outcome: &Outcome<'_>) -> UsageRecord {
        UsageRecord {
            request_id: self.request_id.clone(),
            tenant_id: self.tenant_id.clone(),
            key_id: Some(self.caller.clone()),
            model: self.model_id.clone(),
            deployment: self.deployment_id.clone(),
            endpoint: self.endpoint.name().to_owned(),
            prompt_tokens: outcome.usage.prompt_tokens,
            cached_tokens: outcome.usage.cached_tokens(),
            completion_tokens: outcome.usage.completion_tokens,
            cost: outcome.usage.cost.unwrap_or(Money::ZERO),
            status: outcome.status,
            latency_ms: outcome.latency_ms,
            ttft_ms: outcome.ttft_ms,
            cache_status: outcome.cache_status.into(),
            route: outcome.route.to_owned(),
            attempts: outcome.attempts,
            created_at: self.admitted_at,
            user: self.attribution.user.clone(),
            metadata: self.attribution.metadata.clone(),
        }
    }
}

/// The call's charge could not be recorded (the store failed, or its hold had already
/// expired): its answer must not be delivered as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSettled;

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

/// Writes `record` and settles its hold; what the tenant was charged.
pub(super) async fn settle(
    accounts: &dyn Accounts,
    record: &UsageRecord,
) -> Result<Money, NotSettled> {
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
