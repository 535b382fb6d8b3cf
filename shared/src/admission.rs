//! Admission: whether a call may start, decided in one step over every limit that applies —
//! rate-limit buckets, the tenant's credit, budgets and key caps — and what it takes if it may.
//!
//! The rules are pure: a store loads the current state inside a transaction, calls [`decide`],
//! and writes what the [`Grant`] says, so "take from every bucket or from none" holds across
//! any number of gateway replicas sharing that store. [`settle_plan`] is the other half: what
//! a finished call's hold turns into.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind};
use crate::ledger::Posting;
use crate::model::Price;
use crate::money::Money;
use crate::openai::{PromptTokensDetails, Usage};
use crate::ports::{Alert, Billing, UsageRecord};
use crate::ratelimit::{self, Bucket, Remaining, Taken, Unit};

/// Tokens a chat template may add beyond the request's own bytes (special tokens, a default
/// system prompt).
const TEMPLATE_TOKENS: u64 = 64;
/// The output cap of a model that names none.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;
/// A call refused only while other calls are in flight may retry this soon.
const IN_FLIGHT_RETRY_SECONDS: u64 = 1;

/// Tokens one non-text content part (an image, audio) may cost, beyond its bytes: more than
/// any current vision encoder spends on one image.
pub const TOKENS_PER_MEDIA_PART: u64 = 4096;
/// The output a call without `max_tokens` typically generates, for token rate limits only (the
/// hold still assumes the model's cap).
pub const TYPICAL_OUTPUT_TOKENS: u64 = 256;

/// What a call may consume, bounded before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate {
    /// An upper bound on prompt tokens: a byte-level tokenizer never makes more tokens than
    /// the request body has bytes (JSON framing covers each message's template tokens), plus
    /// a bound per media part.
    pub prompt_max: u64,
    /// A typical prompt size (about four bytes a token), for token rate limits.
    pub prompt_likely: u64,
    /// Every completion token the call may generate: `max_tokens` (or the model's cap) times
    /// `n` times the number of prompts.
    pub output_max: u64,
    /// What it will likely generate, for token rate limits.
    pub output_likely: u64,
}

impl TokenEstimate {
    pub fn new(
        body_bytes: usize,
        media_parts: u64,
        output_max: u64,
        output_likely: u64,
    ) -> TokenEstimate {
        let bytes = u64::try_from(body_bytes).unwrap_or(u64::MAX);
        let media = media_parts.saturating_mul(TOKENS_PER_MEDIA_PART);
        TokenEstimate {
            prompt_max: bytes.saturating_add(TEMPLATE_TOKENS).saturating_add(media),
            prompt_likely: (bytes / 4 + 1).saturating_add(media),
            output_max,
            output_likely: output_likely.min(output_max),
        }
    }

    /// The hold: what the call costs if it uses every token it may.
    pub fn worst_case_cost(&self, price: &Price) -> Money {
        let usage = Usage {
            prompt_tokens: self.prompt_max,
            completion_tokens: self.output_max,
            total_tokens: self.prompt_max.saturating_add(self.output_max),
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 0 }),
            cost: None,
        };
        crate::usage::cost(price, &usage)
    }

    /// Tokens drawn from token buckets at admission; corrected by the actual count after.
    pub fn rate_tokens(&self) -> u64 {
        self.prompt_likely.saturating_add(self.output_likely)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Enforcement {
    /// Calls that would pass the cap are refused with 402.
    #[default]
    Hard,
    /// Passing the cap records an alert; calls go on.
    Soft,
}

/// A spend cap per UTC day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Budget {
    pub period: BudgetPeriod,
    pub amount_usd: Money,
    #[serde(default)]
    pub enforcement: Enforcement,
}

/// Budgets must be zero or more; `param` names them in errors.
pub fn validate_budgets(budgets: &[Budget], param: &str) -> Result<(), ApiError> {
    match budgets
        .iter()
        .position(|budget| budget.amount_usd.is_negative())
    {
        Some(index) => Err(ApiError::invalid(
            format!("{param}[{index}].amount_usd"),
            "budget amounts must not be negative",
        )),
        None => Ok(()),
    }
}

/// Which limit refused a call (`limit_source` in the 402 body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LimitSource {
    TenantBalance,
    KeyCreditCap,
    TenantDailyBudget,
    TenantMonthlyBudget,
    KeyDailyBudget,
    KeyMonthlyBudget,
}

