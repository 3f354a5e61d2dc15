//! One direction of a tunnel: bytes from `src` to `dst`, optionally following WebSocket
//! frames so the drain can act between them.
//!
//! A pipe holds a buffer only while it has bytes to pass on: it borrows one from a per-thread
//! pool right before a read and gives it back as soon as the read finds nothing or the bytes
//! are written. An idle tunnel therefore holds no buffer at all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{FrameTracker, OP_CLOSE};

/// Size of a relay buffer.
pub const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept per thread for reuse.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// What a pipe does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass everything on (noting Close frames that go by).
    Forward,
    /// Pass whole frames on, and stop at the next boundary: a message boundary if
    /// `message`, else any frame boundary.
    StopAtBoundary {
        /// Wait for a message boundary rather than any frame boundary.
        message: bool,
    },
    /// Pass whole frames on, but stop before a Close frame.
    HoldBeforeClose,
    /// Drop frames until a Close frame has gone by (dropped too).
    DiscardUntilClose,
    /// Drop everything.
    Discard,
}

/// Something the tunnel's owner must react to.
#[derive(Debug)]
pub enum Event {
    /// `src` has ended (in `Forward` mode `dst` has been shut down too).
    Eof,
    /// The stream stands at the boundary a `StopAtBoundary` pipe was asked for.
    AtBoundary,
    /// The next frame is a Close (`HoldBeforeClose`).
    CloseNext,
    /// A Close frame was dropped (`DiscardUntilClose`).
    CloseDropped,
    /// The injected frame has been written.
    Injected,
    /// Reading or writing failed.
    Failed(io::Error),
}

/// One direction of a tunnel.
#[derive(Debug)]
pub struct Pipe {
    buf: Option<Box<[u8]>>,
    /// `buf[pos..ready]` is to be written; `buf[ready..end]` is not looked at yet.
    pos: usize,
    ready: usize,
    end: usize,
    /// Follows frames; `None` for raw tunnels.
    tracker: Option<FrameTracker>,
    /// What to do with the bytes.
    pub mode: Mode,
    /// A frame to write before anything else, and how much of it is written.
    inject: Option<(Vec<u8>, usize)>,
    /// Bytes `src` sent before the tunnel began (read past the `101` head): read before `src`.
    read_first: Bytes,
    /// A Close frame went by in `Forward` mode.
    pub close_seen: bool,
    /// Bytes written to `dst` so far (injected frames aside): tells a draining tunnel that
    /// is still moving data from one that only waits.
    pub relayed: u64,
    eof: bool,
    eof_reported: bool,
}

impl Pipe {
    /// A pipe that follows WebSocket frames when `websocket`.
    pub fn new(websocket: bool) -> Self {
        Pipe {
            buf: None,
            pos: 0,
            ready: 0,
            end: 0,
            tracker: websocket.then(FrameTracker::new),
            mode: Mode::Forward,
            inject: None,
            read_first: Bytes::new(),
            close_seen: false,
            relayed: 0,
            eof: false,
            eof_reported: false,
        }
    }

    /// Bytes of `src` that arrived before the tunnel began; they are relayed first, like
    /// anything read from `src`.
    pub fn read_first(&mut self, bytes: Bytes) {
        self.read_first = bytes;
    }

    /// True while the pipe follows valid WebSocket frames.
    pub fn follows_frames(&self) -> bool {
        self.tracker.as_ref().is_some_and(FrameTracker::is_valid)
    }

    /// True between frames with nothing of a frame buffered or half-written.
    pub fn at_frame_boundary(&self) -> bool {
        self.pos == self.end && self.tracker.as_ref().is_some_and(FrameTracker::at_frame_boundary)
    }

    /// True once `src` has ended.
    /// The status code of the last Close frame this direction relayed from its peer, if any.
    pub fn close_code(&self) -> Option<u16> {
        self.tracker.as_ref().and_then(|t| t.close_code())
    }

    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Writes `frame` to `dst` before anything else; reported by [`Event::Injected`].
    pub fn inject(&mut self, frame: Vec<u8>) {
        self.inject = Some((frame, 0));
    }

