//! The gateway and admin HTTP contract through the real router: keys and tenants, model access,
//! dispatch to a recording fake backend, pricing and metering, input validation, and the JSON
//! error shape of every failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use ferry_core::Money;
use ferry_core::ports::Accounts;
use ferry_functions::auth::{AuthConfig, Authenticator};
use ferry_functions::testing::{Answer, FakeUpstream, TestApp};
use ferry_functions::{AppState, MoneyConfig, RouterConfig};
use ferry_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The upstream name of the `allowed` model's only deployment.
const ALLOWED_UPSTREAM_MODEL: &str = "org/allowed-7b-instruct";

// ---------------------------------------------------------------------------------------------
// Ferry, its operator, and one tenant with a member key.

struct Ferry {
    test: TestApp,
    store: Arc<SqliteStore>,
    upstream: Arc<FakeUpstream>,
}

impl std::ops::Deref for Ferry {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.test
    }
}

impl Ferry {
    async fn start() -> Ferry {
        Ferry::start_with(RouterConfig::default()).await
    }

    async fn start_with(config: RouterConfig) -> Ferry {
        Ferry::start_configured(config, MoneyConfig::default()).await
    }

    async fn start_configured(config: RouterConfig, money: MoneyConfig) -> Ferry {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let upstream = FakeUpstream::new();
        let mut state = AppState::for_tests(store.clone(), upstream.clone());
        // A long cache: revocation must take effect through `forget_key`, not by expiry.
        state.auth = Arc::new(
            Authenticator::new(
                store.clone(),
                AuthConfig {
                    key_cache_ttl: Duration::from_secs(300),
                    ..AuthConfig::default()
                },
                reqwest::Client::new(),
            )
            .unwrap(),
        );
        state.money = money;
        Ferry {
            test: TestApp::start(state, &config).await,
            store,
            upstream,
        }
    }

    async fn post_raw(&self, path: &str, key: &str, bytes: Vec<u8>) -> Answer {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::from(bytes))
            .unwrap();
        self.send(request).await
    }

    /// The operator's setup: tenant `Acme`, models `allowed` (priced) and `other`, and a member
    /// key limited to `allowed`.
    async fn with_acme() -> (Ferry, Member) {
        let ferry = Ferry::start().await;
        let member = ferry.set_up_acme().await;
        (ferry, member)
    }

    async fn set_up_acme(&self) -> Member {
        let operator = self.operator_key.as_str();
        let tenant = self
            .post("/admin/v1/tenants", operator, &json!({"name": "Acme"}))
            .await;
        assert_eq!(tenant.status, StatusCode::CREATED, "{}", tenant.body);
        let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();
        let credit = self
            .post(
                &format!("/admin/v1/tenants/{tenant_id}/credits"),
                operator,
                &json!({"amount_usd": "10"}),
            )
            .await;
        assert_eq!(credit.status, StatusCode::CREATED, "{}", credit.body);

        for model in [
            model_spec("allowed", ALLOWED_UPSTREAM_MODEL),
            model_spec("other", "org/other-70b"),
        ] {
            let registered = self.post("/admin/v1/models", operator, &model).await;
            assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
        }

        let key = self
            .post(
                &format!("/admin/v1/tenants/{tenant_id}/keys"),
                operator,
                &json!({"name": "ci", "role": "member", "models": ["allowed"]}),
            )
            .await;
        assert_eq!(key.status, StatusCode::CREATED, "{}", key.body);
        Member {
            tenant_id,
            key_id: key.body["id"].as_str().unwrap().to_owned(),
            key: key.body["key"].as_str().unwrap().to_owned(),
        }
    }
}

struct Member {
    tenant_id: String,
    key_id: String,
    key: String,
}

fn model_spec(id: &str, upstream_model: &str) -> Value {
    json!({
        "id": id,
        "deployments": [{
            "id": format!("{id}-primary"),
            "upstream": {"url": "http://upstream.invalid/v1", "model": upstream_model},
        }],
        "price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2"},
    })
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}]})
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The OpenAI error shape (see `common::openai_error`) with the expected status.
/// Returns the error object for further checks.
fn assert_openai_error(answer: &Answer, status: StatusCode) -> &serde_json::Map<String, Value> {
    assert_eq!(answer.status, status, "{}", answer.body);
    common::openai_error(&answer.body)
}

fn assert_error_code(answer: &Answer, status: StatusCode, error_type: &str, code: &str) {
    let error = assert_openai_error(answer, status);
    assert_eq!(error["type"], error_type, "{}", answer.body);
    assert_eq!(error["code"], code, "{}", answer.body);
}

