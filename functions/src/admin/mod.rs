//! The admin API under `/admin/v1`: tenants, API keys and models here, the money side in
//! [`money`]. A stable public contract (product.md §1): extend it, never rename it.

pub mod money;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferry_core::admission::{self, Budget};
use ferry_core::api_key::{self, ApiKey};
use ferry_core::error::ErrorBody;
use ferry_core::ids::{self, IdKind};
use ferry_core::model::ModelSpec;
use ferry_core::ports::{
    Accounts, Billing, KeyRecord, Page, PageRequest, PriceRecord, RateLimits, Store, StoreError,
    StoredModel, Tenant,
};
use ferry_core::principal::{Principal, Role};
use ferry_core::route::RoutePolicy;
use ferry_core::{ApiError, ErrorKind, Money};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

use crate::app::{AppState, Caller};
use crate::clock;
use crate::error::HandlerResult;
use crate::extract::{JsonBody, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{id}", get(get_tenant).patch(update_tenant))
        .route("/tenants/{id}/keys", post(create_key).get(list_keys))
        .route("/keys/{id}", delete(revoke_key))
        .route("/models", post(put_model).get(list_models))
        .route(
            "/models/{id}",
            get(get_model).patch(update_model).delete(delete_model),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// `prepaid` (the default) or `postpaid`.
    #[serde(default)]
    pub billing: Option<Billing>,
    /// Requests and tokens per minute across all the tenant's keys.
    #[serde(default)]
    pub limits: Option<RateLimits>,
    /// Spend caps per UTC day or month.
    #[serde(default)]
    pub budgets: Option<Vec<Budget>>,
    /// Log the text of the tenant's requests (default false: prompts are never logged).
    #[serde(default)]
    pub log_prompts: Option<bool>,
}

/// `PATCH /tenants/{id}`: fields present replace the tenant's own.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default)]
    pub limits: Option<RateLimits>,
    #[serde(default)]
    pub budgets: Option<Vec<Budget>>,
    /// Log the text of the tenant's requests; off by default.
    #[serde(default)]
    pub log_prompts: Option<bool>,
}

/// A tenant with its credit.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    #[serde(flatten)]
    pub tenant: Tenant,
    pub object: &'static str,
    /// Available plus held: what the tenant has once every call in flight settles.
    pub balance_usd: Money,
    /// What new calls may hold now.
    pub available_usd: Money,
    /// Held by calls in flight.
    pub held_usd: Money,
}

