//! A zero-delay OpenAI-compatible upstream for the gateway benchmarks: `/v1/chat/completions`
//! answered at once (or after `--delay-ms`), whole or streamed as `--chunks` SSE chunks, with
//! usage. It does as little as an HTTP server can, so what is measured is what sits in front.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Clone, Copy)]
struct Args {
    /// Where to listen (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Wait this long before answering (a model's time to first token).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Content chunks in a streamed answer.
    #[arg(long, default_value_t = 16)]
    chunks: usize,
    /// Wait this long between streamed chunks.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(args);
    // Small SSE writes go out at once (no Nagle wait for a delayed ACK).
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

const USAGE: &str = r#"{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28}"#;

async fn chat(State(args): State<Args>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("mock").to_owned();
    if args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
    }
    if request["stream"].as_bool() != Some(true) {
        let answer = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": serde_json::from_str::<Value>(USAGE).unwrap_or(Value::Null),
        });
        return axum::Json(answer).into_response();
    }
    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |content: &str, finish: Value| {
        format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut events: Vec<String> = (0..args.chunks)
        .map(|_| chunk(" tok", Value::Null))
        .collect();
    events.push(chunk("", json!("stop")));
    if include_usage {
        events.push(format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[],\"usage\":{USAGE}}}\n\n"
        ));
    }
    events.push("data: [DONE]\n\n".to_owned());
    let pause = Duration::from_millis(args.chunk_delay_ms);
    let stream = futures_util::stream::unfold(events.into_iter(), move |mut events| async move {
        let event = events.next()?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Some((Ok::<_, Infallible>(Bytes::from(event)), events))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}