fn request_id(answer: &Answer) -> String {
    let value = answer
        .headers
        .get("x-request-id")
        .expect("every response carries x-request-id");
    let text = value.to_str().unwrap().to_owned();
    assert!(!text.is_empty());
    text
}

// ---------------------------------------------------------------------------------------------
// Every response, authentication.

#[tokio::test]
async fn every_response_carries_its_own_request_id() {
    let ferry = Ferry::start().await;
    let success = ferry.get("/v1/models", Some(&ferry.operator_key)).await;
    let no_route = ferry.get("/v1/nothing-here", None).await;
    let unauthenticated = ferry.get("/v1/models", None).await;
    assert_eq!(success.status, StatusCode::OK);
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);

    let ids: HashSet<String> = [&success, &no_route, &unauthenticated]
        .into_iter()
        .map(request_id)
        .collect();
    assert_eq!(ids.len(), 3, "request ids repeat: {ids:?}");
}

#[tokio::test]
async fn callers_without_a_valid_key_are_turned_away_with_401() {
    let ferry = Ferry::start().await;
    let missing = ferry.get("/v1/models", None).await;
    assert_error_code(
        &missing,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "missing_api_key",
    );
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");

    let unknown = format!("fy_{}_{}", "a".repeat(12), "b".repeat(32));
    let bad_credentials = [
        "not-a-key",
        "fy_tooshort_x",
        "sk-proj-0123456789abcdef",
        unknown.as_str(),
    ];
    for credential in bad_credentials {
        let answer = ferry.get("/v1/models", Some(credential)).await;
        assert_error_code(
            &answer,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
        );
    }

    let wrong_scheme = Request::get("/v1/models")
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", ferry.operator_key),
        )
        .body(Body::empty())
        .unwrap();
    assert_error_code(
        &ferry.send(wrong_scheme).await,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    );
}

// ---------------------------------------------------------------------------------------------
// Tenants and keys.

