//! One request and its response head on one upstream connection, run in the request's own
//! task.
//!
//! The exchange writes the request (see [`super::upload`]) and reads the response head (see
//! [`super::head`]) at the same time, since an upstream may answer before it has read the
//! whole body. It ends in one of three ways: the response (its body reads on from the
//! connection), the connection switched protocols (a `101` to an upgrade request), or the
//! request handed back unsent, when the upstream closed a reused connection before answering
//! and the request may safely go out again on another.

use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};

use super::body::UpstreamBody;
use super::conn::Conn;
use super::error::SendError;
use super::framing::invalid;
use super::head::{encode_head, parse_head, Asked, ResponseHead, MAX_HEAD_BYTES};
use super::pool::Lease;
use super::switched::Switched;
use super::upload::{RequestBody, Upload};

/// What became of one exchange.
#[derive(Debug)]
pub enum Exchanged<B> {
    /// The upstream answered; the body reads the rest from the connection.
    Answered(Response<UpstreamBody>),
    /// The upstream switched protocols: the connection is the new protocol's now.
    Switched(Response<()>, Switched),
    /// The upstream closed a reused connection before answering, and nothing of the request
    /// that cannot be sent again was sent: the request comes back, to be tried elsewhere.
    NotSent(Request<B>),
}

/// One request in progress on one connection, until its response head is in.
struct Exchange<B> {
    conn: Conn,
    parts: http::request::Parts,
    upload: Upload<B>,
    asked: Asked,
    /// Why writing failed (the upstream may still answer), reported if no answer comes.
    write_error: Option<io::Error>,
    /// The parsed response head, once it is in.
    head: Option<ResponseHead>,
}

impl<B: RequestBody> Exchange<B> {
    fn new(conn: Conn, req: Request<B>, upgrade: bool, sent: &'static AtomicU64) -> Self {
        let (head, framing) = encode_head(&req);
        let (parts, body) = req.into_parts();
        let asked = Asked { head_method: parts.method == Method::HEAD, upgrade };
        let upload = Upload::new(head, body, framing, sent);
        Exchange { conn, parts, upload, asked, write_error: None, head: None }
    }

    /// Drives writing and reading until the response head is in.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if !self.upload.finished() {
            match self.upload.poll(&mut self.conn.io, cx) {
                Poll::Ready(Err(SendError::Upstream(e))) => {
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
            Err(e) => Poll::Ready(Err(SendError::Upstream(self.write_error.take().unwrap_or(e)))),
        }
    }

    /// Reads until a final (non-1xx) response head, or a `101`, is parsed.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.conn.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.conn.buf, self.asked)? {
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

    /// What the exchange came to, once the head is in.
    fn finish(self, lease: Lease) -> Result<Exchanged<B>, SendError> {
        let head = self.head.expect("finished only once the head is in");
        if head.response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Written whole is enough: the tunnel's writes flush what TLS still holds.
            if !self.upload.sent() || self.upload.failed {
                let why = "101 before the request was sent whole";
                return Err(SendError::Upstream(self.write_error.unwrap_or_else(|| invalid(why))));
            }
            return Ok(Exchanged::Switched(head.response, Switched::new(self.conn, lease)));
        }
        // An upgrade request has a connection of its own, which an answer other than 101 ends.
        let keep_alive = head.keep_alive && !self.upload.failed && !self.asked.upgrade;
        let upload = Some(self.upload).filter(|u| !u.finished()).map(|u| Box::new(u) as Box<_>);
        let body = UpstreamBody::new(self.conn, head.framing, keep_alive, upload, lease);
        let (parts, ()) = head.response.into_parts();
        Ok(Exchanged::Answered(Response::from_parts(parts, body)))
    }

    /// Whether a failure may be retried on another connection: only on a reused connection
    /// the upstream closed before answering, for a request that can be sent again and that
    /// is safe to repeat (RFC 9110 §9.2.2).
    fn retryable(&self, e: &SendError) -> bool {
        let SendError::Upstream(e) = e else {
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

/// Sends `req` on `conn` and reads the response head. `lease`'s address takes the connection
/// back once the response body has been read whole, if the connection can carry another
/// request; the request counts as in flight to it until then.
/// `upgrade`: the request asks to switch protocols, so a `101` is a good answer. A failure
/// that may be retried elsewhere gives the request back as [`Exchanged::NotSent`].
pub fn exchange<B: RequestBody>(conn: Conn, req: Request<B>, lease: Lease, upgrade: bool) -> Exchanging<B> {
    let sent = &lease.traffic.request_bytes;
    Exchanging { exchange: Some(Exchange::new(conn, req, upgrade, sent)), lease: Some(lease) }
}

/// The future of [`exchange`]: written by hand so that it holds the exchange once (an async
/// fn would also keep its arguments), since it sits inside every request's future.
pub struct Exchanging<B> {
    exchange: Option<Exchange<B>>,
    lease: Option<Lease>,
}

impl<B: RequestBody> std::future::Future for Exchanging<B> {
    type Output = Result<Exchanged<B>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this.exchange.as_mut().expect("polled after completion").poll(cx);
        let result = std::task::ready!(polled);
        let exchange = this.exchange.take().expect("present until completion");
        Poll::Ready(match result {
            Ok(()) => exchange.finish(this.lease.take().expect("taken once")),
            Err(e) if exchange.retryable(&e) => {
                Ok(Exchanged::NotSent(Request::from_parts(exchange.parts, exchange.upload.body)))
            }
            Err(e) => Err(e),
        })
    }
}

/// RFC 9110 §9.2.2: methods a client may repeat without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
