//! The I/O of one downstream connection: follows request framing and enforces the
//! header-read and idle timeouts.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection sits idle, so it
//! cannot tell a slow client (cut after `header_read_timeout`) from an idle one (closed after
//! `idle_timeout`). This wrapper can: its [`RequestFraming`] knows whether the client is
//! between requests or halfway through a head. A timeout surfaces as a `TimedOut` read error,
//! which makes hyper close the connection. HTTP/2 is not followed frame by frame: its first
//! request must arrive within the header-read timeout, and a connection without streams is
//! idle. On close, a connection whose client may still be sending lingers briefly (see
//! [`ConnIo`]'s `poll_shutdown`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{Position, RequestFraming};
use crate::stats::{ConnKind, Stats};

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
    requests: AtomicU64,
    /// HTTP/1 request heads the framing tracker has seen whole (set by the I/O, which sees
    /// every byte before hyper does).
    heads_seen: AtomicU64,
    /// Index of the first request with framing lameduck will not forward, or `u64::MAX`.
    conflict_at: AtomicU64,
    /// The connection was upgraded (a 101 went out): the bytes that follow are not HTTP.
    upgraded: AtomicBool,
    /// The client speaks HTTP/2.
    h2: AtomicBool,
    /// Its listener was removed by a reload: responses close the connection, as in a drain.
    retired: AtomicBool,
    /// It came over TLS (a label of its kind's count in the stats).
    tls: bool,
    /// Where a request's completion is counted when its [`InFlight`] drops (held here, once
    /// per connection, so that requests need no handle of their own).
    stats: Arc<Stats>,
}

impl Drop for ConnActivity {
    fn drop(&mut self) {
        // The HTTP connection ends (an upgraded one goes on as a tunnel, counted by it).
        self.stats.conn_kind_closed(self.kind(), self.tls);
    }
}

impl ConnActivity {
    /// Activity of a connection accepted now (over TLS or not), counting completed requests,
    /// and the connection by kind, in `stats`.
    pub fn new(h2: bool, tls: bool, stats: Arc<Stats>) -> Self {
        stats.conn_kind_open(if h2 { ConnKind::Http2 } else { ConnKind::Http1 }, tls);
        ConnActivity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            heads_seen: AtomicU64::new(0),
            conflict_at: AtomicU64::new(u64::MAX),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(h2),
            retired: AtomicBool::new(false),
            tls,
            stats,
        }
    }

    /// The kind the connection counts as now.
    fn kind(&self) -> ConnKind {
        if self.is_h2() {
            ConnKind::Http2
        } else {
            ConnKind::Http1
        }
    }

    /// True once the client is known to speak HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Notes that the connection's listener is gone (a reload removed it).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether the connection's listener is gone: it winds down as in a drain.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Called when a request reaches the service; the guard counts it in flight until its
    /// response has finished or was abandoned (dropped at any point, even before a response).
    /// `ambiguous` tells whether its framing was one lameduck refuses to forward.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        let ambiguous = !self.is_h2() && !self.tracker_vouches_for(index);
        InFlight { activity: self.clone(), ambiguous, completes: true }
    }

    /// Whether the framing tracker has seen HTTP/1 request `index` whole, and neither it nor
    /// one before it had framing lameduck refuses. A request it has not seen whole means the
    /// tracker lost step with hyper: the request is refused rather than trusted.
    fn tracker_vouches_for(&self, index: u64) -> bool {
        index < self.heads_seen.load(Ordering::Relaxed) && index < self.conflict_at.load(Ordering::Relaxed)
    }

    /// Marks the connection as upgraded; called before the 101 goes out.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// Since when no request of this connection has been in flight (the end of the last
    /// response, or the accept); `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed)))
    }
}

/// One request of this connection in flight; see [`ConnActivity::request_started`].
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<ConnActivity>,
    /// The request's framing was ambiguous or could not be followed: it gets a 400.
    pub ambiguous: bool,
    /// Counted as completed when it ends (false for a request refused for the drain).
    completes: bool,
}

