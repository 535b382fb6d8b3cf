//! Routing resilience through the real router, the real HTTP upstream client and backends on
//! loopback that misbehave on cue: 500s, 429s with `Retry-After`, a refused connection, a slow
//! first byte, a stream cut half-way. Retries, fallbacks, the circuit breaker and weighted
//! splits behave as the README's "Routing" section says, and each call's usage event records
//! how it was routed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use ferry_core::Money;
use ferry_functions::testing::{self, FakeUpstream, Fault, TestApp};
use ferry_functions::upstream::{HttpUpstream, UpstreamConfig};
use ferry_functions::{AppState, RouterConfig};
use ferry_store_sqlite::SqliteStore;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Backends that fail on cue: the test kit's fake, served over HTTP, answering "from <name>".

struct Backend {
    name: &'static str,
    url: String,
    fake: Arc<FakeUpstream>,
}

impl Backend {
    async fn start(name: &'static str) -> Arc<Backend> {
        let fake = FakeUpstream::named(name);
        let url = fake.serve().await;
        Arc::new(Backend { name, url, fake })
    }

    /// A backend address nothing listens on: connections are refused.
    async fn refusing(name: &'static str) -> Arc<Backend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        drop(listener);
        Arc::new(Backend {
            name,
            url,
            fake: FakeUpstream::named(name),
        })
    }

    fn then(&self, faults: &[Fault]) {
        self.fake.then(faults);
    }

    fn always(&self, fault: Fault) {
        self.fake.always(fault);
    }

    fn calls(&self) -> usize {
        self.fake.count()
    }
}

// ---------------------------------------------------------------------------------------------
// Ferry in front of them.

const METRICS_TOKEN: &str = "scraper-token-0123456789";

struct Ferry {
    test: TestApp,
    tenant: String,
    key: String,
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
    retry_after: Option<String>,
    body: Value,
    /// A stream's text, whether it ended with `[DONE]`, and its last event.
    streamed: Option<(String, bool, Value)>,
}

impl From<testing::Answer> for Answer {
    fn from(answer: testing::Answer) -> Answer {
        let streamed = (!answer.events.is_empty()).then(|| {
            let last = answer.events.last().cloned().unwrap_or(Value::Null);
            (answer.text(), answer.finished, last)
        });
        Answer {
            status: answer.status,
            retry_after: answer.header("retry-after").map(str::to_owned),
            body: answer.body,
            streamed,
        }
    }
}

impl Ferry {
    async fn start() -> Ferry {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let upstream = Arc::new(HttpUpstream::new(UpstreamConfig::default()).unwrap());
        let config = RouterConfig {
            metrics_token: Some(METRICS_TOKEN.into()),
            ..RouterConfig::default()
        };
        let mut ferry = Ferry {
            test: TestApp::start(AppState::for_tests(store, upstream), &config).await,
            tenant: String::new(),
            key: String::new(),
        };
        let operator = ferry.operator_key.clone();
        let tenant = ferry
            .send("POST", "/admin/v1/tenants", &operator, json!({"name": "T"}))
            .await;
        ferry.tenant = tenant.body["id"].as_str().unwrap().to_owned();
        let path = format!("/admin/v1/tenants/{}/credits", ferry.tenant);
        ferry
            .send("POST", &path, &operator, json!({"amount_usd": "100"}))
            .await;
        let path = format!("/admin/v1/tenants/{}/keys", ferry.tenant);
        let key = ferry
            .send(
                "POST",
                &path,
                &operator,
                json!({"name": "k", "role": "member"}),
            )
            .await;
        ferry.key = key.body["key"].as_str().unwrap().to_owned();
        ferry
    }

    /// Registers model `m` over `backends` (id = name, with its weight) and `route`.
    async fn model(&self, id: &str, backends: &[(&Backend, u32)], route: Value) {
        let deployments: Vec<Value> = backends
            .iter()
            .map(|(backend, weight)| {
                json!({"id": backend.name, "weight": weight,
                       "upstream": {"url": backend.url, "model": "up"}})
            })
            .collect();
        let model = json!({"id": id, "deployments": deployments, "route": route,
                           "price": {"input_per_mtok_usd": "1000", "output_per_mtok_usd": "1000"}});
        let registered = self
            .send("POST", "/admin/v1/models", &self.operator_key, model)
            .await;
        assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
    }

