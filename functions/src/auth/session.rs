//! Console sessions: sign-in exchanges a credential for a random token in an `HttpOnly`
//! cookie; each request with the cookie is the principal who signed in, checked again.

use axum::http::{HeaderMap, Method, header};
use ferry_core::ApiError;
use ferry_core::principal::{Credential, KeyPolicy, Principal};
use ferry_core::session::{self, SessionRecord, SessionSubject};
use subtle::ConstantTimeEq;

use super::{Authenticator, unauthenticated};
use crate::clock;

/// A request's session and who it is.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub session: SessionRecord,
}

/// A new session's token (for the cookie only) and its record.
pub struct NewSession {
    pub token: String,
    pub session: SessionRecord,
}

fn session_ended() -> ApiError {
    unauthenticated("Your session has ended; sign in again.", "session_expired")
}

/// The session token in the request's `Cookie` headers, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, session::COOKIE)
}

/// The value of the cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.trim())
}

/// Methods that change nothing need no CSRF token: a cross-site page can make the browser
/// send them, but cannot read the answer (no CORS here).
pub fn needs_csrf_token(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request carries the session's CSRF token, compared in constant time.
pub fn has_csrf_token(headers: &HeaderMap, session: &SessionRecord) -> bool {
    headers
        .get(session::CSRF_HEADER)
        .is_some_and(|value| value.as_bytes().ct_eq(session.csrf_token.as_bytes()).into())
}

impl Authenticator {
    /// Starts a session for `subject`, who has just proved who they are.
    pub async fn start_session(&self, subject: SessionSubject) -> Result<NewSession, ApiError> {
        let random = |what: &str| {
            clock::secret_bytes::<{ session::TOKEN_BYTES }>().map_err(|error| {
                tracing::error!(%error, "no randomness for a session {what}");
                ApiError::new(
                    ferry_core::ErrorKind::Internal,
                    "Could not start a session.",
                )
            })
        };
        let token = session::encode_token(&random("token")?);
        let csrf = session::encode_token(&random("CSRF token")?);
        let record = SessionRecord::new(
            session::token_hash(&token),
            subject,
            csrf,
            clock::unix_seconds(),
            self.session_lifetime,
        );
        self.store.create_session(&record).await?;
        Ok(NewSession {
            token,
            session: record,
        })
    }

    /// Ends the session whose token this is, here at once and everywhere within the cache's
    /// TTL. Ending an unknown session is not an error.
    pub async fn end_session(&self, token: &str) -> Result<(), ApiError> {
        if !session::is_token(token) {
            return Ok(());
        }
        let id_hash = session::token_hash(token);
        self.store.delete_session(&id_hash).await?;
        self.sessions.forget(&id_hash);
        Ok(())
    }

    /// The principal of a live session: for a key's session, what the key allows now (a
    /// revoked or expired key ends the session).
    pub async fn authenticate_session(&self, token: &str) -> Result<SignedIn, ApiError> {
        if !session::is_token(token) {
            return Err(session_ended());
        }
        let id_hash = session::token_hash(token);
        let found = match self.sessions.get(&id_hash) {
            Some(cached) => cached,
            None => {
                let found = self.store.find_session(&id_hash).await?;
                self.sessions.put(&id_hash, found.clone());
                found
            }
        };
        let now = clock::unix_seconds();
        let lifetime = self.session_lifetime;
        let mut session = found
            .filter(|session| session.is_live(now, lifetime))
            .ok_or_else(session_ended)?;
        let principal = match &session.subject {
            SessionSubject::Key { public_id } => {
                let record = self
                    .key_record(public_id)
                    .await?
                    .filter(|record| record.is_live(now))
                    .ok_or_else(session_ended)?;
                super::key_principal(record)
            }
            SessionSubject::Oidc {
                subject,
                issuer,
                role,
                tenant_id,
            } => Principal {
                tenant_id: tenant_id.clone(),
                role: *role,
                credential: Credential::Jwt {
                    subject: subject.clone(),
                    issuer: issuer.clone(),
                },
                model_allowlist: None,
                key_policy: KeyPolicy::default(),
            },
        };
        if session.needs_touch(now, lifetime) {
            // A lost touch costs at most an early idle expiry, never a refused request.
            if let Err(error) = self.store.touch_session(&id_hash, now).await {
                tracing::warn!(%error, "could not record a session's use");
            } else {
                session.last_seen_at = now;
                self.sessions.put(&id_hash, Some(session.clone()));
            }
        }
        Ok(SignedIn { principal, session })
    }
}
