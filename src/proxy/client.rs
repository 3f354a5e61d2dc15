//! lameduck's own HTTP/1.1 client for pooled upstream connections.
//!
//! hyper's client runs each connection as a task of its own behind a request channel, a
//! response oneshot and a body channel: every request crosses tasks twice and pays for that
//! machinery, which was a third of lameduck's user-space CPU per proxied request. This client
//! does the exchange in the request's own task, on a connection the request owns while it
//! runs: it writes the request head (and streams the body), reads and parses the response head
//! with httparse, and hands hyper's server a body that reads the upstream socket directly and
//! gives the connection back to its pool the moment the last byte has been read.
//!
//! Upgrade requests (WebSocket) still go through hyper's client, which hands over the
//! upgraded connection; see [`super::upstream`].
//!
//! An upstream may answer before it has the whole request body (an echo streams it back, a
//! `413` refuses it): the rest of the body is still sent while the response streams, and if
//! the response ends first the connection is closed rather than reused.
//!
//! What it deliberately does not do: pipelining; forwarding trailers or interim `1xx`
//! answers; HTTP/1.0 keep-alive requests (requests always go out as HTTP/1.1).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connect::UpstreamIo;
use super::upstream::Target;

/// Response headers beyond this many are refused (hyper's client default).
const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read buffer reserved before a read; doubled while reads fill it, up to [`MAX_READ`].
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// One keep-alive connection to an upstream address.
#[derive(Debug)]
pub struct Conn {
    io: UpstreamIo,
    /// Bytes read but not yet used.
    buf: BytesMut,
    /// How much to reserve before the next read.
    read_size: usize,
    /// It has carried a request before (so an upstream may have closed it meanwhile).
    reused: bool,
}

/// What became of one exchange.
#[derive(Debug)]
pub enum Outcome {
    /// The upstream answered; the body reads the rest from the connection.
    Answered(Response<UpstreamBody>),
    /// The upstream closed a reused connection before answering, and nothing of the request
    /// that cannot be sent again was sent: the request comes back, to be tried elsewhere.
    NotSent(Request<Incoming>),
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The client's request body failed (the client went away mid-upload).
    ClientAborted(hyper::Error),
    /// The upstream connection failed or the upstream spoke something that is not HTTP/1.
    Upstream(io::Error),
}

impl Conn {
    /// A connection fresh from [`super::connect::connect_io`].
    pub fn new(io: UpstreamIo) -> Self {
        Conn { io, buf: BytesMut::new(), read_size: MIN_READ, reused: false }
    }

    /// Whether an idle connection can carry a request: false if the upstream closed it (or
    /// sent something nobody asked for) while it sat in the pool. Costs a syscall only when
    /// the socket has reported something since the last read.
    pub fn is_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let readable = match &self.io {
            UpstreamIo::Plain(s) => s.poll_read_ready(&mut cx).is_ready(),
            UpstreamIo::Tls(s) => s.get_ref().0.poll_read_ready(&mut cx).is_ready(),
        };
        if !readable {
            return true;
        }
        // Something arrived: a FIN, a reset, a TLS record (a session ticket is fine), or junk.
        let mut probe = [0u8; 64];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == spare && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestBody {
    /// No body (none announced, and hyper has nothing for us).
    None,
    /// `Content-Length`: the bytes as they come.
    Length,
    /// Length unknown: chunked encoding.
    Chunked,
}

/// The request on its way out: the head, then the body as the client sends it. It may go
/// on after the response head is in (an upstream that answers while it reads, like an echo),
/// so the response body drives it too.
#[derive(Debug)]
struct Upload {
    body: Incoming,
    framing: RequestBody,
    /// Bytes queued for the socket, in order: the head, then body pieces.
    out: Outbox,
    /// The body has ended (or there is none) and its end is queued.
    done: bool,
    /// A body frame was taken from the client: the request can no longer be sent again.
    touched: bool,
    /// Writing failed: nothing more is sent, and the connection is not reused.
    failed: bool,
}

impl Upload {
    /// Writes as much of the request as can go now; ready once all of it is written.
    fn poll(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        loop {
            if !self.out.is_empty() {
                std::task::ready!(self.out.poll_write(io, cx)).map_err(ExchangeError::Upstream)?;
            }
            if self.done {
                // TLS keeps written records until flushed; plain TCP flushes at once.
                return Pin::new(io).poll_flush(cx).map_err(ExchangeError::Upstream);
            }
            std::task::ready!(self.poll_body(cx)).map_err(ExchangeError::ClientAborted)?;
        }
    }

