//! One connection to an upstream address: its byte stream and what has been read from it but
//! not used yet.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::connect::UpstreamIo;

/// Read buffer reserved before a read; doubled while reads fill it, up to [`MAX_READ`] bytes.
pub(super) const MIN_READ: usize = 8 * 1024;
/// The largest read, in bytes.
const MAX_READ: usize = 256 * 1024;

/// One keep-alive connection to an upstream address.
#[derive(Debug)]
pub struct Conn {
    pub(super) io: UpstreamIo,
    /// Bytes read but not yet used.
    pub(super) buf: BytesMut,
    /// How much to reserve before the next read.
    read_size: usize,
    /// It has carried a request before (so an upstream may have closed it meanwhile).
    pub(super) reused: bool,
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
        if !self.io.poll_read_ready(&mut cx) {
            return true;
        }
        // Something arrived: a FIN, a reset, a TLS record (a session ticket is fine), or junk.
        let mut probe = [0u8; 64];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    pub(super) fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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

    /// Ready for the pool after a response read whole: an idle connection does not keep a
    /// buffer a large download grew.
    pub(super) fn make_idle(&mut self) {
        self.reused = true;
        if self.buf.capacity() > 2 * MIN_READ {
            self.buf = BytesMut::new();
            self.read_size = MIN_READ;
        }
    }
}
