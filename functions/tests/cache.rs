//! The response cache through the real router and store: a hit after a miss (same text,
//! billed at the hit price), tenants kept apart, concurrent misses coalesced into one upstream
//! call, a kept answer replayed as a stream and a stream kept as an answer, and failed or cut
//! off answers never kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use ferry_core::ports::{Upstream, UpstreamCall, UpstreamError, UpstreamReply};
use ferry_core::sse::SseParser;
use ferry_functions::admin::{OperatorKey, ensure_operator_key};
use ferry_functions::auth::{AuthConfig, Authenticator};
use ferry_functions::cache::{DEFAULT_CAPACITY_BYTES, ResponseCache};
use ferry_functions::store::SqliteStore;
use ferry_functions::{AppState, MoneyConfig, RouterConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A backend that answers "Paris is the capital." and counts its calls. Prompts starting
/// with `fail` get a 500; streamed prompts starting with `cut` stop before `[DONE]`; prompts
/// starting with `uncounted` get an answer without usage.
#[derive(Default)]
struct CountingUpstream {
    calls: AtomicUsize,
}

#[async_trait]
impl Upstream for CountingUpstream {
    async fn call(&self, call: UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Long enough for concurrent identical calls to find this one in flight.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let prompt = call.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if prompt.starts_with("fail") {
            return Err(UpstreamError::Status {
                status: 500,
                message: "boom".into(),
                retry_after_seconds: None,
            });
        }
        let usage = json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13});
        if prompt.starts_with("uncounted") {
            return Ok(UpstreamReply::Complete(json!({
                "id": "chatcmpl-0", "object": "chat.completion", "created": 1, "model": "up",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "?"},
                             "finish_reason": "stop"}],
            })));
        }
        if !call.stream {
            return Ok(UpstreamReply::Complete(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital."},
                             "finish_reason": "stop"}],
                "usage": usage,
            })));
        }
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "up",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Paris is "}), Value::Null),
            chunk(json!({"content": "the capital."}), Value::Null),
            chunk(json!({}), json!("stop")),
            json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "up",
                   "choices": [], "usage": usage}),
        ]
        .into_iter()
        .map(|event| format!("data: {event}\n\n"))
        .collect::<Vec<_>>();
        if prompt.starts_with("cut") {
            events.truncate(2);
        } else {
            events.push("data: [DONE]\n\n".into());
        }
        let stream = futures_util::stream::iter(
            events
                .into_iter()
                .map(|event| Ok::<_, UpstreamError>(Bytes::from(event))),
        );
        Ok(UpstreamReply::Stream(Box::pin(stream)))
    }
}

struct Ferry {
    app: Router,
    cache: Arc<ResponseCache>,
    store: Arc<SqliteStore>,
    upstream: Arc<CountingUpstream>,
    operator_key: String,
}

struct Answer {
    status: StatusCode,
    cache: String,
    body: Value,
    /// For streams: the text and the usage chunk's usage.
    streamed: Option<(String, Value)>,
    /// For streams: whether it ended with `[DONE]`.
    finished: bool,
}

