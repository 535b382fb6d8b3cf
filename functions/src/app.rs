//! The application: shared state, the composed router, and the per-request middleware
//! (request ids, one log line per request, body limit, JSON fallbacks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_core::ports::{Accounts, ObjectStore, Store, Upstream};
use ferry_core::principal::Principal;
use ferry_core::{ApiError, ErrorKind};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::auth::{self, Authenticator};
use crate::body::HoldingBody;
use crate::cache::ResponseCache;
use crate::edge::EdgeKeys;
use crate::error::{ErrorResponse, ErrorTag};
use crate::gateway::route::Breakers;
use crate::metrics::{HttpLabels, Metrics, RouteLabels, status_class};
use crate::{admin, clock, console, gateway, openapi, pool, session};

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub accounts: Arc<dyn Accounts>,
    pub upstream: Arc<dyn Upstream>,
    pub auth: Arc<Authenticator>,
    pub money: MoneyConfig,
    /// The response cache's first level, in this process.
    pub cache: Arc<ResponseCache>,
    /// The secrets of the operator's edges; `None`: no edges.
    pub edge: Option<EdgeKeys>,
    /// Each deployment's circuit breaker, as this process sees it.
    pub breakers: Arc<Breakers>,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    /// Where uploaded files (batch input) are kept; `None`: this deployment keeps none.
    pub files: Option<Arc<dyn ObjectStore>>,
    /// Whether a batch runner drives this deployment's batches (`ferry serve`'s does); without
    /// one, batches are refused rather than left waiting.
    pub runs_batches: bool,
}

/// How admission treats money.
#[derive(Debug, Clone, Copy)]
pub struct MoneyConfig {
    /// How long a hold waits for its settlement before it is released, charging nothing.
    /// Longer than any call may take.
    pub hold_ttl: Duration,
    /// A stream whose caller takes nothing for this long (its reader stopped, the connection
    /// stalled) is ended: settled for what it delivered, its upstream closed.
    pub stream_write_timeout: Duration,
}

