//! Console sign-in through the OpenID provider: the authorization code flow with PKCE
//! (RFC 7636, `S256`), a `state` against forged callbacks and a `nonce` bound into the ID
//! token. What a sign-in must remember between the redirect and the callback rides in a
//! short-lived `HttpOnly` cookie of its own, so any replica can finish what another began.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_core::principal::Role;
use ferry_core::session::SessionSubject;
use ferry_core::{ApiError, ErrorKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use super::jwt::{ConsoleSignIn, JwtVerifier};
use super::{Authenticator, unauthenticated};
use crate::clock;

/// The cookie holding a sign-in in progress: `state.nonce.verifier`.
pub const FLOW_COOKIE: &str = "ferry_oidc";
/// How long a sign-in may take at the provider.
pub const FLOW_SECONDS: u64 = 600;
/// Where the provider sends the browser back, under the server's own origin.
pub const CALLBACK_PATH: &str = "/admin/v1/session/oidc/callback";

/// The provider's endpoints the console needs.
#[derive(Debug, Clone, Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

/// The console's OIDC client: its settings and the provider's endpoints, discovered once.
pub struct OidcClient {
    settings: ConsoleSignIn,
    issuer: String,
    endpoints: OnceCell<Endpoints>,
}

/// A sign-in begun: where to send the browser, and the cookie that remembers it.
pub struct Started {
    pub authorize_url: String,
    pub flow_cookie: String,
}

/// What the flow cookie remembers.
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
}

impl Flow {
    fn parse(cookie: &str) -> Option<Flow> {
        let mut parts = cookie.split('.');
        let flow = Flow {
            state: parts.next()?.to_owned(),
            nonce: parts.next()?.to_owned(),
            verifier: parts.next()?.to_owned(),
        };
        (parts.next().is_none() && !flow.state.is_empty()).then_some(flow)
    }
}

fn random_token() -> Result<String, ApiError> {
    let bytes = clock::secret_bytes::<32>().map_err(|error| {
        tracing::error!(%error, "no randomness for a sign-in");
        ApiError::new(ErrorKind::Internal, "Could not begin a sign-in.")
    })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// `S256`: the challenge the provider keeps until the code is redeemed with the verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn provider_unavailable(what: &str, error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "OIDC sign-in: {what}");
    ApiError::new(
        ErrorKind::NoCapacity,
        "The identity provider could not be reached; try again.",
    )
    .retry_after(5)
}

impl OidcClient {
    pub fn new(settings: ConsoleSignIn, issuer: &str) -> OidcClient {
        OidcClient {
            settings,
            issuer: issuer.trim_end_matches('/').to_owned(),
            endpoints: OnceCell::new(),
        }
    }

    /// The redirect URI: configured, or this server's callback on the origin the browser used.
    pub fn redirect_url(&self, origin: &str) -> String {
        self.settings
            .redirect_url
            .clone()
            .unwrap_or_else(|| format!("{origin}{CALLBACK_PATH}"))
    }