impl Ferry {
    async fn start() -> Ferry {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let OperatorKey::Generated(operator_key) =
            ensure_operator_key(store.as_ref(), None).await.unwrap()
        else {
            unreachable!("a new store has no operator key");
        };
        let ferry = Ferry::replica(store, Arc::default(), operator_key);
        let model = json!({
            "id": "m",
            "deployments": [{"id": "d", "upstream": {"url": "http://backend.invalid/v1", "model": "up"}}],
            "price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001",
                      "cache_hit_usd": "0.0001"},
        });
        let registered = ferry
            .send("/admin/v1/models", &ferry.operator_key.clone(), &model, &[])
            .await;
        assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
        ferry
    }

    /// Another gateway on the same store and backend, with a response cache of its own in
    /// front of the shared level.
    fn replica(
        store: Arc<SqliteStore>,
        upstream: Arc<CountingUpstream>,
        operator_key: String,
    ) -> Ferry {
        let state = AppState {
            breakers: Default::default(),
            metrics: Default::default(),
            store: store.clone(),
            accounts: store.clone(),
            upstream: upstream.clone(),
            auth: Arc::new(
                Authenticator::new(store.clone(), AuthConfig::default(), reqwest::Client::new())
                    .unwrap(),
            ),
            money: MoneyConfig::default(),
            cache: ResponseCache::with_shared(DEFAULT_CAPACITY_BYTES, store.clone()),
            edge: None,
        };
        Ferry {
            cache: state.cache.clone(),
            app: ferry_functions::router(state, &RouterConfig::default()),
            store,
            upstream,
            operator_key,
        }
    }

    async fn send(&self, path: &str, key: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {key}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let cache = response
            .headers()
            .get("x-ferry-cache")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value == "text/event-stream");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        if is_stream {
            let mut parser = SseParser::new();
            let events = parser.feed(&bytes);
            let finished = events.last().is_some_and(|event| event.is_done());
            let chunks: Vec<Value> = events
                .iter()
                .filter(|event| !event.is_done())
                .map(|event| serde_json::from_str(&event.data).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .filter_map(|chunk| chunk.pointer("/choices/0/delta/content"))
                .filter_map(Value::as_str)
                .collect();
            let usage = chunks
                .iter()
                .find_map(|chunk| chunk.get("usage").cloned())
                .unwrap_or(Value::Null);
            return Answer {
                status,
                cache,
                body: Value::Null,
                streamed: Some((text, usage)),
                finished,
            };
        }
        Answer {
            status,
            cache,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            streamed: None,
            finished: false,
        }
    }

    /// A tenant with credit and a member key.
    async fn tenant(&self) -> (String, String) {
        let operator = self.operator_key.clone();
        let tenant = self
            .send("/admin/v1/tenants", &operator, &json!({"name": "T"}), &[])
            .await;
        let id = tenant.body["id"].as_str().unwrap().to_owned();
        self.send(
            &format!("/admin/v1/tenants/{id}/credits"),
            &operator,
            &json!({"amount_usd": "5"}),
            &[],
        )
        .await;
        let key = self
            .send(
                &format!("/admin/v1/tenants/{id}/keys"),
                &operator,
                &json!({"name": "k", "role": "member"}),
                &[],
            )
            .await;
        (id, key.body["key"].as_str().unwrap().to_owned())
    }

    async fn ask(&self, key: &str, prompt: &str, extra: Value) -> Answer {
        let mut body = json!({"model": "m", "temperature": 0, "max_tokens": 20,
                              "messages": [{"role": "user", "content": prompt}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.send("/v1/chat/completions", key, &body, &[]).await
    }

    async fn events(&self, tenant: &str) -> Vec<Value> {
        let response = self
            .app
            .clone()
            .oneshot(
                Request::get(format!("/admin/v1/tenants/{tenant}/usage/events"))
                    .header(
                        header::AUTHORIZATION,
                        format!("Bearer {}", self.operator_key),
                    )
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["data"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn upstream_calls(&self) -> usize {
        self.upstream.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_repeat_is_a_hit_billed_at_the_hit_price_and_another_tenant_misses() {
    let ferry = Ferry::start().await;
    let (acme, acme_key) = ferry.tenant().await;
    let (_, beta_key) = ferry.tenant().await;

    let first = ferry.ask(&acme_key, "capital of France?", json!({})).await;
    let second = ferry
        .ask(
            &acme_key,
            "capital of France?",
            json!({"user": "someone-else"}),
        )
        .await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(
        (first.cache.as_str(), second.cache.as_str()),
        ("MISS", "HIT")
    );
    assert_eq!(
        first.body["choices"][0]["message"]["content"],
        second.body["choices"][0]["message"]["content"]
    );
    assert_eq!(
        first.body["usage"]["completion_tokens"],
        second.body["usage"]["completion_tokens"]
    );
    assert_eq!(second.body["usage"]["cost"], "0.0001", "the hit price");
    assert_eq!(second.body["model"], "m");
    assert_eq!(ferry.upstream_calls(), 1);

    let events = ferry.events(&acme).await;
    let billed: Vec<(&str, &str)> = events
        .iter()
        .map(|event| {
            (
                event["cache_status"].as_str().unwrap(),
                event["cost"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        billed,
        [
            ("miss", first.body["usage"]["cost"].as_str().unwrap()),
            ("hit", "0.0001")
        ]
    );

    // The same request from another tenant is never answered with Acme's entry.
    let other = ferry.ask(&beta_key, "capital of France?", json!({})).await;
    assert_eq!(other.cache, "MISS");
    assert_eq!(ferry.upstream_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_misses_make_one_upstream_call() {
    let ferry = Arc::new(Ferry::start().await);
    let (tenant, key) = ferry.tenant().await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (ferry, key) = (Arc::clone(&ferry), key.clone());
            tokio::spawn(async move { ferry.ask(&key, "one question", json!({})).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.body["choices"][0]["message"]["content"],
            "Paris is the capital."
        );
        statuses.push(answer.cache);
    }
    assert_eq!(ferry.upstream_calls(), 1);
    assert_eq!(
        statuses.iter().filter(|status| *status == "MISS").count(),
        1
    );
    assert_eq!(
        statuses.iter().filter(|status| *status == "HIT").count(),
        49
    );
    // Every one of them was metered: one miss, 49 hits.
    assert_eq!(ferry.events(&tenant).await.len(), 50);
}

#[tokio::test]
async fn a_kept_answer_replays_as_a_stream_and_a_stream_is_kept_as_an_answer() {
    let ferry = Ferry::start().await;
    let (_, key) = ferry.tenant().await;
    let stream = json!({"stream": true, "stream_options": {"include_usage": true}});

    // Kept whole, replayed as SSE.
    let whole = ferry.ask(&key, "whole first", json!({})).await;
    let replayed = ferry.ask(&key, "whole first", stream.clone()).await;
    assert_eq!(replayed.cache, "HIT");
    assert!(replayed.finished);
    let (text, usage) = replayed.streamed.unwrap();
    assert_eq!(
        text,
        whole.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        usage["completion_tokens"],
        whole.body["usage"]["completion_tokens"]
    );
    assert_eq!(usage["prompt_tokens"], whole.body["usage"]["prompt_tokens"]);

    // Kept from a stream, answered whole.
    let streamed = ferry.ask(&key, "stream first", stream.clone()).await;
    assert_eq!(streamed.cache, "MISS");
    let (text, usage) = streamed.streamed.unwrap();
    let answered = ferry.ask(&key, "stream first", json!({})).await;
    assert_eq!(answered.cache, "HIT");
    assert_eq!(
        answered.body["choices"][0]["message"]["content"],
        text.as_str()
    );
    assert_eq!(
        answered.body["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );
    assert_eq!(ferry.upstream_calls(), 2);
}

#[tokio::test]
async fn failed_and_cut_off_answers_are_never_kept() {
    let ferry = Ferry::start().await;
    let (_, key) = ferry.tenant().await;

    for _ in 0..2 {
        let failed = ferry.ask(&key, "fail please", json!({})).await;
        assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    }
    // Each call tries three times (the default two retries), and the second call again.
    assert_eq!(
        ferry.upstream_calls(),
        6,
        "a 502 is not replayed from the cache"
    );

    for _ in 0..2 {
        let response = ferry
            .send(
                "/v1/chat/completions",
                &key,
                &json!({"model": "m", "temperature": 0, "stream": true,
                        "messages": [{"role": "user", "content": "cut short"}]}),
                &[],
            )
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.cache, "MISS");
        assert!(
            !response.finished,
            "it ends with an error event, not [DONE]"
        );
    }
    assert_eq!(
        ferry.upstream_calls(),
        8,
        "a stream that broke off is not kept"
    );

    for _ in 0..2 {
        let uncounted = ferry.ask(&key, "uncounted tokens", json!({})).await;
        assert_eq!(
            (uncounted.status, uncounted.cache.as_str()),
            (StatusCode::OK, "MISS")
        );
    }
    assert_eq!(
        ferry.upstream_calls(),
        10,
        "an answer without usage is not kept"
    );
}

#[tokio::test]
async fn random_sampling_and_no_store_bypass_and_no_cache_refreshes() {
    let ferry = Ferry::start().await;
    let (_, key) = ferry.tenant().await;
    let sampled = ferry.ask(&key, "q", json!({"temperature": 0.8})).await;
    let again = ferry.ask(&key, "q", json!({"temperature": 0.8})).await;
    assert_eq!(
        (sampled.cache.as_str(), again.cache.as_str()),
        ("BYPASS", "BYPASS")
    );
    assert_eq!(ferry.upstream_calls(), 2);

    let body =
        json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "q"}]});
    let kept = ferry.send("/v1/chat/completions", &key, &body, &[]).await;
    assert_eq!(kept.cache, "MISS");
    let refreshed = ferry
        .send(
            "/v1/chat/completions",
            &key,
            &body,
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(refreshed.cache, "MISS", "no-cache asks the backend again");
    let skipped = ferry
        .send(
            "/v1/chat/completions",
            &key,
            &body,
            &[("cache-control", "no-store")],
        )
        .await;
    assert_eq!(skipped.cache, "BYPASS");
    let bad = ferry
        .send(
            "/v1/chat/completions",
            &key,
            &body,
            &[("x-ferry-cache-ttl", "forever")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["param"], "x-ferry-cache-ttl");
    assert_eq!(ferry.upstream_calls(), 5);
}

#[tokio::test]
async fn a_replica_answers_from_what_another_kept_in_the_shared_level() {
    let one = Ferry::start().await;
    let two = Ferry::replica(
        one.store.clone(),
        one.upstream.clone(),
        one.operator_key.clone(),
    );
    let (tenant, key) = one.tenant().await;
    let first = one.ask(&key, "shared?", json!({})).await;
    assert_eq!(first.cache, "MISS");
    // Kept in the shared level behind the answer's back: wait for it to land.
    one.cache.flush().await;
    let second = two.ask(&key, "shared?", json!({})).await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(second.body["choices"], first.body["choices"]);
    assert_eq!(one.upstream.calls.load(Ordering::SeqCst), 1);
    // Billed on the second replica at the hit price.
    let events = one.events(&tenant).await;
    let statuses: Vec<&str> = events
        .iter()
        .map(|event| event["cache_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.contains(&"hit") && statuses.contains(&"miss"));
    // A tenant of its own still misses on either replica.
    let (_, other) = two.tenant().await;
    assert_eq!(two.ask(&other, "shared?", json!({})).await.cache, "MISS");
}
