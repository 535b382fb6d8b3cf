//! OIDC bearer tokens end to end: keys made here, a JWKS served by a real local identity
//! provider, tokens signed with `jsonwebtoken`, and Ferry's router answering `GET /v1/models`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use ferry_core::ledger::Posting;
use ferry_core::model::ModelSpec;
use ferry_core::ports::{Accounts, Billing, PostRequest, Store, Tenant};
use ferry_core::principal::Credential;
use ferry_functions::auth::{AuthConfig, Authenticator, JwtConfig};
use ferry_functions::testing::{Answer, FakeUpstream, TestApp};
use ferry_functions::{AppState, RouterConfig};
use ferry_store_sqlite::SqliteStore;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::EncodePrivateKey;
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "ferry-gateway";
const TENANT: &str = "tnt_acme";
const OTHER_TENANT: &str = "tnt_globex";

// ---------------------------------------------------------------------------------------------
// Keys, made once per test binary (RSA key generation is slow in debug builds).

/// A signing key as the identity provider holds it: the private half for `jsonwebtoken`, the
/// public half as a JWK for the JWKS.
struct SigningKey {
    kid: &'static str,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key as PEM and DER (PKCS#1), for the algorithm-confusion attack; empty for
    /// EC keys.
    public_pem: String,
    public_der: Vec<u8>,
}

fn rsa_key(kid: &'static str) -> SigningKey {
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA keygen");
    let public = private.to_public_key();
    SigningKey {
        kid,
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
        jwk: json!({
            "kty": "RSA",
            "kid": kid,
            "alg": "RS256",
            "use": "sig",
            "n": base64url(&public.n_bytes()),
            "e": base64url(&public.e_bytes()),
        }),
        public_pem: public.to_pkcs1_pem(LineEnding::LF).unwrap(),
        public_der: public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
    }
}

fn ec_key(kid: &'static str) -> SigningKey {
    let private = p256::SecretKey::generate();
    let point = private.public_key().to_sec1_point(false);
    SigningKey {
        kid,
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({
            "kty": "EC",
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
            "crv": "P-256",
            "x": base64url(point.x().unwrap()),
            "y": base64url(point.y().unwrap()),
        }),
        public_pem: String::new(),
        public_der: Vec::new(),
    }
}

static RSA_KEY: LazyLock<SigningKey> = LazyLock::new(|| rsa_key("rsa-2024"));
static ROTATED_RSA_KEY: LazyLock<SigningKey> = LazyLock::new(|| rsa_key("rsa-2025"));
static EC_KEY: LazyLock<SigningKey> = LazyLock::new(|| ec_key("ec-2024"));

/// Base64url without padding, as JWS and JWK use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (index, byte)| {
            bits | u32::from(*byte) << (16 - 8 * index)
        });
        for index in 0..=chunk.len() {
            out.push(char::from(
                ALPHABET[(bits >> (18 - 6 * index)) as usize & 63],
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tokens.

fn now() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(elapsed.as_secs()).unwrap()
}

/// Claims the gateway accepts: right issuer and audience, valid now, naming the tenant.
fn valid_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": now(),
        "exp": now() + 600,
        "tenant": TENANT,
    })
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("signing")
}

/// The three dot-separated parts of a compact JWS.
fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    parts.try_into().expect("a JWT has three parts")
}

fn encode_json(value: &Value) -> String {
    base64url(&serde_json::to_vec(value).unwrap())
}

// ---------------------------------------------------------------------------------------------
// The identity provider: a real HTTP server publishing a JWKS that the test can change.

struct IdentityProvider {
    jwks_url: String,
    /// The published keys; `None` while the provider is down (its JWKS answers 500).
    published: Arc<Mutex<Option<Vec<Value>>>>,
    fetches: Arc<AtomicUsize>,
}

impl IdentityProvider {
    async fn start(keys: &[&SigningKey]) -> IdentityProvider {
        let published = Arc::new(Mutex::new(None));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&published), Arc::clone(&fetches));
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let keys = served.lock().unwrap().clone();
                async move {
                    match keys {
                        Some(keys) => Json(json!({ "keys": keys })).into_response(),
                        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let provider = IdentityProvider {
            jwks_url: format!("http://{address}/.well-known/jwks.json"),
            published,
            fetches,
        };
        provider.publish(keys);
        provider
    }

    /// Replaces the published key set, as a provider does when it rotates keys.
    fn publish(&self, keys: &[&SigningKey]) {
        *self.published.lock().unwrap() = Some(keys.iter().map(|key| key.jwk.clone()).collect());
    }

    fn go_down(&self) {
        *self.published.lock().unwrap() = None;
    }

    /// How many times the JWKS has been fetched.
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Ferry, with OIDC enabled and one tenant that has a model.

struct Ferry {
    test: TestApp,
    idp: IdentityProvider,
    store: Arc<SqliteStore>,
}

impl std::ops::Deref for Ferry {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.test
    }
}

