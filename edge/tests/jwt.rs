//! OIDC tokens checked at the edge, against an identity provider served on loopback: good
//! tokens go on to the origin, forged, expired or foreign ones are refused at the edge, keys
//! are fetched once and refetched (rate-limited) for an unknown key, and a provider that cannot
//! be reached lets tokens through for the origin to judge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_edge::{Edge, EdgeConfig, EdgeError, EdgeJwt, MemoryKv, Message, Origin, Step};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.example/";
const AUDIENCE: &str = "ferry";
const NOW_MS: u64 = 1_800_000_000_000;

struct SigningKey {
    kid: &'static str,
    encoding: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &'static str) -> SigningKey {
    let private = p256::SecretKey::generate();
    let point = private.public_key().to_sec1_point(false);
    SigningKey {
        kid,
        encoding: EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({
            "kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }),
    }
}

fn token(key: &SigningKey, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.into());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant": "acme",
           "exp": NOW_MS / 1000 + 600, "nbf": NOW_MS / 1000 - 60})
}

/// The identity provider: serves its JWKS and counts the fetches. `None` keys: unreachable.
struct Provider {
    keys: std::sync::Mutex<Option<Value>>,
    fetches: AtomicUsize,
}

impl Origin for Provider {
    async fn post(
        &self,
        _: &str,
        _: Vec<(String, String)>,
        _: Vec<u8>,
    ) -> Result<Message, EdgeError> {
        Err(EdgeError::Origin("no origin in these tests".into()))
    }

    async fn fetch(&self, url: &str) -> Result<Message, EdgeError> {
        assert_eq!(url, "https://issuer.example/jwks.json");
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let keys = self.keys.lock().unwrap().clone();
        match keys {
            Some(keys) => Ok(Message {
                status: 200,
                body: keys.to_string().into_bytes(),
                ..Message::default()
            }),
            None => Err(EdgeError::Origin("connection refused".into())),
        }
    }
}

