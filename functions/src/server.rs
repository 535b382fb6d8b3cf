//! Serves a router over TCP (`ferry serve`, and a function on `$PORT`) with the connection
//! hygiene a public endpoint needs: a cap on open connections, a deadline for a request's head,
//! a minimum rate for its body, an idle timeout between requests, and HTTP/2 limits.
//!
//! A connection is idle while none of its requests is in flight (a response counts until its
//! body has gone). Idle, it may stay open `idle_timeout`; once the first byte of the next
//! request head arrives, that head must be whole within `header_read_timeout` (Go's
//! `IdleTimeout` and `ReadHeaderTimeout`). So neither a silent socket, a head sent a byte at a
//! time, nor a forgotten keep-alive holds a descriptor for long. A body is held to its
//! [`BodyRate`] while its handler reads it; a response stream to the call's own write timeout.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use ferry_core::{ApiError, ErrorKind};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::body::{BodyRate, HoldingBody, MinRateBody};
use crate::metrics::{ConnectionLabels, Metrics};

/// How connections are bounded. The defaults suit a public endpoint.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once; past it, a new one is answered 503 and closed at once.
    pub max_connections: usize,
    /// From the first byte of a request head to its last.
    pub header_read_timeout: Duration,
    /// How long a connection with nothing in flight waits for its next request.
    pub idle_timeout: Duration,
    /// How fast a request body must arrive.
    pub body_rate: BodyRate,
    /// HTTP/1 head and HTTP/2 header list, in bytes: a larger one is refused (431).
    pub max_header_bytes: u32,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            // Longer than the keep-alive of the proxies most often in front (nginx's and AWS
            // load balancers' 60 s): a proxy must let go of a connection before the server
            // does, or it may send a request down one just closed.
            idle_timeout: Duration::from_secs(75),
            body_rate: BodyRate::default(),
            max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 256,
        }
    }
}

/// What a refused connection is told before it is closed (written if the socket takes it at
/// once; never waited on).
static REFUSED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let error = ApiError::new(
        ErrorKind::NoCapacity,
        "The server has too many open connections; try again shortly.",
    )
    .with_code("overloaded");
    let body = serde_json::to_string(&error.body()).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// How long a connection told to close may take to finish what it was doing, when nothing
/// of it is in flight, before it is dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// A listener's connections and how they are served.
pub struct Server {
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Option<Arc<Metrics>>,
}

impl Server {
    pub fn new(listener: TcpListener, router: Router, limits: ConnectionLimits) -> Server {
        Server {
            listener,
            router,
            limits,
            metrics: None,
        }
    }

    /// Counts connections (open, refused, closed by a timeout) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Server {
        self.metrics = Some(metrics);
        self
    }

    /// Serves until `shutdown` resolves; then takes no new connection, asks every open one to
    /// finish what it is doing, and returns once all have closed.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            listener,
            router,
            limits,
            metrics,
        } = self;
        let limits = Arc::new(limits);
        let open = Arc::new(Semaphore::new(limits.max_connections));
        let (stopping, stop) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(&error).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                refuse(stream);
                if let Some(metrics) = &metrics {
                    metrics.connections_refused.inc();
                }
                continue;
            };
            let connection = Connection {
                router: router.clone(),
                limits: Arc::clone(&limits),
                metrics: metrics.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(async move {
                connection.serve(stream).await;
                drop(permit);
            });
        }
        drop(listener);
        let _ = stopping.send(true);
        // Every connection holds a permit until it has closed.
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let _ = open.acquire_many(all).await;
        Ok(())
    }
}