impl TenantView {
    pub(crate) async fn of(state: &AppState, tenant: Tenant) -> Result<TenantView, ApiError> {
        let balance = state.accounts.balance(&tenant.id).await?;
        Ok(TenantView {
            tenant,
            object: "tenant",
            balance_usd: balance.total(),
            available_usd: balance.available_usd,
            held_usd: balance.held_usd,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// `tenant-admin` or `member`.
    pub role: Role,
    /// The models this key may call; absent means all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Unix seconds after which the key stops working.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub limits: Option<RateLimits>,
    /// A lifetime cap on what this key may spend.
    #[serde(default)]
    pub credit_cap_usd: Option<Money>,
    /// Spend caps per UTC day or month for this key.
    #[serde(default)]
    pub budgets: Option<Vec<Budget>>,
}

/// A key as shown to administrators; `key` (the secret) only in the answer that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub object: &'static str,
    pub tenant_id: Option<String>,
    pub name: String,
    pub role: Role,
    pub models: Option<Vec<String>>,
    pub limits: RateLimits,
    pub budgets: Vec<Budget>,
    pub credit_cap_usd: Option<Money>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KeyView {
    fn of(record: KeyRecord, secret: Option<String>) -> KeyView {
        KeyView {
            id: record.id,
            object: "api_key",
            tenant_id: record.tenant_id,
            name: record.name,
            role: record.role,
            models: record.models,
            limits: record.limits,
            budgets: record.budgets,
            credit_cap_usd: record.credit_cap,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            key: secret,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    #[serde(flatten)]
    pub spec: ModelSpec,
    pub created_at: u64,
}

impl ModelView {
    /// The model as stored, with `price` the model-wide price in effect now: prices live in
    /// their own effective-dated table, and the copy registered with the model goes stale
    /// after `POST /models/{id}/prices`.
    async fn of(accounts: &dyn Accounts, model: StoredModel) -> Result<ModelView, StoreError> {
        let mut spec = model.spec.redacted();
        spec.price = accounts
            .price_at(&spec.id, "", clock::unix_millis())
            .await?;
        Ok(ModelView {
            spec,
            created_at: model.created_at,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    /// Whether another page follows; ask for it with `after=<next_cursor>`.
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

pub(crate) fn list<T>(data: Vec<T>) -> Json<List<T>> {
    Json(List {
        object: "list",
        data,
        has_more: false,
        next_cursor: None,
    })
}

/// One page of a cursor-paginated list, its items made into what the API shows.
pub(crate) fn page_of<T, V>(page: Page<T>, view: impl FnMut(T) -> V) -> Json<List<V>> {
    Json(List {
        object: "list",
        has_more: page.next.is_some(),
        next_cursor: page.next,
        data: page.items.into_iter().map(view).collect(),
    })
}

/// `?limit=&after=` of a cursor-paginated list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// At most this many items (default 100, at most 1000).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

impl PageQuery {
    pub(crate) fn request(&self) -> PageRequest {
        PageRequest {
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
            after: self.after.clone().filter(|after| !after.is_empty()),
        }
    }
}

/// A store's refusal of a cursor it did not make is the caller's bad `after`.
pub(crate) fn bad_cursor(error: StoreError) -> ApiError {
    match error {
        StoreError::Invalid(message) => ApiError::invalid("after", message),
        other => other.into(),
    }
}

/// `?q=&limit=&after=` of the tenant list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    /// Tenants whose id starts with this, or whose name contains it (any case).
    pub q: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

pub(crate) fn require_operator(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_operator() {
        Ok(())
    } else {
        Err(
            ApiError::new(ErrorKind::PermissionDenied, "Only an operator may do this.")
                .with_code("operator_only"),
        )
    }
}

/// Members of the tenant learn they lack the right; anyone else learns nothing (404).
pub(crate) fn require_tenant_admin(principal: &Principal, tenant_id: &str) -> Result<(), ApiError> {
    if principal.may_administer_tenant(tenant_id) {
        Ok(())
    } else if principal.tenant_id.as_deref() == Some(tenant_id) {
        Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "Only a tenant admin may do this.",
        )
        .with_code("tenant_admin_only"))
    } else {
        Err(tenant_not_found())
    }
}

fn tenant_not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "No such tenant.").with_code("tenant_not_found")
}

pub(crate) async fn existing_tenant(
    store: &dyn Store,
    tenant_id: &str,
) -> Result<Tenant, ApiError> {
    store
        .get_tenant(tenant_id)
        .await?
        .ok_or_else(tenant_not_found)
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name", "name must be 1-200 characters"));
    }
    Ok(())
}

/// Creates a tenant (operators only).
#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_tenant(
    State(state): State<AppState>,
    Caller(principal): Caller,
    body: JsonBody<CreateTenant>,
) -> HandlerResult<(StatusCode, Json<TenantView>)> {
    require_operator(&principal)?;
    let request = body.typed;
    validate_name(&request.name)?;
    let budgets = request.budgets.unwrap_or_default();
    admission::validate_budgets(&budgets, "budgets")?;
    let now = clock::unix_millis();
    let tenant = Tenant {
        id: ids::object_id(IdKind::Tenant, now, clock::random_bytes()),
        name: request.name.trim().to_owned(),
        billing: request.billing.unwrap_or(Billing::Prepaid),
        created_at: now / 1000,
        limits: request.limits.unwrap_or_default(),
        budgets,
        log_prompts: request.log_prompts.unwrap_or(false),
    };
    state.store.create_tenant(&tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(TenantView::of(&state, tenant).await?),
    ))
}

/// Replaces a tenant's rate limits or budgets (operators only).
#[utoipa::path(patch, path = "/admin/v1/tenants/{id}", tag = "admin", params(("id" = String, Path, description = "Tenant id")),
    request_body = UpdateTenant,
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_tenant(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
    body: JsonBody<UpdateTenant>,
) -> HandlerResult<Json<TenantView>> {
    require_operator(&principal)?;
    let mut tenant = existing_tenant(state.store.as_ref(), &id).await?;
    if let Some(limits) = body.typed.limits {
        tenant.limits = limits;
    }
    if let Some(budgets) = body.typed.budgets {
        tenant.budgets = budgets;
    }
    if let Some(log_prompts) = body.typed.log_prompts {
        tenant.log_prompts = log_prompts;
    }
    admission::validate_budgets(&tenant.budgets, "budgets")?;
    if !state
        .store
        .update_tenant_policy(&id, &tenant.policy())
        .await?
    {
        return Err(tenant_not_found().into());
    }
    Ok(Json(TenantView::of(&state, tenant).await?))
}

/// Lists tenants by id, a page at a time (operators only).
#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", params(TenantQuery),
    responses((status = 200, body = List<Tenant>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_tenants(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(query): Query<TenantQuery>,
) -> HandlerResult<Json<List<Tenant>>> {
    require_operator(&principal)?;
    let page = PageQuery {
        limit: query.limit,
        after: query.after,
    }
    .request();
    let found = state
        .store
        .tenants_page(query.q.as_deref().map(str::trim), &page)
        .await
        .map_err(bad_cursor)?;
    Ok(page_of(found, |tenant| tenant))
}

/// One tenant: operators, or the tenant's own admins.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}", tag = "admin", params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_tenant(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<TenantView>> {
    require_tenant_admin(&principal, &id)?;
    let tenant = existing_tenant(state.store.as_ref(), &id).await?;
    Ok(Json(TenantView::of(&state, tenant).await?))
}

/// Creates an API key for a tenant. The secret is in this answer only.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/keys", tag = "admin", params(("id" = String, Path, description = "Tenant id")),
    request_body = CreateKey,
    responses((status = 201, body = KeyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    body: JsonBody<CreateKey>,
) -> HandlerResult<(StatusCode, Json<KeyView>)> {
    require_tenant_admin(&principal, &tenant_id)?;
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    let request = body.typed;
    validate_name(&request.name)?;
    if request.role == Role::Operator || !principal.may_grant(request.role) {
        return Err(ApiError::invalid("role", "role must be tenant-admin or member").into());
    }
    if let Some(creator_models) = &principal.model_allowlist {
        let within = request
            .models
            .as_ref()
            .is_some_and(|models| models.iter().all(|model| creator_models.contains(model)));
        if !within {
            return Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "A key may not reach models its creator cannot.",
            )
            .with_param("models")
            .into());
        }
    }
    let now = clock::unix_seconds();
    if request
        .expires_at
        .is_some_and(|expires_at| expires_at <= now)
    {
        return Err(ApiError::invalid(
            "expires_at",
            "expires_at must be in the future (unix seconds)",
        )
        .into());
    }
    if request.credit_cap_usd.is_some_and(Money::is_negative) {
        return Err(
            ApiError::invalid("credit_cap_usd", "credit_cap_usd must not be negative").into(),
        );
    }
    let budgets = request.budgets.unwrap_or_default();
    admission::validate_budgets(&budgets, "budgets")?;
    let (key, record) = new_key(NewKey {
        tenant_id: Some(tenant_id),
        name: request.name.trim().to_owned(),
        role: request.role,
        models: request.models,
        limits: request.limits.unwrap_or_default(),
        budgets,
        credit_cap: request.credit_cap_usd,
        expires_at: request.expires_at,
    })?;
    state.store.create_key(&record).await?;
    state.auth.remember_key(&record.public_id);
    Ok((
        StatusCode::CREATED,
        Json(KeyView::of(record, Some(key.expose()))),
    ))
}

/// Lists a tenant's keys, without secrets.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/keys", tag = "admin", params(("id" = String, Path, description = "Tenant id"), PageQuery),
    responses((status = 200, body = List<KeyView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(tenant_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> HandlerResult<Json<List<KeyView>>> {
    require_tenant_admin(&principal, &tenant_id)?;
    existing_tenant(state.store.as_ref(), &tenant_id).await?;
    let keys = state
        .store
        .keys_page(&tenant_id, &query.request())
        .await
        .map_err(bad_cursor)?;
    Ok(page_of(keys, |record| KeyView::of(record, None)))
}

/// Revokes a key; it stops working within the key-cache TTL on every replica, here at once.
#[utoipa::path(delete, path = "/admin/v1/keys/{id}", tag = "admin", params(("id" = String, Path, description = "Key id (key_…)")),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(key_id): Path<String>,
) -> HandlerResult<Json<KeyView>> {
    let not_found =
        || ApiError::new(ErrorKind::NotFound, "No such key.").with_code("key_not_found");
    let public_id = api_key::public_id_of(&key_id).ok_or_else(not_found)?;
    let record = state
        .store
        .find_key(public_id)
        .await?
        .ok_or_else(not_found)?;
    let allowed = match &record.tenant_id {
        Some(tenant_id) => principal.may_administer_tenant(tenant_id),
        None => principal.is_operator(),
    };
    if !allowed {
        return Err(not_found().into());
    }
    let now = clock::unix_seconds();
    state.store.revoke_key(&record.id, now).await?;
    state.auth.forget_key(public_id);
    let record = state
        .store
        .find_key(public_id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(KeyView::of(record, None)))
}

/// Registers a model with its deployments and price, or replaces it (operators only).
#[utoipa::path(post, path = "/admin/v1/models", tag = "admin", request_body = ModelSpec,
    responses((status = 200, body = ModelView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_model(
    State(state): State<AppState>,
    Caller(principal): Caller,
    body: JsonBody<ModelSpec>,
) -> HandlerResult<Json<ModelView>> {
    require_operator(&principal)?;
    body.typed.validate()?;
    let stored = register_model(
        state.store.as_ref(),
        state.accounts.as_ref(),
        &body.typed,
        clock::unix_millis(),
    )
    .await?;
    Ok(Json(ModelView::of(state.accounts.as_ref(), stored).await?))
}

/// Stores a model; a price that differs from the one in effect starts now, and calls made
/// before keep the price they were made at.
pub async fn register_model(
    store: &dyn Store,
    accounts: &dyn Accounts,
    spec: &ModelSpec,
    now_ms: u64,
) -> Result<StoredModel, StoreError> {
    let stored = store.put_model(spec, now_ms / 1000).await?;
    if let Some(price) = &spec.price {
        let current = accounts.price_at(&spec.id, "", now_ms).await?;
        if current.as_ref() != Some(price) {
            accounts
                .put_price(&PriceRecord {
                    model: spec.id.clone(),
                    deployment: None,
                    effective_from_ms: now_ms,
                    price: price.clone(),
                })
                .await?;
        }
    }
    Ok(stored)
}

/// Lists models with their deployments (operators only: this shows upstream addresses).
#[utoipa::path(get, path = "/admin/v1/models", tag = "admin",
    responses((status = 200, body = List<ModelView>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> HandlerResult<Json<List<ModelView>>> {
    require_operator(&principal)?;
    let mut views = Vec::new();
    for model in state.store.list_models().await? {
        views.push(ModelView::of(state.accounts.as_ref(), model).await?);
    }
    Ok(list(views))
}

pub(crate) fn model_not_found(id: &str) -> ApiError {
    ApiError::unknown_model(id).with_param("id")
}

#[utoipa::path(get, path = "/admin/v1/models/{id}", tag = "admin", params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_model(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> HandlerResult<Json<ModelView>> {
    require_operator(&principal)?;
    let model = state
        .store
        .get_model(&id)
        .await?
        .ok_or_else(|| model_not_found(&id))?;
    Ok(Json(ModelView::of(state.accounts.as_ref(), model).await?))
}

/// `PATCH /models/{id}`: shifts traffic between deployments (a canary's share, a blue-green
/// switch, a rollback) or changes the route, without touching the rest of the model.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    /// New weights by deployment id; deployments not named keep theirs.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, u32>>,
    /// Replaces the model's route policy.
    #[serde(default)]
    pub route: Option<RoutePolicy>,
}

/// Changes a model's weights or route (operators only). Takes effect on this replica at once,
/// on the others within the model cache's TTL.
#[utoipa::path(patch, path = "/admin/v1/models/{id}", tag = "admin", params(("id" = String, Path, description = "Model id")),
    request_body = UpdateModel,
    responses((status = 200, body = ModelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_model(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
    body: JsonBody<UpdateModel>,
) -> HandlerResult<Json<ModelView>> {
    require_operator(&principal)?;
    // Read past the replica's read cache: writing back a stale copy would undo a change
    // made elsewhere moments ago. (Two PATCHes racing on one model: the last one wins.)
    let mut spec = state
        .store
        .get_model_fresh(&id)
        .await?
        .ok_or_else(|| model_not_found(&id))?
        .spec;
    let update = body.typed;
    for (deployment_id, weight) in update.weights.iter().flatten() {
        let deployment = spec
            .deployments
            .iter_mut()
            .find(|deployment| &deployment.id == deployment_id)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("weights.{deployment_id}"),
                    format!("`{deployment_id}` is not a deployment of this model"),
                )
            })?;
        deployment.weight = *weight;
    }
    if let Some(route) = update.route {
        spec.route = Some(route);
    }
    spec.validate()?;
    let stored = state.store.put_model(&spec, clock::unix_seconds()).await?;
    Ok(Json(ModelView::of(state.accounts.as_ref(), stored).await?))
}

#[utoipa::path(delete, path = "/admin/v1/models/{id}", tag = "admin", params(("id" = String, Path, description = "Model id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_model(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Path(id): Path<String>,
) -> HandlerResult<StatusCode> {
    require_operator(&principal)?;
    if state.store.delete_model(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(model_not_found(&id).into())
    }
}

struct NewKey {
    tenant_id: Option<String>,
    name: String,
    role: Role,
    models: Option<Vec<String>>,
    limits: RateLimits,
    budgets: Vec<Budget>,
    credit_cap: Option<Money>,
    expires_at: Option<u64>,
}

fn new_key(params: NewKey) -> Result<(ApiKey, KeyRecord), ApiError> {
    let entropy_failed =
        |_| ApiError::new(ErrorKind::Internal, "no randomness available to make a key");
    let key = ApiKey::generate(
        clock::secret_bytes().map_err(entropy_failed)?,
        clock::secret_bytes().map_err(entropy_failed)?,
    );
    Ok((key.clone(), record_for(&key, params)))
}

fn record_for(key: &ApiKey, params: NewKey) -> KeyRecord {
    KeyRecord {
        id: key.key_id(),
        public_id: key.public_id().to_owned(),
        secret_hash: key.hash(),
        tenant_id: params.tenant_id,
        name: params.name,
        role: params.role,
        models: params.models,
        limits: params.limits,
        budgets: params.budgets,
        credit_cap: params.credit_cap,
        created_at: clock::unix_seconds(),
        expires_at: params.expires_at,
        revoked_at: None,
    }
}

/// How the operator key came to be at start-up.
#[derive(Debug)]
pub enum OperatorKey {
    /// Taken from configuration (`FERRY_OPERATOR_KEY`).
    Configured,
    /// Made now; the secret must be shown to the operator, once.
    Generated(String),
    /// One was made on an earlier start; its secret is not kept.
    Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "FERRY_OPERATOR_KEY must look like fy_<12 chars>_<32 chars> (lower-case a-z, 2-7); unset it to have one generated"
    )]
    MalformedKey,
    #[error("FERRY_OPERATOR_KEY has the id of an existing key but not its secret")]
    KeyMismatch,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Key(ApiError),
}

/// Makes sure an operator can get in: registers the configured key, or makes one on first start.
pub async fn ensure_operator_key(
    store: &dyn Store,
    configured: Option<&str>,
) -> Result<OperatorKey, BootstrapError> {
    let operator = |name: &str| NewKey {
        tenant_id: None,
        name: name.to_owned(),
        role: Role::Operator,
        models: None,
        limits: RateLimits::default(),
        budgets: Vec::new(),
        credit_cap: None,
        expires_at: None,
    };
    if let Some(text) = configured {
        let key = ApiKey::parse(text).map_err(|_| BootstrapError::MalformedKey)?;
        return match store.find_key(key.public_id()).await? {
            Some(existing)
                if key.verify(&existing.secret_hash)
                    && existing.role == Role::Operator
                    && existing.is_live(clock::unix_seconds()) =>
            {
                Ok(OperatorKey::Configured)
            }
            Some(_) => Err(BootstrapError::KeyMismatch),
            None => {
                store
                    .create_key(&record_for(&key, operator("operator (FERRY_OPERATOR_KEY)")))
                    .await?;
                Ok(OperatorKey::Configured)
            }
        };
    }
    if !store.list_operator_keys().await?.is_empty() {
        return Ok(OperatorKey::Existing);
    }
    let (key, record) = new_key(operator("operator (first start)")).map_err(BootstrapError::Key)?;
    store.create_key(&record).await?;
    Ok(OperatorKey::Generated(key.expose()))
}