    /// Model `m`: `a` takes the traffic and `b` stands by as its fallback; `route` adds to that.
    async fn primary_and_standby(&self, a: &Backend, b: &Backend, mut route: Value) {
        route["fallbacks"] = json!(["b"]);
        self.model("m", &[(a, 1), (b, 0)], route).await;
    }

    async fn send(&self, method: &str, path: &str, key: &str, body: Value) -> Answer {
        // Every call here must reach a backend, unless a test says otherwise.
        self.send_with(method, path, key, body, "no-store").await
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Value,
        cache_control: &str,
    ) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let headers = [("cache-control", cache_control)];
        self.test
            .call(method, path, Some(key), &body, &headers)
            .await
            .into()
    }

    async fn chat(&self, model: &str, stream: bool) -> Answer {
        let body = json!({"model": model, "max_tokens": 10, "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]});
        self.send("POST", "/v1/chat/completions", &self.key, body)
            .await
    }

    /// The tenant's usage events, oldest first.
    async fn events(&self) -> Vec<Value> {
        let path = format!("/admin/v1/tenants/{}/usage/events", self.tenant);
        let events = self
            .send("GET", &path, &self.operator_key, Value::Null)
            .await;
        let mut events = events.body["data"].as_array().unwrap().clone();
        events.sort_by_key(|event| event["request_id"].as_str().unwrap().to_owned());
        events
    }

    /// The usage event of the call made last.
    async fn last_event(&self) -> Value {
        self.events().await.pop().unwrap()
    }
}

fn cost(event: &Value) -> Money {
    serde_json::from_value(event["cost"].clone()).unwrap()
}

fn routed(event: &Value) -> (&str, &str, u64, u64) {
    (
        event["deployment"].as_str().unwrap(),
        event["route"].as_str().unwrap(),
        event["attempts"].as_u64().unwrap(),
        event["status"].as_u64().unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_500_is_retried_on_the_same_deployment_after_a_backoff() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    ferry.model("m", &[(&a, 1)], json!({})).await;
    a.then(&[Fault::Status(500)]);

    let started = Instant::now();
    let answer = ferry.chat("m", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["choices"][0]["message"]["content"], "from a");
    assert_eq!(a.calls(), 2);
    // The first backoff is 100 ms, jittered within its upper half.
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "retried without a backoff"
    );
    assert_eq!(routed(&ferry.last_event().await), ("a", "retry", 2, 200));
}

#[tokio::test]
async fn a_request_the_backend_rejects_is_not_retried() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    ferry.primary_and_standby(&a, &b, json!({})).await;
    a.then(&[Fault::Status(400)]);

    let answer = ferry.chat("m", false).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    common::openai_error(&answer.body);
    assert_eq!((a.calls(), b.calls()), (1, 0));
}

#[tokio::test]
async fn a_refused_connection_falls_back_at_once() {
    let ferry = Ferry::start().await;
    let a = Backend::refusing("a").await;
    let b = Backend::start("b").await;
    // A backoff, were one taken, would be 5 s at least.
    ferry
        .primary_and_standby(
            &a,
            &b,
            json!({"backoff_base_ms": 10000, "backoff_max_ms": 10000}),
        )
        .await;

    let started = Instant::now();
    let answer = ferry.chat("m", false).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited before the fallback"
    );
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["choices"][0]["message"]["content"], "from b");
    assert_eq!(answer.body["model"], "m");
    assert_eq!(routed(&ferry.last_event().await), ("b", "fallback", 2, 200));
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_long_one_is_passed_on() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    ferry
        .model("m", &[(&a, 1)], json!({"backoff_max_ms": 2000}))
        .await;

    a.then(&[Fault::TooMany {
        retry_after_seconds: 1,
    }]);
    let started = Instant::now();
    let answer = ferry.chat("m", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before Retry-After"
    );
    assert_eq!(a.calls(), 2);

    // Longer than the route waits: the caller is told when to come back.
    a.then(&[Fault::TooMany {
        retry_after_seconds: 30,
    }]);
    let answer = ferry.chat("m", false).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.retry_after.as_deref(), Some("30"));
    common::openai_error(&answer.body);
    assert_eq!(a.calls(), 3);
    assert_eq!(routed(&ferry.last_event().await), ("a", "weighted", 1, 503));
}

