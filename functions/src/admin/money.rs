//! The money side of the admin API: credits, refunds and adjustments (ledger postings), the
//! ledger itself, prices over time, spend reports, usage events, invoices and budget alerts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::billing::{GroupBy, Invoice, UsageRow};
use ferry_core::calendar::{Date, Month};
use ferry_core::error::ErrorBody;
use ferry_core::ledger::Posting;
use ferry_core::model::Price;
use ferry_core::ports::{
    Alert, KeySpend, PageRequest, PostRequest, PriceRecord, Transaction, UsageRecord,
};
use ferry_core::principal::{Principal, is_caller_id};
use ferry_core::{ApiError, ErrorKind, Money};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::{
    List, PageQuery, bad_cursor, existing_tenant, list, model_not_found, page_of, require_operator,
    require_tenant_admin,
};
use crate::app::{AppState, Caller};
use crate::clock;
use crate::error::HandlerResult;
use crate::extract::{JsonBody, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenants/{id}/credits", post(add_credit))
        .route("/tenants/{id}/refunds", post(refund))
        .route("/tenants/{id}/adjustments", post(adjust))
        .route("/tenants/{id}/ledger", get(ledger))
        .route("/tenants/{id}/usage", get(usage_report))
        .route("/tenants/{id}/usage/events", get(usage_events))
        .route("/tenants/{id}/usage/keys", get(key_spend))
        .route("/tenants/{id}/invoices", get(invoices))
        .route("/tenants/{id}/alerts", get(alerts))
        .route("/models/{id}/prices", post(add_price).get(list_prices))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// USD as a decimal string; more than zero (a signed amount for adjustments).
    pub amount_usd: Money,
    /// The same key returns the first answer instead of posting twice.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Why: shown in the ledger. Required for adjustments.
    #[serde(default)]
    pub memo: Option<String>,
}

/// A posting and the balance after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostingView {
    pub transaction: Transaction,
    pub balance_usd: Money,
    pub available_usd: Money,
    pub held_usd: Money,
    /// True when this idempotency key had been used: nothing new was posted.
    pub replayed: bool,
}

/// What a posting endpoint demands of its amount.
#[derive(Clone, Copy, PartialEq)]
enum Amount {
    Positive,
    /// Either sign, with a memo saying why.
    SignedWithMemo,
}

/// The one path of every posting endpoint: operators only, an existing tenant, a valid
/// amount and idempotency key, then the posting, once per key.
async fn post_to_ledger(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
    request: CreditRequest,
    rule: Amount,
    posting: fn(&str, Money) -> Posting,
) -> HandlerResult<(StatusCode, Json<PostingView>)> {
    require_operator(principal)?;
    existing_tenant(state.store.as_ref(), tenant_id).await?;
    match rule {
        Amount::Positive if request.amount_usd <= Money::ZERO => {
            return Err(
                ApiError::invalid("amount_usd", "amount_usd must be more than zero").into(),
            );
        }
        Amount::SignedWithMemo if request.amount_usd == Money::ZERO => {
            return Err(ApiError::invalid("amount_usd", "amount_usd must not be zero").into());
        }
        Amount::SignedWithMemo
            if request
                .memo
                .as_deref()
                .is_none_or(|memo| memo.trim().is_empty()) =>
        {
            return Err(ApiError::invalid("memo", "an adjustment needs a memo saying why").into());
        }
        _ => {}
    }
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > 200)
    {
        return Err(ApiError::invalid(
            "idempotency_key",
            "idempotency_key must be 1-200 characters",
        )
        .into());
    }
    let posted = state
        .accounts
        .post(&PostRequest {
            posting: posting(tenant_id, request.amount_usd),
            idempotency_key: request.idempotency_key,
            memo: request.memo,
            now_ms: clock::unix_millis(),
        })
        .await?;
    let status = if posted.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(PostingView {
            transaction: posted.transaction,
            balance_usd: posted.balance.total(),
            available_usd: posted.balance.available_usd,
            held_usd: posted.balance.held_usd,
            replayed: posted.replayed,
        }),
    ))
}

