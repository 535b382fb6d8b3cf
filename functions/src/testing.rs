//! The router tests' kit (feature `test-util`): state built once ([`AppState::for_tests`]), one
//! fake backend whose behaviour is chosen by model name and by cue ([`FakeUpstream`], after
//! TensorZero's dummy provider), and one harness that sends a request through the real router
//! and reads its answer whole, streams included ([`TestApp`], [`Answer`]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test kit: a broken fixture is a failed test"
)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::ports::{
    Accounts, ByteStream, SharedCache, Store, Upstream, UpstreamCall, UpstreamError, UpstreamReply,
};
use ferry_core::sse::SseParser;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::admin::{OperatorKey, ensure_operator_key};
use crate::auth::{AuthConfig, Authenticator};
use crate::cache::{DEFAULT_CAPACITY_BYTES, ResponseCache};
use crate::{AppState, MoneyConfig, RouterConfig};

impl AppState {
    /// State for a router test: `store` for every port, `upstream` for the backends, default
    /// limits, no shared cache level, no edges.
    pub fn for_tests<S>(store: Arc<S>, upstream: Arc<dyn Upstream>) -> AppState
    where
        S: Store + Accounts + SharedCache + 'static,
    {
        AppState {
            breakers: Default::default(),
            metrics: Default::default(),
            store: store.clone(),
            accounts: store.clone(),
            upstream,
            auth: Arc::new(
                Authenticator::new(store, AuthConfig::default(), reqwest::Client::new()).unwrap(),
            ),
            money: MoneyConfig::default(),
            cache: ResponseCache::new(DEFAULT_CAPACITY_BYTES),
            edge: None,
            files: None,
            runs_batches: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake backend.

/// What a [`FakeUpstream`] does with a call, when a test scripts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Status(u16),
    TooMany {
        retry_after_seconds: u64,
    },
    /// The answer (or a stream's first event) comes this late.
    SlowFirstByte(Duration),
    /// A stream that breaks off after its content events.
    CutStream,
}

/// A model backend for tests, in process or served over HTTP ([`FakeUpstream::serve`]). It
/// remembers every call. What it answers is chosen by the upstream model name, by cues in the
/// last message, and by scripted [`Fault`]s:
///
/// - model `paris`: "Paris is the capital." (8 prompt, 5 completion tokens); any other model
///   "Hello!" (7 and 5), or "from <name>" when the fake has a name (8 and 2);
/// - model (or `user`) `open-stream`: streamed, one chunk, then open until its reader goes;
/// - model (or `user`) `endless-stream`: streamed, chunks as fast as they are taken, never a
///   last one;
/// - a message starting `fail`: 500; `cut`: a stream stopped before `[DONE]`; `uncounted`: an
///   answer without usage.
#[derive(Default)]
pub struct FakeUpstream {
    name: Option<String>,
    delay: Duration,
    calls: Mutex<Vec<UpstreamCall>>,
    count: AtomicUsize,
    script: Mutex<VecDeque<Fault>>,
    otherwise: Mutex<Option<Fault>>,
}

impl FakeUpstream {
    pub fn new() -> Arc<FakeUpstream> {
        Arc::default()
    }

    /// A backend that answers "from `name`" (for routing tests, where it matters which did).
    pub fn named(name: &str) -> Arc<FakeUpstream> {
        Arc::new(FakeUpstream {
            name: Some(name.to_owned()),
            ..FakeUpstream::default()
        })
    }

    /// Every answer takes `delay` (long enough, say, for identical calls to overlap).
    pub fn slow(delay: Duration) -> Arc<FakeUpstream> {
        Arc::new(FakeUpstream {
            delay,
            ..FakeUpstream::default()
        })
    }

    /// Faults for the next calls, in order.
    pub fn then(&self, faults: &[Fault]) {
        self.script.lock().unwrap().extend(faults);
    }

    /// A fault for every call once the script is done.
    pub fn always(&self, fault: Fault) {
        *self.otherwise.lock().unwrap() = Some(fault);
    }

    pub fn calls(&self) -> Vec<UpstreamCall> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Serves this backend over HTTP on loopback (`/v1/chat/completions`); its base URL.
    pub async fn serve(self: &Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/chat/completions", axum::routing::post(over_http))
            .with_state(Arc::clone(self));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn next_fault(&self) -> Fault {
        let scripted = self.script.lock().unwrap().pop_front();
        scripted
            .or(*self.otherwise.lock().unwrap())
            .unwrap_or(Fault::None)
    }

    async fn answer(&self, call: UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.calls.lock().unwrap().push(call.clone());
        let fault = self.next_fault();
        let model = call.body["model"].as_str().unwrap_or_default().to_owned();
        let cue = last_message(&call.body);
        match fault {
            Fault::Status(status) => return Err(self.failed(status, None)),
            Fault::TooMany {
                retry_after_seconds,
            } => return Err(self.failed(429, Some(retry_after_seconds))),
            Fault::SlowFirstByte(delay) if !call.stream => tokio::time::sleep(delay).await,
            _ => {}
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if cue.starts_with("fail") {
            return Err(self.failed(500, None));
        }
        let (pieces, usage) = self.script_for(&model);
        if cue.starts_with("uncounted") {
            return Ok(UpstreamReply::Complete(completion(&model, &pieces, None)));
        }
        if !call.stream {
            return Ok(UpstreamReply::Complete(completion(
                &model,
                &pieces,
                Some(usage),
            )));
        }
        let kind = match call.body["user"].as_str() {
            Some(user @ ("open-stream" | "endless-stream")) => user,
            _ => model.as_str(),
        };
        Ok(UpstreamReply::Stream(match kind {
            "open-stream" => open_stream(&model),
            "endless-stream" => endless_stream(&model),
            _ => {
                let cut = fault == Fault::CutStream || cue.starts_with("cut");
                let delay = match fault {
                    Fault::SlowFirstByte(delay) => delay,
                    _ => Duration::ZERO,
                };
                stream(&model, &pieces, usage, cut, delay)
            }
        }))
    }

    fn failed(&self, status: u16, retry_after_seconds: Option<u64>) -> UpstreamError {
        let name = self.name.as_deref().unwrap_or("the backend");
        UpstreamError::Status {
            status,
            message: format!("{name} failed"),
            param: None,
            retry_after_seconds,
        }
    }

    /// The answer's text, in the pieces a stream sends, and its usage.
    fn script_for(&self, model: &str) -> (Vec<String>, Value) {
        let usage = |prompt: u64, completion: u64| json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        match (&self.name, model) {
            (_, "paris") => (vec!["Paris is ".into(), "the capital.".into()], usage(8, 5)),
            (Some(name), _) => (vec!["from ".into(), name.clone()], usage(8, 2)),
            (None, _) => (vec!["Hel".into(), "lo!".into()], usage(7, 5)),
        }
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    async fn call(&self, call: UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        self.answer(call).await
    }
}

fn last_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .and_then(|message| message["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn completion(model: &str, pieces: &[String], usage: Option<Value>) -> Value {
    let mut answer = json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": pieces.concat()},
                     "finish_reason": "stop"}],
    });
    if let Some(usage) = usage {
        answer["usage"] = usage;
    }
    answer
}

fn chunk(model: &str, delta: Value, finish: Value) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    ))
}

