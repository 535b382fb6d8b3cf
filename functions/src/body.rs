//! Bodies that carry a rule with them: a response body that keeps something alive until it
//! has gone, and a request body that must keep arriving.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// A body that keeps something alive (a call's in-flight slot, a connection's count of
/// requests) until it is dropped: when it has been sent whole, or the connection has gone.
pub(crate) struct HoldingBody<B, T> {
    pub body: B,
    pub _held: T,
}

impl<B: Body + Unpin, T: Unpin> Body for HoldingBody<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How fast a request body must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    /// The longest pause between two parts of a body, and the time its first part may take.
    pub grace: Duration,
    /// Past the grace, the body must average at least this many bytes a second: a body that
    /// trickles in a byte at a time is cut off, however steadily it trickles.
    pub min_bytes_per_second: u64,
}

impl Default for BodyRate {
    fn default() -> BodyRate {
        BodyRate {
            grace: Duration::from_secs(10),
            min_bytes_per_second: 1024,
        }
    }
}

/// A request body that arrived too slowly; the extractors answer it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct BodyTooSlow;

/// A request body held to a [`BodyRate`] while someone waits on it. The clock runs only while
/// a reader is waiting: a handler that never reads the body is never timed.
pub(crate) struct MinRateBody<B> {
    body: B,
    rate: BodyRate,
    /// When a reader first waited, and when the last part arrived.
    started: Option<Instant>,
    last_part: Instant,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> MinRateBody<B> {
    pub fn new(body: B, rate: BodyRate) -> MinRateBody<B> {
        MinRateBody {
            body,
            rate,
            started: None,
            last_part: Instant::now(),
            received: 0,
            timer: None,
        }
    }

    /// When the body must have made more progress than it has.
    fn deadline(&self, started: Instant) -> Instant {
        let paused_too_long = self.last_part + self.rate.grace;
        let rate = self.rate.min_bytes_per_second.max(1);
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / rate);
        paused_too_long.min(started + self.rate.grace + earned)
    }
}

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let now = Instant::now();
        let started = match self.started {
            Some(started) => started,
            None => {
                self.started = Some(now);
                self.last_part = now;
                now
            }
        };
        match Pin::new(&mut self.body).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received = self.received.saturating_add(data.len() as u64);
                    self.last_part = now;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = self.deadline(started);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                timer.as_mut().reset(deadline);
                match timer.as_mut().poll(context) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTooSlow.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether `error` (a rejection, say) was caused by a body that arrived too slowly.
pub(crate) fn too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<BodyTooSlow>() {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;

    fn trickle(
        parts: Vec<(Duration, &'static str)>,
    ) -> MinRateBody<StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BodyTooSlow>>>>
    {
        let stream = futures_util::stream::unfold(parts.into_iter(), |mut parts| async move {
            let (pause, text) = parts.next()?;
            tokio::time::sleep(pause).await;
            Some((Ok(Frame::data(Bytes::from_static(text.as_bytes()))), parts))
        });
        MinRateBody::new(
            StreamBody::new(Box::pin(stream)),
            BodyRate {
                grace: Duration::from_secs(10),
                min_bytes_per_second: 4,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_up_arrives_whole() {
        let parts = (0..20).map(|_| (Duration::from_secs(1), "abcd")).collect();
        let body = trickle(parts).collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 80);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_grace_cuts_the_body_off() {
        let parts = vec![
            (Duration::ZERO, "abcdabcdabcdabcdabcdabcdabcdabcdabcd"),
            (Duration::from_secs(11), "late"),
        ];
        let error = trickle(parts).collect().await.err().unwrap();
        assert!(too_slow(error.as_ref()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_below_the_rate_is_cut_off_after_the_grace() {
        let began = Instant::now();
        let parts = (0..100).map(|_| (Duration::from_secs(1), "a")).collect();
        let error = trickle(parts).collect().await.err().unwrap();
        assert!(too_slow(error.as_ref()));
        let took = began.elapsed();
        // A byte a second against four: 10 s of grace, then a few bytes' worth of credit.
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(15),
            "{took:?}"
        );
    }
}