/// Tops up a tenant's credit (operators only). Idempotent by `idempotency_key`.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/credits", tag = "billing", params(("id" = String, Path, description = "Tenant id")),
    request_body = CreditRequest,
    responses((status = 201, body = PostingView), (status = 200, description = "A replay of an earlier top-up", body = PostingView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_credit(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    body: JsonBody<CreditRequest>,
) -> HandlerResult<(StatusCode, Json<PostingView>)> {
    post_to_ledger(
        &state,
        &principal,
        &tenant_id,
        body.typed,
        Amount::Positive,
        Posting::top_up,
    )
    .await
}

/// Gives a tenant back part of what its calls were charged (operators only).
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/refunds", tag = "billing", params(("id" = String, Path, description = "Tenant id")),
    request_body = CreditRequest,
    responses((status = 201, body = PostingView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    body: JsonBody<CreditRequest>,
) -> HandlerResult<(StatusCode, Json<PostingView>)> {
    post_to_ledger(
        &state,
        &principal,
        &tenant_id,
        body.typed,
        Amount::Positive,
        Posting::refund,
    )
    .await
}

/// Corrects a tenant's credit up (positive) or down (negative), with a memo (operators only).
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/adjustments", tag = "billing", params(("id" = String, Path, description = "Tenant id")),
    request_body = CreditRequest,
    responses((status = 201, body = PostingView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn adjust(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    body: JsonBody<CreditRequest>,
) -> HandlerResult<(StatusCode, Json<PostingView>)> {
    post_to_ledger(
        &state,
        &principal,
        &tenant_id,
        body.typed,
        Amount::SignedWithMemo,
        Posting::adjustment,
    )
    .await
}

/// A tenant's ledger transactions, newest first.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/ledger", tag = "billing", params(("id" = String, Path, description = "Tenant id"), PageQuery),
    responses((status = 200, body = List<Transaction>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn ledger(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> HandlerResult<Json<List<Transaction>>> {
    require_tenant_admin(&principal, &tenant_id)?;
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    let found = state
        .accounts
        .transactions(&tenant_id, &query.request())
        .await
        .map_err(bad_cursor)?;
    Ok(page_of(found, |transaction| transaction))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From this UTC date (`YYYY-MM-DD`) or unix second; default: the start of this month.
    pub from: Option<String>,
    /// Up to and including this UTC date, or before this unix second; default: now.
    pub to: Option<String>,
    /// Any of `day`, `model`, `key` and `user` (the end user a call named: OpenAI's `user`,
    /// Anthropic's `metadata.user_id`), comma-separated.
    pub group_by: Option<String>,
    /// Only the this-many groups that cost the most, dearest first.
    pub limit: Option<u32>,
    /// Only this caller's usage: a key (`key_…`) or a token's subject (`sub_…`); a member sees
    /// only its own anyway.
    pub key: Option<String>,
}

/// `?from&to&key&limit&after` of the usage events.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// From this UTC date (`YYYY-MM-DD`) or unix second; default: the start of this month.
    pub from: Option<String>,
    /// Up to and including this UTC date, or before this unix second; default: now.
    pub to: Option<String>,
    /// At most this many, oldest first (default 1000, at most 10000).
    pub limit: Option<u32>,
    /// Only this caller's events: a key (`key_…`) or a token's subject (`sub_…`); a member
    /// sees only its own anyway.
    pub key: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

impl UsageQuery {
    fn range(&self) -> Result<(u64, u64), ApiError> {
        usage_range(self.from.as_deref(), self.to.as_deref())
    }
}

impl EventsQuery {
    fn range(&self) -> Result<(u64, u64), ApiError> {
        usage_range(self.from.as_deref(), self.to.as_deref())
    }
}

/// `[from, to)` in unix seconds.
fn usage_range(from: Option<&str>, to: Option<&str>) -> Result<(u64, u64), ApiError> {
    let now = clock::unix_seconds();
    let parse = |param: &str, text: &str, end: bool| -> Result<u64, ApiError> {
        if let Ok(seconds) = text.parse::<u64>() {
            return Ok(seconds);
        }
        let date: Date = text.parse().map_err(|_| {
            ApiError::invalid(
                param,
                format!("{param} must be a date (YYYY-MM-DD) or unix seconds"),
            )
        })?;
        Ok(if end {
            date.next().start_unix()
        } else {
            date.start_unix()
        })
    };
    let from = match from {
        Some(text) => parse("from", text, false)?,
        None => Month::of_unix(now).first_day().start_unix(),
    };
    let to = match to {
        Some(text) => parse("to", text, true)?,
        None => now + 1,
    };
    if to < from {
        return Err(ApiError::invalid("to", "to must not be before from"));
    }
    Ok((from, to))
}

/// Whose usage the caller may see: the whole tenant's (operators, its admins), or a member's
/// own (its key's, or its token subject's: `Credential::caller_id`); anyone else learns
/// nothing.
fn usage_scope(principal: &Principal, tenant_id: &str) -> Result<Option<String>, ApiError> {
    if principal.may_administer_tenant(tenant_id) {
        return Ok(None);
    }
    if principal.tenant_id.as_deref() == Some(tenant_id) {
        return Ok(Some(principal.credential.caller_id()));
    }
    require_tenant_admin(principal, tenant_id).map(|()| None)
}

/// The caller a usage query is narrowed to: the one asked for, unless the caller may see only
/// its own (a member asking for another's is refused, not shown its own).
fn scoped_key(own: Option<String>, asked: Option<&str>) -> Result<Option<String>, ApiError> {
    let asked = asked.filter(|key| !key.is_empty());
    if asked.is_some_and(|key| !is_caller_id(key)) {
        return Err(ApiError::invalid(
            "key",
            "key must be a key id (key_…) or a token caller's id (sub_…)",
        ));
    }
    match (own, asked) {
        (Some(own), Some(asked)) if own != asked => Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "A member sees only its own usage.",
        )
        .with_code("own_usage_only")),
        (Some(own), _) => Ok(Some(own)),
        (None, asked) => Ok(asked.map(str::to_owned)),
    }
}

/// Spend by day, model and key over a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub object: &'static str,
    pub from: u64,
    pub to: u64,
    pub data: Vec<UsageRow>,
}

/// A tenant's usage and spend, grouped by any of day, model and key (a member sees its own
/// key's).
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/usage", tag = "billing", params(("id" = String, Path, description = "Tenant id"), UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn usage_report(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    Query(query): Query<UsageQuery>,
) -> HandlerResult<Json<UsageReport>> {
    let key_id = scoped_key(usage_scope(&principal, &tenant_id)?, query.key.as_deref())?;
    let key_id = key_id.as_deref();
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    let (from, to) = query.range()?;
    let group = GroupBy::parse(query.group_by.as_deref().unwrap_or(""))
        .map_err(|message| ApiError::invalid("group_by", message))?;
    let mut data = state
        .accounts
        .usage_report(&tenant_id, key_id, from, to, group)
        .await?;
    if let Some(limit) = query.limit {
        data.sort_by_key(|row| std::cmp::Reverse(row.totals.cost_usd));
        data.truncate(usize::try_from(limit.max(1)).unwrap_or(usize::MAX));
    }
    Ok(Json(UsageReport {
        object: "usage_report",
        from,
        to,
        data,
    }))
}

/// A tenant's usage events, one per call, oldest first (a member sees its own key's).
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/usage/events", tag = "billing", params(("id" = String, Path, description = "Tenant id"), EventsQuery),
    responses((status = 200, body = List<UsageRecord>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn usage_events(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> HandlerResult<Json<List<UsageRecord>>> {
    let key_id = scoped_key(usage_scope(&principal, &tenant_id)?, query.key.as_deref())?;
    let key_id = key_id.as_deref();
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    let (from, to) = query.range()?;
    let page = PageRequest {
        limit: query.limit.unwrap_or(1000).clamp(1, 10_000),
        after: query.after.clone().filter(|after| !after.is_empty()),
    };
    let found = state
        .accounts
        .usage_events_page(&tenant_id, key_id, (from, to), &page)
        .await
        .map_err(bad_cursor)?;
    Ok(page_of(found, |event| event))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KeySpendQuery {
    /// The UTC month (`YYYY-MM`); default: this month.
    pub month: Option<String>,
    /// At most this many keys (default 100, at most 1000).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

/// A tenant's spend by key over a month, dearest first, a page at a time (tenant admins).
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/usage/keys", tag = "billing", params(("id" = String, Path, description = "Tenant id"), KeySpendQuery),
    responses((status = 200, body = List<KeySpend>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn key_spend(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    Query(query): Query<KeySpendQuery>,
) -> HandlerResult<Json<List<KeySpend>>> {
    require_tenant_admin(&principal, &tenant_id)?;
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    let month = match query.month.as_deref() {
        None | Some("") => Month::of_unix(clock::unix_seconds()),
        Some(text) => text
            .parse()
            .map_err(|_| ApiError::invalid("month", "month must be YYYY-MM"))?,
    };
    let page = PageQuery {
        limit: query.limit,
        after: query.after,
    }
    .request();
    let found = state
        .accounts
        .key_spend(&tenant_id, month, &page)
        .await
        .map_err(bad_cursor)?;
    Ok(page_of(found, |row| row))
}

/// A tenant's invoices, by period.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/invoices", tag = "billing", params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = List<Invoice>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn invoices(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
) -> HandlerResult<Json<List<Invoice>>> {
    require_tenant_admin(&principal, &tenant_id)?;
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    Ok(list(state.accounts.invoices(&tenant_id).await?))
}

/// Budgets the tenant's spending has passed.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/alerts", tag = "billing", params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = List<Alert>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn alerts(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
) -> HandlerResult<Json<List<Alert>>> {
    require_tenant_admin(&principal, &tenant_id)?;
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    Ok(list(state.accounts.alerts(&tenant_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    pub price: Price,
    /// A price for one deployment of the model; absent: the whole model.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Unix seconds from which it applies; now or later (history is never rewritten).
    /// Default: now.
    #[serde(default)]
    pub effective_from: Option<u64>,
}

/// Sets a model's price from now or from a future time (operators only).
#[utoipa::path(post, path = "/admin/v1/models/{id}/prices", tag = "billing", params(("id" = String, Path, description = "Model id")),
    request_body = NewPrice,
    responses((status = 201, body = PriceRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_price(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(model_id): Path<String>,
    body: JsonBody<NewPrice>,
) -> HandlerResult<(StatusCode, Json<PriceRecord>)> {
    require_operator(&principal)?;
    let model = state
        .store
        .get_model(&model_id)
        .await?
        .ok_or_else(|| model_not_found(&model_id))?;
    let request = body.typed;
    request.price.validate("price.")?;
    if let Some(deployment) = &request.deployment
        && !model
            .spec
            .deployments
            .iter()
            .any(|known| &known.id == deployment)
    {
        return Err(ApiError::invalid("deployment", "the model has no such deployment").into());
    }
    let now_ms = clock::unix_millis();
    let effective_from_ms = match request.effective_from {
        Some(seconds) if seconds.saturating_mul(1000) < now_ms.saturating_sub(1000) => {
            return Err(ApiError::invalid(
                "effective_from",
                "effective_from must not be in the past: prices never rewrite history",
            )
            .into());
        }
        Some(seconds) => seconds.saturating_mul(1000).max(now_ms),
        None => now_ms,
    };
    let record = PriceRecord {
        model: model_id,
        deployment: request.deployment,
        effective_from_ms,
        price: request.price,
    };
    state.accounts.put_price(&record).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// A model's prices over time, oldest first (operators only).
#[utoipa::path(get, path = "/admin/v1/models/{id}/prices", tag = "billing", params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = List<PriceRecord>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_prices(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(model_id): Path<String>,
) -> HandlerResult<Json<List<PriceRecord>>> {
    require_operator(&principal)?;
    state
        .store
        .get_model(&model_id)
        .await?
        .ok_or_else(|| model_not_found(&model_id))?;
    Ok(list(state.accounts.list_prices(&model_id).await?))
}