    /// Takes the next piece of the request body, or its end, into the queue.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        self.touched = true;
        match frame {
            Some(Ok(frame)) => {
                // Trailers are not forwarded.
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        if self.framing == RequestBody::Chunked {
                            self.out.push(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.out.push(data);
                            self.out.push(Bytes::from_static(b"\r\n"));
                        } else {
                            self.out.push(data);
                        }
                    }
                }
            }
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => {
                self.done = true;
                if self.framing == RequestBody::Chunked {
                    self.out.push(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Nothing is left to send (all of it went, or writing failed).
    fn finished(&self) -> bool {
        self.failed || (self.done && self.out.is_empty())
    }
}

/// Bytes waiting for the upstream socket, oldest first. The first piece (the head, for most
/// requests the only one) is kept apart so that a request without a body allocates no queue.
#[derive(Debug)]
struct Outbox {
    first: Bytes,
    rest: VecDeque<Bytes>,
}

impl Outbox {
    fn new(first: Bytes) -> Self {
        Outbox { first, rest: VecDeque::new() }
    }

    fn is_empty(&self) -> bool {
        self.first.is_empty() && self.rest.is_empty()
    }

    fn push(&mut self, bytes: Bytes) {
        if self.is_empty() {
            self.first = bytes;
        } else {
            self.rest.push_back(bytes);
        }
    }

    /// Writes until nothing is left or the socket is full.
    fn poll_write(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); 4];
            let pieces = std::iter::once(&self.first).chain(&self.rest).filter(|b| !b.is_empty());
            let count = pieces.zip(slices.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
            let n = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            if self.first.is_empty() {
                self.first = self.rest.pop_front().expect("no more written than was queued");
            }
            let take = n.min(self.first.len());
            self.first.advance(take);
            n -= take;
        }
        if self.first.is_empty() {
            if let Some(next) = self.rest.pop_front() {
                self.first = next;
            }
        }
    }
}

/// One request in progress on one connection, until its response head is in.
struct Exchange {
    conn: Conn,
    parts: http::request::Parts,
    upload: Upload,
    /// Why writing failed (the upstream may still answer), reported if no answer comes.
    write_error: Option<io::Error>,
    /// The parsed response head, once it is in.
    head: Option<Head>,
}

/// A parsed response head and what it says about the body and the connection.
struct Head {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

impl Exchange {
    fn new(conn: Conn, req: Request<Incoming>) -> Self {
        let (head, framing) = encode_head(&req);
        let (parts, body) = req.into_parts();
        let done = framing == RequestBody::None;
        let upload = Upload { body, framing, out: Outbox::new(head), done, touched: false, failed: false };
        Exchange { conn, parts, upload, write_error: None, head: None }
    }

    /// Drives writing and reading until the response head is in.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        if !self.upload.finished() {
            match self.upload.poll(&mut self.conn.io, cx) {
                Poll::Ready(Err(ExchangeError::Upstream(e))) => {
                    // The upstream may have answered and stopped reading (a 413, say).
                    self.write_error = Some(e);
                    self.upload.failed = true;
                }
                Poll::Ready(Err(aborted)) => return Poll::Ready(Err(aborted)),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        match std::task::ready!(self.poll_head(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ExchangeError::Upstream(self.write_error.take().unwrap_or(e)))),
        }
    }

    /// Reads until a final (non-1xx) response head is parsed.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.buf.is_empty() {
                let method_is_head = self.parts.method == Method::HEAD;
                if let Some(head) = parse_head(&mut self.conn.buf, method_is_head)? {
                    self.head = Some(head);
                    return Poll::Ready(Ok(()));
                }
                if self.conn.buf.len() > MAX_HEAD_BYTES {
                    return Poll::Ready(Err(invalid("response head too large")));
                }
            }
            let n = std::task::ready!(self.conn.poll_read_more(cx))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// The response, its body reading on from the connection (and sending what is left of
    /// the request).
    fn answered(self, target: Arc<Target>) -> Response<UpstreamBody> {
        let head = self.head.expect("answered only once the head is in");
        let keep_alive = head.keep_alive && !self.upload.failed;
        let upload = Some(Box::new(self.upload)).filter(|u| !u.finished());
        let body = UpstreamBody { conn: Some(self.conn), framing: head.framing, keep_alive, upload, target };
        let (parts, ()) = head.response.into_parts();
        Response::from_parts(parts, body)
    }