#[tokio::test]
async fn a_stream_whose_first_byte_is_slow_moves_to_the_fallback() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    ferry
        .primary_and_standby(&a, &b, json!({"try_timeout_ms": 300}))
        .await;
    a.then(&[Fault::SlowFirstByte(Duration::from_secs(5))]);

    let started = Instant::now();
    let answer = ferry.chat("m", true).await;
    assert_eq!(answer.status, StatusCode::OK);
    let (text, done, _) = answer.streamed.unwrap();
    assert_eq!((text.as_str(), done), ("from b", true));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited out the slow backend"
    );
    assert_eq!(routed(&ferry.last_event().await), ("b", "fallback", 2, 200));
}

#[tokio::test]
async fn a_stream_cut_midway_is_not_retried_and_charges_what_was_delivered() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    ferry.primary_and_standby(&a, &b, json!({})).await;
    a.then(&[Fault::CutStream]);

    let answer = ferry.chat("m", true).await;
    assert_eq!(answer.status, StatusCode::OK);
    let (text, done, last) = answer.streamed.unwrap();
    assert_eq!(text, "from a", "what was generated reached the caller");
    assert!(!done, "a broken stream does not end with [DONE]");
    assert_eq!(last["choices"][0]["finish_reason"], "error", "{last}");
    common::openai_error(&last);
    assert_eq!(
        (a.calls(), b.calls()),
        (1, 0),
        "never retried after the first byte"
    );
    let event = ferry.last_event().await;
    assert_eq!(routed(&event), ("a", "weighted", 1, 502));
    assert_eq!(event["completion_tokens"], 2, "the two events delivered");
    assert!(cost(&event) > Money::ZERO, "{event}");
}

#[tokio::test]
async fn every_attempt_failing_ends_in_one_error_with_its_attempts_recorded() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.always(Fault::Status(500));
    b.always(Fault::Status(502));
    ferry
        .primary_and_standby(&a, &b, json!({"retries": 2, "backoff_base_ms": 10}))
        .await;

    let answer = ferry.chat("m", true).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    common::openai_error(&answer.body);
    assert_eq!((a.calls(), b.calls()), (2, 1), "a, then b, then a again");
    let event = ferry.last_event().await;
    assert_eq!(routed(&event), ("a", "retry", 3, 502));
    assert_eq!(cost(&event), Money::ZERO);
}

#[tokio::test]
async fn the_breaker_opens_sends_calls_to_the_fallback_then_half_opens_and_closes() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.always(Fault::Status(500));
    let breaker = json!({"min_calls": 2, "error_percent": 50, "window_ms": 60000, "open_ms": 500});
    ferry
        .primary_and_standby(&a, &b, json!({"retries": 1, "breaker": breaker}))
        .await;

    for _ in 0..2 {
        let answer = ferry.chat("m", false).await;
        assert_eq!(answer.body["choices"][0]["message"]["content"], "from b");
    }
    assert_eq!(a.calls(), 2);
    // Open: a is not called at all; b takes the calls first-hand.
    for _ in 0..3 {
        let answer = ferry.chat("m", false).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(routed(&ferry.last_event().await), ("b", "fallback", 1, 200));
    }
    assert_eq!(a.calls(), 2, "an open breaker lets nothing through");

    // Half-open after open_ms: one probe reaches a; it succeeds and closes the breaker.
    a.always(Fault::None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = ferry.chat("m", false).await;
    assert_eq!(answer.body["choices"][0]["message"]["content"], "from a");
    assert_eq!(routed(&ferry.last_event().await), ("a", "weighted", 1, 200));
    for _ in 0..3 {
        ferry.chat("m", false).await;
    }
    assert_eq!(a.calls(), 6, "closed again");

    // A failed probe opens it again.
    a.always(Fault::Status(500));
    ferry.chat("m", false).await;
    ferry.chat("m", false).await;
    assert_eq!(a.calls(), 8);
    tokio::time::sleep(Duration::from_millis(600)).await;
    ferry.chat("m", false).await;
    assert_eq!(a.calls(), 9, "one probe");
    ferry.chat("m", false).await;
    assert_eq!(a.calls(), 9, "open again after the probe failed");
}

