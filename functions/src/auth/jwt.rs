//! OIDC bearer tokens: JWTs verified against the identity provider's JWKS.
//!
//! Only asymmetric algorithms from an allowlist are accepted (never `none`, never HMAC, which
//! would let anyone holding the public key sign), keys are found by `kid`, and an unknown `kid`
//! refetches the JWKS (rate-limited) so the provider can rotate keys without a restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_core::principal::Role;
use ferry_core::{ApiError, ErrorKind};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

/// `[auth.jwt]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Where the provider publishes its signing keys, e.g. `https://idp.example/.well-known/jwks.json`.
    pub jwks_url: String,
    /// The exact `iss` a token must carry.
    pub issuer: String,
    /// An `aud` the token must carry.
    pub audience: String,
    /// Accepted signing algorithms; only RS256/384/512, PS256/384/512, ES256/384 and EdDSA.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding the Ferry tenant id; a dotted path reaches into objects (`org.id`).
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim holding the caller's role or roles (a string or an array of strings).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Maps the provider's role names to Ferry roles. Without it, `tenant-admin` and `member`
    /// are taken literally; `operator` is granted only through an explicit mapping.
    #[serde(default)]
    pub role_map: HashMap<String, Role>,
    /// The role of a token that carries none of the mapped roles.
    #[serde(default = "default_role")]
    pub default_role: Role,
    /// Tolerated clock skew for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Least time between two JWKS fetches (successful or not) triggered by unknown key ids,
    /// so tokens with made-up `kid`s cannot hammer the identity provider.
    #[serde(default = "default_refresh")]
    pub jwks_min_refresh_seconds: u64,
    /// Keys older than this are refetched, so a key the provider withdrew stops working.
    #[serde(default = "default_max_age")]
    pub jwks_max_age_seconds: u64,
    /// Console sign-in through this provider (authorization code with PKCE); off when absent.
    #[serde(default)]
    pub console: Option<ConsoleSignIn>,
}

/// `[auth.jwt.console]`: the console as an OpenID Connect client of the same provider. Its
/// ID tokens carry the tenant and roles in the same claims as API tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSignIn {
    /// The console's client id at the provider: the `aud` of its ID tokens.
    pub client_id: String,
    /// For a confidential client (sent with HTTP Basic); a public client has none.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Asked for at sign-in; `openid` at least.
    #[serde(default = "default_scopes")]
    pub scopes: String,
    /// Where the provider sends the browser back; default: this server's
    /// `/admin/v1/session/oidc/callback` on the host the browser used.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// Default: from the provider's `/.well-known/openid-configuration`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

fn default_scopes() -> String {
    "openid profile".into()
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_role_claim() -> String {
    "roles".into()
}
fn default_role() -> Role {
    Role::Member
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    10
}
fn default_max_age() -> u64 {
    3600
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtConfigError {
    #[error(
        "auth.jwt.algorithms: `{0}` is not an accepted algorithm (use RS*, PS*, ES256, ES384 or EdDSA)"
    )]
    Algorithm(String),
    #[error("auth.jwt.algorithms must name at least one algorithm")]
    NoAlgorithms,
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    pub subject: String,
    pub issuer: String,
    pub tenant_id: Option<String>,
    pub role: Role,
}

struct Jwks {
    keys: HashMap<String, (Jwk, DecodingKey)>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

pub struct JwtVerifier {
    config: JwtConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    jwks: RwLock<Jwks>,
    /// One refetch at a time; others wait for its result.
    refreshing: Mutex<()>,
}

fn invalid_token(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, message).with_code("invalid_token")
}