impl LimitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::TenantBalance => "tenant_balance",
            LimitSource::KeyCreditCap => "key_credit_cap",
            LimitSource::TenantDailyBudget => "tenant_daily_budget",
            LimitSource::TenantMonthlyBudget => "tenant_monthly_budget",
            LimitSource::KeyDailyBudget => "key_daily_budget",
            LimitSource::KeyMonthlyBudget => "key_monthly_budget",
        }
    }
}

/// A spend counter a call counts against, and the cap on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendCap {
    /// `spend:tenant:<id>:2026-11-25`, `spend:key:<id>:2026-11`, `spend:key:<id>:all`.
    pub counter: String,
    pub cap: Money,
    pub enforcement: Enforcement,
    pub source: LimitSource,
    /// Unix seconds when the period ends (none for a lifetime cap).
    pub resets_at: Option<u64>,
}

/// What a subject has spent in a period: settled, and held by calls in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendCounter {
    pub settled: Money,
    pub held: Money,
}

/// The caps a call counts against: the tenant's and the key's budgets, and the key's lifetime
/// credit cap, for the UTC day and month of `now`.
pub fn spend_caps(
    tenant_id: &str,
    tenant_budgets: &[Budget],
    key: Option<(&str, &[Budget], Option<Money>)>,
    now_seconds: u64,
) -> Vec<SpendCap> {
    let today = crate::calendar::Date::of_unix(now_seconds);
    let month = crate::calendar::Month::of_unix(now_seconds);
    let cap_for = |subject: &str, budget: &Budget, is_key: bool| {
        let (period, resets_at, source) = match (budget.period, is_key) {
            (BudgetPeriod::Day, false) => (
                today.to_string(),
                today.next().start_unix(),
                LimitSource::TenantDailyBudget,
            ),
            (BudgetPeriod::Day, true) => (
                today.to_string(),
                today.next().start_unix(),
                LimitSource::KeyDailyBudget,
            ),
            (BudgetPeriod::Month, false) => (
                month.to_string(),
                month.next().first_day().start_unix(),
                LimitSource::TenantMonthlyBudget,
            ),
            (BudgetPeriod::Month, true) => (
                month.to_string(),
                month.next().first_day().start_unix(),
                LimitSource::KeyMonthlyBudget,
            ),
        };
        SpendCap {
            counter: format!("spend:{subject}:{period}"),
            cap: budget.amount_usd,
            enforcement: budget.enforcement,
            source,
            resets_at: Some(resets_at),
        }
    };
    let tenant_subject = format!("tenant:{tenant_id}");
    let mut caps: Vec<SpendCap> = tenant_budgets
        .iter()
        .map(|budget| cap_for(&tenant_subject, budget, false))
        .collect();
    if let Some((key_id, budgets, credit_cap)) = key {
        let key_subject = format!("key:{key_id}");
        caps.extend(
            budgets
                .iter()
                .map(|budget| cap_for(&key_subject, budget, true)),
        );
        if let Some(cap) = credit_cap {
            caps.push(SpendCap {
                counter: format!("spend:{key_subject}:all"),
                cap,
                enforcement: Enforcement::Hard,
                source: LimitSource::KeyCreditCap,
                resets_at: None,
            });
        }
    }
    caps
}

/// Taking `amount` from a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draw {
    pub bucket: Bucket,
    pub amount: u64,
}

/// Everything needed to admit one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub request_id: String,
    pub tenant_id: String,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment: String,
    /// `chat.completions`, `completions` or `embeddings`.
    pub endpoint: String,
    pub billing: Billing,
    /// The worst-case cost, held until the call settles.
    pub hold: Money,
    pub draws: Vec<Draw>,
    pub caps: Vec<SpendCap>,
    pub now_ms: u64,
    pub expires_at_ms: u64,
}

impl Admission {
    pub fn now_nanos(&self) -> i64 {
        ratelimit::nanos_from_millis(self.now_ms)
    }
}

/// The state admission reads, aligned with the admission's draws and caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionState {
    pub tats: Vec<Option<i64>>,
    pub available: Money,
    pub held: Money,
    pub counters: Vec<SpendCounter>,
}

/// The tightest request and token buckets, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateStatus {
    pub requests: Option<Remaining>,
    pub tokens: Option<Remaining>,
}