impl Ferry {
    /// Ferry trusting an identity provider that publishes the RSA and the EC key, with no
    /// leeway and no rate limit on JWKS refetches.
    async fn start() -> Ferry {
        Ferry::start_with(json!({})).await
    }

    /// As [`Ferry::start`], with `overrides` replacing fields of `[auth.jwt]`.
    async fn start_with(overrides: Value) -> Ferry {
        let idp = IdentityProvider::start(&[&RSA_KEY, &EC_KEY]).await;
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        for (id, name) in [(TENANT, "Acme"), (OTHER_TENANT, "Globex")] {
            store
                .create_tenant(&Tenant {
                    id: id.into(),
                    name: name.into(),
                    billing: Billing::Prepaid,
                    created_at: 1,
                    limits: Default::default(),
                    budgets: Vec::new(),
                    log_prompts: false,
                })
                .await
                .unwrap();
        }
        let model: ModelSpec = serde_json::from_value(json!({
            "id": "tiny-chat",
            "deployments": [{"id": "d1", "upstream": {"url": "http://127.0.0.1:9/v1", "model": "tiny"}}],
        }))
        .unwrap();
        store.put_model(&model, 1).await.unwrap();
        let mut config = json!({
            "jwks_url": idp.jwks_url,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "leeway_seconds": 0,
            "jwks_min_refresh_seconds": 0,
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(overrides.as_object().unwrap().clone());
        let jwt: JwtConfig = serde_json::from_value(config).unwrap();
        let auth = Authenticator::new(
            store.clone(),
            AuthConfig {
                jwt: Some(jwt),
                ..AuthConfig::default()
            },
            reqwest::Client::builder().no_proxy().build().unwrap(),
        )
        .unwrap();
        let mut state = AppState::for_tests(store.clone(), FakeUpstream::new());
        state.auth = Arc::new(auth);
        Ferry {
            test: TestApp::start(state, &RouterConfig::default()).await,
            idp,
            store,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.test.get(path, Some(token)).await
    }

    /// The probe: `GET /v1/models`, which needs an authenticated caller.
    async fn list_models(&self, token: &str) -> Answer {
        self.get("/v1/models", token).await
    }
}

fn assert_accepted(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let ids: Vec<&str> = answer.body["data"]
        .as_array()
        .expect("a model list")
        .iter()
        .filter_map(|model| model["id"].as_str())
        .collect();
    assert_eq!(ids, ["tiny-chat"]);
}

/// The OpenAI error shape: exactly `message`, `type`, `param` and `code` under `error`.
fn assert_openai_error_shape(answer: &Answer) {
    common::openai_error(&answer.body);
}

fn assert_openai_error(answer: &Answer, status: StatusCode, error_type: &str, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_openai_error_shape(answer);
    assert_eq!(answer.body["error"]["type"], error_type, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
}

/// A 401 for the reason the test meant, so a broken fixture cannot pass as a rejection.
fn assert_rejected(answer: &Answer, reason: &str) {
    assert_openai_error(
        answer,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_token",
    );
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(reason),
        "expected a rejection for {reason:?}, got {message:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens.

#[tokio::test]
async fn an_rs256_token_from_the_identity_provider_is_accepted() {
    let ferry = Ferry::start().await;
    let token = sign(&RSA_KEY, &valid_claims());
    assert_accepted(&ferry.list_models(&token).await);
}

#[tokio::test]
async fn an_es256_token_from_the_identity_provider_is_accepted() {
    let ferry = Ferry::start().await;
    let token = sign(&EC_KEY, &valid_claims());
    assert_accepted(&ferry.list_models(&token).await);
}

#[tokio::test]
async fn after_the_provider_rotates_its_key_tokens_from_the_new_key_are_accepted() {
    let ferry = Ferry::start().await;
    assert_accepted(&ferry.list_models(&sign(&RSA_KEY, &valid_claims())).await);

    let fetches_before_rotation = ferry.idp.fetches();

    ferry.idp.publish(&[&ROTATED_RSA_KEY, &EC_KEY]);

    let rotated = sign(&ROTATED_RSA_KEY, &valid_claims());
    assert_accepted(&ferry.list_models(&rotated).await);
    assert_eq!(
        ferry.idp.fetches(),
        fetches_before_rotation + 1,
        "the new kid should trigger exactly one JWKS refetch"
    );
    // The retired key left the JWKS, so what it signs is no longer trusted.
    let retired = sign(&RSA_KEY, &valid_claims());
    assert_rejected(&ferry.list_models(&retired).await, "unknown key");
}

#[tokio::test]
async fn unknown_key_ids_refetch_the_jwks_no_more_often_than_configured() {
    let ferry = Ferry::start_with(json!({"jwks_min_refresh_seconds": 3600})).await;
    assert_accepted(&ferry.list_models(&sign(&RSA_KEY, &valid_claims())).await);
    assert_eq!(ferry.idp.fetches(), 1);

    let stranger = ec_key("ec-stranger");
    for _ in 0..3 {
        let token = sign(&stranger, &valid_claims());
        assert_rejected(&ferry.list_models(&token).await, "unknown key");
    }
    assert_eq!(
        ferry.idp.fetches(),
        1,
        "random kids must not make Ferry hammer the identity provider"
    );
}

#[tokio::test]
async fn a_failing_identity_provider_is_not_hammered_by_unknown_key_ids() {
    let ferry = Ferry::start_with(json!({"jwks_min_refresh_seconds": 3600})).await;
    ferry.idp.go_down();
    let stranger = ec_key("ec-stranger");
    for _ in 0..3 {
        let answer = ferry.list_models(&sign(&stranger, &valid_claims())).await;
        assert!(
            matches!(
                answer.status,
                StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{}",
            answer.body
        );
        assert_openai_error_shape(&answer);
    }
    assert_eq!(
        ferry.idp.fetches(),
        1,
        "jwks_min_refresh_seconds must bound fetches even while they fail"
    );
}

// ---------------------------------------------------------------------------------------------
// Forged tokens.

#[tokio::test]
async fn an_unsigned_alg_none_token_is_rejected() {
    let ferry = Ferry::start().await;
    let header = json!({"alg": "none", "typ": "JWT", "kid": RSA_KEY.kid});
    let token = format!("{}.{}.", encode_json(&header), encode_json(&valid_claims()));
    assert_rejected(&ferry.list_models(&token).await, "not a valid JWT");
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_rejected() {
    let ferry = Ferry::start().await;
    // The classic confusion attack: the public key is public, so anyone can MAC with it.
    for secret in [RSA_KEY.public_pem.as_bytes(), &RSA_KEY.public_der] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(RSA_KEY.kid.to_owned());
        let token = jsonwebtoken::encode(
            &header,
            &valid_claims(),
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        assert_rejected(&ferry.list_models(&token).await, "algorithm");
    }
}

#[tokio::test]
async fn a_token_whose_payload_was_changed_after_signing_is_rejected() {
    let ferry = Ferry::start().await;
    let claims = valid_claims();
    let token = sign(&RSA_KEY, &claims);
    let [header, payload, signature] = parts(&token);
    // Control: re-encoding the signed claims reproduces the payload byte for byte, so the
    // only difference in the forged token below is the claim the attacker changed.
    assert_eq!(encode_json(&claims), payload);

    let mut escalated = claims.clone();
    escalated["tenant"] = json!(OTHER_TENANT);
    escalated["roles"] = json!(["tenant-admin"]);
    let forged = format!("{header}.{}.{signature}", encode_json(&escalated));
    assert_rejected(&ferry.list_models(&forged).await, "could not be verified");
}

#[tokio::test]
async fn a_token_whose_algorithm_does_not_match_its_key_is_rejected() {
    let ferry = Ferry::start().await;
    // Signed by the EC key but naming the RSA key's kid (whose JWK says RS256).
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(RSA_KEY.kid.to_owned());
    let token = jsonwebtoken::encode(&header, &valid_claims(), &EC_KEY.encoding).unwrap();
    assert_rejected(&ferry.list_models(&token).await, "does not match its key");
}

#[tokio::test]
async fn a_token_signed_by_a_key_the_provider_never_published_is_rejected() {
    let ferry = Ferry::start().await;
    let stranger = ec_key("ec-stranger");
    let token = sign(&stranger, &valid_claims());
    assert_rejected(&ferry.list_models(&token).await, "unknown key");
}

// ---------------------------------------------------------------------------------------------
// Genuine tokens with claims Ferry must refuse.

#[tokio::test]
async fn an_expired_token_is_rejected() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["iat"] = json!(now() - 600);
    claims["exp"] = json!(now() - 60);
    assert_rejected(
        &ferry.list_models(&sign(&RSA_KEY, &claims)).await,
        "expired",
    );
}

#[tokio::test]
async fn a_token_not_valid_until_later_is_rejected() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["nbf"] = json!(now() + 300);
    assert_rejected(
        &ferry.list_models(&sign(&RSA_KEY, &claims)).await,
        "not valid yet",
    );
}

#[tokio::test]
async fn a_token_from_another_issuer_is_rejected() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["iss"] = json!("https://evil.example.test/");
    assert_rejected(&ferry.list_models(&sign(&RSA_KEY, &claims)).await, "issuer");
}

#[tokio::test]
async fn a_token_meant_for_another_audience_is_rejected() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["aud"] = json!("some-other-service");
    assert_rejected(
        &ferry.list_models(&sign(&RSA_KEY, &claims)).await,
        "audience",
    );
}

#[tokio::test]
async fn a_token_naming_a_tenant_ferry_does_not_know_is_rejected() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["tenant"] = json!("tnt_nobody");
    assert_rejected(
        &ferry.list_models(&sign(&RSA_KEY, &claims)).await,
        "tenant is not known",
    );
}

#[tokio::test]
async fn a_token_naming_no_tenant_is_rejected() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims.as_object_mut().unwrap().remove("tenant");
    assert_rejected(
        &ferry.list_models(&sign(&RSA_KEY, &claims)).await,
        "names no tenant",
    );
}

// ---------------------------------------------------------------------------------------------
// Roles from the token reach the admin API.

#[tokio::test]
async fn a_tenant_admin_token_reads_its_own_tenant_and_learns_nothing_of_another() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["roles"] = json!(["tenant-admin"]);
    let token = sign(&RSA_KEY, &claims);