    async fn endpoints(&self, http: &reqwest::Client) -> Result<&Endpoints, ApiError> {
        self.endpoints
            .get_or_try_init(|| async {
                if let (Some(authorization_endpoint), Some(token_endpoint)) = (
                    self.settings.authorization_endpoint.clone(),
                    self.settings.token_endpoint.clone(),
                ) {
                    return Ok(Endpoints {
                        authorization_endpoint,
                        token_endpoint,
                    });
                }
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                http.get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|error| provider_unavailable("discovery", error))?
                    .json::<Endpoints>()
                    .await
                    .map_err(|error| provider_unavailable("discovery document", error))
            })
            .await
    }

    /// Begins a sign-in: the provider's authorization URL for this flow, and its cookie.
    pub async fn start(&self, http: &reqwest::Client, origin: &str) -> Result<Started, ApiError> {
        let endpoints = self.endpoints(http).await?;
        let flow = Flow {
            state: random_token()?,
            nonce: random_token()?,
            verifier: random_token()?,
        };
        let mut url = reqwest::Url::parse(&endpoints.authorization_endpoint)
            .map_err(|error| provider_unavailable("authorization endpoint", error))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.redirect_url(origin))
            .append_pair("scope", &self.settings.scopes)
            .append_pair("state", &flow.state)
            .append_pair("nonce", &flow.nonce)
            .append_pair("code_challenge", &pkce_challenge(&flow.verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Started {
            authorize_url: url.into(),
            flow_cookie: format!("{}.{}.{}", flow.state, flow.nonce, flow.verifier),
        })
    }

    /// Finishes a sign-in: checks `state` against the flow's cookie, redeems the code with
    /// the PKCE verifier, verifies the ID token (signature, issuer, audience, expiry, nonce)
    /// and reads who it names.
    pub async fn finish(
        &self,
        http: &reqwest::Client,
        verifier: &JwtVerifier,
        callback: Callback<'_>,
    ) -> Result<SessionSubject, ApiError> {
        let refused = |message: &str| unauthenticated(message, "oidc_sign_in_failed");
        let flow = callback
            .flow_cookie
            .and_then(Flow::parse)
            .ok_or_else(|| refused("The sign-in expired or was begun elsewhere; try again."))?;
        if !bool::from(flow.state.as_bytes().ct_eq(callback.state.as_bytes())) {
            return Err(refused("The sign-in's state does not match; try again."));
        }
        let endpoints = self.endpoints(http).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", callback.code),
            ("code_verifier", flow.verifier.as_str()),
            ("client_id", self.settings.client_id.as_str()),
        ];
        let redirect_uri = self.redirect_url(callback.origin);
        form.push(("redirect_uri", redirect_uri.as_str()));
        let mut request = http
            .post(&endpoints.token_endpoint)
            .timeout(Duration::from_secs(10))
            .form(&form);
        if let Some(secret) = &self.settings.client_secret {
            request = request.basic_auth(&self.settings.client_id, Some(secret));
        }
        let response = request
            .send()
            .await
            .map_err(|error| provider_unavailable("token endpoint", error))?;
        if !response.status().is_success() {
            // The provider's message may echo the code: log only the status.
            tracing::warn!(status = %response.status(), "OIDC sign-in: the code was refused");
            return Err(refused("The identity provider refused the sign-in."));
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: String,
        }
        let tokens: Tokens = response
            .json()
            .await
            .map_err(|_| refused("The identity provider sent no ID token."))?;
        let identity = verifier
            .verify_id_token(&tokens.id_token, &self.settings.client_id, &flow.nonce)
            .await?;
        Ok(SessionSubject::Oidc {
            subject: identity.subject,
            issuer: identity.issuer,
            tenant_id: (identity.role != Role::Operator)
                .then_some(identity.tenant_id)
                .flatten(),
            role: identity.role,
        })
    }
}

/// What the provider's redirect back brought.
pub struct Callback<'a> {
    pub code: &'a str,
    pub state: &'a str,
    pub flow_cookie: Option<&'a str>,
    /// The origin the browser used (`http://host:port`), for the default redirect URI.
    pub origin: &'a str,
}

impl Authenticator {
    /// The console's OIDC client and the verifier of its ID tokens, when configured.
    pub fn oidc_sign_in(&self) -> Option<(&OidcClient, &JwtVerifier)> {
        Some((self.oidc.as_ref()?, self.jwt.as_ref()?))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A session for someone the provider vouched for, once their tenant is known here.
    pub async fn start_oidc_session(
        &self,
        subject: SessionSubject,
    ) -> Result<super::NewSession, ApiError> {
        if let SessionSubject::Oidc {
            role, tenant_id, ..
        } = &subject
            && *role != Role::Operator
        {
            let tenant_id = tenant_id.as_deref().ok_or_else(|| {
                unauthenticated("The ID token names no tenant.", "oidc_sign_in_failed")
            })?;
            if self.store.get_tenant(tenant_id).await?.is_none() {
                return Err(unauthenticated(
                    "The ID token's tenant is not known here.",
                    "oidc_sign_in_failed",
                ));
            }
        }
        self.start_session(subject).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_unpadded_base64url_sha256_of_the_verifier() {
        // Computed independently: base64.urlsafe_b64encode(hashlib.sha256(v).digest()).
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r0wW1gFWFOEjXk"),
            "RCtbqyFn6Dv6GL6UC4xrWL6mHZBJowIOtGzu8O97GYg"
        );
    }

    #[test]
    fn a_flow_cookie_has_exactly_three_parts() {
        let flow = Flow::parse("s.n.v").unwrap();
        assert_eq!(
            (
                flow.state.as_str(),
                flow.nonce.as_str(),
                flow.verifier.as_str()
            ),
            ("s", "n", "v")
        );
        assert!(Flow::parse("s.n").is_none());
        assert!(Flow::parse("s.n.v.x").is_none());
        assert!(Flow::parse(".n.v").is_none());
    }
}
