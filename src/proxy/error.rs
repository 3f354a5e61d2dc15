//! Why a request could not be forwarded, which side is to blame, and the one place that maps
//! each case to a status code.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::upstream::{BoxError, HoldError, SendError};

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we will not forward.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// The proxy itself is in no state to forward (draining).
    Internal,
}

/// A request that gets an answer from lameduck instead of from an upstream.
#[derive(Debug)]
pub enum ProxyError {
    /// No `[[route]]` matches the request.
    NoRoute,
    /// The daemon is draining and takes no new requests.
    Draining,
    /// The request carried both `Content-Length` and `Transfer-Encoding`, or framing headers
    /// too long to read.
    AmbiguousFraming,
    /// A `CONNECT` request: lameduck is a reverse proxy, never a tunnel to anywhere.
    Connect,
    /// A WebSocket upgrade from an `Origin` its route does not list (`websocket_origins`).
    OriginRefused,
    /// No, several or a malformed `Host`, or a target that is not origin- or absolute-form
    /// (RFC 9112 §3.2); the text says which.
    BadHost(&'static str),
    /// The client's request body failed while it was being forwarded (the client went away).
    ClientAborted {
        /// What the request body failed with.
        source: BoxError,
    },
    /// Every address of the upstream refused or could not be reached.
    Unavailable {
        /// The upstream's name (its addresses are never shown to clients).
        upstream: Arc<str>,
    },
    /// The upstream sent no response headers within its `timeout`.
    Timeout {
        /// The upstream's name.
        upstream: Arc<str>,
    },
    /// The request was held (its upstream paused or restarting) and could wait no longer:
    /// 503 with `Retry-After`, since nothing was sent and the client may simply retry.
    Held {
        /// The upstream's name.
        upstream: Arc<str>,
        /// Why it could wait no longer.
        why: HoldError,
    },
    /// The upstream connection failed while the request was being sent or answered.
    Failed {
        /// The upstream's name.
        upstream: Arc<str>,
        /// What went wrong on the connection.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Draining | ProxyError::Held { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AmbiguousFraming => StatusCode::BAD_REQUEST,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::OriginRefused => StatusCode::FORBIDDEN,
            ProxyError::BadHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientAborted { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Unavailable { .. } | ProxyError::Failed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who is to blame.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::AmbiguousFraming
            | ProxyError::Connect
            | ProxyError::OriginRefused
            | ProxyError::BadHost(_)
            | ProxyError::ClientAborted { .. } => Side::Downstream,
            ProxyError::Draining | ProxyError::Held { .. } => Side::Internal,
            ProxyError::Unavailable { .. } | ProxyError::Timeout { .. } | ProxyError::Failed { .. } => {
                Side::Upstream
            }
        }
    }

    /// The short text body the client gets (names upstreams, never their addresses).
    pub fn body(&self) -> String {
        match self {
            ProxyError::NoRoute => "no route for this host and path\n".to_owned(),
            ProxyError::Draining => "server shutting down, retry later\n".to_owned(),
            ProxyError::AmbiguousFraming => {
                "bad request: ambiguous or unreadable Content-Length / Transfer-Encoding\n".to_owned()
            }
            ProxyError::Connect => "CONNECT is not supported: this is a reverse proxy\n".to_owned(),
            ProxyError::OriginRefused => {
                "WebSocket connections from this origin are not allowed\n".to_owned()
            }
            ProxyError::BadHost(why) => format!("bad request: {why}\n"),
            ProxyError::ClientAborted { .. } => "request body incomplete\n".to_owned(),
            ProxyError::Unavailable { upstream } | ProxyError::Failed { upstream, .. } => {
                format!("upstream \"{upstream}\" is unavailable\n")
            }
            ProxyError::Timeout { upstream } => format!("upstream \"{upstream}\" timed out\n"),
            ProxyError::Held { upstream, .. } => {
                format!("upstream \"{upstream}\" is restarting, retry later\n")
            }
        }
    }

    /// The failure of sending to the upstream named `upstream`, as the client's answer sees it.
    pub fn from_send(e: SendError, upstream: &Arc<str>) -> Self {
        let upstream = upstream.clone();
        match e {
            SendError::Unavailable => ProxyError::Unavailable { upstream },
            SendError::Upstream(source) => ProxyError::Failed { upstream, source: source.into() },
            SendError::ClientAborted(source) => ProxyError::ClientAborted { source },
            SendError::Timeout => ProxyError::Timeout { upstream },
            SendError::Held(why) => ProxyError::Held { upstream, why },
        }
    }

    /// The upstream involved, if any.
    pub fn upstream(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::Unavailable { upstream }
            | ProxyError::Timeout { upstream }
            | ProxyError::Held { upstream, .. }
            | ProxyError::Failed { upstream, .. } => Some(upstream),
            _ => None,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoRoute => f.write_str("no route matches"),
            ProxyError::Draining => f.write_str("draining"),
            ProxyError::AmbiguousFraming => f.write_str(
                "request framing is ambiguous (content-length with transfer-encoding) or unreadable",
            ),
            ProxyError::Connect => f.write_str("connect requests are not forwarded"),
            ProxyError::OriginRefused => {
                f.write_str("websocket upgrade from an origin the route does not list")
            }
            ProxyError::BadHost(why) => write!(f, "bad host or target: {why}"),
            ProxyError::ClientAborted { .. } => f.write_str("client request body failed"),
            ProxyError::Unavailable { upstream } => {
                write!(f, "upstream \"{upstream}\": no address reachable")
            }
            ProxyError::Timeout { upstream } => {
                write!(f, "upstream \"{upstream}\": no response headers in time")
            }
            ProxyError::Failed { upstream, .. } => {
                write!(f, "upstream \"{upstream}\": request failed")
            }
            ProxyError::Held { upstream, why } => write!(f, "upstream \"{upstream}\": {why}"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Failed { source, .. } => Some(source.as_ref()),
            ProxyError::ClientAborted { source } => Some(source.as_ref()),
            _ => None,
        }
    }
}