impl MoneyConfig {
    pub fn hold_ttl_ms(&self) -> u64 {
        u64::try_from(self.hold_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// How long a call may run: a little less than its hold lives, so it always settles (or
    /// is cut off) before the hold could expire.
    pub fn call_time_limit(&self) -> Duration {
        self.hold_ttl - (self.hold_ttl / 10).min(Duration::from_secs(30))
    }
}

impl Default for MoneyConfig {
    fn default() -> MoneyConfig {
        MoneyConfig {
            hold_ttl: Duration::from_secs(15 * 60),
            stream_write_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Larger request bodies are refused with 413 before they are read whole.
    pub max_request_body_bytes: usize,
    /// Larger uploads to `/v1/files` are refused with 413.
    pub max_file_bytes: usize,
    /// Model calls served at once, waiting on their upstream included (a stream counts until
    /// its last byte, or its reader leaving); more get 503 `overloaded` at once. A bound on memory and queueing, set
    /// well above what a replica's upstreams keep busy (calls to a model take seconds).
    pub max_calls_in_flight: usize,
    /// A bearer token that may read `/metrics` (a scraper's); operator keys may too.
    pub metrics_token: Option<String>,
    /// The GPU pool's control plane (the activator's or `ferry scaler`'s `GET /pool`), shown
    /// to operators at `/admin/v1/pool`; `None`: no pool.
    pub pool_url: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> RouterConfig {
        RouterConfig {
            max_request_body_bytes: 8 * 1024 * 1024,
            max_file_bytes: 200 * 1024 * 1024,
            max_calls_in_flight: 4096,
            metrics_token: None,
            pool_url: None,
        }
    }
}

/// Which part of the HTTP surface a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (`ferry serve`).
    All,
    /// The OpenAI-compatible API (`/v1`): the gateway function.
    Gateway,
    /// The admin API (`/admin/v1`): the admin function.
    Admin,
}

/// The whole HTTP surface of the functions, ready to be served by any runtime.
pub fn router(state: AppState, config: &RouterConfig) -> Router {
    router_for(Surface::All, state, config)
}

/// One part of the HTTP surface (with health, readiness and the OpenAPI document).
pub fn router_for(surface: Surface, state: AppState, config: &RouterConfig) -> Router {
    state.metrics.watch_breakers(&state.breakers);
    let in_flight = Arc::new(Semaphore::new(config.max_calls_in_flight));
    let mut router = Router::new();
    if surface != Surface::Admin {
        router = router
            .merge(
                gateway::routes().layer(middleware::from_fn_with_state(in_flight, shed_when_full)),
            )
            .merge(gateway::files::routes(config.max_file_bytes))
            .merge(gateway::batches::routes());
    }
    if surface != Surface::Gateway {
        router = router
            .nest(
                "/admin/v1",
                admin::routes()
                    .merge(admin::money::routes())
                    .merge(session::routes())
                    .merge(pool::routes(config.pool_url.clone())),
            )
            .merge(console::routes());
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document))
        .route(
            "/metrics",
            get({
                let token = config.metrics_token.clone().map(Arc::<str>::from);
                move |state, headers| crate::metrics::serve(state, headers, token)
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
        .layer(middleware::from_fn_with_state(
            BodyLimits {
                request: config.max_request_body_bytes,
                file: config.max_file_bytes,
            },
            refuse_declared_oversize,
        ))
        .layer(middleware::from_fn(console::secure_headers))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            request_context,
        ))
        .with_state(state)
}

/// Turns a call away when `max_calls_in_flight` are already being served: past its capacity
/// a replica answers the excess at once (and a load balancer can send it elsewhere) rather
/// than queueing every call until all of them time out.
async fn shed_when_full(
    State(in_flight): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match in_flight.try_acquire_owned() {
        // The call holds its slot until its body has gone (a stream's last byte, or its
        // reader leaving), not just until the head is returned.
        Ok(permit) => next.run(request).await.map(|body| {
            Body::new(HoldingBody {
                body,
                _held: permit,
            })
        }),
        // Its body is not read: the connection cannot carry another request after it.
        Err(_) => closing(
            ErrorResponse::from(
                ApiError::new(
                    ErrorKind::NoCapacity,
                    "The service is overloaded; try again shortly.",
                )
                .with_code("overloaded")
                .retry_after(1),
            )
            .into_response(),
        ),
    }
}

/// Says the connection closes after `response`: its request's body was left unread, so the
/// server cannot read another request after it, and a client that reused the connection
/// would find it gone.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A body that says up front it is larger than the limit (`Content-Length`) is refused at
/// once, before a byte of it is read: the limit alone would only stop reading it once the
/// limit had arrived, holding the connection open for a body it will refuse.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    request: usize,
    /// Uploads to `/v1/files`.
    file: usize,
}

async fn refuse_declared_oversize(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let limit = if request.uri().path() == "/v1/files" {
        limits.file
    } else {
        limits.request
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > u64::try_from(limit).unwrap_or(u64::MAX) => closing(
            ErrorResponse::from(
                ApiError::new(
                    ErrorKind::PayloadTooLarge,
                    format!("The request body is larger than the {limit} bytes allowed."),
                )
                .with_code("request_too_large"),
            )
            .into_response(),
        ),
        _ => next.run(request).await,
    }
}

/// The request id of the call being served (also sent back in `x-request-id`).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What handlers learn about a request for its log line: who called (once authenticated) and
/// which registered model served it. Never a key, a secret or a prompt.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<std::sync::Mutex<LogFields>>);

#[derive(Debug, Clone, Default)]
struct LogFields {
    tenant: Option<String>,
    model: Option<String>,
}

impl RequestLog {
    fn fields(&self) -> std::sync::MutexGuard<'_, LogFields> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_model(&self, model: &str) {
        self.fields().model = Some(model.to_owned());
    }

    fn set_tenant(&self, tenant: &str) {
        self.fields().tenant = Some(tenant.to_owned());
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn request_context(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = clock::new_request_id();
    // Hyper accepts any token as a method: anything unknown is `_OTHER` (bounded labels).
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    };
    // The template (`/admin/v1/tenants/{id}`), never the path itself: bounded labels.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let logged_route = route.clone();
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let log = RequestLog::default();
    request.extensions_mut().insert(log.clone());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        "http.request.method" = %method,
        "http.route" = %route,
        "http.response.status_code" = tracing::field::Empty,
        request_id = %request_id,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status().as_u16();
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method,
            status: status_class(status),
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    let tag = response.extensions().get::<ErrorTag>();
    let error_type = tag.map(|tag| tag.kind);
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let LogFields { tenant, model } = log.fields().clone();
    // The route template, not the path: a path is the caller's to fill with anything.
    let detail = tag.and_then(|tag| tag.detail.as_deref());
    if let Some(detail) = detail {
        // What went wrong underneath (a store's failure): for whoever is paged.
        tracing::error!(%request_id, %method, route = %logged_route, status, latency_ms, tenant, model, error_type, detail, "request failed");
    } else if status >= 500 {
        tracing::warn!(%request_id, %method, route = %logged_route, status, latency_ms, tenant, model, error_type, "request failed");
    } else {
        tracing::info!(%request_id, %method, route = %logged_route, status, latency_ms, tenant, model, error_type, "request");
    }
    response
}

/// The authenticated caller; rejects with 401 before the body is read.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ErrorResponse;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Caller, ErrorResponse> {
        let principal = authenticate(parts, state)
            .await
            .map_err(ErrorResponse::from)?;
        if let Some(log) = parts.extensions.get::<RequestLog>() {
            log.set_tenant(principal.billing_subject());
        }
        Ok(Caller(principal))
    }
}