#[tokio::test]
async fn the_operator_creates_a_tenant_and_a_member_key_whose_secret_is_shown_only_once() {
    let ferry = Ferry::start().await;
    let tenant = ferry
        .post(
            "/admin/v1/tenants",
            &ferry.operator_key,
            &json!({"name": "Acme"}),
        )
        .await;
    assert_eq!(tenant.status, StatusCode::CREATED, "{}", tenant.body);
    let tenant_id = tenant.body["id"].as_str().unwrap();
    assert!(tenant_id.starts_with("tnt_"), "{tenant_id}");
    assert_eq!(tenant.body["name"], "Acme");

    let keys_path = format!("/admin/v1/tenants/{tenant_id}/keys");
    let created = ferry
        .post(
            &keys_path,
            &ferry.operator_key,
            &json!({"name": "ci", "role": "member", "models": ["allowed"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["key"].as_str().unwrap();
    assert!(secret.starts_with("fy_"), "{secret}");
    assert_eq!(created.body["tenant_id"], tenant_id);
    assert_eq!(created.body["role"], "member");
    assert_eq!(created.body["models"], json!(["allowed"]));

    let listed = ferry.get(&keys_path, Some(&ferry.operator_key)).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let keys = listed.body["data"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], created.body["id"]);
    assert!(keys[0].get("key").is_none(), "listing leaks the secret");
    assert!(!listed.body.to_string().contains(secret));
}

#[tokio::test]
async fn a_member_key_may_not_create_tenants() {
    let (ferry, member) = Ferry::with_acme().await;
    let answer = ferry
        .post("/admin/v1/tenants", &member.key, &json!({"name": "Evil"}))
        .await;
    assert_error_code(
        &answer,
        StatusCode::FORBIDDEN,
        "permission_error",
        "operator_only",
    );
}

#[tokio::test]
async fn a_key_that_would_already_have_expired_is_refused_at_creation() {
    let (ferry, member) = Ferry::with_acme().await;
    let keys_path = format!("/admin/v1/tenants/{}/keys", member.tenant_id);
    let answer = ferry
        .post(
            &keys_path,
            &ferry.operator_key,
            &json!({"name": "stale", "role": "member", "expires_at": unix_now() - 60}),
        )
        .await;
    let error = assert_openai_error(&answer, StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "expires_at");

    let future = ferry
        .post(
            &keys_path,
            &ferry.operator_key,
            &json!({"name": "fresh", "role": "member", "expires_at": unix_now() + 3600}),
        )
        .await;
    assert_eq!(future.status, StatusCode::CREATED, "{}", future.body);
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_the_very_next_call() {
    let (ferry, member) = Ferry::with_acme().await;
    // Warm the key cache, so the revocation has to evict the cached key.
    let before = ferry.get("/v1/models", Some(&member.key)).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);

    let revoked = ferry
        .delete(
            &format!("/admin/v1/keys/{}", member.key_id),
            &ferry.operator_key,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(revoked.body["revoked_at"].is_u64(), "{}", revoked.body);

    let after = ferry.get("/v1/models", Some(&member.key)).await;
    assert_error_code(
        &after,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
    );
    let chat_after = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_eq!(chat_after.status, StatusCode::UNAUTHORIZED);
    assert!(ferry.upstream.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Models and completions.

#[tokio::test]
async fn a_member_sees_only_the_models_its_key_allows() {
    let (ferry, member) = Ferry::with_acme().await;
    let ids = |answer: &Answer| -> Vec<String> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|model| model["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let member_view = ferry.get("/v1/models", Some(&member.key)).await;
    assert_eq!(member_view.status, StatusCode::OK, "{}", member_view.body);
    assert_eq!(ids(&member_view), ["allowed"]);

    let operator_view = ferry.get("/v1/models", Some(&ferry.operator_key)).await;
    assert_eq!(ids(&operator_view), ["allowed", "other"]);
}

#[tokio::test]
async fn a_chat_completion_reaches_the_deployment_and_comes_back_priced_under_the_public_name() {
    let (ferry, member) = Ferry::with_acme().await;
    let answer = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["model"], "allowed");
    assert_eq!(answer.body["choices"][0]["message"]["content"], "Hello!");
    let usage = &answer.body["usage"];
    assert_eq!(usage["prompt_tokens"], 7);
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["total_tokens"], 12);
    // 7 tokens at $1/Mtok + 5 tokens at $2/Mtok = $17/Mtok.
    assert_eq!(usage["cost"], "0.000017");

    let calls = ferry.upstream.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].target.model, ALLOWED_UPSTREAM_MODEL);
    assert_eq!(calls[0].body["model"], ALLOWED_UPSTREAM_MODEL);
    assert_eq!(calls[0].body["messages"][0]["content"], "Say hello.");
    assert!(!calls[0].stream);
}

#[tokio::test]
async fn a_successful_call_is_metered_exactly_once() {
    let (ferry, member) = Ferry::with_acme().await;
    let answer = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let usage = ferry
        .store
        .usage_events(&member.tenant_id, None, 0, u64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    let record = &usage[0];
    assert_eq!(record.prompt_tokens, 7);
    assert_eq!(record.completion_tokens, 5);
    assert_eq!(record.model, "allowed");
    assert_eq!(record.deployment, "allowed-primary");
    assert_eq!(record.endpoint, "chat.completions");
    assert_eq!(record.key_id.as_deref(), Some(member.key_id.as_str()));
    assert_eq!(record.status, 200);
    assert_eq!(record.cost, "0.000017".parse::<Money>().unwrap());
    assert_eq!(record.request_id, request_id(&answer));
}

#[tokio::test]
async fn a_model_outside_the_keys_allowlist_is_forbidden() {
    let (ferry, member) = Ferry::with_acme().await;
    let answer = ferry
        .post("/v1/chat/completions", &member.key, &chat("other"))
        .await;
    let error = assert_openai_error(&answer, StatusCode::FORBIDDEN);
    assert_eq!(error["code"], "model_not_allowed");
    assert_eq!(error["param"], "model");
    assert!(ferry.upstream.calls().is_empty());
}

#[tokio::test]
async fn an_unknown_model_is_not_found() {
    let (ferry, member) = Ferry::with_acme().await;
    let answer = ferry
        .post("/v1/chat/completions", &member.key, &chat("no-such-model"))
        .await;
    let error = assert_openai_error(&answer, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert!(ferry.upstream.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bad input.

#[tokio::test]
async fn bad_request_bodies_are_400s_that_name_the_parameter_at_fault() {
    let (ferry, member) = Ferry::with_acme().await;
    let json = |value: Value| serde_json::to_vec(&value).unwrap();
    let cases: [(&str, Vec<u8>, Option<&str>); 5] = [
        (
            "malformed JSON",
            br#"{"model": "allowed", "messages": ["#.to_vec(),
            None,
        ),
        (
            "a field of the wrong type",
            json(json!({
                "model": "allowed",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": "hot",
            })),
            Some("temperature"),
        ),
        (
            "a missing field",
            json(json!({"model": "allowed"})),
            Some("messages"),
        ),
        (
            "bytes that are not UTF-8",
            b"{\"model\": \"allowed\", \"messages\": [\xff\xfe]}".to_vec(),
            None,
        ),
        (
            "no messages",
            json(json!({"model": "allowed", "messages": []})),
            Some("messages"),
        ),
    ];
    for (case, body, param) in cases {
        let answer = ferry
            .post_raw("/v1/chat/completions", &member.key, body)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{case}: {}",
            answer.body
        );
        let error = assert_openai_error(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(error["type"], "invalid_request_error", "{case}");
        assert_eq!(error["param"], json!(param), "{case}: {}", answer.body);
    }
    assert!(ferry.upstream.calls().is_empty());
}

#[tokio::test]
async fn a_body_over_the_configured_limit_is_refused_with_413() {
    let ferry = Ferry::start_with(RouterConfig {
        max_request_body_bytes: 1024,
        ..RouterConfig::default()
    })
    .await;
    let member = ferry.set_up_acme().await;
    let big = json!({
        "model": "allowed",
        "messages": [{"role": "user", "content": "x".repeat(4096)}],
    });
    let answer = ferry.post("/v1/chat/completions", &member.key, &big).await;
    assert_error_code(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
    );
    assert!(ferry.upstream.calls().is_empty());

    // A body within the limit still goes through.
    let small = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_eq!(small.status, StatusCode::OK, "{}", small.body);
}

#[tokio::test]
async fn uploads_have_a_limit_of_their_own() {
    let ferry = Ferry::start_with(RouterConfig {
        max_request_body_bytes: 1024,
        max_file_bytes: 8 * 1024,
        ..RouterConfig::default()
    })
    .await;
    let member = ferry.set_up_acme().await;
    // Over the request limit, within the file limit: it reaches the handler (and this
    // deployment keeps no files).
    let within = json!({"padding": "x".repeat(4096)});
    let answer = ferry.post("/v1/files", &member.key, &within).await;
    assert_error_code(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable_error",
        "files_unavailable",
    );
    // Declared over the file limit: refused before a byte is read.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/files")
        .header(header::AUTHORIZATION, format!("Bearer {}", member.key))
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .header(header::CONTENT_LENGTH, (16 * 1024).to_string())
        .body(Body::from_stream(never))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ferry.send(request))
        .await
        .expect("refused at once, not read");
    assert_error_code(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
    );
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_read() {
    let ferry = Ferry::start_with(RouterConfig {
        max_request_body_bytes: 1024,
        ..RouterConfig::default()
    })
    .await;
    let member = ferry.set_up_acme().await;
    // A body that never comes: refused on its Content-Length, or this waits forever.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::AUTHORIZATION, format!("Bearer {}", member.key))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "1000000000")
        .body(Body::from_stream(never))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ferry.send(request))
        .await
        .expect("refused at once, not read");
    assert_error_code(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
    );
    assert_eq!(answer.headers[header::CONNECTION], "close");
    assert!(ferry.upstream.calls().is_empty());
}

#[tokio::test]
async fn an_unknown_model_is_named_only_in_part() {
    let (ferry, member) = Ferry::with_acme().await;
    let huge = "m".repeat(1_000_000);
    let answer = ferry
        .post("/v1/chat/completions", &member.key, &chat(&huge))
        .await;
    assert!(answer.status.is_client_error(), "{}", answer.status);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.len() < 300,
        "the message echoes {} bytes",
        message.len()
    );
    let route = ferry
        .get(&format!("/v1/{}", "p".repeat(30_000)), Some(&member.key))
        .await;
    assert!(route.body["error"]["message"].as_str().unwrap().len() < 300);
}

#[tokio::test]
async fn a_stream_holds_its_in_flight_slot_until_its_body_is_gone() {
    let ferry = Ferry::start_with(RouterConfig {
        max_calls_in_flight: 1,
        ..RouterConfig::default()
    })
    .await;
    let member = ferry.set_up_acme().await;
    let mut streaming = chat("allowed");
    streaming["stream"] = json!(true);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::AUTHORIZATION, format!("Bearer {}", member.key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(streaming.to_string()))
        .unwrap();
    let open = ferry.app.clone().oneshot(request).await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    // Its head is out and its body still open: the one slot is taken.
    let refused = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_error_code(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable_error",
        "overloaded",
    );
    assert_eq!(
        refused.header("connection"),
        Some("close"),
        "its body was not read: the connection is not reused"
    );
    // The reader goes: the slot is free again.
    drop(open);
    let answered = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.body);
}

#[tokio::test]
async fn a_stream_nobody_reads_is_ended_and_settled_for_what_it_delivered() {
    let ferry = Ferry::start_configured(
        RouterConfig::default(),
        MoneyConfig {
            stream_write_timeout: Duration::from_millis(200),
            ..MoneyConfig::default()
        },
    )
    .await;
    let member = ferry.set_up_acme().await;
    let mut streaming = chat("allowed");
    streaming["stream"] = json!(true);
    streaming["user"] = json!("endless-stream");
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::AUTHORIZATION, format!("Bearer {}", member.key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(streaming.to_string()))
        .unwrap();
    let open = ferry.app.clone().oneshot(request).await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    // Nobody reads it: once its buffer is full and the timeout passes, the stream is ended
    // and settled as the caller's leaving (499), for what it had delivered.
    let mut settled = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = ferry
            .store
            .usage_events(&member.tenant_id, None, 0, u64::MAX, 10)
            .await
            .unwrap();
        if !settled.is_empty() {
            break;
        }
    }
    assert_eq!(settled.len(), 1, "the stream was settled");
    assert_eq!(settled[0].status, 499);
    assert!(
        settled[0].completion_tokens > 0,
        "charged for what it delivered"
    );
    // What the caller finds when it comes back: the chunks buffered, and an end.
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        axum::body::to_bytes(open.into_body(), usize::MAX),
    )
    .await
    .expect("the body ends")
    .unwrap();
    assert!(!String::from_utf8_lossy(&body).contains("[DONE]"));
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_turned_away_at_once() {
    let ferry = Ferry::start_with(RouterConfig {
        max_calls_in_flight: 0,
        ..RouterConfig::default()
    })
    .await;
    let member = ferry.set_up_acme().await;
    let answer = ferry
        .post("/v1/chat/completions", &member.key, &chat("allowed"))
        .await;
    assert_error_code(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable_error",
        "overloaded",
    );
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    request_id(&answer);
    assert!(ferry.upstream.calls().is_empty());
    // Health checks and the admin API are not model calls: they still answer.
    assert_eq!(ferry.get("/healthz", None).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// The rest of the surface.

#[tokio::test]
async fn the_openapi_document_describes_chat_completions() {
    let ferry = Ferry::start().await;
    let answer = ferry.get("/openapi.json", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(
        answer.body["paths"]["/v1/chat/completions"]["post"].is_object(),
        "{}",
        answer.body["paths"]
    );
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let ferry = Ferry::start().await;
    let answer = ferry
        .get("/v2/does-not-exist", Some(&ferry.operator_key))
        .await;
    assert_error_code(
        &answer,
        StatusCode::NOT_FOUND,
        "not_found_error",
        "unknown_url",
    );
    request_id(&answer);
}

#[tokio::test]
async fn the_wrong_method_on_a_known_route_is_a_json_405() {
    let ferry = Ferry::start().await;
    let wrong = [
        (Method::GET, "/v1/chat/completions"),
        (Method::PUT, "/admin/v1/tenants"),
    ];
    for (method, path) in wrong {
        let answer = ferry
            .call(method, path, Some(&ferry.operator_key), &Value::Null, &[])
            .await;
        let error = assert_openai_error(&answer, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error["type"], "invalid_request_error", "{path}");
        request_id(&answer);
    }
}

// ---------------------------------------------------------------------------------------------
// The console: sessions, CSRF, pages, its assets and the headers on every answer.

/// A browser's request: the session cookie, and the CSRF token when given.
fn browser(
    method: Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Body,
) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::COOKIE, format!("theme=dark; {cookie}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(csrf) = csrf {
        request = request.header("x-ferry-csrf", csrf);
    }
    request.body(body).unwrap()
}

/// `POST /admin/v1/session` with `key` and the given headers, as a browser on the console's
/// own origin sends it (or as a hostile page does, with its headers).
fn sign_in_request(key: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/session")
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Body::from(json!({ "key": key }).to_string()))
        .unwrap()
}

/// Signs in with `key`: the session cookie (`name=value`) and the session.
async fn sign_in(ferry: &Ferry, key: &str) -> (String, Value) {
    let answer = ferry.send(sign_in_request(key, &[])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    (cookie.split(';').next().unwrap().to_owned(), answer.body)
}

#[tokio::test]
async fn a_key_signs_in_to_a_session_that_acts_as_the_key_until_signed_out() {
    let (ferry, member) = Ferry::with_acme().await;
    let (cookie, session) = sign_in(&ferry, &member.key).await;
    assert_eq!(session["object"], "session");
    assert_eq!(session["role"], "member");
    assert_eq!(session["tenant_id"], member.tenant_id.as_str());
    assert_eq!(session["key_id"], member.key_id.as_str());
    assert!(
        !session.to_string().contains(&member.key),
        "the key is never echoed"
    );
    assert!(!cookie.contains(&member.key), "the cookie is not the key");
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();

    let current = ferry
        .send(browser(
            Method::GET,
            "/admin/v1/session",
            &cookie,
            None,
            Body::empty(),
        ))
        .await;
    assert_eq!(current.status, StatusCode::OK, "{}", current.body);
    assert_eq!(current.body["csrf_token"], csrf.as_str());

    // The session reads what the key may read, and no more.
    let usage = format!("/admin/v1/tenants/{}/usage", member.tenant_id);
    let read = ferry
        .send(browser(Method::GET, &usage, &cookie, None, Body::empty()))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let tenants = ferry
        .send(browser(
            Method::GET,
            "/admin/v1/tenants",
            &cookie,
            None,
            Body::empty(),
        ))
        .await;
    assert_openai_error(&tenants, StatusCode::FORBIDDEN);

    // It calls models through /v1 too, with its CSRF token.
    let chat =
        json!({"model": "allowed", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let called = ferry
        .send(browser(
            Method::POST,
            "/v1/chat/completions",
            &cookie,
            Some(&csrf),
            Body::from(chat.clone()),
        ))
        .await;
    assert_eq!(called.status, StatusCode::OK, "{}", called.body);
    let refused = ferry
        .send(browser(
            Method::POST,
            "/v1/chat/completions",
            &cookie,
            None,
            Body::from(chat),
        ))
        .await;
    let error = assert_openai_error(&refused, StatusCode::FORBIDDEN);
    assert_eq!(error["code"], "csrf_token_invalid");

    // Signing out needs the token, ends the session on the server and clears the cookie.
    let forged = ferry
        .send(browser(
            Method::DELETE,
            "/admin/v1/session",
            &cookie,
            Some("nope"),
            Body::empty(),
        ))
        .await;
    assert_openai_error(&forged, StatusCode::FORBIDDEN);
    let out = ferry
        .send(browser(
            Method::DELETE,
            "/admin/v1/session",
            &cookie,
            Some(&csrf),
            Body::empty(),
        ))
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = ferry
        .send(browser(
            Method::GET,
            "/admin/v1/session",
            &cookie,
            None,
            Body::empty(),
        ))
        .await;
    let error = assert_openai_error(&after, StatusCode::UNAUTHORIZED);
    assert_eq!(error["code"], "session_expired");
    let read = ferry
        .send(browser(Method::GET, &usage, &cookie, None, Body::empty()))
        .await;
    assert_openai_error(&read, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_cross_site_form_post_with_the_session_cookie_is_refused() {
    let (ferry, member) = Ferry::with_acme().await;
    let (cookie, _) = sign_in(&ferry, &ferry.operator_key).await;
    // What a hostile page's <form method=post> makes the browser send: the cookie (were it
    // not SameSite=Strict), a form body, no custom header.
    let form = Request::builder()
        .method(Method::POST)
        .uri(format!("/admin/v1/tenants/{}/credits", member.tenant_id))
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from("amount_usd=1000"))
        .unwrap();
    let answer = ferry.send(form).await;
    let error = assert_openai_error(&answer, StatusCode::FORBIDDEN);
    assert_eq!(error["code"], "csrf_token_invalid");
    let tenant = ferry
        .get(
            &format!("/admin/v1/tenants/{}", member.tenant_id),
            Some(&ferry.operator_key),
        )
        .await;
    assert_eq!(tenant.body["balance_usd"], "10.00", "nothing was posted");
}

#[tokio::test]
async fn a_sign_in_rotates_the_session_and_revoking_the_key_ends_it() {
    let (ferry, member) = Ferry::with_acme().await;
    let (first, _) = sign_in(&ferry, &member.key).await;
    // Signing in again from the same browser ends the session it held.
    let again = ferry
        .send(browser(
            Method::POST,
            "/admin/v1/session",
            &first,
            None,
            Body::from(json!({"key": member.key}).to_string()),
        ))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let second = again.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    let old = ferry
        .send(browser(
            Method::GET,
            "/admin/v1/session",
            &first,
            None,
            Body::empty(),
        ))
        .await;
    assert_openai_error(&old, StatusCode::UNAUTHORIZED);

    let revoked = ferry
        .delete(
            &format!("/admin/v1/keys/{}", member.key_id),
            &ferry.operator_key,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let ended = ferry
        .send(browser(
            Method::GET,
            "/admin/v1/session",
            &second,
            None,
            Body::empty(),
        ))
        .await;
    assert_openai_error(&ended, StatusCode::UNAUTHORIZED);
    // A revoked key cannot sign in, and a wrong one gets no cookie.
    for key in [
        member.key.as_str(),
        "fy_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "nonsense",
    ] {
        let refused = ferry.send(sign_in_request(key, &[])).await;
        assert_openai_error(&refused, StatusCode::UNAUTHORIZED);
        assert!(!refused.headers.contains_key(header::SET_COOKIE));
    }
    // A forged cookie is no session.
    let forged = ferry
        .send(browser(
            Method::GET,
            "/admin/v1/session",
            "ferry_session=0123",
            None,
            Body::empty(),
        ))
        .await;
    assert_openai_error(&forged, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_https() {
    let ferry = Ferry::start().await;
    let answer = ferry
        .send(sign_in_request(
            &ferry.operator_key,
            &[("x-forwarded-proto", "https")],
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["role"], "operator");
    assert!(
        answer.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    let methods = ferry.get("/admin/v1/session/methods", None).await;
    assert_eq!(methods.status, StatusCode::OK);
    assert_eq!(methods.body["key"], true);
}

#[tokio::test]
async fn tenants_and_keys_are_listed_a_page_at_a_time() {
    let (ferry, member) = Ferry::with_acme().await;
    let operator = ferry.operator_key.clone();
    for name in ["Beta", "Gamma"] {
        let created = ferry
            .post("/admin/v1/tenants", &operator, &json!({"name": name}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut path = "/admin/v1/tenants?limit=2".to_owned();
    loop {
        let page = ferry.get(&path, Some(&operator)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body["data"].as_array().unwrap().len() <= 2);
        seen.extend(
            page.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned()),
        );
        if page.body["has_more"] == false {
            assert_eq!(page.body["next_cursor"], Value::Null);
            break;
        }
        path = format!(
            "/admin/v1/tenants?limit=2&after={}",
            page.body["next_cursor"].as_str().unwrap()
        );
    }
    seen.sort();
    assert_eq!(seen, ["Acme", "Beta", "Gamma"]);
    let found = ferry.get("/admin/v1/tenants?q=gAm", Some(&operator)).await;
    assert_eq!(found.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(found.body["data"][0]["name"], "Gamma");

    let keys_path = format!("/admin/v1/tenants/{}/keys", member.tenant_id);
    for name in ["two", "three"] {
        let created = ferry
            .post(
                &keys_path,
                &operator,
                &json!({"name": name, "role": "member"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let first = ferry
        .get(&format!("{keys_path}?limit=2"), Some(&operator))
        .await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["has_more"], true);
    assert!(
        first.body["data"][0].get("key").is_none(),
        "no secrets in a list"
    );
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let rest = ferry
        .get(
            &format!("{keys_path}?limit=2&after={cursor}"),
            Some(&operator),
        )
        .await;
    assert_eq!(rest.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["has_more"], false);

    let bad = ferry
        .get(&format!("{keys_path}?after=garbage"), Some(&operator))
        .await;
    let error = assert_openai_error(&bad, StatusCode::BAD_REQUEST);
    assert_eq!(error["param"], "after");
}

#[tokio::test]
async fn the_console_is_served_with_strict_headers_and_api_answers_are_never_cached() {
    let ferry = Ferry::start().await;
    let root = ferry.get("/", None).await;
    assert!(root.status.is_redirection());
    assert_eq!(root.headers[header::LOCATION], "/console/");
    for path in ["/console/", "/console/keys", "/console/tenants/ten_1/usage"] {
        let page = ferry.get(path, None).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_eq!(
            page.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
        let policy = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
    }
    let missing = ferry.get("/console/assets/nope.js", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let api = ferry
        .get("/admin/v1/tenants", Some(&ferry.operator_key))
        .await;
    assert_eq!(api.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(api.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

#[test]
fn the_console_is_typed_from_the_current_openapi_document() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../console/openapi.json"
    ))
    .expect("console/openapi.json");
    let current = ferry_functions::openapi_json().unwrap();
    assert!(
        committed.trim_end() == current.trim_end(),
        "console/openapi.json is stale: run `cargo run -- openapi > console/openapi.json`, then `npm run gen:api` in console/"
    );
}

#[tokio::test]
async fn the_pool_is_for_operators_and_absent_without_one() {
    let (ferry, member) = Ferry::with_acme().await;
    let refused = ferry.get("/admin/v1/pool", Some(&member.key)).await;
    assert_openai_error(&refused, StatusCode::FORBIDDEN);
    let absent = ferry.get("/admin/v1/pool", Some(&ferry.operator_key)).await;
    let error = assert_openai_error(&absent, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "no_pool");
}

#[tokio::test]
async fn a_sign_in_from_another_site_is_refused() {
    let ferry = Ferry::start().await;
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let answer = ferry
            .send(sign_in_request(
                &ferry.operator_key,
                &[("host", "127.0.0.1:8080"), (name, value)],
            ))
            .await;
        let error = assert_openai_error(&answer, StatusCode::FORBIDDEN);
        assert_eq!(error["code"], "cross_site_sign_in", "{name}");
        assert!(!answer.headers.contains_key(header::SET_COOKIE));
    }
    let same = ferry
        .send(sign_in_request(
            &ferry.operator_key,
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
        ))
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
}

#[tokio::test]
async fn spend_by_key_and_one_keys_usage_are_for_those_who_may_see_them() {
    let (ferry, member) = Ferry::with_acme().await;
    let chat = json!({"model": "allowed", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let called = ferry.post("/v1/chat/completions", &member.key, &chat).await;
        assert_eq!(called.status, StatusCode::OK, "{}", called.body);
    }
    let admin = ferry
        .post(
            &format!("/admin/v1/tenants/{}/keys", member.tenant_id),
            &ferry.operator_key,
            &json!({"name": "admin", "role": "tenant-admin"}),
        )
        .await;
    let admin_key = admin.body["key"].as_str().unwrap().to_owned();
    let tenant = format!("/admin/v1/tenants/{}", member.tenant_id);

    let spend = ferry
        .get(&format!("{tenant}/usage/keys?limit=10"), Some(&admin_key))
        .await;
    assert_eq!(spend.status, StatusCode::OK, "{}", spend.body);
    assert_eq!(spend.body["has_more"], false);
    assert_eq!(spend.body["data"][0]["key_id"], member.key_id.as_str());
    assert_eq!(spend.body["data"][0]["requests"], 2);
    let bad_month = ferry
        .get(
            &format!("{tenant}/usage/keys?month=2026-13"),
            Some(&admin_key),
        )
        .await;
    assert_eq!(
        assert_openai_error(&bad_month, StatusCode::BAD_REQUEST)["param"],
        "month"
    );
    let members_refused = ferry
        .get(&format!("{tenant}/usage/keys"), Some(&member.key))
        .await;
    assert_openai_error(&members_refused, StatusCode::FORBIDDEN);

    let one_key = ferry
        .get(
            &format!("{tenant}/usage?key={}&group_by=key", member.key_id),
            Some(&admin_key),
        )
        .await;
    assert_eq!(one_key.status, StatusCode::OK, "{}", one_key.body);
    assert_eq!(one_key.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(one_key.body["data"][0]["requests"], 2);
    let admin_key_id = admin.body["id"].as_str().unwrap();
    let others = ferry
        .get(
            &format!("{tenant}/usage?key={admin_key_id}"),
            Some(&member.key),
        )
        .await;
    assert_openai_error(&others, StatusCode::FORBIDDEN);
    let malformed = ferry
        .get(&format!("{tenant}/usage?key=nokey"), Some(&admin_key))
        .await;
    assert_eq!(
        assert_openai_error(&malformed, StatusCode::BAD_REQUEST)["param"],
        "key"
    );
    let dearest = ferry
        .get(
            &format!("{tenant}/usage?group_by=model,key&limit=1"),
            Some(&admin_key),
        )
        .await;
    assert_eq!(dearest.body["data"].as_array().unwrap().len(), 1);
    let events_take_no_grouping = ferry
        .get(
            &format!("{tenant}/usage/events?group_by=day"),
            Some(&admin_key),
        )
        .await;
    let error = assert_openai_error(&events_take_no_grouping, StatusCode::BAD_REQUEST);
    assert_eq!(
        error["param"], "group_by",
        "the contract's error, naming the parameter"
    );
}

#[tokio::test]
async fn a_bad_query_parameter_is_answered_in_the_error_contract() {
    let (ferry, member) = Ferry::with_acme().await;
    let tenant = format!("/admin/v1/tenants/{}", member.tenant_id);
    for (query, param) in [
        ("usage?limit=-1", "limit"),
        ("keys?limit=many", "limit"),
        ("ledger?colour=blue", "colour"),
    ] {
        let answer = ferry
            .get(&format!("{tenant}/{query}"), Some(&ferry.operator_key))
            .await;
        let error = assert_openai_error(&answer, StatusCode::BAD_REQUEST);
        assert_eq!(error["type"], "invalid_request_error", "{query}");
        assert_eq!(error["param"], param, "{query}: {}", answer.body);
    }
}
