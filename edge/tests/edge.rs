//! The edge library against an in-memory store and a loopback origin: the real functions router
//! (SQLite, the test kit's fake backend) served on 127.0.0.1, with an edge secret. Hits are answered at
//! the edge without the origin, kept per credential, replayed as SSE, and billed once at the
//! cache-hit price even when a report is sent twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_core::edge::{self, Grant, HitReport};
use ferry_edge::{Edge, EdgeConfig, EdgeError, KeyValue, MemoryKv, Message, Origin, Step};
use ferry_functions::admin::{OperatorKey, ensure_operator_key};
use ferry_functions::edge::EdgeKeys;
use ferry_functions::testing::FakeUpstream;
use ferry_functions::{AppState, RouterConfig};
use ferry_store_sqlite::SqliteStore;
use serde_json::{Value, json};

const SECRET: &[u8] = b"the edge secret for these tests, long enough";

/// The origin over real HTTP on loopback; counts what reaches it.
struct Loopback {
    base: String,
    http: reqwest::Client,
    requests: AtomicUsize,
}

impl Loopback {
    async fn send(&self, request: &Message) -> Message {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut builder = self
            .http
            .request(
                request.method.parse().unwrap(),
                format!("{}{}", self.base, request.path),
            )
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        Message {
            status,
            headers,
            body: response.bytes().await.unwrap().to_vec(),
            ..Message::default()
        }
    }
}