fn provider(keys: &[&SigningKey]) -> Arc<Provider> {
    let jwks = json!({"keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>()});
    Arc::new(Provider {
        keys: std::sync::Mutex::new(Some(jwks)),
        fetches: AtomicUsize::new(0),
    })
}

fn edge() -> Edge<MemoryKv> {
    Edge::new(
        EdgeConfig {
            secret: b"s".to_vec(),
            edge_id: "t".into(),
            max_body_bytes: 1 << 20,
            jwt: Some(EdgeJwt::new(
                "https://issuer.example/jwks.json".into(),
                ISSUER.into(),
                AUDIENCE.into(),
            )),
        },
        MemoryKv::default(),
    )
}

/// Some(error code) when the edge refused the token, None when it went on to the origin.
async fn verdict(
    edge: &Edge<MemoryKv>,
    provider: &Provider,
    token: &str,
    now_ms: u64,
) -> Option<String> {
    let request = Message {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        body: br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#
            .to_vec(),
        ..Message::default()
    };
    match edge.handle(request, now_ms, [1; 16], provider).await {
        Step::Forward(_) => None,
        Step::Answer(response) => {
            assert_eq!(response.status, 401);
            let body: Value = serde_json::from_slice(&response.body).unwrap();
            Some(body["error"]["code"].as_str().unwrap().to_owned())
        }
    }
}

#[tokio::test]
async fn a_good_token_goes_on_and_the_keys_are_fetched_once() {
    let key = ec_key("k1");
    let provider = provider(&[&key]);
    let edge = edge();
    assert_eq!(
        verdict(&edge, &provider, &token(&key, claims()), NOW_MS).await,
        None
    );
    assert_eq!(
        verdict(&edge, &provider, &token(&key, claims()), NOW_MS + 1).await,
        None
    );
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_stop_at_the_edge() {
    let key = ec_key("k1");
    let impostor = ec_key("k1");
    let provider = provider(&[&key]);
    let edge = edge();
    let refused = Some("invalid_token".to_owned());
    // Signed by someone else under the provider's key id.
    assert_eq!(
        verdict(&edge, &provider, &token(&impostor, claims()), NOW_MS).await,
        refused
    );
    // Expired (past the leeway).
    let mut expired = claims();
    expired["exp"] = json!(NOW_MS / 1000 - 120);
    assert_eq!(
        verdict(&edge, &provider, &token(&key, expired), NOW_MS).await,
        refused
    );
    // Not valid yet.
    let mut early = claims();
    early["nbf"] = json!(NOW_MS / 1000 + 120);
    assert_eq!(
        verdict(&edge, &provider, &token(&key, early), NOW_MS).await,
        refused
    );
    // Another audience, another issuer.
    let mut foreign = claims();
    foreign["aud"] = json!("someone-else");
    assert_eq!(
        verdict(&edge, &provider, &token(&key, foreign), NOW_MS).await,
        refused
    );
    let mut foreign = claims();
    foreign["iss"] = json!("https://evil.example/");
    assert_eq!(
        verdict(&edge, &provider, &token(&key, foreign), NOW_MS).await,
        refused
    );
    // HMAC, whatever the secret: never accepted.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hmac =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"x").unwrap()).unwrap();
    assert_eq!(verdict(&edge, &provider, &hmac, NOW_MS).await, refused);
    // Not a JWT at all, and an API key: neither is checked here.
    assert_eq!(verdict(&edge, &provider, "a.b.c", NOW_MS).await, refused);
    assert_eq!(verdict(&edge, &provider, "fy_abc_def", NOW_MS).await, None);
}

#[tokio::test]
async fn an_unknown_key_refetches_at_most_every_so_often() {
    let key = ec_key("k1");
    let rotated = ec_key("k2");
    let provider = provider(&[&key]);
    let edge = edge();
    assert_eq!(
        verdict(&edge, &provider, &token(&key, claims()), NOW_MS).await,
        None
    );
    // The provider rotates its keys: the first token under the new key refetches and passes.
    *provider.keys.lock().unwrap() = Some(json!({"keys": [key.jwk, rotated.jwk]}));
    let later = NOW_MS + 60_000;
    assert_eq!(
        verdict(&edge, &provider, &token(&rotated, claims()), later).await,
        None
    );
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 2);
    // Made-up key ids right after cannot make the edge hammer the provider.
    let stranger = ec_key("k9");
    for offset in 0..5 {
        let verdict = verdict(
            &edge,
            &provider,
            &token(&stranger, claims()),
            later + offset,
        )
        .await;
        assert_eq!(verdict, Some("invalid_token".into()));
    }
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_provider_lets_the_origin_decide() {
    let key = ec_key("k1");
    let provider = provider(&[&key]);
    *provider.keys.lock().unwrap() = None;
    let edge = edge();
    assert_eq!(
        verdict(&edge, &provider, &token(&key, claims()), NOW_MS).await,
        None
    );
    // ...and is not asked again by every token that follows.
    let next = verdict(&edge, &provider, &token(&key, claims()), NOW_MS + 1).await;
    assert_eq!(next, None);
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn times_are_judged_as_the_origin_judges_them() {
    let key = ec_key("k1");
    let provider = provider(&[&key]);
    let edge = edge();
    // A fractional expiry, and one exactly at the leeway's edge, pass.
    let mut fractional = claims();
    fractional["exp"] = json!(NOW_MS as f64 / 1000.0 + 0.5);
    assert_eq!(
        verdict(&edge, &provider, &token(&key, fractional), NOW_MS).await,
        None
    );
    let mut at_the_edge = claims();
    at_the_edge["exp"] = json!(NOW_MS / 1000 - 30);
    assert_eq!(
        verdict(&edge, &provider, &token(&key, at_the_edge), NOW_MS).await,
        None
    );
}