impl RateStatus {
    fn note(&mut self, unit: Unit, remaining: Remaining) {
        let slot = match unit {
            Unit::Requests => &mut self.requests,
            Unit::Tokens => &mut self.tokens,
        };
        if slot.is_none_or(|current| remaining.remaining < current.remaining) {
            *slot = Some(remaining);
        }
    }

    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for (unit, remaining) in [("requests", self.requests), ("tokens", self.tokens)] {
            if let Some(remaining) = remaining {
                headers.push((
                    format!("x-ratelimit-limit-{unit}"),
                    remaining.limit.to_string(),
                ));
                headers.push((
                    format!("x-ratelimit-remaining-{unit}"),
                    remaining.remaining.to_string(),
                ));
                headers.push((
                    format!("x-ratelimit-reset-{unit}"),
                    ratelimit::format_reset(remaining.reset_nanos),
                ));
            }
        }
        headers
    }
}

/// What an admitted call takes: new bucket states, and the hold to post (prepaid only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tats: Vec<i64>,
    pub rate: RateStatus,
    pub hold_posting: Option<Posting>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditCode {
    /// Not enough credit even when every call in flight settles: top up.
    InsufficientCredit,
    /// Enough credit, but calls in flight hold it: retry shortly.
    InFlightBudgetExhausted,
}

impl CreditCode {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditCode::InsufficientCredit => "insufficient_credit",
            CreditCode::InFlightBudgetExhausted => "in_flight_budget_exhausted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    RateLimited {
        unit: Unit,
        limit: u64,
        retry_after_nanos: Option<u64>,
        rate: RateStatus,
    },
    Credit {
        code: CreditCode,
        source: LimitSource,
        retry_after_seconds: Option<u64>,
    },
}

impl Refusal {
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Refusal::RateLimited {
                unit,
                limit,
                retry_after_nanos,
                rate,
            } => {
                let message = match retry_after_nanos {
                    Some(_) => format!(
                        "Rate limit reached: {limit} {} per minute. Retry after the time in Retry-After.",
                        unit.as_str()
                    ),
                    None => format!(
                        "This request needs more {} than the limit of {limit} per minute allows; make it smaller.",
                        unit.as_str()
                    ),
                };
                let mut error = ApiError::new(ErrorKind::RateLimited, message)
                    .with_code(format!("rate_limit_{}", unit.as_str()));
                if let Some(nanos) = retry_after_nanos {
                    error = error.retry_after(nanos.div_ceil(1_000_000_000).max(1));
                }
                error.with_headers(rate.headers())
            }
            Refusal::Credit {
                code,
                source,
                retry_after_seconds,
            } => {
                let message = match code {
                    CreditCode::InsufficientCredit => format!(
                        "Not enough credit for this call's worst-case cost ({}). Top up, or lower max_tokens.",
                        source.as_str()
                    ),
                    CreditCode::InFlightBudgetExhausted => format!(
                        "Calls in flight hold the remaining credit ({}); retry when they finish.",
                        source.as_str()
                    ),
                };
                let mut error = ApiError::new(ErrorKind::InsufficientCredit, message)
                    .with_code(code.as_str())
                    .with_limit_source(source.as_str());
                if let Some(seconds) = retry_after_seconds {
                    error = error.retry_after(*seconds);
                }
                error
            }
        }
    }
}

