//! Time limits and a connection cap for this project's HTTP servers (edge-host and
//! the inference server), so that a client that never finishes its headers or its
//! body cannot hold connections, or all of them, for ever:
//! - the request head must arrive within `header_timeout` (hyper's own timer; it
//!   also bounds how long an idle keep-alive connection waits for its next request);
//! - a request body must keep coming: a frame at least every `body_timeout`, and,
//!   after that long, on average at least `body_min_rate` bytes a second;
//! - at most `max_connections` are served at once; those beyond are closed at once;
//! - a request answered without its body (a refusal, an unknown path) has its body
//!   read and dropped first (`discard`).
//!
//! The defaults let a slow mobile client through: 30 s for the head, a 10 MB
//! upload at 16 KB/s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits, as command-line flags (each also an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Seconds a client has to send a request's head (and an idle keep-alive
    /// connection waits for its next request).
    #[arg(long, env = "HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub header_timeout_secs: u64,
    /// Seconds a request body may pause between pieces.
    #[arg(long, env = "BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Bytes per second a request body must average once it has taken longer
    /// than --body-timeout-secs.
    #[arg(long, env = "BODY_MIN_BYTES_PER_SEC", default_value_t = 16 * 1024)]
    pub body_min_bytes_per_sec: u64,
    /// Connections served at once; more are closed as they arrive.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout_secs: 30,
            body_timeout_secs: 30,
            body_min_bytes_per_sec: 16 * 1024,
            max_connections: 1024,
        }
    }
}

impl Limits {
    /// An HTTP/1 connection builder with the head timeout.
    pub fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(self.header_timeout_secs.max(1)))
            .keep_alive(true);
        builder
    }

    /// The cap on connections served at once.
    pub fn gate(&self) -> Gate {
        Gate(Arc::new(Semaphore::new(self.max_connections.max(1))))
    }

    /// `body`, held to the body limits.
    pub fn pace<B>(&self, body: B) -> Paced<B> {
        let gap = Duration::from_secs(self.body_timeout_secs.max(1));
        Paced {
            inner: body,
            gap,
            min_rate: self.body_min_bytes_per_sec,
            started: Instant::now(),
            received: 0,
            sleep: Box::pin(tokio::time::sleep(gap)),
        }
    }
}

/// Connections served at once.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    /// A place for one more connection (held until dropped), or None when all are
    /// taken.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// The next connection there is room for, with its place (hold it while the
    /// connection is served). Connections beyond the cap are closed as they
    /// arrive; a failing accept (too many open files) is retried after a pause.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
    ) -> (
        tokio::net::TcpStream,
        std::net::SocketAddr,
        OwnedSemaphorePermit,
    ) {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(place) = self.try_enter() else {
                tracing::warn!(%client, "connection refused: --max-connections reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            return (stream, client, place);
        }
    }
}

/// Why a paced body stopped.
#[derive(Debug)]
pub enum PaceError<E> {
    /// The client paused longer than the body timeout.
    Stalled(Duration),
    /// The client sent too slowly on average.
    TooSlow {
        bytes: u64,
        secs: u64,
    },
    Inner(E),
}

impl<E: std::fmt::Display> std::fmt::Display for PaceError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PaceError::Stalled(d) => write!(f, "the request body stalled for {} s", d.as_secs()),
            PaceError::TooSlow { bytes, secs } => {
                write!(
                    f,
                    "the request body came too slowly ({bytes} bytes in {secs} s)"
                )
            }
            PaceError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PaceError<E> {}

/// A request body that fails when it stalls or crawls (Limits::pace).
pub struct Paced<B> {
    inner: B,
    gap: Duration,
    min_rate: u64,
    started: Instant,
    received: u64,
    sleep: Pin<Box<Sleep>>,
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = PaceError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                }
                let elapsed = self.started.elapsed();
                if elapsed > self.gap
                    && (self.received as f64) < self.min_rate as f64 * elapsed.as_secs_f64()
                {
                    return Poll::Ready(Some(Err(PaceError::TooSlow {
                        bytes: self.received,
                        secs: elapsed.as_secs(),
                    })));
                }
                let deadline = Instant::now() + self.gap;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(PaceError::Inner(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(PaceError::Stalled(self.gap)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a body that will not be used to its end (at most `max` bytes, within
/// `within`) without keeping it. Answering first and closing with unread bytes in
/// the socket makes the kernel reset the connection, so the caller sees a broken
/// connection instead of the answer; and a keep-alive client that sends its next
/// request on a connection hyper closed for its unread body sees it fail.
pub async fn discard<B>(body: B, max: usize, within: Duration)
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = Limited::new(body, max);
    let read_all = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(within, read_all).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that yields `chunks`, waiting `pause` before each.
    struct Trickle {
        chunks: Vec<usize>,
        pause: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.chunks.is_empty() {
                return Poll::Ready(None);
            }
            let pause = self.pause;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            let n = self.chunks.remove(0);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; n])))))
        }
    }

    async fn read_all<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Result<u64, B::Error> {
        let mut n = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            n += frame?.data_ref().map_or(0, |d| d.len() as u64);
        }
        Ok(n)
    }

    fn limits(gap: u64, rate: u64) -> Limits {
        Limits {
            body_timeout_secs: gap,
            body_min_bytes_per_sec: rate,
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_must_keep_coming() {
        let steady = Trickle {
            chunks: vec![20_000; 10],
            pause: Duration::from_secs(1),
            sleep: None,
        };
        assert_eq!(
            read_all(limits(5, 16_384).pace(steady)).await.unwrap(),
            200_000
        );
        let stalls = Trickle {
            chunks: vec![10, 10],
            pause: Duration::from_secs(6),
            sleep: None,
        };
        assert!(matches!(
            read_all(limits(5, 1).pace(stalls)).await,
            Err(PaceError::Stalled(_))
        ));
        let crawls = Trickle {
            chunks: vec![100; 20],
            pause: Duration::from_secs(1),
            sleep: None,
        };
        assert!(matches!(
            read_all(limits(5, 1_000).pace(crawls)).await,
            Err(PaceError::TooSlow { .. })
        ));
    }

    #[test]
    fn the_gate_caps_connections() {
        let gate = Limits {
            max_connections: 2,
            ..Limits::default()
        }
        .gate();
        let (a, b) = (gate.try_enter(), gate.try_enter());
        assert!(a.is_some() && b.is_some() && gate.try_enter().is_none());
        drop(a);
        assert!(gate.try_enter().is_some());
    }
}