impl InFlight {
    /// Leaves this request out of the completed ones: it was refused for the drain, which
    /// the stats count apart.
    pub fn refused_for_drain(&mut self) {
        self.completes = false;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        if self.completes {
            a.stats.request_completed();
        }
        a.last_done_ms.store(a.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// The downstream connection's I/O.
pub struct ConnIo<I> {
    inner: I,
    activity: Arc<ConnActivity>,
    framing: RequestFraming,
    /// When the head being read (or, before the first request, the connection) started; `None`
    /// until a read finds a head incomplete (a head that arrives whole needs no clock read).
    head_started: Option<Instant>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// Armed at or before whichever deadline applies; allocated once per connection.
    timer: Pin<Box<Sleep>>,
    /// Where `timer` is armed. Deadlines mostly move later (each request pushes them), so the
    /// timer is re-armed only when it fires early or must fire earlier: one timer operation
    /// per timeout period rather than one per request.
    timer_at: Option<Instant>,
    /// Bytes discarded while lingering after shutdown; `None` until shutdown starts.
    linger: Option<usize>,
    /// A plain TCP stream, whose close needs no protocol goodbye (TLS sends close_notify).
    plain_tcp: bool,
    /// The connection's first bytes, read ahead of a small first read; see [`ReadAhead`].
    ahead: ReadAhead,
}

/// hyper-util tells HTTP/1 from HTTP/2 by reading exactly the 24 bytes of the HTTP/2 preface
/// first, and then reads the rest of the request: two reads where one would do. A first read
/// that small reads a whole buffer from the socket instead and is served from it.
#[derive(Debug)]
enum ReadAhead {
    /// Nothing has been read yet.
    NotYet,
    /// Bytes read ahead and not yet handed out.
    Holding(BytesMut),
    /// Reads go straight to the socket.
    Done,
}

/// A first read asking for less than this reads ahead.
const SMALL_FIRST_READ: usize = 64;
/// How much a read ahead takes from the socket (a whole ordinary request head).
const READ_AHEAD: usize = 4096;

/// How long a closing connection keeps reading what the client still sends.
const LINGER_TIME: Duration = Duration::from_secs(1);
/// How much it reads at most before closing anyway.
const LINGER_BYTES: usize = 4 << 20;

impl<I> ConnIo<I> {
    /// Wraps a freshly accepted connection's I/O.
    pub fn new(
        inner: I,
        activity: Arc<ConnActivity>,
        header_read_timeout: Duration,
        idle_timeout: Duration,
        plain_tcp: bool,
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
            head_started: Some(now),
            header_read_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + header_read_timeout)),
            timer_at: None,
            linger: None,
            plain_tcp,
            ahead: ReadAhead::NotYet,
        }
    }

    /// The deadline that applies now, and whether it is the header-read (vs idle) one.
    fn deadline(&mut self) -> Option<(Instant, bool)> {
        if self.activity.is_h2() {
            return self.h2_deadline();
        }
        let position = self.framing.position();
        let first_request = position == Position::Idle && self.framing.heads() == 0;
        if position == Position::Head || first_request {
            let started = *self.head_started.get_or_insert_with(Instant::now);
            return Some((started + self.header_read_timeout, true));
        }
        match position {
            Position::Idle => self.activity.idle_since().map(|t| (t + self.idle_timeout, false)),
            _ => None,
        }
    }

    /// HTTP/2 is not followed frame by frame: the first request must come within the
    /// header-read timeout, and a connection without streams is idle.
    fn h2_deadline(&mut self) -> Option<(Instant, bool)> {
        if self.activity.requests.load(Ordering::Relaxed) == 0 {
            let started = *self.head_started.get_or_insert_with(Instant::now);
            return Some((started + self.header_read_timeout, true));
        }
        self.activity.idle_since().map(|t| (t + self.idle_timeout, false))
    }

    fn observe(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.activity.upgraded.load(Ordering::Relaxed) {
            // The 101 went out: these bytes belong to the tunnel.
            self.framing.turn_off();
            return;
        }
        if self.framing.position() == Position::Idle && self.framing.heads() > 0 {
            // A new head starts; its clock starts when a read first finds it incomplete.
            self.head_started = None;
        }
        self.framing.feed(bytes);
        if self.framing.is_h2() && !self.activity.h2.swap(true, Ordering::Relaxed) {
            // Prior knowledge: counted as HTTP/1.1 until the preface showed.
            self.activity.stats.conn_kind_closed(ConnKind::Http1, self.activity.tls);
            self.activity.stats.conn_kind_open(ConnKind::Http2, self.activity.tls);
        }
        self.activity.heads_seen.store(self.framing.heads(), Ordering::Relaxed);
        if let Some(i) = self.framing.conflict_at() {
            self.activity.conflict_at.store(i, Ordering::Relaxed);
        }
    }

