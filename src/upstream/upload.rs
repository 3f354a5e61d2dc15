//! The request on its way out: the head, then the body as the client sends it.
//!
//! It may go on after the response head is in (an upstream that answers while it reads, like
//! an echo or a `413`), so both the exchange and the response body drive it.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::connect::UpstreamIo;
use super::error::{BoxError, SendError};
use super::head::RequestBodyFraming;

/// A request body the client can send: hyper's `Incoming` in the proxy, any body of [`Bytes`]
/// in tests.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// The request on its way out.
pub struct Upload<B> {
    pub(super) body: B,
    framing: RequestBodyFraming,
    /// Bytes queued for the socket, in order: the head, then body pieces.
    out: Outbox,
    /// The body has ended (or there is none) and its end is queued.
    done: bool,
    /// A body frame was taken from the client: the request can no longer be sent again.
    pub(super) touched: bool,
    /// Writing failed: nothing more is sent, and the connection is not reused.
    pub(super) failed: bool,
    /// Everything written has been flushed too (TLS keeps records until then).
    flushed: bool,
    /// Body bytes taken from the client are counted here (the upstream's figures).
    sent: &'static AtomicU64,
}

impl<B: RequestBody> Upload<B> {
    /// A request whose encoded `head` goes first, then `body` framed as `framing` says; its
    /// body bytes are counted into `sent`.
    pub fn new(head: Bytes, body: B, framing: RequestBodyFraming, sent: &'static AtomicU64) -> Self {
        // A body over before it starts (`Content-Length: 0`) is not polled: nothing is taken
        // from the client, so the request can still be sent again.
        let done = framing == RequestBodyFraming::None
            || (framing == RequestBodyFraming::Length && body.is_end_stream());
        Upload {
            body,
            framing,
            out: Outbox::new(head),
            done,
            touched: false,
            failed: false,
            flushed: false,
            sent,
        }
    }

    /// Writes as much of the request as can go now; ready once all of it is written.
    pub fn poll(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        loop {
            if !self.out.is_empty() {
                std::task::ready!(self.out.poll_write(io, cx)).map_err(SendError::Upstream)?;
            }
            if self.done {
                // TLS keeps written records until flushed; plain TCP flushes at once.
                std::task::ready!(Pin::new(io).poll_flush(cx)).map_err(SendError::Upstream)?;
                self.flushed = true;
                return Poll::Ready(Ok(()));
            }
            match self.poll_body(cx) {
                Poll::Ready(taken) => taken.map_err(SendError::ClientAborted)?,
                Poll::Pending => {
                    // Waiting for the client: what went before must not wait in TLS records.
                    std::task::ready!(Pin::new(io).poll_flush(cx)).map_err(SendError::Upstream)?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// Takes the next piece of the request body, or its end, into the queue.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        self.touched = true;
        match frame {
            Some(Ok(frame)) => {
                // Trailers are not forwarded.
                if let Ok(data) = frame.into_data() {
                    self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if !data.is_empty() {
                        if self.framing == RequestBodyFraming::Chunked {
                            self.out.push(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.out.push(data);
                            self.out.push(Bytes::from_static(b"\r\n"));
                        } else {
                            self.out.push(data);
                        }
                    }
                }
            }
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            None => {
                self.done = true;
                if self.framing == RequestBodyFraming::Chunked {
                    self.out.push(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Nothing is left to send: all of it went out and was flushed, or writing failed. A
    /// flush that waits (a full socket under TLS) keeps the upload going until it is done.
    pub fn finished(&self) -> bool {
        self.failed || (self.sent() && self.flushed)
    }

    /// The whole request has been written, though maybe not flushed yet.
    pub fn sent(&self) -> bool {
        self.done && self.out.is_empty()
    }
}

impl<B> fmt::Debug for Upload<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("framing", &self.framing)
            .field("out", &self.out)
            .field("done", &self.done)
            .field("touched", &self.touched)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What is left of an upload once the response head is in, whatever the request body's type:
/// the response body drives it without being generic over the request.
pub trait Unsent: fmt::Debug + Send {
    /// [`Upload::poll`].
    fn poll(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), SendError>>;
    /// [`Upload::finished`].
    fn finished(&self) -> bool;
    /// Writing failed: nothing more is sent.
    fn fail(&mut self);
}

impl<B: RequestBody> Unsent for Upload<B> {
    fn poll(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Upload::poll(self, io, cx)
    }

    fn finished(&self) -> bool {
        Upload::finished(self)
    }

    fn fail(&mut self) {
        self.failed = true;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