    /// Drives the pipe until it has an event for its owner, or nothing to do.
    pub fn poll<S, D>(&mut self, cx: &mut Context<'_>, src: &mut S, dst: &mut D) -> Poll<Event>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        match self.drive(cx, src, dst) {
            Poll::Ready(Ok(event)) => Poll::Ready(event),
            Poll::Ready(Err(e)) => Poll::Ready(Event::Failed(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn drive<S, D>(&mut self, cx: &mut Context<'_>, src: &mut S, dst: &mut D) -> Poll<io::Result<Event>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            ready!(self.write_ready(cx, dst))?;
            if let Some((frame, written)) = &mut self.inject {
                while *written < frame.len() {
                    *written += ready!(Pin::new(&mut *dst).poll_write(cx, &frame[*written..]))?;
                }
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                self.inject = None;
                return Poll::Ready(Ok(Event::Injected));
            }
            if let Some(event) = self.stop_here() {
                return Poll::Ready(Ok(event));
            }
            if self.ready < self.end {
                if let Some(event) = self.scan() {
                    return Poll::Ready(Ok(event));
                }
                continue;
            }
            if let Some(buf) = self.buf.take() {
                give_buf(buf);
                (self.pos, self.ready, self.end) = (0, 0, 0);
            }
            if self.eof {
                if self.eof_reported {
                    return Poll::Pending;
                }
                if self.mode == Mode::Forward {
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                }
                self.eof_reported = true;
                return Poll::Ready(Ok(Event::Eof));
            }
            ready!(self.read(cx, src))?;
        }
    }

    /// Writes `buf[pos..ready]`.
    fn write_ready<D: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
    ) -> Poll<io::Result<()>> {
        let Some(buf) = &self.buf else {
            return Poll::Ready(Ok(()));
        };
        while self.pos < self.ready {
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buf[self.pos..self.ready]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
            self.relayed += n as u64;
        }
        if self.pos == self.end {
            ready!(Pin::new(&mut *dst).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads into a borrowed buffer (bytes to read first before `src`), giving it back if
    /// nothing came.
    fn read<S: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, src: &mut S) -> Poll<io::Result<()>> {
        let mut buf = take_buf();
        if !self.read_first.is_empty() {
            let n = self.read_first.len().min(buf.len());
            buf[..n].copy_from_slice(&self.read_first[..n]);
            self.read_first.advance(n);
            (self.pos, self.ready, self.end) = (0, 0, n);
            self.buf = Some(buf);
            return Poll::Ready(Ok(()));
        }
        let mut read_buf = ReadBuf::new(&mut buf);
        match Pin::new(src).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    self.eof = true;
                    give_buf(buf);
                } else {
                    (self.pos, self.ready, self.end) = (0, 0, n);
                    self.buf = Some(buf);
                }
                Poll::Ready(Ok(()))
            }
            other => {
                give_buf(buf);
                other
            }
        }
    }

    /// Whether the mode wants to stop where the stream stands now (everything before it written).
    fn stop_here(&self) -> Option<Event> {
        let tracker = self.tracker.as_ref()?;
        if !tracker.is_valid() || self.pos != self.ready {
            return None;
        }
        match self.mode {
            Mode::StopAtBoundary { message: true } if tracker.at_message_boundary() => {
                Some(Event::AtBoundary)
            }
            Mode::StopAtBoundary { message: false } if tracker.at_frame_boundary() => Some(Event::AtBoundary),
            Mode::HoldBeforeClose if tracker.at_frame_boundary() && self.ready < self.end => {
                let next = self.buf.as_ref().map(|b| b[self.ready])?;
                (next & 0x0F == OP_CLOSE).then_some(Event::CloseNext)
            }
            _ => None,
        }
    }

    /// Decides the fate of the bytes not looked at yet, up to the next point of interest.
    fn scan(&mut self) -> Option<Event> {
        let buf = self.buf.as_ref().expect("bytes to scan live in the buffer");
        let bytes = &buf[self.ready..self.end];
        let Some(tracker) = self.tracker.as_mut().filter(|t| t.is_valid()) else {
            self.ready = self.end;
            if matches!(self.mode, Mode::Discard | Mode::DiscardUntilClose) {
                self.pos = self.end;
            }
            return None;
        };
        match self.mode {
            Mode::Forward => {
                let close_seen = &mut self.close_seen;
                tracker.advance_all(bytes, |end| *close_seen |= end.opcode == OP_CLOSE);
                self.ready = self.end;
                None
            }
            Mode::StopAtBoundary { .. } | Mode::HoldBeforeClose => {
                let (used, _) = tracker.advance(bytes);
                self.ready += used;
                None
            }
            Mode::DiscardUntilClose => {
                let (used, end) = tracker.advance(bytes);
                self.ready += used;
                self.pos = self.ready;
                let closed = end.is_some_and(|e| e.opcode == OP_CLOSE);
                closed.then(|| {
                    self.mode = Mode::Discard;
                    Event::CloseDropped
                })
            }
            Mode::Discard => {
                tracker.advance_all(bytes, |_| {});
                self.ready = self.end;
                self.pos = self.end;
                None
            }
        }
    }
}