#[tokio::test]
async fn with_every_breaker_open_calls_are_refused_with_retry_after() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    a.always(Fault::Status(500));
    let breaker = json!({"min_calls": 1, "open_ms": 5000});
    ferry
        .model("m", &[(&a, 1)], json!({"retries": 0, "breaker": breaker}))
        .await;

    // A deterministic call, kept by the response cache while the backend still answered.
    let kept = json!({"model": "m", "max_tokens": 10, "temperature": 0,
                      "messages": [{"role": "user", "content": "kept"}]});
    a.then(&[Fault::None]);
    let first = ferry
        .send_with("POST", "/v1/chat/completions", &ferry.key, kept.clone(), "")
        .await;
    assert_eq!(first.status, StatusCode::OK);

    assert_eq!(ferry.chat("m", false).await.status, StatusCode::BAD_GATEWAY);
    let refused = ferry.chat("m", false).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        common::openai_error(&refused.body)["code"],
        "deployments_unavailable"
    );
    let retry_after: u64 = refused.retry_after.unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert_eq!(a.calls(), 2);

    // A call nothing was kept for is refused before admission: no hold, no usage event.
    let events = ferry.events().await.len();
    let fresh = json!({"model": "m", "max_tokens": 10, "temperature": 0,
                       "messages": [{"role": "user", "content": "never kept"}]});
    let missed = ferry
        .send_with("POST", "/v1/chat/completions", &ferry.key, fresh, "")
        .await;
    assert_eq!(missed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        common::openai_error(&missed.body)["code"],
        "deployments_unavailable"
    );
    assert_eq!(ferry.events().await.len(), events);

    // The kept answer still serves its call, breaker or not.
    let again = ferry
        .send_with("POST", "/v1/chat/completions", &ferry.key, kept, "")
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["choices"][0]["message"]["content"], "from a");
    assert_eq!(a.calls(), 2);
}

