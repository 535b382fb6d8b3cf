//! `/admin/v1/session`: the console's sign-in. An API key pasted once is exchanged for a
//! session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS); the browser never
//! keeps the key. The answer carries the session's CSRF token, which the console sends back
//! in `x-ferry-csrf` with every call that changes something.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::api_key::ApiKey;
use ferry_core::error::ErrorBody;
use ferry_core::principal::{Credential, Principal, Role};
use ferry_core::session::{self, SessionRecord, SessionSubject};
use ferry_core::{ApiError, ErrorKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::{self, SignedIn};
use crate::error::HandlerResult;
use crate::extract::{JsonBody, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/session", post(sign_in).get(current).delete(sign_out))
        .route("/session/methods", get(methods))
        .route("/session/oidc", get(oidc_start))
        .route("/session/oidc/callback", get(oidc_callback))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API key (`fy_…`): an operator's, a tenant-admin's or a member's.
    pub key: String,
}

/// A console session: who is signed in, and the token its state-changing calls must send.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub object: &'static str,
    pub role: Role,
    pub tenant_id: Option<String>,
    /// The key signed in with (`key_…`); `null` for an OIDC sign-in.
    pub key_id: Option<String>,
    /// The OIDC subject; `null` for a key's session.
    pub subject: Option<String>,
    /// Send it in the `x-ferry-csrf` header with every call that is not a GET.
    pub csrf_token: String,
    /// Unix seconds when the session ends however busy.
    pub expires_at: u64,
    /// Unix seconds when it ends unless used before.
    pub idle_expires_at: u64,
}

impl SessionView {
    fn of(state: &AppState, principal: &Principal, session: &SessionRecord) -> SessionView {
        let (key_id, subject) = match &principal.credential {
            Credential::ApiKey { key_id } => (Some(key_id.clone()), None),
            Credential::Jwt { subject, .. } => (None, Some(subject.clone())),
        };
        SessionView {
            object: "session",
            role: principal.role,
            tenant_id: principal.tenant_id.clone(),
            key_id,
            subject,
            csrf_token: session.csrf_token.clone(),
            expires_at: session.expires_at,
            idle_expires_at: session.ends_at(state.auth.session_lifetime()),
        }
    }
}

/// How the console may sign in.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignInMethods {
    /// With an API key: always.
    pub key: bool,
    /// Through the OpenID provider (`GET /admin/v1/session/oidc`), when one is configured.
    pub oidc: bool,
}

/// How the console may sign in; needs no credentials.
#[utoipa::path(get, path = "/admin/v1/session/methods", tag = "session",
    responses((status = 200, body = SignInMethods)))]
pub async fn methods(State(state): State<AppState>) -> Json<SignInMethods> {
    Json(SignInMethods {
        key: true,
        oidc: state.auth.oidc_sign_in().is_some(),
    })
}

/// Begins a console sign-in at the OpenID provider (a browser navigation): redirects there
/// with a fresh `state`, `nonce` and PKCE challenge, remembered in a short-lived cookie.
#[utoipa::path(get, path = "/admin/v1/session/oidc", tag = "session",
    responses((status = 303, description = "To the provider's authorization endpoint"), (status = 404, body = ErrorBody)))]
pub async fn oidc_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> HandlerResult<Response> {
    let (client, _) = state.auth.oidc_sign_in().ok_or_else(no_oidc)?;
    let secure = is_https(&headers, &uri);
    let started = client
        .start(state.auth.http(), &origin(&headers, secure)?)
        .await?;
    let mut response = Redirect::to(&started.authorize_url).into_response();
    // Lax, not Strict: it must come back with the provider's cross-site redirect.
    set_cookie(
        &mut response,
        &format!(
            "{}={}; Path=/admin/v1/session/oidc; HttpOnly; SameSite=Lax; Max-Age={}{}",
            auth::FLOW_COOKIE,
            started.flow_cookie,
            auth::FLOW_SECONDS,
            if secure { "; Secure" } else { "" }
        ),
    );
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct OidcCallback {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set by the provider when the sign-in did not happen (e.g. `access_denied`).
    pub error: Option<String>,
}

/// Where the provider sends the browser back: redeems the code, verifies the ID token and
/// signs in, then on to the console (with `?signin_error=<code>` when it failed).
#[utoipa::path(get, path = "/admin/v1/session/oidc/callback", tag = "session", params(OidcCallback),
    responses((status = 303, description = "To the console, signed in or with signin_error")))]