/// Decides one admission over the state the store read. Nothing is taken unless everything
/// allows it.
pub fn decide(admission: &Admission, state: &AdmissionState) -> Result<Grant, Refusal> {
    let now = admission.now_nanos();
    let mut rate = RateStatus::default();
    let mut tats = Vec::with_capacity(admission.draws.len());
    let mut denied = None;
    for (draw, tat) in admission.draws.iter().zip(&state.tats) {
        match ratelimit::take(&draw.bucket, *tat, draw.amount, now) {
            Taken::Allowed { tat, remaining } => {
                tats.push(tat);
                rate.note(draw.bucket.unit, remaining);
            }
            Taken::Denied { retry_after_nanos } => {
                rate.note(
                    draw.bucket.unit,
                    Remaining {
                        limit: draw.bucket.per_minute,
                        remaining: 0,
                        reset_nanos: retry_after_nanos.unwrap_or(0),
                    },
                );
                // The longest wait wins: retrying sooner would be refused again.
                let longer = match (&denied, retry_after_nanos) {
                    (None, _) => true,
                    (Some((_, _, None)), _) => false,
                    (Some(_), None) => true,
                    (Some((_, _, Some(current))), Some(new)) => new > *current,
                };
                if longer {
                    denied = Some((draw.bucket.unit, draw.bucket.per_minute, retry_after_nanos));
                }
            }
        }
    }
    if let Some((unit, limit, retry_after_nanos)) = denied {
        return Err(Refusal::RateLimited {
            unit,
            limit,
            retry_after_nanos,
            rate,
        });
    }
    let now_seconds = admission.now_ms / 1000;
    for (cap, counter) in admission.caps.iter().zip(&state.counters) {
        if cap.enforcement == Enforcement::Soft {
            continue;
        }
        let settled_after = counter
            .settled
            .nanos()
            .saturating_add(admission.hold.nanos());
        if settled_after > cap.cap.nanos() {
            return Err(Refusal::Credit {
                code: CreditCode::InsufficientCredit,
                source: cap.source,
                retry_after_seconds: cap
                    .resets_at
                    .map(|resets_at| resets_at.saturating_sub(now_seconds).max(1)),
            });
        }
        if settled_after.saturating_add(counter.held.nanos()) > cap.cap.nanos() {
            return Err(Refusal::Credit {
                code: CreditCode::InFlightBudgetExhausted,
                source: cap.source,
                retry_after_seconds: Some(IN_FLIGHT_RETRY_SECONDS),
            });
        }
    }
    let hold_posting = match admission.billing {
        Billing::Postpaid => None,
        Billing::Prepaid => {
            if state.available < admission.hold {
                let code = if state.available.nanos().saturating_add(state.held.nanos())
                    >= admission.hold.nanos()
                {
                    CreditCode::InFlightBudgetExhausted
                } else {
                    CreditCode::InsufficientCredit
                };
                return Err(Refusal::Credit {
                    code,
                    source: LimitSource::TenantBalance,
                    retry_after_seconds: (code == CreditCode::InFlightBudgetExhausted)
                        .then_some(IN_FLIGHT_RETRY_SECONDS),
                });
            }
            (admission.hold > Money::ZERO)
                .then(|| Posting::hold(&admission.tenant_id, admission.hold))
        }
    };
    Ok(Grant {
        tats,
        rate,
        hold_posting,
    })
}

/// An admitted call's hold, as stored until it settles or expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub request_id: String,
    pub tenant_id: String,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment: String,
    pub endpoint: String,
    pub billing: Billing,
    pub amount: Money,
    pub caps: Vec<SpendCap>,
    /// Token draws made on the estimate, corrected at settlement.
    pub token_draws: Vec<Draw>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// Set when this hold is a replica's credit lease (`crate::lease`): every draw it took,
    /// for calls it admits in memory; the unused part is given back when it is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_draws: Option<Vec<Draw>>,
}

/// Usage status recorded for a call whose hold expired: the gateway died before it finished.
pub const EXPIRED_STATUS: u16 = 500;

impl Hold {
    /// The usage event of a call whose hold expired at `now_ms` unsettled: nothing delivered,
    /// nothing charged, billed in the period it was admitted in.
    pub fn expired_usage(&self, now_ms: u64) -> UsageRecord {
        UsageRecord {
            request_id: self.request_id.clone(),
            tenant_id: self.tenant_id.clone(),
            key_id: self.key_id.clone(),
            model: self.model.clone(),
            deployment: self.deployment.clone(),
            endpoint: self.endpoint.clone(),
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            cost: Money::ZERO,
            status: EXPIRED_STATUS,
            latency_ms: now_ms.saturating_sub(self.created_at_ms),
            ttft_ms: None,
            cache_status: "none".into(),
            route: crate::ports::NO_ROUTE.into(),
            attempts: 0,
            created_at: self.created_at_ms / 1000,
            user: None,
            metadata: Default::default(),
        }
    }

    pub fn of(admission: &Admission) -> Hold {
        Hold {
            request_id: admission.request_id.clone(),
            tenant_id: admission.tenant_id.clone(),
            key_id: admission.key_id.clone(),
            model: admission.model.clone(),
            deployment: admission.deployment.clone(),
            endpoint: admission.endpoint.clone(),
            billing: admission.billing,
            amount: admission.hold,
            caps: admission.caps.clone(),
            token_draws: admission
                .draws
                .iter()
                .filter(|draw| draw.bucket.unit == Unit::Tokens)
                .cloned()
                .collect(),
            created_at_ms: admission.now_ms,
            expires_at_ms: admission.expires_at_ms,
            lease_draws: None,
        }
    }
}