    let own = ferry
        .get(&format!("/admin/v1/tenants/{TENANT}"), &token)
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(own.body["id"], TENANT);
    assert_eq!(own.body["name"], "Acme");

    let other = ferry
        .get(&format!("/admin/v1/tenants/{OTHER_TENANT}"), &token)
        .await;
    assert_openai_error(
        &other,
        StatusCode::NOT_FOUND,
        "not_found_error",
        "tenant_not_found",
    );
}

#[tokio::test]
async fn a_member_token_may_not_list_its_tenants_keys() {
    let ferry = Ferry::start().await;
    let mut claims = valid_claims();
    claims["roles"] = json!(["member"]);
    let token = sign(&EC_KEY, &claims);

    let answer = ferry
        .get(&format!("/admin/v1/tenants/{TENANT}/keys"), &token)
        .await;
    assert_openai_error(
        &answer,
        StatusCode::FORBIDDEN,
        "permission_error",
        "tenant_admin_only",
    );
}

#[tokio::test]
async fn a_member_token_sees_its_own_usage_and_no_one_elses() {
    let ferry = Ferry::start().await;
    ferry
        .store
        .post(&PostRequest {
            posting: Posting::top_up(TENANT, "10".parse().unwrap()),
            idempotency_key: None,
            memo: None,
            now_ms: 1,
        })
        .await
        .unwrap();
    let token_of = |subject: &str, role: &str| {
        let mut claims = valid_claims();
        claims["sub"] = json!(subject);
        claims["roles"] = json!([role]);
        sign(&RSA_KEY, &claims)
    };
    let (alice, bob) = (token_of("alice", "member"), token_of("bob", "member"));
    let chat = json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]});
    for token in [&alice, &alice, &bob] {
        let answer = ferry.post("/v1/chat/completions", token, &chat).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let alice_id = Credential::Jwt {
        subject: "alice".into(),
        issuer: ISSUER.into(),
    }
    .caller_id();

    // A member's own: its subject's calls, and only those.
    let events = ferry
        .get(&format!("/admin/v1/tenants/{TENANT}/usage/events"), &alice)
        .await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.body);
    let callers: Vec<&str> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(callers, [alice_id.as_str(), alice_id.as_str()]);
    let report = ferry
        .get(&format!("/admin/v1/tenants/{TENANT}/usage"), &alice)
        .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    assert_eq!(report.body["data"][0]["requests"], 2);

    // Another member may not ask for it; an admin sees everyone's, by caller.
    let asked = ferry
        .get(
            &format!("/admin/v1/tenants/{TENANT}/usage/events?key={alice_id}"),
            &bob,
        )
        .await;
    assert_openai_error(
        &asked,
        StatusCode::FORBIDDEN,
        "permission_error",
        "own_usage_only",
    );
    let admin = token_of("carol", "tenant-admin");
    let all = ferry
        .get(
            &format!("/admin/v1/tenants/{TENANT}/usage?group_by=key"),
            &admin,
        )
        .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let mut by_caller: Vec<(String, u64)> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["key_id"].as_str().unwrap().to_owned(),
                row["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    by_caller.sort();
    assert_eq!(by_caller.len(), 2);
    assert!(by_caller.contains(&(alice_id, 2)));
}