impl Origin for Loopback {
    async fn post(
        &self,
        path: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Message, EdgeError> {
        Ok(self
            .send(&Message {
                method: "POST".into(),
                path: path.into(),
                headers,
                body,
                ..Message::default()
            })
            .await)
    }

    async fn fetch(&self, _: &str) -> Result<Message, EdgeError> {
        Err(EdgeError::Origin(
            "no identity provider in these tests".into(),
        ))
    }
}

struct World {
    origin: Loopback,
    upstream: Arc<FakeUpstream>,
    edge: Edge<MemoryKv>,
    operator_key: String,
    /// How far the edge's clock is ahead of the real one.
    clock_ms: AtomicUsize,
    hit_ids: AtomicUsize,
}

struct Tenant {
    id: String,
    key: String,
}

impl World {
    async fn start() -> World {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let OperatorKey::Generated(operator_key) =
            ensure_operator_key(store.as_ref(), None).await.unwrap()
        else {
            unreachable!("a new store has no operator key");
        };
        // The test kit's fake: "Paris is the capital." for the model `paris`.
        let upstream = FakeUpstream::new();
        let mut state = AppState::for_tests(store, upstream.clone());
        state.edge =
            Some(EdgeKeys::new(SECRET, b"the origin's own grant key, 32 bytes or more").unwrap());
        let router = ferry_functions::router(state, &RouterConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let world = World {
            origin: Loopback {
                base,
                http: reqwest::Client::builder().no_proxy().build().unwrap(),
                requests: AtomicUsize::new(0),
            },
            upstream,
            edge: Edge::new(
                EdgeConfig {
                    secret: SECRET.to_vec(),
                    edge_id: "test-edge".into(),
                    max_body_bytes: 64 * 1024,
                    jwt: None,
                },
                MemoryKv::default(),
            ),
            operator_key,
            clock_ms: AtomicUsize::new(0),
            hit_ids: AtomicUsize::new(0),
        };
        let model = json!({
            "id": "m",
            "deployments": [{"id": "d", "upstream": {"url": "http://backend.invalid/v1", "model": "paris"}}],
            "price": {"input_per_mtok_usd": "1", "output_per_mtok_usd": "2", "per_call_usd": "0.001",
                      "cache_hit_usd": "0.0001"},
        });
        world.admin("/admin/v1/models", &model).await;
        world
    }

    async fn admin(&self, path: &str, body: &Value) -> Value {
        self.admin_with("POST", path, body).await
    }

    async fn admin_with(&self, method: &str, path: &str, body: &Value) -> Value {
        let answer = self
            .origin
            .send(&Message {
                method: if body.is_null() { "GET" } else { method }.into(),
                path: path.into(),
                headers: vec![
                    (
                        "authorization".into(),
                        format!("Bearer {}", self.operator_key),
                    ),
                    ("content-type".into(), "application/json".into()),
                ],
                body: if body.is_null() {
                    Vec::new()
                } else {
                    body.to_string().into_bytes()
                },
                ..Message::default()
            })
            .await;
        assert!(
            answer.status < 300,
            "{path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        serde_json::from_slice(&answer.body).unwrap()
    }

    async fn tenant(&self, name: &str) -> Tenant {
        let tenant = self
            .admin(
                "/admin/v1/tenants",
                &json!({"name": name, "billing": "prepaid"}),
            )
            .await;
        let id = tenant["id"].as_str().unwrap().to_owned();
        self.admin(
            &format!("/admin/v1/tenants/{id}/credits"),
            &json!({"amount_usd": "1"}),
        )
        .await;
        let key = self
            .admin(
                &format!("/admin/v1/tenants/{id}/keys"),
                &json!({"name": "app", "role": "member"}),
            )
            .await;
        Tenant {
            id,
            key: key["key"].as_str().unwrap().to_owned(),
        }
    }

    /// The origin's clock is real (prices and grants are dated), so the edge's is too, moved
    /// ahead by what a test skips.
    fn now(&self) -> u64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        real + self.clock_ms.load(Ordering::SeqCst) as u64
    }

    /// A request through the edge: answered there, or forwarded to the origin and maybe kept.
    /// True when the origin was not involved.
    async fn call(&self, key: &str, body: &Value) -> (Message, bool) {
        let request = Message {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![
                ("authorization".into(), format!("Bearer {key}")),
                ("content-type".into(), "application/json".into()),
            ],
            body: body.to_string().into_bytes(),
            ..Message::default()
        };
        let hit_id = {
            let mut id = [7u8; 16];
            let n = self.hit_ids.fetch_add(1, Ordering::SeqCst) as u64;
            id[..8].copy_from_slice(&n.to_le_bytes());
            id
        };
        match self
            .edge
            .handle(request, self.now(), hit_id, &self.origin)
            .await
        {
            Step::Answer(response) => (response, true),
            Step::Forward(forward) => {
                let response = self.origin.send(&forward.request).await;
                self.edge.keep(&forward, &response, self.now()).await;
                (response, false)
            }
        }
    }

    async fn balance(&self, tenant: &Tenant) -> String {
        let account = self
            .admin(&format!("/admin/v1/tenants/{}", tenant.id), &Value::Null)
            .await;
        account["available_usd"].as_str().unwrap().to_owned()
    }

    async fn usage(&self, tenant: &Tenant) -> Vec<Value> {
        let events = self
            .admin(
                &format!("/admin/v1/tenants/{}/usage/events", tenant.id),
                &Value::Null,
            )
            .await;
        events["data"].as_array().unwrap().clone()
    }
}

fn question(text: &str) -> Value {
    json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

fn text_of(message: &Message) -> String {
    let body: Value = serde_json::from_slice(&message.body).unwrap();
    body.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_hit_is_answered_at_the_edge_and_billed_once_at_the_hit_price() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;

    let (first, at_edge) = world.call(&acme.key, &question("capital?")).await;
    assert_eq!(first.status, 200);
    assert!(!at_edge);
    assert_eq!(first.header("x-ferry-cache"), Some("MISS"));
    assert!(first.header(edge::GRANT_HEADER).is_some());
    let origin_requests = world.origin.requests.load(Ordering::SeqCst);

    let (second, at_edge) = world.call(&acme.key, &question("capital?")).await;
    assert!(at_edge, "the second call reached the origin");
    assert_eq!(second.header("x-ferry-cache"), Some("HIT"));
    assert_eq!(text_of(&second), text_of(&first));
    assert_eq!(
        world.origin.requests.load(Ordering::SeqCst),
        origin_requests
    );
    assert_eq!(world.upstream.count(), 1);

    // Not yet billed: the hit waits for the report.
    let before = world.balance(&acme).await;
    assert_eq!(world.usage(&acme).await.len(), 1);
    let reported = world.edge.report(&world.origin).await.unwrap();
    assert_eq!((reported.sent, reported.billed), (1, 1));
    let events = world.usage(&acme).await;
    assert_eq!(events.len(), 2);
    let hit = events
        .iter()
        .find(|event| event["cache_status"] == "edge_hit")
        .expect("the edge hit is metered");
    assert_eq!(hit["cost"], "0.0001");
    assert_eq!(hit["completion_tokens"], 5);
    assert!(hit["request_id"].as_str().unwrap().starts_with("edge_"));
    let after = world.balance(&acme).await;
    assert_eq!(
        parse_usd(&before) - parse_usd(&after),
        100_000,
        "{before} → {after}"
    );
    // Nothing left to report.
    assert_eq!(world.edge.report(&world.origin).await.unwrap().sent, 0);
}

#[tokio::test]
async fn waiting_hits_are_reported_once_when_due() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    // Nothing waiting: one read, no report.
    assert_eq!(world.edge.report_if_due(&world.origin).await.unwrap(), None);
    world.call(&acme.key, &question("due?")).await;
    world.call(&acme.key, &question("due?")).await;
    let reported = world.edge.report_if_due(&world.origin).await.unwrap();
    assert_eq!(reported.map(|reported| reported.billed), Some(1));
    assert_eq!(world.edge.report_if_due(&world.origin).await.unwrap(), None);
}

#[tokio::test]
async fn a_report_sent_twice_bills_each_hit_once() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    world.call(&acme.key, &question("twice?")).await;
    world.call(&acme.key, &question("twice?")).await;
    world.call(&acme.key, &question("twice?")).await;
    // Capture the report the edge will send, to send it again after.
    let mut hits = Vec::new();
    for key in world.edge.store().keys("ferry/hit/", 100).await.unwrap() {
        let value = world.edge.store().get(&key).await.unwrap().unwrap();
        hits.push(serde_json::from_slice(&value).unwrap());
    }
    assert_eq!(hits.len(), 2);
    let reported = world.edge.report(&world.origin).await.unwrap();
    assert_eq!((reported.billed, reported.duplicate), (2, 0));
    let balance = world.balance(&acme).await;