/// A cap a settlement carried past its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub cap: SpendCap,
    pub spent: Money,
}

impl Crossing {
    /// The alert it raises: one per counter and cap, so a crossing seen twice alerts once.
    pub fn alert(&self, tenant_id: &str, now_ms: u64) -> Alert {
        Alert {
            id: format!("alert:{}:{}", self.cap.counter, self.cap.cap.nanos()),
            tenant_id: tenant_id.to_owned(),
            limit_source: self.cap.source.as_str().to_owned(),
            enforcement: format!("{:?}", self.cap.enforcement).to_lowercase(),
            counter: self.cap.counter.clone(),
            cap_usd: self.cap.cap,
            spent_usd: self.spent,
            created_at_ms: now_ms,
        }
    }
}

/// What settling a hold at `cost` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlePlan {
    /// What the tenant pays, and so what its usage event and its answer say: the cost, drawn
    /// from a prepaid hold and, beyond it, from the available balance as far as that and the
    /// hard caps allow.
    pub charged: Money,
    /// The part of the cost that could not be charged, written off as the operator's.
    pub loss: Money,
    /// The settlement (or release, or postpaid charge), then the loss if there is one.
    pub postings: Vec<Posting>,
    /// Caps this charge carried past their limit, for alerts.
    pub crossings: Vec<Crossing>,
}

/// What the call's hard caps have room for: each one's cap, less what is settled against it
/// and what other calls in flight hold (this call's own hold is room it keeps).
fn cap_room(hold: &Hold, counters: &[SpendCounter]) -> i64 {
    hold.caps
        .iter()
        .zip(counters)
        .filter(|(cap, _)| cap.enforcement == Enforcement::Hard)
        .map(|(cap, counter)| {
            let others = counter
                .held
                .nanos()
                .saturating_sub(hold.amount.nanos())
                .max(0);
            cap.cap
                .nanos()
                .saturating_sub(counter.settled.nanos())
                .saturating_sub(others)
        })
        .min()
        .unwrap_or(i64::MAX)
}

impl Hold {
    /// Whether settling at `cost` draws on the tenant's available balance (a prepaid cost
    /// beyond the hold): only then does a settlement need to read it.
    pub fn overdrawn_by(&self, cost: Option<Money>) -> bool {
        self.billing == Billing::Prepaid && cost.is_some_and(|cost| cost > self.amount)
    }
}

/// The caps that settling `charged` more against `counters` carries past their limit.
pub fn crossings(caps: &[SpendCap], counters: &[SpendCounter], charged: Money) -> Vec<Crossing> {
    caps.iter()
        .zip(counters)
        .filter_map(|(cap, counter)| {
            let spent = counter.settled.checked_add(charged)?;
            (counter.settled <= cap.cap && spent > cap.cap).then(|| Crossing {
                cap: cap.clone(),
                spent,
            })
        })
        .collect()
}

