//! OIDC tokens checked at the edge: a forged, expired or foreign token is refused here, without
//! a trip to the origin (which checks every token again: the edge only turns away what would
//! certainly fail there).
//!
//! The provider's keys (JWKS) are kept in the key-value store with the time they were fetched,
//! refetched when older than `max_age`, and refetched early (at most every `min_refresh`) when
//! a token names a key not among them, so the provider can rotate keys. If the keys cannot be
//! had at all, tokens go to the origin unchecked rather than being refused.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use ferry_core::{ApiError, ErrorKind};

use crate::{KeyValue, Origin};

const JWKS_KEY: &str = "ferry/jwks";
/// When fetching the keys last failed: no new attempt for `min_refresh`.
const JWKS_FAILED_KEY: &str = "ferry/jwks-failed";

#[derive(Debug, Clone)]
pub struct EdgeJwt {
    pub jwks_url: String,
    /// The exact `iss` a token must carry.
    pub issuer: String,
    /// An `aud` the token must carry.
    pub audience: String,
    /// Tolerated clock skew for `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Keys older than this are fetched again.
    pub max_age_ms: u64,
    /// Least time between two fetches made because a token named an unknown key.
    pub min_refresh_ms: u64,
}

impl EdgeJwt {
    /// The origin's defaults: 30 s of leeway, keys kept up to an hour, refetched for an
    /// unknown key at most every 10 s.
    pub fn new(jwks_url: String, issuer: String, audience: String) -> EdgeJwt {
        EdgeJwt {
            jwks_url,
            issuer,
            audience,
            leeway_seconds: 30,
            max_age_ms: 3_600_000,
            min_refresh_ms: 10_000,
        }
    }
}

/// Asymmetric algorithms only: never `none`, never HMAC (which would let anyone holding the
/// public key sign).
const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What the store keeps of the provider's keys.
#[derive(Serialize, Deserialize)]
struct KeptKeys {
    fetched_at_ms: u64,
    keys: JwkSet,
}

/// Three base64url parts and not an API key.
pub fn looks_like_a_jwt(credential: &str) -> bool {
    !credential.starts_with(ferry_core::api_key::PREFIX) && credential.split('.').count() == 3
}

fn refused(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, message).with_code("invalid_token")
}

impl EdgeJwt {
    /// `Err` only for a token the origin would certainly refuse.
    pub async fn check(
        &self,
        token: &str,
        store: &impl KeyValue,
        outside: &impl Origin,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refused("The token is not a well-formed JWT."))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(refused("The token's signing algorithm is not accepted."));
        }
        let kid = header
            .kid
            .ok_or_else(|| refused("The token names no signing key (`kid`)."))?;
        let Some(mut kept) = self.keys(store, outside, now_ms, None).await else {
            return Ok(());
        };
        if kept.keys.find(&kid).is_none() {
            // Perhaps rotated: fetch again, unless that was done a moment ago.
            match self.keys(store, outside, now_ms, Some(&kept)).await {
                Some(fresh) => kept = fresh,
                None => return Ok(()),
            }
        }
        let jwk = kept
            .keys
            .find(&kid)
            .ok_or_else(|| refused("The token's signing key is not the identity provider's."))?;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|_| refused("The token's signing key cannot be used."))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        // Times are judged below on the caller's clock (`now_ms`), not the library's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|_| refused("The token's signature, issuer or audience is not valid."))?
            .claims;
        // NumericDate may be fractional; the bounds are the origin's: refused only when
        // `exp < now - leeway` or `nbf > now + leeway`.
        let now = now_ms as f64 / 1000.0;
        let leeway = self.leeway_seconds as f64;
        let not_before = claims.get("nbf").and_then(Value::as_f64).unwrap_or(0.0);
        if not_before > now + leeway {
            return Err(refused("The token is not valid yet."));
        }
        match claims.get("exp").and_then(Value::as_f64) {
            Some(exp) if exp >= now - leeway => Ok(()),
            Some(_) => Err(refused("The token has expired.")),
            None => Err(refused("The token has no expiry (`exp`).")),
        }
    }

    /// The provider's keys: the kept ones while fresh (and not `stale`, which a token named an
    /// unknown key against), else fetched and kept. `None` when none can be had.
    async fn keys(
        &self,
        store: &impl KeyValue,
        outside: &impl Origin,
        now_ms: u64,
        stale: Option<&KeptKeys>,
    ) -> Option<KeptKeys> {
        let kept = match stale {
            Some(_) => None,
            None => store
                .get(JWKS_KEY)
                .await
                .ok()
                .flatten()
                .and_then(|value| serde_json::from_slice::<KeptKeys>(&value).ok()),
        };
        let kept = kept.or_else(|| {
            stale.map(|stale| KeptKeys {
                fetched_at_ms: stale.fetched_at_ms,
                keys: stale.keys.clone(),
            })
        });
        if let Some(kept) = kept {
            let age = now_ms.saturating_sub(kept.fetched_at_ms);
            let fresh = match stale {
                None => age < self.max_age_ms,
                Some(_) => age < self.min_refresh_ms,
            };
            if fresh {
                return Some(kept);
            }
        }
        // A provider that just failed is not asked again for a while: every token would
        // otherwise wait on it.
        let failed_at = store
            .get(JWKS_FAILED_KEY)
            .await
            .ok()
            .flatten()
            .and_then(|value| String::from_utf8(value).ok()?.parse::<u64>().ok());
        if failed_at.is_some_and(|at| now_ms.saturating_sub(at) < self.min_refresh_ms) {
            return None;
        }
        let Some(keys) = fetch_keys(outside, &self.jwks_url).await else {
            let _ = store
                .set(JWKS_FAILED_KEY, now_ms.to_string().as_bytes())
                .await;
            return None;
        };
        let kept = KeptKeys {
            fetched_at_ms: now_ms,
            keys,
        };
        if let Ok(value) = serde_json::to_vec(&kept) {
            let _ = store.set(JWKS_KEY, &value).await;
        }
        Some(kept)
    }
}

/// The provider's keys, each read on its own: one key of a type this library cannot read (the
/// provider's encryption key, say) must not hide the others.
async fn fetch_keys(outside: &impl Origin, url: &str) -> Option<JwkSet> {
    let fetched = outside.fetch(url).await.ok()?;
    if fetched.status != 200 {
        return None;
    }
    let document: Value = serde_json::from_slice(&fetched.body).ok()?;
    let keys = document
        .get("keys")?
        .as_array()?
        .iter()
        .filter_map(|key| serde_json::from_value(key.clone()).ok())
        .collect();
    Some(JwkSet { keys })
}
