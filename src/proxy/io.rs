//! The I/O of one downstream connection: follows request framing and enforces the
//! header-read and idle timeouts.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection sits idle, so it
//! cannot tell a slow client (cut after `header_read_timeout`) from an idle one (closed after
//! `idle_timeout`). This wrapper can: its [`RequestFraming`] knows whether the client is
//! between requests or halfway through a head. A timeout surfaces as a `TimedOut` read error,
//! which makes hyper close the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{Position, RequestFraming};

/// Per-connection facts shared between the connection's I/O and its requests (which for
/// HTTP/2 run on other tasks, hence atomics).
#[derive(Debug)]
pub struct ConnActivity {
    /// When the connection was accepted; timestamps below count milliseconds from it.
    epoch: Instant,
    /// Requests of this connection whose responses have not finished.
    in_flight: AtomicU32,
    /// When the last response finished (ms since `epoch`).
    last_done_ms: AtomicU64,
    /// Requests handed to the service so far; gives each request its index.
    requests: AtomicU32,
    /// Index of the first request with conflicting framing, or `u32::MAX`.
    conflict_at: AtomicU32,
    /// The client speaks HTTP/2.
    h2: AtomicBool,
}

impl ConnActivity {
    /// Activity of a connection accepted now.
    pub fn new(h2: bool) -> Self {
        ConnActivity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            conflict_at: AtomicU32::new(u32::MAX),
            h2: AtomicBool::new(h2),
        }
    }

    /// True once the client is known to speak HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Called when a request reaches the service; returns true if its framing was ambiguous.
    pub fn request_started(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        self.conflict_at.load(Ordering::Relaxed) == index
    }

    /// Called when a response has finished (or was abandoned).
    pub fn request_done(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_done_ms.store(ms, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Release);
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed)))
    }
}

/// The downstream connection's I/O.
pub struct ConnIo<I> {
    inner: I,
    activity: Arc<ConnActivity>,
    framing: RequestFraming,
    /// When the head being read (or, before the first request, the connection) started.
    head_started: Instant,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// Armed at whichever deadline applies; allocated once per connection.
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
}

impl<I> ConnIo<I> {
    /// Wraps a freshly accepted connection's I/O.
    pub fn new(
        inner: I,
        activity: Arc<ConnActivity>,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let mut framing = RequestFraming::new();
        if activity.is_h2() {
            framing.turn_off();
        }
        ConnIo {
            inner,
            activity,
            framing,
            head_started: now,
            header_read_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + header_read_timeout)),
            timer_at: None,
        }
    }

    /// The deadline that applies now, and whether it is the header-read (vs idle) one.
    fn deadline(&self) -> Option<(Instant, bool)> {
        match self.framing.position() {
            Position::Head => Some((self.head_started + self.header_read_timeout, true)),
            Position::Idle if self.framing.heads() == 0 => {
                Some((self.head_started + self.header_read_timeout, true))
            }
            Position::Idle => self.activity.idle_since().map(|t| (t + self.idle_timeout, false)),
            Position::Body | Position::Off => None,
        }
    }

    fn observe(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let was_idle = self.framing.position() == Position::Idle && self.framing.heads() > 0;
        self.framing.feed(bytes);
        if was_idle {
            self.head_started = Instant::now();
        }
        if self.framing.is_h2() {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
        if let Some(i) = self.framing.conflict_at() {
            self.activity.conflict_at.store(i, Ordering::Relaxed);
        }
    }

    /// Polls the applicable deadline; `Ready` means it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((at, reading_head)) = self.deadline() else {
            return Poll::Pending;
        };
        if self.timer_at != Some(at) {
            self.timer.as_mut().reset(at);
            self.timer_at = Some(at);
        }
        ready!(self.timer.as_mut().poll(cx));
        let what =
            if reading_head { "request headers not received in time" } else { "idle keep-alive connection" };
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.framing.position() != Position::Off {
                    this.observe(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
