//! The client driven over scripted I/O (`tokio_test::io`), the way Pingora tests its HTTP/1
//! client. The upstream's side of a connection is a script: the bytes it must be written, and
//! the bytes it answers with, one piece per read. Pieces are cut at awkward places (a head split
//! mid-line or between CR and LF, a chunk size apart from its CRLF, a body across reads), and
//! writes are accepted a few bytes at a time, so the writer goes through partial writes.
//!
//! A script is exact: a write it does not expect, or a byte that differs, panics; a script not
//! played to its end panics when its connection is dropped (for a pooled connection, when its
//! pool is). Time is paused, so the waits that cut writes short take no time, and a client
//! stuck waiting for something the script never does fails at once (see [`within`]).
//!
//! - [`exchange`]: the request head out, the response head in, 1xx, 101, garbage, retries;
//! - [`upload`]: request bodies, by length and chunked, answered early, failing either side;
//! - [`body`]: response bodies of every framing, and when the connection goes back to its pool;
//! - [`split`]: a property test: a whole exchange cut into reads and writes at random.

mod body;
mod exchange;
mod split;
mod upload;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, StreamBody};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_test::io::{Builder, Mock};

use super::conn::Conn;
use super::connect::UpstreamIo;
use super::exchange::{exchange, Exchanged};
use super::pool::{Lease, Target};
use super::{RequestBody, SendError, UpstreamBody};
use crate::config::UpstreamAddr;

/// Past this (paused) time a test counts the client as stuck.
const STUCK: Duration = Duration::from_secs(60);

/// `f`, failing the test if the client gets stuck: time is paused, so a wait for something the
/// script never does ends at once, at this timeout.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STUCK, f)
        .await
        .expect("the client is stuck waiting for something the script never does")
}

/// An address to pool connections under; nothing connects to it.
fn target() -> Arc<Target> {
    Arc::new(Target::new(
        UpstreamAddr::Ip(([127, 0, 0, 1], 9).into()),
        None,
        crate::traffic::UpstreamTraffic::leaked("test"),
    ))
}

/// A script's connection: the scripted bytes, and flushes that can be made to wait (the way
/// TLS waits to push its records into a full socket), counted when they complete.
#[derive(Debug)]
pub struct ScriptedIo {
    mock: Mock,
    /// Flushes still to answer `Pending` (waking the task at once) before one goes through.
    flushes_to_delay: usize,
    /// Flushes that completed.
    flushed: Arc<AtomicUsize>,
}

impl AsyncRead for ScriptedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().mock).poll_read(cx, buf)
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().mock).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flushes_to_delay > 0 {
            this.flushes_to_delay -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(Pin::new(&mut this.mock).poll_flush(cx))?;
        this.flushed.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().mock).poll_shutdown(cx)
    }
}

/// The upstream's side of one connection, in order.
struct Script(Builder);

impl Script {
    fn new() -> Self {
        Script(Builder::new())
    }

    /// The client must write `bytes`, but the upstream takes them only up to each of `cuts`
    /// (offsets into `bytes`, ascending) at a time: each cut ends a write short.
    fn accepts(&mut self, bytes: &[u8], cuts: &[usize]) -> &mut Self {
        let mut from = 0;
        for &to in cuts.iter().chain([&bytes.len()]) {
            if from > 0 {
                // A write stops at a wait (tokio-test's Mock otherwise runs one write across
                // every expected piece).
                self.0.wait(Duration::from_millis(1));
            }
            self.0.write(&bytes[from..to]);
            from = to;
        }
        self
    }

    /// The upstream sends `reads`, one piece per read of the client's.
    fn answers(&mut self, reads: &[&[u8]]) -> &mut Self {
        for read in reads {
            self.0.read(read);
        }
        self
    }

    /// The client's next write fails with `kind` (the upstream closed or stopped reading).
    fn write_fails(&mut self, kind: io::ErrorKind) -> &mut Self {
        self.0.write_error(kind.into());
        self
    }

    /// After this, another `GET /next` and its `204`: see [`assert_pooled_and_reusable`].
    fn then_next_request(&mut self) -> &mut Self {
        self.accepts(NEXT_REQUEST, &[]).answers(&[b"HTTP/1.1 204 No Content\r\n\r\n"])
    }

    /// A new connection playing the script; its reads end (EOF) where the script does. The
    /// script moves into the connection, leaving this one empty: tokio-test hands out a scripted
    /// write error only when nothing else holds it, so no copy may stay behind while it plays.
    fn conn(&mut self) -> Conn {
        self.conn_with_slow_flushes(0, Arc::default())
    }

    /// Like [`Script::conn`], but the first `delayed` flushes wait once each; `flushed` counts
    /// the flushes that completed.
    fn conn_with_slow_flushes(&mut self, delayed: usize, flushed: Arc<AtomicUsize>) -> Conn {
        let mock = std::mem::replace(&mut self.0, Builder::new()).build();
        Conn::new(UpstreamIo::Scripted(ScriptedIo { mock, flushes_to_delay: delayed, flushed }))
    }

    /// A connection playing the script that has carried a request before (from a pool).
    fn reused_conn(&mut self) -> Conn {
        let mut conn = self.conn();
        conn.reused = true;
        conn
    }

    /// The response to `req` from a new connection playing the script (see [`answer`]), and the
    /// target whose pool the connection goes back to.
    async fn answer_to<B: RequestBody>(&mut self, req: Request<B>) -> (Response<UpstreamBody>, Arc<Target>) {
        let target = target();
        let resp = answer(self.conn(), req, &target).await;
        (resp, target)
    }
}

/// What [`Script::then_next_request`] expects written.
const NEXT_REQUEST: &[u8] = b"GET /next HTTP/1.1\r\nhost: app.test\r\n\r\n";

