//! A response body read straight from the upstream connection.
//!
//! It follows the framing the response head gave (length, chunked, or until close), drives
//! what is left of the request upload, and at its last byte gives the connection back to its
//! pool, if the connection can carry another request. Dropped before its end, it closes the
//! connection instead.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::conn::Conn;
use super::error::SendError;
use super::framing::{decode_chunked, BodyFraming, Decoded};
use super::pool::Lease;
use super::upload::Unsent;

/// A response body read from an upstream connection.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None` once the body ended.
    conn: Option<Conn>,
    framing: BodyFraming,
    /// The connection may carry another request after this response.
    keep_alive: bool,
    /// What is left of the request to send, if the upstream answered before it had it all
    /// (boxed: rare, and every response carries this field).
    upload: Option<Box<dyn Unsent>>,
    /// The address the connection goes back to; counts the request in flight until dropped.
    target: Lease,
}

impl UpstreamBody {
    /// The body of a response whose head came on `conn`, delimited by `framing`.
    pub(super) fn new(
        conn: Conn,
        framing: BodyFraming,
        keep_alive: bool,
        upload: Option<Box<dyn Unsent>>,
        target: Lease,
    ) -> Self {
        UpstreamBody { conn: Some(conn), framing, keep_alive, upload, target }
    }

    /// The address the response comes from.
    pub fn addr(&self) -> &crate::config::UpstreamAddr {
        &self.target.addr
    }

    /// The body has ended: the connection goes back to the pool if it can be used again.
    fn end(&mut self) {
        self.framing = BodyFraming::Done;
        if let Some(conn) = self.conn.take() {
            // Bytes beyond the response were never asked for, and a request not sent whole
            // leaves the upstream expecting more: such a connection is not reused.
            if self.keep_alive && conn.buf.is_empty() && self.upload.is_none() {
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
            Poll::Ready(Err(SendError::ClientAborted(e))) => return Err(io::Error::other(e)),
            // The upstream stopped reading; its answer may still come whole.
            Poll::Ready(Err(_)) => {
                upload.fail();
                self.keep_alive = false;
            }
        }
        Ok(())
    }

    /// The next piece of the body from what is buffered, if the framing allows one; `None`
    /// when more must be read first.
    fn take_buffered(&mut self) -> Option<Option<io::Result<Bytes>>> {
        let conn = self.conn.as_mut()?;
        match &mut self.framing {
            BodyFraming::Done => Some(None),
            BodyFraming::Length(0) => {
                self.end();
                Some(None)
            }
            BodyFraming::Length(left) if !conn.buf.is_empty() => {
                let take = (*left).min(conn.buf.len() as u64);
                let data = conn.buf.split_to(take as usize).freeze();
                *left -= take;
                if *left == 0 {
                    self.end();
                }
                Some(Some(Ok(data)))
            }
            BodyFraming::Chunked(state) if !conn.buf.is_empty() => match decode_chunked(state, &mut conn.buf)
            {
                Ok(Decoded::Data(data)) => Some(Some(Ok(data))),
                Ok(Decoded::End) => {
                    self.end();
                    Some(None)
                }
                Ok(Decoded::NeedMore) => None,
                Err(e) => Some(Some(Err(e))),
            },
            BodyFraming::UntilClose if !conn.buf.is_empty() => Some(Some(Ok(conn.buf.split().freeze()))),
            _ => None,
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Err(e) = self.poll_upload(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if self.conn.is_none() {
                return Poll::Ready(None);
            }
            if let Some(piece) = self.take_buffered() {
                return Poll::Ready(piece);
            }
            let conn = self.conn.as_mut().expect("checked above");
            let n = match std::task::ready!(conn.poll_read_more(cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if n == 0 {
                if self.framing == BodyFraming::UntilClose {
                    self.framing = BodyFraming::Done;
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
        if self.framing == BodyFraming::Length(0) {
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
        matches!(self.framing, BodyFraming::Done | BodyFraming::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            BodyFraming::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
