//! Authentication: turns a bearer credential (an API key or an OIDC JWT) into a [`Principal`].

mod directory;
mod jwt;
mod oidc;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use ferry_core::api_key::ApiKey;
use ferry_core::ports::{KeyRecord, Store};
use ferry_core::principal::{Credential, KeyPolicy, Principal, Role};
use ferry_core::session::{Lifetime, SessionRecord};
use ferry_core::{ApiError, ErrorKind};

pub use directory::KeyDirectory;
pub use jwt::{ConsoleSignIn, JwtConfig, JwtConfigError, JwtVerifier};
pub use oidc::{CALLBACK_PATH, Callback, FLOW_COOKIE, FLOW_SECONDS, OidcClient};
pub use session::{NewSession, SignedIn, cookie, has_csrf_token, needs_csrf_token, session_token};

use crate::clock;
use crate::ttl_cache::TtlCache;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How long a replica may trust a looked-up key (and a miss); bounds how late a revocation
    /// made on another replica takes effect here.
    pub key_cache_ttl: Duration,
    /// How stale the filter of live key ids may be before an unknown id makes a replica
    /// re-check the store's key-set version; bounds how late a key created on another
    /// replica starts working here.
    pub key_set_recheck: Duration,
    pub jwt: Option<JwtConfig>,
    /// How long console sessions live.
    pub session_lifetime: Lifetime,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            key_cache_ttl: Duration::from_secs(5),
            key_set_recheck: Duration::from_secs(1),
            jwt: None,
            session_lifetime: Lifetime::default(),
        }
    }
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    directory: KeyDirectory,
    keys: TtlCache<Option<KeyRecord>>,
    /// Sessions by token hash, for the key cache's TTL: a sign-out elsewhere lands as late.
    sessions: TtlCache<Option<SessionRecord>>,
    session_lifetime: Lifetime,
    jwt: Option<JwtVerifier>,
    /// The console's sign-in through the same provider, when `[auth.jwt.console]` is set.
    oidc: Option<OidcClient>,
    http: reqwest::Client,
}

fn unauthenticated(message: &str, code: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, message).with_code(code)
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        config: AuthConfig,
        http: reqwest::Client,
    ) -> Result<Authenticator, JwtConfigError> {
        let oidc = config.jwt.as_ref().and_then(|jwt| {
            let console = jwt.console.clone()?;
            Some(OidcClient::new(console, &jwt.issuer))
        });
        let jwt = config
            .jwt
            .map(|jwt| JwtVerifier::new(jwt, http.clone()))
            .transpose()?;
        Ok(Authenticator {
            directory: KeyDirectory::new(store.clone(), config.key_set_recheck),
            store,
            keys: TtlCache::new(config.key_cache_ttl),
            sessions: TtlCache::new(config.key_cache_ttl),
            session_lifetime: config.session_lifetime,
            jwt,
            oidc,
            http,
        })
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = bearer_token(headers)?;
        if token.starts_with(ferry_core::api_key::PREFIX) {
            return self.authenticate_key(token).await;
        }
        match &self.jwt {
            Some(verifier) if token.split('.').count() == 3 => {
                self.authenticate_jwt(verifier, token).await
            }
            _ => Err(unauthenticated(
                "Incorrect API key provided.",
                "invalid_api_key",
            )),
        }
    }

    /// An API key's principal, when the key is genuine and live.
    pub async fn authenticate_key(&self, token: &str) -> Result<Principal, ApiError> {
        let key = ApiKey::parse(token)
            .map_err(|_| unauthenticated("Incorrect API key provided.", "invalid_api_key"))?;
        let record = self
            .key_record(key.public_id())
            .await?
            .filter(|record| key.verify(&record.secret_hash))
            .ok_or_else(|| unauthenticated("Incorrect API key provided.", "invalid_api_key"))?;
        if !record.is_live(clock::unix_seconds()) {
            return Err(unauthenticated(
                "This API key has been revoked or has expired.",
                "invalid_api_key",
            ));
        }
        Ok(key_principal(record))
    }

    /// A key's record by public id, through the TTL cache. A random or forged id is refused
    /// here, in memory, before any store read.
    async fn key_record(&self, public_id: &str) -> Result<Option<KeyRecord>, ApiError> {
        Ok(match self.keys.get(public_id) {
            Some(cached) => cached,
            None if !self.directory.might_exist(public_id).await => None,
            None => {
                let found = self.store.find_key(public_id).await?;
                self.keys.put(public_id, found.clone());
                found
            }
        })
    }

    async fn authenticate_jwt(
        &self,
        verifier: &JwtVerifier,
        token: &str,
    ) -> Result<Principal, ApiError> {
        let identity = verifier.verify(token).await?;
        if identity.role != Role::Operator {
            let tenant_id = identity
                .tenant_id
                .as_deref()
                .ok_or_else(|| unauthenticated("The token names no tenant.", "invalid_token"))?;
            if self.store.get_tenant(tenant_id).await?.is_none() {
                return Err(unauthenticated(
                    "The token's tenant is not known here.",
                    "invalid_token",
                ));
            }
        }
        Ok(Principal {
            tenant_id: if identity.role == Role::Operator {
                None
            } else {
                identity.tenant_id
            },
            role: identity.role,
            credential: Credential::Jwt {
                subject: identity.subject,
                issuer: identity.issuer,
            },
            model_allowlist: None,
            key_policy: KeyPolicy::default(),
        })
    }

    /// Drops what this replica remembers of a key, so its revocation takes effect here at once.
    pub fn forget_key(&self, public_id: &str) {
        self.keys.forget(public_id);
    }

    /// Makes a key created on this replica usable here at once.
    pub fn remember_key(&self, public_id: &str) {
        self.directory.insert(public_id);
        self.keys.forget(public_id);
    }

    pub fn session_lifetime(&self) -> Lifetime {
        self.session_lifetime
    }

    pub fn key_directory(&self) -> &KeyDirectory {
        &self.directory
    }
}

/// The principal a key's record makes (what authenticating with the key would give).
pub(crate) fn key_principal(record: KeyRecord) -> Principal {
    Principal {
        tenant_id: record.tenant_id,
        role: record.role,
        credential: Credential::ApiKey { key_id: record.id },
        model_allowlist: record.models,
        key_policy: KeyPolicy {
            limits: record.limits,
            budgets: record.budgets,
            credit_cap: record.credit_cap,
        },
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        unauthenticated(
            "You didn't provide an API key. Send it in the Authorization header as `Bearer fy_…`.",
            "missing_api_key",
        )
    })?;
    let value = value.to_str().map_err(|_| {
        unauthenticated(
            "The Authorization header is not valid text.",
            "invalid_api_key",
        )
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthenticated(
            "The Authorization header must be `Bearer <token>`.",
            "invalid_api_key",
        ));
    }
    Ok(token)
}
