//! An upstream connection after a `101 Switching Protocols` (RFC 9110 §15.2.2): raw bytes
//! both ways from then on, still counted in flight to its address until the tunnel ends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::conn::Conn;
use super::connect::UpstreamIo;
use super::pool::Lease;

/// An upstream connection that switched protocols (RFC 9110 §15.2.2): raw bytes both ways.
#[derive(Debug)]
pub struct Switched {
    /// The connection.
    pub io: SwitchedIo,
    /// What the upstream sent right after its `101`, read with the head: the new protocol's
    /// first bytes, to be relayed before anything read from `io`.
    pub read_first: Bytes,
    /// Changes when the upstream (or this address) is paused: the tunnel should close with
    /// 1012 Service Restart before the backend goes away.
    pub restarts: watch::Receiver<()>,
}

/// A switched connection that counts as in flight to its address until it is dropped, so
/// that a pause waits for its tunnel to close.
#[derive(Debug)]
pub struct SwitchedIo {
    io: UpstreamIo,
    _lease: Lease,
}

impl Switched {
    /// `conn` after a `101`: the stream (still counted in flight by `lease`), and the bytes
    /// read past the answer.
    pub(super) fn new(conn: Conn, lease: Lease) -> Self {
        let restarts = lease.restarts();
        Switched { io: SwitchedIo { io: conn.io, _lease: lease }, read_first: conn.buf.freeze(), restarts }
    }
}

impl AsyncRead for SwitchedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SwitchedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