    /// Polls the applicable deadline; `Ready` means it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((at, reading_head)) = self.deadline() else {
            return Poll::Pending;
        };
        if self.timer_at.is_none_or(|armed| armed > at) {
            self.timer.as_mut().reset(at);
            self.timer_at = Some(at);
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= at {
                break;
            }
            // Fired at an earlier deadline that has since moved: re-arm at the current one.
            self.timer.as_mut().reset(at);
            self.timer_at = Some(at);
        }
        let what =
            if reading_head { "request headers not received in time" } else { "idle keep-alive connection" };
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what))
    }
}

impl<I: AsyncRead + Unpin> ConnIo<I> {
    /// Reads up to [`READ_AHEAD`] bytes from the socket and serves the start of them.
    fn poll_read_ahead(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut ahead = BytesMut::with_capacity(READ_AHEAD);
        ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut ahead))?;
        self.ahead = ReadAhead::Holding(ahead);
        self.serve_ahead(buf)
    }

    /// Hands out bytes read ahead; the last of them ends the read-ahead.
    fn serve_ahead(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let ReadAhead::Holding(ahead) = &mut self.ahead {
            let take = buf.remaining().min(ahead.len());
            buf.put_slice(&ahead.split_to(take));
            if ahead.is_empty() {
                self.ahead = ReadAhead::Done;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.ahead {
            ReadAhead::NotYet if buf.remaining() < SMALL_FIRST_READ => this.poll_read_ahead(cx, buf),
            ReadAhead::Holding(_) => this.serve_ahead(buf),
            _ => Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        if matches!(this.ahead, ReadAhead::NotYet) && read.is_ready() {
            this.ahead = ReadAhead::Done;
        }
        match read {
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

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
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

    /// Sends FIN, then lingers: reads and discards what the client still sends (a request
    /// body lameduck answered without reading, say a 503 to a large POST) for a short while.
    /// Closing with unread data makes the kernel send a reset, which can destroy the answer
    /// before the client has read it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            let between_requests = !matches!(this.framing.position(), Position::Head | Position::Body);
            if between_requests && this.plain_tcp && !this.activity.upgraded.load(Ordering::Relaxed) {
                // hyper is closing a plain connection between requests: the close() that
                // follows sends the FIN, so spare the shutdown(2).
                return Poll::Ready(Ok(()));
            }
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            if between_requests {
                // The client has nothing more to send: close at once.
                return Poll::Ready(Ok(()));
            }
            let until = Instant::now() + LINGER_TIME;
            this.timer.as_mut().reset(until);
            this.timer_at = Some(until);
            this.linger = Some(0);
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let discarded = this.linger.get_or_insert(0);
                    *discarded += buf.filled().len();
                    if *discarded >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    ready!(this.timer.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_the_verdict_of_their_own_head_and_unseen_heads_are_refused() {
        let activity = Arc::new(ConnActivity::new(false, false, Arc::default()));
        activity.heads_seen.store(3, Ordering::Relaxed);
        activity.conflict_at.store(1, Ordering::Relaxed);
        let verdicts: Vec<bool> = (0..4).map(|_| activity.request_started().ambiguous).collect();
        // 0 fine; 1 conflicting; 2 after a conflict; 3 never seen whole by the tracker.
        assert_eq!(verdicts, [false, true, true, true]);
    }

    #[test]
    fn requests_count_as_completed_when_they_end_unless_refused_for_the_drain() {
        let stats = Arc::new(Stats::default());
        let activity = Arc::new(ConnActivity::new(false, false, stats.clone()));
        drop(activity.request_started());
        let mut refused = activity.request_started();
        refused.refused_for_drain();
        drop(refused);
        assert_eq!(stats.counts().requests_completed, 1);
    }

    #[test]
    fn http2_requests_are_not_judged_by_the_http1_tracker() {
        let activity = Arc::new(ConnActivity::new(true, false, Arc::default()));
        assert!(!activity.request_started().ambiguous);
    }
}