/// The pieces, one event each a little apart as a generating backend sends them, then the
/// last chunk, the usage chunk and `[DONE]`; or, `cut`, a broken connection after the pieces.
fn stream(model: &str, pieces: &[String], usage: Value, cut: bool, delay: Duration) -> ByteStream {
    let mut events: Vec<Result<Bytes, UpstreamError>> = vec![Ok(chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    events.extend(
        pieces
            .iter()
            .map(|piece| Ok(chunk(model, json!({"content": piece}), Value::Null))),
    );
    if cut {
        events.push(Err(UpstreamError::Protocol("the backend died".into())));
    } else {
        events.push(Ok(chunk(model, json!({}), json!("stop"))));
        events.push(Ok(Bytes::from(format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                   "model": model, "choices": [], "usage": usage})
        ))));
    }
    Box::pin(futures_util::stream::unfold(
        (events.into_iter(), delay),
        |(mut events, delay)| async move {
            tokio::time::sleep(delay + Duration::from_millis(1)).await;
            events.next().map(|event| (event, (events, Duration::ZERO)))
        },
    ))
}

fn open_stream(model: &str) -> ByteStream {
    let first = chunk(
        model,
        json!({"role": "assistant", "content": "Hel"}),
        Value::Null,
    );
    Box::pin(
        futures_util::stream::once(async move { Ok(first) }).chain(futures_util::stream::pending()),
    )
}