/// Settles `hold` at `cost`; `available` is the tenant's spendable balance before this
/// settlement (read only when [`Hold::overdrawn_by`] says it matters), `counters` the caps'
/// counters. An expired hold (`cost` = none) is released in full and charges nothing.
///
/// A charge never takes a prepaid `available` below zero nor passes a hard cap beyond what the
/// hold already had room for, and is never quietly smaller than the cost: what the balance or
/// the caps cannot take is the loss. A cost within the hold is always charged whole.
pub fn settle_plan(
    hold: &Hold,
    cost: Option<Money>,
    available: Money,
    counters: &[SpendCounter],
) -> SettlePlan {
    let cost = cost.map(|cost| cost.max(Money::ZERO));
    let (charged, loss) = match cost {
        None => (Money::ZERO, Money::ZERO),
        Some(cost) => {
            // The most this call may be charged: what a prepaid balance can pay (its hold,
            // and beyond it the available balance), and what every hard cap has room for.
            let mut most = cap_room(hold, counters);
            if hold.billing == Billing::Prepaid {
                let payable = hold.amount.nanos().saturating_add(available.nanos().max(0));
                most = most.min(payable);
            }
            let charged = cost
                .nanos()
                .min(most.max(hold.amount.nanos().min(cost.nanos())));
            (
                Money::from_nanos(charged),
                Money::from_nanos(cost.nanos() - charged),
            )
        }
    };
    let posting = match (cost, hold.billing) {
        (None, Billing::Prepaid) => Some(Posting::expire(&hold.tenant_id, hold.amount)),
        (None, Billing::Postpaid) => None,
        (Some(_), Billing::Prepaid) => Some(Posting::settle(&hold.tenant_id, hold.amount, charged)),
        (Some(_), Billing::Postpaid) => Some(Posting::charge(&hold.tenant_id, charged)),
    };
    let written_off = (loss > Money::ZERO).then(|| Posting::loss(&hold.tenant_id, loss));
    let postings = posting
        .into_iter()
        .chain(written_off)
        .filter(|posting| !posting.entries.is_empty())
        .collect();
    let crossings = crossings(&hold.caps, counters, charged);
    SettlePlan {
        charged,
        loss,
        postings,
        crossings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> Money {
        text.parse().unwrap()
    }

    fn admission(billing: Billing, hold: &str, draws: Vec<Draw>, caps: Vec<SpendCap>) -> Admission {
        Admission {
            request_id: "r".into(),
            tenant_id: "t".into(),
            key_id: Some("k".into()),
            model: "m".into(),
            deployment: "d".into(),
            endpoint: "chat.completions".into(),
            billing,
            hold: usd(hold),
            draws,
            caps,
            now_ms: 1_795_600_000_000,
            expires_at_ms: 1_795_600_600_000,
        }
    }

    fn state(
        available: &str,
        held: &str,
        tats: usize,
        counters: Vec<SpendCounter>,
    ) -> AdmissionState {
        AdmissionState {
            tats: vec![None; tats],
            available: usd(available),
            held: usd(held),
            counters,
        }
    }

    fn credit_code(result: Result<Grant, Refusal>) -> Option<(&'static str, &'static str)> {
        match result {
            Err(Refusal::Credit { code, source, .. }) => Some((code.as_str(), source.as_str())),
            _ => None,
        }
    }

    #[test]
    fn the_balance_must_cover_the_worst_case() {
        let call = admission(Billing::Prepaid, "1", vec![], vec![]);
        let granted = decide(&call, &state("1", "0", 0, vec![])).unwrap();
        assert_eq!(granted.hold_posting, Some(Posting::hold("t", usd("1"))));
        assert_eq!(
            credit_code(decide(&call, &state("0.5", "0.5", 0, vec![]))),
            Some(("in_flight_budget_exhausted", "tenant_balance"))
        );
        assert_eq!(
            credit_code(decide(&call, &state("0.5", "0.4", 0, vec![]))),
            Some(("insufficient_credit", "tenant_balance"))
        );
        let postpaid = admission(Billing::Postpaid, "1", vec![], vec![]);
        assert_eq!(
            decide(&postpaid, &state("-5", "0", 0, vec![]))
                .unwrap()
                .hold_posting,
            None
        );
    }

    #[test]
    fn hard_caps_refuse_and_soft_caps_do_not() {
        let caps = spend_caps(
            "t",
            &[Budget {
                period: BudgetPeriod::Day,
                amount_usd: usd("2"),
                enforcement: Enforcement::Hard,
            }],
            Some((
                "k",
                &[Budget {
                    period: BudgetPeriod::Month,
                    amount_usd: usd("1"),
                    enforcement: Enforcement::Soft,
                }],
                Some(usd("10")),
            )),
            1_795_600_000,
        );
        assert_eq!(caps.len(), 3);
        assert_eq!(caps[0].counter, "spend:tenant:t:2026-11-25");
        assert_eq!(caps[1].counter, "spend:key:k:2026-11");
        assert_eq!(caps[2].counter, "spend:key:k:all");
        assert_eq!(caps[0].resets_at, Some(1_795_651_200));
        let call = admission(Billing::Prepaid, "1", vec![], caps);
        let counters = |settled: &str, held: &str| {
            vec![
                SpendCounter {
                    settled: usd(settled),
                    held: usd(held),
                },
                SpendCounter {
                    settled: usd("50"),
                    held: Money::ZERO,
                },
                SpendCounter::default(),
            ]
        };
        assert!(decide(&call, &state("100", "0", 0, counters("1", "0"))).is_ok());
        assert_eq!(
            credit_code(decide(&call, &state("100", "0", 0, counters("1", "0.5")))),
            Some(("in_flight_budget_exhausted", "tenant_daily_budget"))
        );
        let refused = decide(&call, &state("100", "0", 0, counters("1.5", "0")));
        assert_eq!(
            refused,
            Err(Refusal::Credit {
                code: CreditCode::InsufficientCredit,
                source: LimitSource::TenantDailyBudget,
                retry_after_seconds: Some(51_200),
            })
        );
        let error = refused.unwrap_err().to_api_error();
        assert_eq!(error.kind.status(), 402);
        assert_eq!(error.limit_source(), Some("tenant_daily_budget"));
    }

    #[test]
    fn a_refused_bucket_takes_nothing_from_the_others() {
        let requests = Bucket::new("key:k", Unit::Requests, 10);
        let tokens = Bucket::new("tenant:t", Unit::Tokens, 100);
        let call = admission(
            Billing::Prepaid,
            "0",
            vec![
                Draw {
                    bucket: requests.clone(),
                    amount: 1,
                },
                Draw {
                    bucket: tokens.clone(),
                    amount: 60,
                },
            ],
            vec![],
        );
        let first = decide(&call, &state("0", "0", 2, vec![])).unwrap();
        assert_eq!(first.rate.requests.unwrap().remaining, 9);
        assert_eq!(first.rate.tokens.unwrap().remaining, 40);
        let mut after = state("0", "0", 2, vec![]);
        after.tats = first.tats.iter().copied().map(Some).collect();
        match decide(&call, &after) {
            Err(Refusal::RateLimited {
                unit,
                limit,
                retry_after_nanos,
                rate,
            }) => {
                assert_eq!((unit, limit), (Unit::Tokens, 100));
                assert_eq!(retry_after_nanos, Some(12_000_000_000));
                let headers = rate.headers();
                assert!(headers.contains(&("x-ratelimit-remaining-tokens".into(), "0".into())));
                assert!(headers.contains(&("x-ratelimit-limit-requests".into(), "10".into())));
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
    }

    #[test]
    fn settling_charges_the_cost_and_alerts_on_crossed_caps() {
        let call = admission(
            Billing::Prepaid,
            "1",
            vec![],
            spend_caps(
                "t",
                &[Budget {
                    period: BudgetPeriod::Day,
                    amount_usd: usd("0.5"),
                    enforcement: Enforcement::Soft,
                }],
                None,
                1_795_600_000,
            ),
        );
        let hold = Hold::of(&call);
        let counters = [SpendCounter {
            settled: usd("0.4"),
            held: usd("1"),
        }];
        let plan = settle_plan(&hold, Some(usd("0.25")), Money::ZERO, &counters);
        assert_eq!(plan.charged, usd("0.25"));
        assert_eq!(plan.loss, Money::ZERO);
        assert_eq!(
            plan.postings,
            vec![Posting::settle("t", usd("1"), usd("0.25"))]
        );
        assert_eq!(plan.crossings.len(), 1);
        assert!(!hold.overdrawn_by(Some(usd("1"))));
        assert!(hold.overdrawn_by(Some(usd("1.000000001"))));
        assert!(!hold.overdrawn_by(None));
        let expired = settle_plan(&hold, None, usd("5"), &counters);
        assert_eq!((expired.charged, expired.loss), (Money::ZERO, Money::ZERO));
        assert_eq!(expired.postings, vec![Posting::expire("t", usd("1"))]);
        let mut postpaid = hold.clone();
        postpaid.billing = Billing::Postpaid;
        assert!(!postpaid.overdrawn_by(Some(usd("3"))));
        assert_eq!(
            settle_plan(&postpaid, Some(usd("3")), Money::ZERO, &[]).postings,
            vec![Posting::charge("t", usd("3"))]
        );
        assert!(
            settle_plan(&postpaid, None, Money::ZERO, &[])
                .postings
                .is_empty()
        );
    }

    #[test]
    fn a_cost_beyond_the_hold_is_drawn_from_the_balance_and_the_rest_written_off() {
        let hold = Hold::of(&admission(Billing::Prepaid, "1", vec![], vec![]));
        // (cost, available before settling) → (charged, loss)
        let cases = [
            ("3", "5", "3", "0"),
            ("3", "2", "3", "0"),
            ("3", "1.5", "2.5", "0.5"),
            ("3", "0", "1", "2"),
            // A balance already below zero (a negative adjustment) lends nothing.
            ("3", "-4", "1", "2"),
            ("1", "0", "1", "0"),
            ("-1", "9", "0", "0"),
        ];
        for (cost, available, charged, loss) in cases {
            let plan = settle_plan(&hold, Some(usd(cost)), usd(available), &[]);
            assert_eq!(
                (plan.charged, plan.loss),
                (usd(charged), usd(loss)),
                "cost {cost}, available {available}"
            );
            assert!(plan.postings.iter().all(Posting::is_balanced));
            let mut expected = vec![Posting::settle("t", usd("1"), usd(charged))];
            if plan.loss > Money::ZERO {
                expected.push(Posting::loss("t", usd(loss)));
            }
            assert_eq!(plan.postings, expected);
            // What the caller is told it cost is what the tenant pays, plus the write-off.
            let revenue: i64 = plan.postings.iter().map(|p| p.revenue().nanos()).sum();
            assert_eq!(revenue, plan.charged.nanos());
            let taken = -plan
                .postings
                .iter()
                .map(|p| p.moved(&crate::ledger::available("t")).nanos())
                .sum::<i64>();
            // Never more than the balance had, beyond the hold.
            assert!(taken <= usd(available).nanos().max(0), "{cost} {available}");
        }
    }

    #[test]
    fn a_charge_beyond_the_hold_never_passes_a_hard_cap() {
        let cap = |amount: &str, enforcement: Enforcement| SpendCap {
            counter: format!("spend:key:k:{amount}"),
            cap: usd(amount),
            enforcement,
            source: LimitSource::KeyCreditCap,
            resets_at: None,
        };
        let mut hold = Hold::of(&admission(
            Billing::Prepaid,
            "1",
            vec![],
            vec![cap("3", Enforcement::Hard), cap("2", Enforcement::Soft)],
        ));
        // Settled 1.5 against the hard cap; this hold (1) and another call's (0.25) in flight.
        let counters = [
            SpendCounter {
                settled: usd("1.5"),
                held: usd("1.25"),
            },
            SpendCounter {
                settled: usd("1.5"),
                held: usd("1.25"),
            },
        ];
        // Room under the hard cap: 3 - 1.5 - 0.25 = 1.25; the soft cap limits nothing.
        let plan = settle_plan(&hold, Some(usd("4")), usd("100"), &counters);
        assert_eq!((plan.charged, plan.loss), (usd("1.25"), usd("2.75")));
        assert_eq!(plan.crossings.len(), 1, "the soft cap's alert");
        // A cost within the hold is charged whole, whatever the counters say.
        let within = settle_plan(&hold, Some(usd("0.75")), Money::ZERO, &counters);
        assert_eq!((within.charged, within.loss), (usd("0.75"), Money::ZERO));
        // Postpaid alike: the hard cap bounds the charge, the rest is written off.
        hold.billing = Billing::Postpaid;
        let postpaid = settle_plan(&hold, Some(usd("4")), Money::ZERO, &counters);
        assert_eq!(
            (postpaid.charged, postpaid.loss),
            (usd("1.25"), usd("2.75"))
        );
        assert_eq!(postpaid.postings.len(), 2);
        assert!(postpaid.postings.iter().all(Posting::is_balanced));
    }

    #[test]
    fn the_hold_bounds_every_token_the_call_may_use() {
        let price = Price {
            input_per_mtok_usd: usd("1"),
            cached_input_per_mtok_usd: None,
            output_per_mtok_usd: usd("2"),
            per_call_usd: Some(usd("0.001")),
            cache_hit_usd: None,
            batch_discount_percent: None,
        };
        let estimate = TokenEstimate::new(936, 0, 100, 100);
        assert_eq!(estimate.prompt_max, 1000);
        assert_eq!(estimate.worst_case_cost(&price), usd("0.0022"));
        assert_eq!(estimate.rate_tokens(), 335);
        let with_image = TokenEstimate::new(936, 1, 4096, TYPICAL_OUTPUT_TOKENS);
        assert_eq!(with_image.prompt_max, 1000 + TOKENS_PER_MEDIA_PART);
        assert_eq!(with_image.rate_tokens(), 235 + TOKENS_PER_MEDIA_PART + 256);
    }
}