pub async fn oidc_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<OidcCallback>,
) -> Response {
    let secure = is_https(&headers, &uri);
    let signed_in = async {
        let (client, verifier) = state.auth.oidc_sign_in().ok_or_else(no_oidc)?;
        if let Some(error) = &query.error {
            tracing::info!(error = %error.chars().take(64).collect::<String>(), "OIDC sign-in declined at the provider");
            return Err(ApiError::new(ErrorKind::Unauthenticated, "declined").with_code("oidc_declined"));
        }
        let (Some(code), Some(flow_state)) = (&query.code, &query.state) else {
            return Err(ApiError::invalid("code", "the provider sent no code"));
        };
        let origin = origin(&headers, secure)?;
        let subject = client
            .finish(
                state.auth.http(),
                verifier,
                auth::Callback {
                    code,
                    state: flow_state,
                    flow_cookie: auth::cookie(&headers, auth::FLOW_COOKIE),
                    origin: &origin,
                },
            )
            .await?;
        if let Some(previous) = auth::session_token(&headers) {
            state.auth.end_session(previous).await?;
        }
        state.auth.start_oidc_session(subject).await
    }
    .await;
    let mut response = match &signed_in {
        Ok(_) => Redirect::to(crate::console::BASE).into_response(),
        Err(error) => Redirect::to(&format!(
            "{}?signin_error={}",
            crate::console::BASE,
            error.code.as_deref().unwrap_or("oidc_sign_in_failed")
        ))
        .into_response(),
    };
    if let Ok(started) = &signed_in {
        let max_age = started
            .session
            .expires_at
            .saturating_sub(started.session.created_at);
        set_cookie(
            &mut response,
            &format!(
                "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
                session::COOKIE,
                started.token,
                if secure { "; Secure" } else { "" }
            ),
        );
    }
    set_cookie(
        &mut response,
        &format!(
            "{}=; Path=/admin/v1/session/oidc; HttpOnly; SameSite=Lax; Max-Age=0{}",
            auth::FLOW_COOKIE,
            if secure { "; Secure" } else { "" }
        ),
    );
    response
}

fn no_oidc() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "Sign-in through an OpenID provider is not configured here ([auth.jwt.console]).",
    )
    .with_code("oidc_not_configured")
}

/// A browser says where a request comes from (`Sec-Fetch-Site`, `Origin`); a script or SDK
/// sends neither and is not a browser being tricked.
fn is_cross_site(headers: &HeaderMap, secure: bool) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if text("sec-fetch-site").is_some_and(|site| site == "cross-site" || site == "same-site") {
        return true;
    }
    match (text("origin"), origin(headers, secure)) {
        (Some(sent), Ok(own)) => sent != own,
        (Some(_), Err(_)) => true,
        (None, _) => false,
    }
}

/// `http(s)://host` as the browser addressed this server.
fn origin(headers: &HeaderMap, secure: bool) -> Result<String, ApiError> {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|value| value.to_str().ok())
        .filter(|host| !host.is_empty() && !host.contains(['/', ' ', '@']))
        .ok_or_else(|| ApiError::invalid("host", "the request names no valid Host"))?;
    Ok(format!(
        "{}://{host}",
        if secure { "https" } else { "http" }
    ))
}