fn endless_stream(model: &str) -> ByteStream {
    let piece = chunk(model, json!({"content": "la "}), Value::Null);
    Box::pin(futures_util::stream::repeat_with(move || Ok(piece.clone())))
}

async fn over_http(
    axum::extract::State(fake): axum::extract::State<Arc<FakeUpstream>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let stream = body["stream"].as_bool().unwrap_or(false);
    let call = UpstreamCall {
        target: ferry_core::model::UpstreamTarget {
            url: String::new(),
            model: body["model"].as_str().unwrap_or_default().to_owned(),
            api_key: None,
        },
        endpoint: ferry_core::ports::Endpoint::ChatCompletions,
        body,
        stream,
    };
    match fake.answer(call).await {
        Ok(UpstreamReply::Complete(answer)) => axum::Json(answer).into_response(),
        Ok(UpstreamReply::Stream(events)) => {
            let events = events.map(|event| event.map_err(std::io::Error::other));
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(events))
                .unwrap()
        }
        Err(UpstreamError::Status {
            status,
            message,
            retry_after_seconds,
            ..
        }) => {
            let body = json!({"error": {"message": message, "type": "server_error"}});
            let mut response =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            if let Some(seconds) = retry_after_seconds {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// A router under test, and the operator key it was made with.
pub struct TestApp {
    pub app: Router,
    pub operator_key: String,
}

impl TestApp {
    /// The whole router over `state` (whose store has no operator key yet: one is made).
    pub async fn start(state: AppState, config: &RouterConfig) -> TestApp {
        let OperatorKey::Generated(operator_key) = ensure_operator_key(state.store.as_ref(), None)
            .await
            .unwrap()
        else {
            panic!("a new store has no operator key yet");
        };
        TestApp::over(state, config, operator_key)
    }

    /// Another router over `state`, for a store whose operator key is `operator_key`.
    pub fn over(state: AppState, config: &RouterConfig, operator_key: String) -> TestApp {
        TestApp {
            app: crate::router(state, config),
            operator_key,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        Answer::read(response).await
    }

    /// `method path` with `key` (if any), a JSON `body` (unless null) and extra `headers`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        self.send(request.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.call(Method::GET, path, key, &Value::Null, &[]).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        self.call(Method::POST, path, Some(key), body, &[]).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Answer {
        self.call(Method::DELETE, path, Some(key), &Value::Null, &[])
            .await
    }
}

/// A response, read whole: its JSON body (or its text, as a string), or a stream's events.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// JSON if the body parses, else its text as a string; null when empty or a stream.
    pub body: Value,
    /// A stream's `data` events but `[DONE]`, parsed.
    pub events: Vec<Value>,
    /// A stream ended with `[DONE]`.
    pub finished: bool,
}

impl Answer {
    pub async fn read(response: Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let is_stream = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value == "text/event-stream");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        if is_stream {
            let events = SseParser::new().feed(&bytes);
            return Answer {
                status,
                headers,
                body: Value::Null,
                finished: events.last().is_some_and(|event| event.is_done()),
                events: events
                    .iter()
                    .filter(|event| !event.is_done())
                    .map(|event| serde_json::from_str(&event.data).unwrap())
                    .collect(),
            };
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
            events: Vec::new(),
            finished: false,
        }
    }

    /// A header's value, if it is there.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// A stream's text: its chunks' content, in order.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|event| event.pointer("/choices/0/delta/content"))
            .filter_map(Value::as_str)
            .collect()
    }

    /// A stream's last event carrying usage.
    pub fn usage(&self) -> Option<&Value> {
        self.events
            .iter()
            .rev()
            .find_map(|event| event.get("usage").filter(|usage| usage.is_object()))
    }
}
