//! Connection hygiene over real sockets: a silent socket, a head sent a byte at a time, a
//! forgotten keep-alive, a body that never ends and one that trickles are all closed in time;
//! past the connection cap a new connection is refused at once while the others are served;
//! a long stream is never cut by the idle timeout; HTTP/2 is served within its limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::{get, post};
use ferry_functions::BodyRate;
use ferry_functions::server::{ConnectionLimits, Server};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);
const IDLE_TIMEOUT: Duration = Duration::from_millis(4000);

fn limits(max_connections: usize) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        header_read_timeout: HEADER_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        body_rate: BodyRate {
            grace: Duration::from_secs(1),
            min_bytes_per_second: 1024,
        },
        ..ConnectionLimits::default()
    }
}

/// `/ok`; `/echo` answers the body's length (408 if it came too slowly); `/stream` sends a
/// tick every 250 ms for 5 s, longer than the idle timeout; `/short`, 5 ticks in 0.5 s.
fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|request: Request| async move {
                match axum::body::to_bytes(request.into_body(), usize::MAX).await {
                    Ok(bytes) => (StatusCode::OK, bytes.len().to_string()),
                    Err(_) => (StatusCode::REQUEST_TIMEOUT, "slow".to_owned()),
                }
            }),
        )
        .route(
            "/stream",
            get(|| async { Body::from_stream(ticks(20, Duration::from_millis(250))) }),
        )
        .route(
            "/short",
            get(|| async { Body::from_stream(ticks(5, Duration::from_millis(100))) }),
        )
}

fn ticks(
    count: usize,
    every: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold(0, move |sent| async move {
        if sent == count {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok(Bytes::from_static(b"tick\n")), sent + 1))
    })
}

async fn start(limits: ConnectionLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener, app(), limits);
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

/// Reads until the server closes the connection (or `limit` passes); what was read, and when
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&text).into(), Some(Instant::now()));
            }
            Ok(Ok(read)) => text.extend_from_slice(&buffer[..read]),
            Err(_) => return (String::from_utf8_lossy(&text).into(), None),
        }
    }
}

fn assert_closed_between(closed: Option<Instant>, since: Instant, low: Duration, high: Duration) {
    let closed = closed.expect("the server should have closed the connection");
    let after = closed - since;
    assert!(
        after >= low && after <= high,
        "closed after {after:?}, not in {low:?}..{high:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let addr = start(limits(100)).await;
    let began = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (text, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert_eq!(text, "");
    assert_closed_between(
        closed,
        began,
        IDLE_TIMEOUT,
        IDLE_TIMEOUT + Duration::from_secs(2),
    );
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let addr = start(limits(100)).await;
    let head = b"GET /ok HTTP/1.1\r\nhost: ferry\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    assert_trickled_head_is_cut_off(addr, head).await;
    // Looking like HTTP/2's preface for a while earns nothing: only the whole preface does.
    assert_trickled_head_is_cut_off(addr, b"PRI * HTTP/2.0\r\n\r\nS-but-not-quite-a-preface").await;
}

async fn assert_trickled_head_is_cut_off(addr: SocketAddr, head: &[u8]) {
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let began = Instant::now();
    let mut closed_at = None;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            closed_at = Some(Instant::now());
            break;
        }
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(Instant::now());
                break;
            }
            Ok(Ok(_)) => panic!("answered a head that took too long"),
            Err(_) => {}
        }
    }
    // Well before the idle timeout: a head has a deadline of its own.
    assert_closed_between(
        closed_at,
        began,
        HEADER_TIMEOUT,
        HEADER_TIMEOUT + Duration::from_millis(1600),
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_once_idle_and_not_while_streaming() {
    let addr = start(limits(100)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // A stream of 5 s outlives the 4 s idle timeout: it is in flight, never idle.
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: ferry\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.ends_with("0\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "closed mid-stream after {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert_eq!(seen.matches("tick").count(), 20);
    // Then idle: closed after the idle timeout, counted from the stream's end.
    let idle_since = Instant::now();
    let (text, closed) = read_until_closed(&mut client, Duration::from_secs(10)).await;
    assert_eq!(text, "");
    assert_closed_between(
        closed,
        idle_since,
        IDLE_TIMEOUT - Duration::from_millis(100),
        IDLE_TIMEOUT + Duration::from_secs(2),
    );
}

#[tokio::test]
async fn a_body_that_never_arrives_whole_gets_408() {
    let addr = start(limits(100)).await;
    for (head, part) in [
        // A Content-Length never satisfied.
        (
            "POST /echo HTTP/1.1\r\nhost: ferry\r\ncontent-length: 100\r\n\r\n",
            "0123456789",
        ),
        // A chunked body that never ends.
        (
            "POST /echo HTTP/1.1\r\nhost: ferry\r\ntransfer-encoding: chunked\r\n\r\n",
            "a\r\n0123456789\r\n",
        ),
    ] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(part.as_bytes()).await.unwrap();
        let began = Instant::now();
        let (text, _) = read_until_closed(&mut client, Duration::from_secs(10)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{head:?}: {text:?}");
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "{:?}",
            began.elapsed()
        );
    }
}

#[tokio::test]
async fn a_body_that_trickles_below_the_minimum_rate_gets_408() {
    let addr = start(limits(100)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /echo HTTP/1.1\r\nhost: ferry\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    let began = Instant::now();
    // 200 bytes every 250 ms: never a pause, but 800 bytes a second against 1024.
    let mut answer = String::new();
    for _ in 0..40 {
        if client.write_all(&[b'x'; 200]).await.is_err() {
            break;
        }
        let mut buffer = [0u8; 1024];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(250), client.read(&mut buffer)).await
        {
            answer.push_str(&String::from_utf8_lossy(&buffer[..read]));
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_keeps_up_is_read_whole() {
    let addr = start(limits(100)).await;
    let client = reqwest::Client::new();
    let body = vec![b'x'; 4 * 1024 * 1024];
    let answer = client
        .post(format!("http://{addr}/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), (4 * 1024 * 1024).to_string());
}

#[tokio::test]
async fn past_the_cap_a_connection_is_refused_at_once_and_the_others_are_served() {
    let addr = start(limits(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server take the three before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let (text, closed) = read_until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(closed.is_some());
    assert!(began.elapsed() < Duration::from_secs(1), "refused at once");
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], "overloaded");

    // One of the three is served; and once one goes, a new connection is taken again.
    held[0]
        .write_all(b"GET /ok HTTP/1.1\r\nhost: ferry\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let read = held[0].read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = reqwest::get(format!("http://{addr}/ok")).await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn http2_is_served_and_its_limits_hold() {
    let addr = start(ConnectionLimits {
        max_header_bytes: 16 * 1024,
        http2_max_concurrent_streams: 4,
        ..limits(100)
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // More calls at once than streams allowed: the client queues them; all are answered.
    let calls = (0..16).map(|_| {
        let client = client.clone();
        async move { client.get(format!("http://{addr}/short")).send().await }
    });
    let answers = futures_util::future::join_all(calls).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        let mut body = answer.bytes_stream();
        let mut ticks = 0;
        while let Some(part) = body.next().await {
            ticks += String::from_utf8_lossy(&part.unwrap())
                .matches("tick")
                .count();
        }
        assert_eq!(ticks, 5);
    }
    // A header list over the limit is refused.
    let huge = "a".repeat(32 * 1024);
    let refused = client
        .get(format!("http://{addr}/ok"))
        .header("x-huge", huge)
        .send()
        .await;
    assert!(
        refused.is_err() || refused.unwrap().status() == 431,
        "an oversized header list must not be served"
    );
}
