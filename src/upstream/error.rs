//! Why a request could not be sent upstream or answered, told by side: the proxy maps each
//! case to the status its client gets.

use std::fmt;
use std::io;

/// Any error, boxed: what a request body failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`super::Upstream::send`] (or an exchange on one connection) failed.
#[derive(Debug)]
pub enum SendError {
    /// Every address refused or could not be reached: nothing was sent.
    Unavailable,
    /// The upstream connection failed, or the upstream spoke something that is not HTTP/1.1.
    Upstream(io::Error),
    /// The client's request body failed while it was being sent (the client went away).
    ClientAborted(BoxError),
    /// No response head within the upstream's `timeout`.
    Timeout,
    /// The request was held (paused or unreachable upstream) and could not wait longer.
    Held(HoldError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Unavailable => f.write_str("no address reachable"),
            SendError::Upstream(_) => f.write_str("upstream connection failed"),
            SendError::ClientAborted(_) => f.write_str("client request body failed"),
            SendError::Timeout => f.write_str("no response head within the timeout"),
            SendError::Held(why) => why.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Unavailable | SendError::Timeout | SendError::Held(_) => None,
            SendError::Upstream(e) => Some(e),
            SendError::ClientAborted(e) => Some(e.as_ref()),
        }
    }
}

/// Why a held request was answered 503 instead of being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    /// `max_held` requests were held already.
    Full,
    /// The upstream stayed paused for all of `hold`.
    TimedOut,
    /// The daemon's drain deadline came.
    Released,
}

impl fmt::Display for HoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HoldError::Full => "too many requests held (max_held)",
            HoldError::TimedOut => "upstream paused for longer than hold",
            HoldError::Released => "held when the drain deadline came",
        })
    }
}

impl std::error::Error for HoldError {}

impl From<HoldError> for SendError {
    fn from(why: HoldError) -> Self {
        SendError::Held(why)
    }
}
