//! The response cache through the real router and store: a hit after a miss (same text,
//! billed at the hit price), tenants kept apart, concurrent misses coalesced into one upstream
//! call, a kept answer replayed as a stream and a stream kept as an answer, and failed or cut
//! off answers never kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use ferry_functions::cache::{DEFAULT_CAPACITY_BYTES, ResponseCache};
use ferry_functions::testing::{self, FakeUpstream, TestApp};
use ferry_functions::{AppState, RouterConfig};
use ferry_store_sqlite::SqliteStore;
use serde_json::{Value, json};

struct Ferry {
    test: TestApp,
    cache: Arc<ResponseCache>,
    store: Arc<SqliteStore>,
    upstream: Arc<FakeUpstream>,
}

impl std::ops::Deref for Ferry {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.test
    }
}

/// What a call came back with, as these tests read it.
struct Answer {
    status: StatusCode,
    cache: String,
    body: Value,
    /// For streams: the text and the usage chunk's usage.
    streamed: Option<(String, Value)>,
    /// For streams: whether it ended with `[DONE]`.
    finished: bool,
}

impl From<testing::Answer> for Answer {
    fn from(answer: testing::Answer) -> Answer {
        let streamed = (!answer.events.is_empty()).then(|| {
            (
                answer.text(),
                answer.usage().cloned().unwrap_or(Value::Null),
            )
        });
        Answer {
            status: answer.status,
            cache: answer
                .header("x-ferry-cache")
                .unwrap_or_default()
                .to_owned(),
            body: answer.body,
            streamed,
            finished: answer.finished,
        }
    }
}

impl Ferry {
    /// Ferry before a backend that answers "Paris is the capital.", each answer 100 ms late:
    /// long enough for identical calls to find one in flight.
    async fn start() -> Ferry {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let upstream = FakeUpstream::slow(Duration::from_millis(100));
        let state = Ferry::state(&store, &upstream);
        let ferry = Ferry {
            cache: state.cache.clone(),
            test: TestApp::start(state, &RouterConfig::default()).await,
            store,
            upstream,
        };
        let model = json!({
            "id": "m",
            "deployments": [{"id": "d", "upstream": {"url": "http://backend.invalid/v1", "model": "paris"}}],
            "price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001",
                      "cache_hit_usd": "0.0001"},
        });
        let registered = ferry
            .send("/admin/v1/models", &ferry.operator_key.clone(), &model, &[])
            .await;
        assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
        ferry
    }

    /// Test state with the shared level of the response cache in the store.
    fn state(store: &Arc<SqliteStore>, upstream: &Arc<FakeUpstream>) -> AppState {
        let mut state = AppState::for_tests(store.clone(), upstream.clone());
        state.cache = ResponseCache::with_shared(DEFAULT_CAPACITY_BYTES, store.clone());
        state
    }

    /// Another gateway on the same store and backend, with a response cache of its own in
    /// front of the shared level.
    fn replica(
        store: Arc<SqliteStore>,
        upstream: Arc<FakeUpstream>,
        operator_key: String,
    ) -> Ferry {
        let state = Ferry::state(&store, &upstream);
        Ferry {
            cache: state.cache.clone(),
            test: TestApp::over(state, &RouterConfig::default(), operator_key),
            store,
            upstream,
        }
    }

    async fn send(&self, path: &str, key: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.test
            .call(Method::POST, path, Some(key), body, headers)
            .await
            .into()
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
        let path = format!("/admin/v1/tenants/{tenant}/usage/events");
        let answer = self.test.get(&path, Some(&self.operator_key)).await;
        answer.body["data"].as_array().unwrap().clone()
    }

    fn upstream_calls(&self) -> usize {
        self.upstream.count()
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
    assert_eq!(one.upstream.count(), 1);
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