    /// Whether a failure may be retried on another connection: only on a reused connection
    /// the upstream closed before answering, for a request that can be sent again and that
    /// is safe to repeat.
    fn retryable(&self, e: &ExchangeError) -> bool {
        let ExchangeError::Upstream(e) = e else {
            return false;
        };
        let closed = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        );
        let resendable = !self.upload.touched && is_idempotent(&self.parts.method);
        self.conn.reused && closed && self.conn.buf.is_empty() && resendable
    }
}

/// Sends `req` on `conn` and reads the response head. `target` takes the connection back
/// once the response body has been read whole, if the connection can carry another request.
/// A failure that may be retried elsewhere gives the request back as [`Outcome::NotSent`].
pub fn exchange(conn: Conn, req: Request<Incoming>, target: Arc<Target>) -> Exchanging {
    Exchanging { exchange: Some(Exchange::new(conn, req)), target: Some(target) }
}

/// The future of [`exchange`]: written by hand so that it holds the exchange once (an async
/// fn would also keep its arguments), since it sits inside every request's future.
pub struct Exchanging {
    exchange: Option<Exchange>,
    target: Option<Arc<Target>>,
}

impl std::future::Future for Exchanging {
    type Output = Result<Outcome, ExchangeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this.exchange.as_mut().expect("polled after completion").poll(cx);
        let result = std::task::ready!(polled);
        let exchange = this.exchange.take().expect("present until completion");
        Poll::Ready(match result {
            Ok(()) => Ok(Outcome::Answered(exchange.answered(this.target.take().expect("taken once")))),
            Err(e) if exchange.retryable(&e) => {
                Ok(Outcome::NotSent(Request::from_parts(exchange.parts, exchange.upload.body)))
            }
            Err(e) => Err(e),
        })
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request head as bytes, and how its body goes on the wire.
fn encode_head(req: &Request<Incoming>) -> (Bytes, RequestBody) {
    let headers = req.headers();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut size = req.method().as_str().len() + target.len() + 16;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut head = Vec::with_capacity(size + 32);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let body = if headers.contains_key(header::CONTENT_LENGTH) {
        RequestBody::Length
    } else if req.body().is_end_stream() {
        RequestBody::None
    } else {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestBody::Chunked
    };
    head.extend_from_slice(b"\r\n");
    (Bytes::from(head), body)
}

/// Parses a response head at the front of `buf`, taking it out. `None`: incomplete. A 1xx
/// head (other than 101) is skipped: the final answer follows it.
fn parse_head(buf: &mut BytesMut, method_is_head: bool) -> io::Result<Option<Head>> {
    loop {
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
        };
        let code = parsed.code.expect("a complete head has a status");
        let http11 = parsed.version == Some(1);
        // Where each name and value sits in `buf`, so that values can share its bytes.
        let base = buf.as_ptr() as usize;
        if len > usize::from(u16::MAX) {
            return Err(invalid("response head too large"));
        }
        let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
        let count = parsed.headers.len();
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            // Within the head, which is shorter than 64 KiB (checked above).
            *span = (name as u16, h.name.len() as u16, value as u16, h.value.len() as u16);
        }
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| invalid("bad response status"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid("101 to a request that asked for no upgrade"));
            }
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        let mut facts = HeadFacts::default();
        for &(name_at, name_len, value_at, value_len) in &spans[..count] {
            let (name_at, name_len) = (usize::from(name_at), usize::from(name_len));
            let (value_at, value_len) = (usize::from(value_at), usize::from(value_len));
            let name = &head[name_at..name_at + name_len];
            let name = HeaderName::from_bytes(name).map_err(|_| invalid("bad response header name"))?;
            let value = head.slice(value_at..value_at + value_len);
            let value =
                HeaderValue::from_maybe_shared(value).map_err(|_| invalid("bad response header value"))?;
            facts.note(&name, &value)?;
            headers.append(name, value);
        }
        let framing = facts.framing(status, method_is_head);
        let keep_alive =
            framing != Framing::UntilClose && if http11 { !facts.close } else { facts.keep_alive };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
        *response.headers_mut() = headers;
        return Ok(Some(Head { response, framing, keep_alive }));
    }
}