    let again = serde_json::to_vec(&HitReport {
        edge: "test-edge".into(),
        hits,
    })
    .unwrap();
    let signature = edge::sign_report(SECRET, &again);
    let answer = world
        .origin
        .post(
            edge::HITS_PATH,
            vec![
                ("content-type".into(), "application/json".into()),
                (edge::SIGNATURE_HEADER.into(), signature),
            ],
            again,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let outcome: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(outcome["billed"], json!([]));
    assert_eq!(outcome["duplicate"].as_array().unwrap().len(), 2);
    assert_eq!(world.balance(&acme).await, balance);
    assert_eq!(world.usage(&acme).await.len(), 3);
}

#[tokio::test]
async fn hits_already_served_are_billed_past_the_rate_limit() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    world
        .admin_with(
            "PATCH",
            &format!("/admin/v1/tenants/{}", acme.id),
            &json!({"limits": {"rpm": 1}}),
        )
        .await;
    world.call(&acme.key, &question("limited?")).await;
    // The origin would refuse a second call this minute; the edge answers it.
    let (hit, at_edge) = world.call(&acme.key, &question("limited?")).await;
    assert!(at_edge);
    assert_eq!(hit.status, 200);
    let reported = world.edge.report(&world.origin).await.unwrap();
    assert_eq!((reported.billed, reported.rejected), (1, 0));
}

#[tokio::test]
async fn entries_are_kept_per_credential() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    let globex = world.tenant("globex").await;
    world.call(&acme.key, &question("shared?")).await;
    let (theirs, at_edge) = world.call(&globex.key, &question("shared?")).await;
    assert!(!at_edge);
    assert_eq!(theirs.header("x-ferry-cache"), Some("MISS"));
    // A made-up credential never hits either.
    let (made_up, at_edge) = world
        .call("fy_000000000000_000000000000", &question("shared?"))
        .await;
    assert!(!at_edge);
    assert_eq!(made_up.status, 401);
}

#[tokio::test]
async fn a_streamed_caller_gets_a_kept_answer_as_server_sent_events() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    let (plain, _) = world.call(&acme.key, &question("stream?")).await;
    let mut streamed = question("stream?");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (events, at_edge) = world.call(&acme.key, &streamed).await;
    assert!(at_edge);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(events.body.clone()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let mut content = String::new();
    let mut usage = Value::Null;
    for line in text.lines().filter_map(|line| line.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        if let Some(piece) = chunk
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            content.push_str(piece);
        }
        if chunk.get("usage").is_some_and(Value::is_object) {
            usage = chunk["usage"].clone();
        }
    }
    assert_eq!(content, text_of(&plain));
    assert_eq!(usage["completion_tokens"], 5);
}