/// Signs in with an API key: sets the session cookie and answers the session. A session
/// the browser held before is ended (the session is rotated at every sign-in).
#[utoipa::path(post, path = "/admin/v1/session", tag = "session", request_body = SignIn,
    responses((status = 200, body = SessionView, headers(("set-cookie" = String, description = "The HttpOnly session cookie"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: JsonBody<SignIn>,
) -> HandlerResult<Response> {
    // Login CSRF: a hostile page must not sign the browser in to the attacker's account.
    if is_cross_site(&headers, is_https(&headers, &uri)) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            "Sign in from the console itself, not from another site.",
        )
        .with_code("cross_site_sign_in")
        .into());
    }
    let key = body.typed.key.trim();
    let principal = state.auth.authenticate_key(key).await?;
    let public_id = ApiKey::parse(key)
        .map_err(|_| ApiError::invalid("key", "not an API key"))?
        .public_id()
        .to_owned();
    if let Some(previous) = auth::session_token(&headers) {
        state.auth.end_session(previous).await?;
    }
    let started = state
        .auth
        .start_session(SessionSubject::Key { public_id })
        .await?;
    let mut response = Json(SessionView::of(&state, &principal, &started.session)).into_response();
    set_session_cookie(
        &mut response,
        &started.session,
        &started.token,
        is_https(&headers, &uri),
    );
    Ok(response)
}

fn set_session_cookie(response: &mut Response, session: &SessionRecord, token: &str, secure: bool) {
    let max_age = session.expires_at.saturating_sub(session.created_at);
    set_cookie(
        response,
        &format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            session::COOKIE,
            if secure { "; Secure" } else { "" }
        ),
    );
}

/// The session of the cookie the request carries; 401 when there is none or it ended.
#[utoipa::path(get, path = "/admin/v1/session", tag = "session",
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody)))]
pub async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> HandlerResult<Json<SessionView>> {
    let token = auth::session_token(&headers).ok_or_else(|| {
        ApiError::new(ErrorKind::Unauthenticated, "You are not signed in.").with_code("no_session")
    })?;
    let SignedIn { principal, session } = state.auth.authenticate_session(token).await?;
    Ok(Json(SessionView::of(&state, &principal, &session)))
}

/// Signs out: the session ends on the server (its cookie stops working everywhere within the
/// key cache's TTL, here at once) and the cookie is cleared.
#[utoipa::path(delete, path = "/admin/v1/session", tag = "session",
    responses((status = 204, description = "Signed out"), (status = 403, body = ErrorBody)))]
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> HandlerResult<Response> {
    if let Some(token) = auth::session_token(&headers) {
        match state.auth.authenticate_session(token).await {
            Ok(live) if !auth::has_csrf_token(&headers, &live.session) => {
                return Err(ApiError::new(
                    ErrorKind::PermissionDenied,
                    "Signing out needs the session's CSRF token in the x-ferry-csrf header.",
                )
                .with_code("csrf_token_invalid")
                .into());
            }
            // A session that already ended only needs its cookie cleared.
            _ => state.auth.end_session(token).await?,
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(
        &mut response,
        &format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            session::COOKIE,
            if is_https(&headers, &uri) {
                "; Secure"
            } else {
                ""
            }
        ),
    );
    Ok(response)
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Whether the browser reached us over HTTPS: directly, or through a proxy or load balancer
/// that says so (`X-Forwarded-Proto`, `Forwarded: proto=https`); Lambda's function URLs do.
pub(crate) fn is_https(headers: &HeaderMap, uri: &Uri) -> bool {
    let header_says = |name: &str, check: &dyn Fn(&str) -> bool| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(check)
    };
    uri.scheme_str() == Some("https")
        || header_says("x-forwarded-proto", &|value| {
            value
                .split(',')
                .next()
                .is_some_and(|first| first.trim().eq_ignore_ascii_case("https"))
        })
        || header_says("forwarded", &|value| {
            value
                .to_ascii_lowercase()
                .split([';', ','])
                .any(|part| part.trim() == "proto=https")
        })
}