/// What the response headers say about framing and the connection.
#[derive(Debug, Default)]
struct HeadFacts {
    content_length: Option<u64>,
    transfer_encoding: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl HeadFacts {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> io::Result<()> {
        if *name == header::CONTENT_LENGTH {
            let n = parse_content_length(value.as_bytes()).ok_or_else(|| invalid("bad content-length"))?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(invalid("conflicting content-length"));
            }
            self.content_length = Some(n);
        } else if *name == header::TRANSFER_ENCODING {
            // Chunked only if it is the last coding applied.
            let last = value.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
            self.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// RFC 9112 section 6.3, for a response.
    fn framing(&self, status: StatusCode, method_is_head: bool) -> Framing {
        if method_is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Framing::Length(0);
        }
        match (self.transfer_encoding, self.content_length) {
            (Some(true), _) => Framing::Chunked(Chunked::Size { size: 0, digits: 0 }),
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    }
}

fn parse_content_length(digits: &[u8]) -> Option<u64> {
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    UntilClose,
    /// Read whole.
    Done,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading the hex size.
    Size { size: u64, digits: u8 },
    /// Skipping a chunk extension (or blanks) up to the line's end.
    SizeLineEnd { size: u64 },
    /// Inside chunk data.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd { cr_seen: bool },
    /// Inside the trailer section; `empty` while the current line has nothing in it.
    Trailers { empty: bool },
}

/// What one step of the chunked decoder found.
enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

/// Decodes what it can of `buf`, taking out what it used.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> io::Result<Decoded> {
    while !buf.is_empty() {
        match *state {
            Chunked::Size { size, digits } => {
                let b = buf[0];
                let digit = match b {
                    b'0'..=b'9' => Some(b - b'0'),
                    b'a'..=b'f' => Some(b - b'a' + 10),
                    b'A'..=b'F' => Some(b - b'A' + 10),
                    _ => None,
                };
                match digit {
                    Some(d) if digits < 15 => {
                        *state = Chunked::Size { size: size * 16 + u64::from(d), digits: digits + 1 };
                    }
                    Some(_) => return Err(invalid("chunk size too large")),
                    None if digits == 0 => return Err(invalid("bad chunk size")),
                    None if b == b'\n' => *state = after_size_line(size),
                    None => *state = Chunked::SizeLineEnd { size },
                }
                buf.advance(1);
            }
            Chunked::SizeLineEnd { size } => match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    buf.advance(i + 1);
                    *state = after_size_line(size);
                }
                None => buf.clear(),
            },
            Chunked::Data(left) => {
                let take = left.min(buf.len() as u64) as usize;
                let data = buf.split_to(take).freeze();
                *state = if take as u64 == left {
                    Chunked::DataEnd { cr_seen: false }
                } else {
                    Chunked::Data(left - take as u64)
                };
                return Ok(Decoded::Data(data));
            }
            Chunked::DataEnd { cr_seen } => {
                match buf[0] {
                    b'\r' if !cr_seen => *state = Chunked::DataEnd { cr_seen: true },
                    b'\n' => *state = Chunked::Size { size: 0, digits: 0 },
                    _ => return Err(invalid("chunk data not followed by CRLF")),
                }
                buf.advance(1);
            }
            Chunked::Trailers { empty } => {
                let b = buf[0];
                buf.advance(1);
                match b {
                    b'\n' if empty => return Ok(Decoded::End),
                    b'\n' => *state = Chunked::Trailers { empty: true },
                    b'\r' => {}
                    _ => *state = Chunked::Trailers { empty: false },
                }
            }
        }
    }
    Ok(Decoded::NeedMore)
}

fn after_size_line(size: u64) -> Chunked {
    if size == 0 {
        Chunked::Trailers { empty: true }
    } else {
        Chunked::Data(size)
    }
}

/// A response body read straight from the upstream connection. Dropped before its end, it
/// closes the connection; read to its end, it gives the connection back to its pool.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None` once the body ended.
    conn: Option<Conn>,
    framing: Framing,
    /// The connection may carry another request after this response.
    keep_alive: bool,
    /// What is left of the request to send, if the upstream answered before it had it all
    /// (boxed: rare, and every response carries this field).
    upload: Option<Box<Upload>>,
    target: Arc<Target>,
}