/// What `get("/")` puts on the wire.
const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n";

/// `GET path` with a `Host` and no body.
fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).header("host", "app.test").body(Empty::new()).expect("a valid request")
}

/// The offset just past the first `needle` in `bytes`: a place to cut.
fn after(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).expect("the needle is in the bytes") + needle.len()
}

/// The response the exchange of `req` on `conn` gives; any other outcome fails the test.
async fn answer<B: RequestBody>(conn: Conn, req: Request<B>, target: &Arc<Target>) -> Response<UpstreamBody> {
    match within(exchange(conn, req, Lease::take(target), false)).await {
        Ok(Exchanged::Answered(resp)) => resp,
        Ok(Exchanged::Switched(head, _)) => panic!("switched protocols: {head:?}"),
        Ok(Exchanged::NotSent(_)) => panic!("the request came back unsent"),
        Err(e) => panic!("the exchange failed: {e:?}"),
    }
}

/// The error the exchange of `req` on `conn` ends in; any other outcome fails the test.
async fn failure<B: RequestBody>(
    conn: Conn,
    req: Request<B>,
    target: &Arc<Target>,
    upgrade: bool,
) -> SendError {
    match within(exchange(conn, req, Lease::take(target), upgrade)).await {
        Ok(Exchanged::Answered(resp)) => panic!("answered: {resp:?}"),
        Ok(Exchanged::Switched(head, _)) => panic!("switched protocols: {head:?}"),
        Ok(Exchanged::NotSent(_)) => panic!("the request came back unsent"),
        Err(e) => e,
    }
}

/// The `io::Error` kind of an upstream failure; any other failure fails the test.
fn upstream_kind(e: &SendError) -> io::ErrorKind {
    match e {
        SendError::Upstream(e) => e.kind(),
        other => panic!("not an upstream failure: {other:?}"),
    }
}

/// The exchange of `req` on `conn` fails upstream with an error of `kind` (`why`: the reason it
/// must be that one), and the connection does not go back to the pool.
async fn assert_upstream_error_and_not_pooled<B: RequestBody>(
    conn: Conn,
    req: Request<B>,
    kind: io::ErrorKind,
    why: &str,
) {
    let target = target();
    let e = failure(conn, req, &target, false).await;
    assert_eq!(upstream_kind(&e), kind, "{why}");
    assert_not_pooled_in(&target, why);
}

/// A response body read to its end: its bytes, and the error that ended it early, if one did.
async fn read_body(mut body: UpstreamBody) -> (Vec<u8>, Option<io::Error>) {
    let mut bytes = Vec::new();
    while let Some(frame) = within(body.frame()).await {
        match frame {
            Ok(frame) => bytes.extend_from_slice(&frame.into_data().expect("only data frames")),
            Err(e) => return (bytes, Some(e)),
        }
    }
    (bytes, None)
}

/// A body read whole, without error.
async fn read_whole(body: UpstreamBody) -> Vec<u8> {
    let (bytes, error) = read_body(body).await;
    assert!(error.is_none(), "the body failed after {:?}: {error:?}", String::from_utf8_lossy(&bytes));
    bytes
}

/// The pool of `target` holds the connection, ready for the next request: it carries the
/// exchange [`Script::then_next_request`] scripted, and goes back again after it.
async fn assert_pooled_and_reusable(target: &Arc<Target>) {
    let conn = target.take_idle().expect("the connection went back to the pool");
    assert!(conn.reused, "a pooled connection counts as reused");
    assert!(conn.buf.is_empty(), "a pooled connection holds no unread bytes");
    assert!(target.take_idle().is_none(), "one connection, pooled once");
    let resp = answer(conn, get("/next"), target).await;
    assert_eq!(resp.status(), 204);
    drop(resp);
    assert!(target.take_idle().is_some(), "the bodiless 204 gives the connection back again");
}

/// The pool of `target` is empty: the connection was closed.
fn assert_not_pooled(target: &Target) {
    assert!(target.take_idle().is_none(), "the connection must not go back to the pool");
}

/// [`assert_not_pooled`], for the case `label` of a table-driven test.
fn assert_not_pooled_in(target: &Target, label: &str) {
    assert!(target.take_idle().is_none(), "{label}: the connection must not go back to the pool");
}

/// The body of `resp` reads whole as `expected`, and then the connection is pooled and reusable
/// (the script ends with [`Script::then_next_request`]).
async fn assert_body_then_pooled(resp: Response<UpstreamBody>, expected: &[u8], target: &Arc<Target>) {
    assert_eq!(read_whole(resp.into_body()).await, expected, "the body read whole");
    assert_pooled_and_reusable(target).await;
}

/// The body of `resp` reads whole as `expected`, but the connection is closed, not pooled.
async fn assert_body_then_not_pooled(resp: Response<UpstreamBody>, expected: &[u8], target: &Target) {
    assert_eq!(read_whole(resp.into_body()).await, expected, "the body read whole");
    assert_not_pooled(target);
}

/// A request body given whole up front, as `frames`.
type Frames = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<io::Result<Frame<Bytes>>>>>;

fn frames(frames: Vec<io::Result<Frame<Bytes>>>) -> Frames {
    StreamBody::new(futures_util::stream::iter(frames))
}

fn data(bytes: &'static [u8]) -> io::Result<Frame<Bytes>> {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

/// A request body that arrives as the test sends it; it ends when the sender is dropped.
#[derive(Debug)]
struct Channel(mpsc::UnboundedReceiver<io::Result<Bytes>>);

fn channel() -> (mpsc::UnboundedSender<io::Result<Bytes>>, Channel) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Channel(rx))
}

impl Body for Channel {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.get_mut().0.poll_recv(cx).map(|piece| piece.map(|piece| piece.map(Frame::data)))
    }
}