/// Answers a connection past the cap without reading from it, and closes it.
fn refuse(stream: TcpStream) {
    // What the client has already sent is read first: closing a socket with unread data
    // resets it, and a reset can destroy the answer before the client reads it.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = stream.try_write(&REFUSED);
    if let Ok(stream) = stream.into_std() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// An accept that failed: the listener is fine unless the process is out of descriptors (or
/// memory), and then only time frees some.
async fn accept_failed(error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::Interrupted => {}
        _ => {
            tracing::error!(%error, "accepting a connection failed; pausing accepts for 100 ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Connection {
    router: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Option<Arc<Metrics>>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let open = OpenConnection::count(self.metrics.clone());
        let io = TokioIo::new(Watched {
            io: stream,
            activity: Arc::clone(&activity),
            preface_matched: Some(0),
        });
        let service = {
            let (router, activity, rate) = (
                self.router.clone(),
                Arc::clone(&activity),
                self.limits.body_rate,
            );
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let in_flight = InFlight::begin(&activity);
                let request = request.map(|body| Body::new(MinRateBody::new(body, rate)));
                let answer = router.clone().oneshot(request);
                async move {
                    let response = match answer.await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(HoldingBody {
                            body,
                            _held: in_flight,
                        })
                    }))
                }
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The timeouts are this module's own (hyper's header timeout runs from the moment a
        // connection goes idle, and would cut idle connections at the header deadline).
        builder
            .http1()
            .header_read_timeout(None)
            .max_headers(128)
            .max_buf_size(self.limits.max_header_bytes.max(8192) as usize);
        builder
            .http2()
            .max_concurrent_streams(self.limits.http2_max_concurrent_streams)
            .max_header_list_size(self.limits.max_header_bytes);
        let mut connection = pin!(builder.serve_connection(io, service));
        // Why the connection is being closed, once it is.
        let mut closing: Option<(&'static str, Instant)> = None;
        loop {
            let grace_over = async {
                match closing {
                    Some((_, since)) => tokio::time::sleep_until(since + CLOSING_GRACE).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                reason = activity.expired(&self.limits), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some((reason, Instant::now()));
                }
                _ = self.stop.wait_for(|stop| *stop), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(("shutdown", Instant::now()));
                }
                () = grace_over => {
                    // Told to close and still open: dropped, unless a request is in flight
                    // (a graceful close lets it finish).
                    if activity.in_flight.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    closing = closing.map(|(reason, _)| (reason, Instant::now()));
                }
            }
        }
        if let (Some(metrics), Some((reason, _))) = (&open.0, closing)
            && reason != "shutdown"
        {
            metrics
                .connections_closed
                .get_or_create(&ConnectionLabels { reason })
                .inc();
        }
    }
}

/// A connection counted as open until this is dropped, however its task ends.
struct OpenConnection(Option<Arc<Metrics>>);

impl OpenConnection {
    fn count(metrics: Option<Arc<Metrics>>) -> OpenConnection {
        if let Some(metrics) = &metrics {
            metrics.connections_open.inc();
        }
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(metrics) = &self.0 {
            metrics.connections_open.dec();
        }
    }
}

/// What a connection is doing, for its timeouts: how many of its requests are in flight, and
/// since when it has been idle or reading a request head.
struct Activity {
    in_flight: AtomicUsize,
    /// A request head has begun arriving since the connection went idle.
    reading_head: AtomicBool,
    /// HTTP/2: a request head is a frame, not bytes on their own; only idleness is timed.
    http2: AtomicBool,
    /// When the connection went idle, or its next request head began (ms after `epoch`).
    since_ms: AtomicU64,
    epoch: Instant,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            reading_head: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection turned out to speak HTTP/2: only its idleness is timed from now on.
    fn is_http2(&self) {
        self.http2.store(true, Ordering::Release);
        self.reading_head.store(false, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle HTTP/1 connection, the next request head has begun.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.http2.load(Ordering::Acquire)
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection has been idle, or reading one head, for too long; with
    /// which of the two.
    async fn expired(&self, limits: &ConnectionLimits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let (limit, reason) = if self.reading_head.load(Ordering::Acquire) {
                (limits.header_read_timeout, "header_timeout")
            } else {
                (limits.idle_timeout, "idle_timeout")
            };
            let since = Duration::from_millis(self.since_ms.load(Ordering::Acquire));
            let deadline = self.epoch + since + limit;
            if Instant::now() >= deadline {
                return reason;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = changed => {}
            }
        }
    }
}

/// One request of a connection in flight, until its response body has gone.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.reading_head.store(false, Ordering::Release);
        activity.changed.notify_one();
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity
                .since_ms
                .store(activity.now_ms(), Ordering::Release);
            activity.reading_head.store(false, Ordering::Release);
            activity.changed.notify_one();
        }
    }
}

/// The connection's socket, telling its [`Activity`] when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
    /// How many of the first bytes have matched HTTP/2's preface; `None` once decided.
    preface_matched: Option<usize>,
}

/// How every HTTP/2 connection begins (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buffer.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(context, buffer);
        let read = &buffer.filled()[before..];
        if matches!(polled, Poll::Ready(Ok(()))) && !read.is_empty() {
            // HTTP/2 or not is decided on the whole preface, however it is split into reads:
            // a client cannot pass for HTTP/2 (which has no head timeout) with one byte.
            if let Some(matched) = self.preface_matched {
                let expected = &HTTP2_PREFACE[matched..];
                let compared = read.len().min(expected.len());
                self.preface_matched = if read[..compared] != expected[..compared] {
                    None
                } else if matched + compared == HTTP2_PREFACE.len() {
                    self.activity.is_http2();
                    None
                } else {
                    Some(matched + compared)
                };
            }
            self.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