impl UpstreamBody {
    /// The body has ended: the connection goes back to the pool if it can be used again.
    fn end(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut conn) = self.conn.take() {
            // Bytes beyond the response were never asked for, and a request not sent whole
            // leaves the upstream expecting more: such a connection is not reused.
            if self.keep_alive && conn.buf.is_empty() && self.upload.is_none() {
                conn.reused = true;
                if conn.buf.capacity() > 2 * MIN_READ {
                    // A large download grew the buffer: an idle connection does not keep it.
                    conn.buf = BytesMut::new();
                    conn.read_size = MIN_READ;
                }
                self.target.give_back(conn);
            }
        }
    }

    /// Sends more of the request, if some is left.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let (Some(upload), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) else {
            return Ok(());
        };
        if upload.finished() {
            return Ok(());
        }
        match upload.poll(&mut conn.io, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.upload = None,
            // The client went away mid-upload: its response goes nowhere either.
            Poll::Ready(Err(ExchangeError::ClientAborted(e))) => return Err(io::Error::other(e)),
            // The upstream stopped reading; its answer may still come whole.
            Poll::Ready(Err(ExchangeError::Upstream(_))) => {
                upload.failed = true;
                self.keep_alive = false;
            }
        }
        Ok(())
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Err(e) = self.poll_upload(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let take = (*left).min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(take as usize).freeze();
                    *left -= take;
                    if *left == 0 {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::Chunked(state) if !conn.buf.is_empty() => match decode_chunked(state, &mut conn.buf)
                {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::End) => {
                        self.end();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
                Framing::UntilClose if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                }
                _ => {}
            }
            let conn = self.conn.as_mut().expect("checked above");
            let n = match std::task::ready!(conn.poll_read_more(cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if n == 0 {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection mid-body",
                ))));
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (HEAD, 204, 304, length 0).
        if self.framing == Framing::Length(0) {
            self.end();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.get_mut().poll_data(cx).map(|data| data.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> io::Result<(Vec<u8>, bool)> {
        let mut state = Chunked::Size { size: 0, digits: 0 };
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_decode() {
        let wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(decode_all(&[wire]).unwrap(), (b"hello world".to_vec(), true));
    }

    #[test]
    fn the_outbox_gives_bytes_back_in_order_across_partial_writes() {
        let mut out = Outbox::new(Bytes::from_static(b"head"));
        out.push(Bytes::from_static(b"-one"));
        out.push(Bytes::from_static(b"-two"));
        let mut written = Vec::new();
        for step in [3, 2, 4, 3] {
            let mut pending: Vec<u8> = out.first.to_vec();
            out.rest.iter().for_each(|b| pending.extend_from_slice(b));
            written.extend_from_slice(&pending[..step]);
            out.advance(step);
        }
        assert!(out.is_empty());
        assert_eq!(written, b"head-one-two");
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"2\r\nabX\r\n"]).is_err());
        assert!(decode_all(&[b"ffffffffffffffffff\r\n"]).is_err());
    }

    #[test]
    fn heads_give_framing_and_keep_alive() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"[..],
        );
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.response.status(), 200);
        assert_eq!(head.response.headers()["x-a"], "b");
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(3), true));
        assert_eq!(&buf[..], b"abc");

        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!((head.framing, head.keep_alive), (Framing::UntilClose, false));

        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert!(matches!(head.framing, Framing::Chunked(_)) && !head.keep_alive);

        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..]);
        assert_eq!(parse_head(&mut buf, true).unwrap().unwrap().framing, Framing::Length(0));

        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, false).is_err());

        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf, false).unwrap().is_none());
    }

    proptest! {
        /// However the wire is split into reads, the decoder yields the same body.
        #[test]
        fn chunked_decoding_ignores_read_boundaries(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut wire = Vec::new();
            for part in &parts {
                wire.extend_from_slice(format!("{:X}\r\n", part.len()).as_bytes());
                wire.extend_from_slice(part);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len())).collect();
            points.sort_unstable();
            points.push(wire.len());
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points {
                pieces.push(&wire[last..p]);
                last = p;
            }
            let (body, ended) = decode_all(&pieces).unwrap();
            prop_assert!(ended);
            prop_assert_eq!(body, parts.concat());
        }
    }
}