/// A bearer credential when there is one, else the console's session cookie; a session's
/// state-changing calls must carry its CSRF token too.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    authenticate_request(&parts.method, &parts.headers, state).await
}

pub(crate) async fn authenticate_request(
    method: &Method,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Principal, ApiError> {
    let session = match auth::session_token(headers) {
        Some(token) if !headers.contains_key(header::AUTHORIZATION) => token,
        _ => return state.auth.authenticate(headers).await,
    };
    let signed_in = state.auth.authenticate_session(session).await?;
    if auth::needs_csrf_token(method) && !auth::has_csrf_token(headers, &signed_in.session) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "This call changes something: a console session must send its CSRF token in the {} header.",
                ferry_core::session::CSRF_HEADER
            ),
        )
        .with_code("csrf_token_invalid"));
    }
    Ok(signed_in.principal)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers. The GPU pool is not part of it: a pool at zero replicas still
/// takes calls (they wait for a replica), and `/admin/v1/pool` shows its state.
async fn readyz(State(state): State<AppState>) -> Response {
    store_readiness(state.store.as_ref()).await
}

/// `/readyz` of every function: ready when its store answers.
pub(crate) async fn store_readiness(store: &dyn Store) -> Response {
    match store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready: store");
            ErrorResponse::from(
                ApiError::new(ErrorKind::NoCapacity, "not ready: the store is unavailable")
                    .retry_after(1),
            )
            .into_response()
        }
    }
}

async fn not_found(request: Request) -> ErrorResponse {
    ErrorResponse::from(
        ApiError::new(
            ErrorKind::NotFound,
            format!(
                "Unknown route: {} {}",
                request.method(),
                ferry_core::error::echoed(request.uri().path())
            ),
        )
        .with_code("unknown_url"),
    )
}

async fn method_not_allowed(request: Request) -> ErrorResponse {
    ErrorResponse::from(ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "Method {} is not allowed on {}",
            request.method(),
            ferry_core::error::echoed(request.uri().path())
        ),
    ))
}