#[tokio::test]
async fn expired_uncacheable_and_plainly_bad_requests_are_not_answered_from_the_edge() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    world.call(&acme.key, &question("expires?")).await;
    // Past the grant's bound (five minutes at most), the entry is not served.
    world
        .clock_ms
        .fetch_add(edge::MAX_EDGE_TTL_MS as usize + 1, Ordering::SeqCst);
    let (_, at_edge) = world.call(&acme.key, &question("expires?")).await;
    assert!(!at_edge);

    // Sampled calls are neither kept nor answered from the edge.
    let mut sampled = question("sampled?");
    sampled["temperature"] = json!(0.8);
    world.call(&acme.key, &sampled).await;
    let (_, at_edge) = world.call(&acme.key, &sampled).await;
    assert!(!at_edge);

    // Refused at the edge, without the origin.
    let before = world.origin.requests.load(Ordering::SeqCst);
    let no_key = Message {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        body: question("x").to_string().into_bytes(),
        ..Message::default()
    };
    let Step::Answer(response) = world
        .edge
        .handle(no_key, world.now(), [0; 16], &world.origin)
        .await
    else {
        panic!("a call without a key was forwarded");
    };
    assert_eq!(response.status, 401);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");
    let not_json = Message {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: vec![("authorization".into(), format!("Bearer {}", acme.key))],
        body: b"{not json".to_vec(),
        ..Message::default()
    };
    let Step::Answer(response) = world
        .edge
        .handle(not_json, world.now(), [0; 16], &world.origin)
        .await
    else {
        panic!("a body that is not JSON was forwarded");
    };
    assert_eq!(response.status, 400);
    assert_eq!(world.origin.requests.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn the_origin_refuses_unsigned_reports_and_forged_grants() {
    let world = World::start().await;
    let acme = world.tenant("acme").await;
    world.call(&acme.key, &question("forge?")).await;
    world.call(&acme.key, &question("forge?")).await;
    let key = world.edge.store().keys("ferry/hit/", 1).await.unwrap()[0].clone();
    let mut hit: ferry_core::edge::Hit =
        serde_json::from_slice(&world.edge.store().get(&key).await.unwrap().unwrap()).unwrap();
    let body = serde_json::to_vec(&HitReport {
        edge: "e".into(),
        hits: vec![hit.clone()],
    })
    .unwrap();
    // Signed with the wrong secret.
    let answer = world
        .origin
        .post(
            edge::HITS_PATH,
            vec![(
                edge::SIGNATURE_HEADER.into(),
                edge::sign_report(b"wrong", &body),
            )],
            body,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    // A grant changed by whoever sends the report.
    let (payload, tag) = hit.grant.split_once('.').unwrap();
    let mut grant: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    grant["tenant_id"] = json!("someone_else");
    hit.grant = format!(
        "{}.{tag}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            grant.to_string()
        )
    );
    // And one an edge made itself, with the secret it holds: only the origin's key signs grants.
    let mut minted = hit.clone();
    minted.id = "minted0000000000000000".into();
    minted.grant = Grant::peek(&hit.grant).unwrap().sign(SECRET);
    let body = serde_json::to_vec(&HitReport {
        edge: "e".into(),
        hits: vec![hit, minted],
    })
    .unwrap();
    let signature = edge::sign_report(SECRET, &body);
    let answer = world
        .origin
        .post(
            edge::HITS_PATH,
            vec![(edge::SIGNATURE_HEADER.into(), signature)],
            body,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let outcome: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(outcome["rejected"][0]["code"], "invalid_grant");
    assert_eq!(outcome["rejected"][1]["code"], "invalid_grant");
    assert_eq!(world.usage(&acme).await.len(), 1);
}

/// "0.9989" → nano-dollars.
fn parse_usd(text: &str) -> i64 {
    text.parse::<ferry_core::Money>().unwrap().nanos()
}