#[tokio::test]
async fn weights_split_traffic_and_a_weight_change_takes_effect_at_once() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    ferry.model("m", &[(&a, 80), (&b, 20)], json!({})).await;

    const CALLS: usize = 400;
    for _ in 0..CALLS {
        assert_eq!(ferry.chat("m", false).await.status, StatusCode::OK);
    }
    // b's share is binomial(400, 0.2): mean 80, standard deviation 8. Five deviations either
    // side fail a correct split about once in 1.7 million runs.
    let to_b = b.calls();
    assert!((40..=120).contains(&to_b), "b took {to_b} of {CALLS}");
    assert_eq!(a.calls() + to_b, CALLS);

    // A rollback: all traffic to a, through the admin API, no restart.
    let patched = ferry
        .send(
            "PATCH",
            "/admin/v1/models/m",
            &ferry.operator_key,
            json!({"weights": {"a": 100, "b": 0}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["deployments"][1]["weight"], 0);
    for _ in 0..50 {
        ferry.chat("m", false).await;
    }
    assert_eq!(b.calls(), to_b, "b takes nothing once drained");

    // Bad changes are refused with the field at fault.
    for (change, param) in [
        (json!({"weights": {"z": 1}}), "weights.z"),
        (json!({"weights": {"a": 0}}), "deployments"),
        (
            json!({"route": {"fallbacks": ["nope"]}}),
            "route.fallbacks[0]",
        ),
    ] {
        let refused = ferry
            .send("PATCH", "/admin/v1/models/m", &ferry.operator_key, change)
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(common::openai_error(&refused.body)["param"], param);
    }
    let missing = ferry
        .send(
            "PATCH",
            "/admin/v1/models/nope",
            &ferry.operator_key,
            json!({"weights": {}}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_show_attempts_breakers_and_calls_to_the_operator_and_the_scraper_alone() {
    let ferry = Ferry::start().await;
    let a = Backend::refusing("a").await;
    let b = Backend::start("b").await;
    ferry.primary_and_standby(&a, &b, json!({})).await;
    assert_eq!(ferry.chat("m", true).await.status, StatusCode::OK);
    // A model nobody registered never becomes a label.
    let unknown = ferry.chat("no-such-model-\u{1F600}", false).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let scraped = ferry
        .send("GET", "/metrics", METRICS_TOKEN, Value::Null)
        .await;
    assert_eq!(scraped.status, StatusCode::OK);
    let text = scraped.body.as_str().unwrap().to_owned();
    for line in [
        r#"ferry_upstream_attempts_total{model="m",deployment="a",outcome="retryable"} 1"#,
        r#"ferry_upstream_attempts_total{model="m",deployment="b",outcome="ok"} 1"#,
        r#"ferry_breaker_state{model="m",deployment="a"} 0"#,
        r#"ferry_requests_total{model="m",endpoint="chat.completions",status="2xx"} 1"#,
        r#"ferry_tokens_total{model="m",type="completion"} 2"#,
        r#"ferry_admissions_total{result="admitted"} 1"#,
        r#"ferry_cache_requests_total{result="bypass"} 1"#,
        r#"ferry_calls_in_flight 0"#,
        r#"ferry_http_requests_total{route="/v1/chat/completions",method="POST",status="4xx"} 1"#,
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    for series in [
        "ferry_request_duration_seconds_bucket{",
        "ferry_gateway_overhead_seconds_count{",
        "ferry_time_to_first_token_seconds_sum{",
        "ferry_spend_nanodollars_total{",
        "ferry_held_nanodollars_total ",
    ] {
        assert!(text.contains(series), "{series} missing");
    }
    assert!(
        !text.contains("no-such-model"),
        "a caller's string became a label"
    );
    assert!(!text.contains(&ferry.key), "a key in the metrics");

    let operator = ferry
        .send("GET", "/metrics", &ferry.operator_key, Value::Null)
        .await;
    assert_eq!(operator.status, StatusCode::OK);
    let member = ferry.send("GET", "/metrics", &ferry.key, Value::Null).await;
    assert_eq!(member.status, StatusCode::FORBIDDEN);
    common::openai_error(&member.body);
    let stranger = ferry.send("GET", "/metrics", "nope", Value::Null).await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_deployment_that_refuses_ferrys_credentials_is_left_for_the_fallback() {
    let ferry = Ferry::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.always(Fault::Status(401));
    ferry
        .primary_and_standby(&a, &b, json!({"retries": 5}))
        .await;
    b.then(&[Fault::Status(503)]);

    let answer = ferry.chat("m", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!((a.calls(), b.calls()), (1, 2), "a once; b, then b again");
    assert_eq!(routed(&ferry.last_event().await), ("b", "retry", 3, 200));
}

#[tokio::test]
async fn the_hold_covers_the_dearest_deployment_and_the_charge_is_the_answering_ones_price() {
    let ferry = Ferry::start().await;
    let a = Backend::refusing("a").await;
    let b = Backend::start("b").await;
    ferry.model("solo", &[(&b, 1)], json!({})).await;
    ferry.primary_and_standby(&a, &b, json!({})).await;
    // The standby is dearer: $2000 and $3000 per million tokens, and a cent a call.
    let price = json!({"deployment": "b", "price": {"input_per_mtok_usd": "2000",
                       "output_per_mtok_usd": "3000", "per_call_usd": "0.01"}});
    let priced = ferry
        .send(
            "POST",
            "/admin/v1/models/m/prices",
            &ferry.operator_key,
            price,
        )
        .await;
    assert_eq!(priced.status, StatusCode::CREATED, "{}", priced.body);

    let held = |text: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix("ferry_held_nanodollars_total "))
            .map_or(0, |value| value.parse().unwrap())
    };
    let scrape = || ferry.send("GET", "/metrics", METRICS_TOKEN, Value::Null);
    let before = held(scrape().await.body.as_str().unwrap());
    assert_eq!(ferry.chat("solo", false).await.status, StatusCode::OK);
    let solo = held(scrape().await.body.as_str().unwrap()) - before;
    let answer = ferry.chat("m", false).await;
    let routed_hold = held(scrape().await.body.as_str().unwrap()) - before - solo;
    assert!(
        routed_hold > solo,
        "held {routed_hold}, not more than b's {solo} at the model's price"
    );

    // 8 prompt tokens at $2000/M, 2 completion tokens at $3000/M, and the call's cent.
    assert_eq!(answer.body["usage"]["cost"], "0.032", "{}", answer.body);
    let event = ferry.last_event().await;
    assert_eq!(routed(&event), ("b", "fallback", 2, 200));
    assert_eq!(cost(&event), "0.032".parse::<Money>().unwrap());
}