fn is_asymmetric(algorithm: Algorithm) -> bool {
    !matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

impl JwtVerifier {
    pub fn new(config: JwtConfig, http: reqwest::Client) -> Result<JwtVerifier, JwtConfigError> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .ok()
                    .filter(|algorithm| is_asymmetric(*algorithm))
                    .ok_or_else(|| JwtConfigError::Algorithm(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err(JwtConfigError::NoAlgorithms);
        }
        Ok(JwtVerifier {
            config,
            algorithms,
            http,
            jwks: RwLock::new(Jwks {
                keys: HashMap::new(),
                fetched_at: None,
                attempted_at: None,
            }),
            refreshing: Mutex::new(()),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<JwtIdentity, ApiError> {
        let claims = self.verified_claims(token, &self.config.audience).await?;
        Ok(self.identity(&claims))
    }

    /// A console sign-in's ID token: issued to the console's client (its `aud`) for this
    /// sign-in (its `nonce`), read with the same claims as an API token.
    pub async fn verify_id_token(
        &self,
        token: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<JwtIdentity, ApiError> {
        let claims = self.verified_claims(token, client_id).await?;
        let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            sent.as_bytes(),
            nonce.as_bytes(),
        )) {
            return Err(invalid_token(
                "The ID token is not for this sign-in (nonce).",
            ));
        }
        Ok(self.identity(&claims))
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    async fn verified_claims(&self, token: &str, audience: &str) -> Result<Value, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid_token("The bearer token is not a valid JWT."))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid_token(
                "The token's signing algorithm is not accepted.",
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid_token("The token has no key id (kid)."))?;
        let key = self
            .key(&kid)
            .await?
            .ok_or_else(|| invalid_token("The token was signed by an unknown key."))?;
        if let Some(key_algorithm) = key.0.common.key_algorithm
            && serde_json::to_value(key_algorithm).ok() != serde_json::to_value(header.alg).ok()
        {
            return Err(invalid_token(
                "The token's algorithm does not match its key.",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_seconds;
        let claims = jsonwebtoken::decode::<Value>(token, &key.1, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    invalid_token("The token has expired.")
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    invalid_token("The token is not valid yet.")
                }
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    invalid_token("The token's issuer is not accepted.")
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    invalid_token("The token's audience is not accepted.")
                }
                _ => invalid_token("The token could not be verified."),
            })?
            .claims;
        Ok(claims)
    }

    fn identity(&self, claims: &Value) -> JwtIdentity {
        let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
        let roles: Vec<String> = match claim_at(claims, &self.config.role_claim) {
            Some(Value::String(role)) => vec![role.clone()],
            Some(Value::Array(roles)) => roles
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let role = roles
            .iter()
            .filter_map(|name| self.map_role(name))
            .max_by_key(|role| match role {
                Role::Operator => 2,
                Role::TenantAdmin => 1,
                Role::Member => 0,
            })
            .unwrap_or(self.config.default_role);
        JwtIdentity {
            subject: text(claims.get("sub")).unwrap_or_default(),
            issuer: text(claims.get("iss")).unwrap_or_default(),
            tenant_id: text(claim_at(claims, &self.config.tenant_claim)),
            role,
        }
    }

    fn map_role(&self, name: &str) -> Option<Role> {
        if self.config.role_map.is_empty() {
            Role::parse(name).filter(|role| *role != Role::Operator)
        } else {
            self.config.role_map.get(name).copied()
        }
    }

    fn is_stale(&self, jwks: &Jwks) -> bool {
        let max_age = Duration::from_secs(self.config.jwks_max_age_seconds);
        jwks.fetched_at
            .is_none_or(|fetched_at| fetched_at.elapsed() >= max_age)
    }

    async fn key(&self, kid: &str) -> Result<Option<(Jwk, DecodingKey)>, ApiError> {
        {
            let jwks = self.jwks.read().await;
            if let Some(key) = jwks.keys.get(kid).filter(|_| !self.is_stale(&jwks)) {
                return Ok(Some(key.clone()));
            }
        }
        let _refreshing = self.refreshing.lock().await;
        {
            let mut jwks = self.jwks.write().await;
            if let Some(key) = jwks.keys.get(kid).filter(|_| !self.is_stale(&jwks)) {
                return Ok(Some(key.clone()));
            }
            let min_interval = Duration::from_secs(self.config.jwks_min_refresh_seconds);
            if jwks
                .attempted_at
                .is_some_and(|attempted_at| attempted_at.elapsed() < min_interval)
            {
                return Ok(jwks.keys.get(kid).cloned());
            }
            jwks.attempted_at = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                let mut jwks = self.jwks.write().await;
                jwks.keys = keys;
                jwks.fetched_at = Some(Instant::now());
                Ok(jwks.keys.get(kid).cloned())
            }
            // While the provider is down, keys already known keep working.
            Err(error) => match self.jwks.read().await.keys.get(kid) {
                Some(key) => Ok(Some(key.clone())),
                None => Err(error),
            },
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (Jwk, DecodingKey)>, ApiError> {
        let unavailable = |error: reqwest::Error| {
            tracing::warn!(%error, url = %self.config.jwks_url, "fetching the JWKS failed");
            ApiError::new(
                ErrorKind::NoCapacity,
                "The identity provider's keys could not be fetched; try again.",
            )
            .retry_after(5)
        };
        let document: Value = self
            .http
            .get(&self.config.jwks_url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        // Keys this version cannot read (or symmetric ones) are skipped, not fatal.
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(keys
            .into_iter()
            .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
            .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some((kid, (jwk, key)))
            })
            .collect())
    }
}

/// The value at a dotted path of claims (`org.id`), or at a claim whose name contains dots.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    claims.get(path).or_else(|| {
        path.split('.')
            .try_fold(claims, |value, part| value.get(part))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> JwtConfig {
        toml_like(json!({"jwks_url": "http://127.0.0.1:1/jwks", "issuer": "i", "audience": "a"}))
    }

    fn toml_like(value: Value) -> JwtConfig {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn refuses_symmetric_and_unknown_algorithms() {
        for bad in ["HS256", "none", "XS1"] {
            let mut config = config();
            config.algorithms = vec!["RS256".into(), bad.into()];
            assert_eq!(
                JwtVerifier::new(config, reqwest::Client::new()).err(),
                Some(JwtConfigError::Algorithm(bad.into()))
            );
        }
        let mut empty = config();
        empty.algorithms.clear();
        assert_eq!(
            JwtVerifier::new(empty, reqwest::Client::new()).err(),
            Some(JwtConfigError::NoAlgorithms)
        );
    }

    #[test]
    fn maps_claims_to_tenant_and_role() {
        let plain = JwtVerifier::new(config(), reqwest::Client::new()).unwrap();
        let mut mapped_config = config();
        mapped_config.tenant_claim = "org.id".into();
        mapped_config.role_claim = "groups".into();
        mapped_config.role_map = HashMap::from([
            ("ferry-ops".into(), Role::Operator),
            ("admins".into(), Role::TenantAdmin),
        ]);
        let mapped = JwtVerifier::new(mapped_config, reqwest::Client::new()).unwrap();
        let cases = [
            (
                &plain,
                json!({"sub": "s", "tenant": "t1", "roles": ["member", "tenant-admin"]}),
                Some("t1"),
                Role::TenantAdmin,
            ),
            (
                &plain,
                json!({"sub": "s", "tenant": "t1", "roles": "operator"}),
                Some("t1"),
                Role::Member,
            ),
            (
                &plain,
                json!({"sub": "s", "tenant": "t1"}),
                Some("t1"),
                Role::Member,
            ),
            (
                &mapped,
                json!({"sub": "s", "org": {"id": "t2"}, "groups": ["admins"]}),
                Some("t2"),
                Role::TenantAdmin,
            ),
            (
                &mapped,
                json!({"sub": "s", "groups": ["admins", "ferry-ops"]}),
                None,
                Role::Operator,
            ),
            (
                &mapped,
                json!({"sub": "s", "org.id": "t3", "groups": ["tenant-admin"]}),
                Some("t3"),
                Role::Member,
            ),
        ];
        for (verifier, claims, tenant, role) in cases {
            let identity = verifier.identity(&claims);
            assert_eq!(
                (identity.tenant_id.as_deref(), identity.role),
                (tenant, role),
                "{claims}"
            );
        }
    }
}
