//! Bodies for backends and clients: whole, dripping (time is the point),
//! dying mid-stream, and a large deterministic pattern that is generated and
//! checked chunk by chunk so nothing big is ever held in memory. Also [`Gate`],
//! the event a test releases to let a held backend answer.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type of the harness, for requests and responses alike.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never: Infallible| match never {}).boxed_unsync()
}

fn from_stream<S>(chunks: S) -> Body
where
    S: futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
}

/// `count` chunks of `chunk`, one every `every` (no length: sent chunked).
pub fn dripping_body(chunk: Bytes, every: Duration, count: usize) -> Body {
    from_stream(stream::unfold(0, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent == count {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(every).await;
            }
            Some((Ok(chunk), sent + 1))
        }
    }))
}

/// Sends `first`, waits for `die`, then fails: hyper aborts the response
/// (drops the connection without a final chunk) — an upstream dying mid-body.
pub fn dying_body(first: Bytes, die: Gate) -> Body {
    let steps = stream::iter([0, 1]).then(move |step| {
        let (first, die) = (first.clone(), die.clone());
        async move {
            if step == 0 {
                Ok(first)
            } else {
                die.wait().await;
                Err::<Bytes, BoxError>("backend dies mid-body".into())
            }
        }
    });
    from_stream(steps)
}

/// Byte `i` of the pattern: no short period, so a lost, repeated or
/// reordered chunk never lines up again.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    (offset..offset + len as u64).map(pattern_byte).collect()
}

/// `total` bytes of the pattern in 64 KiB chunks, generated lazily.
pub fn pattern_body(total: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    from_stream(stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let len = CHUNK.min(total - offset);
        Some((Ok(pattern_chunk(offset, len as usize)), offset + len))
    }))
}

/// Checks a stream against the pattern as it arrives.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PatternCheck {
    pub len: u64,
    pub mismatches: u64,
}

impl PatternCheck {
    pub fn feed(&mut self, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if *byte != pattern_byte(self.len + i as u64) {
                self.mismatches += 1;
            }
        }
        self.len += data.len() as u64;
    }
}

/// Held by backends: [`Gate::wait`] returns once the test calls
/// [`Opener::open`] (or drops the opener). Opening is sticky: every later
/// wait returns at once.
#[derive(Clone)]
pub struct Gate(watch::Receiver<bool>);

/// Held by the test; `open` releases every waiter of its [`Gate`].
pub struct Opener(watch::Sender<bool>);

pub fn gate() -> (Opener, Gate) {
    let (tx, rx) = watch::channel(false);
    (Opener(tx), Gate(rx))
}

impl Gate {
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the opener is gone: nobody can hold us any longer.
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Opener {
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}
