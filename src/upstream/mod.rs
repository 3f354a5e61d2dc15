//! Upstream groups and lameduck's HTTP/1.1 client for them.
//!
//! A request goes to the next address of its group in turn. An idle pooled connection to it
//! is used if there is one (and the upstream has not closed it meanwhile); otherwise a new
//! connection is made, and if that fails (refused, unreachable, `connect_timeout`) the next
//! address is tried — safe for every method, since nothing was sent. A request the upstream
//! dropped on a reused connection before answering is sent again when that is safe (see
//! [`exchange`]). A connection returns to its pool only once its response body has been read
//! to the end. An upgrade request (WebSocket) gets a new connection of its own, which becomes
//! the tunnel's upstream side at a `101`.
//!
//! The rooms of the client, each with its own tests:
//! - [`connect`]: TCP, then TLS for https upstreams;
//! - [`conn`]: one connection and its read buffer; [`pool`]: an address's idle connections;
//! - [`head`]: the request head out, the response head in (httparse);
//! - [`framing`]: response body framing (RFC 9112 §6.3) and the chunked decoder;
//! - [`upload`]: the request body, streamed while the response may already come;
//! - [`exchange`]: one request and its response head on one connection;
//! - [`body`]: the response body, read straight from the connection.
//!
//! # Why a hand-written client
//! hyper's client runs each connection as a task of its own behind a request channel, a
//! response oneshot and a body channel: every request crosses tasks twice and pays for that
//! machinery, which was a third of lameduck's user-space CPU per proxied request. This client
//! runs the exchange in the request's own task, on a connection the request owns while it
//! runs.
//!
//! Measured against hyper's `client::conn::http1` driven the same way — in the request's own
//! task, the `SendRequest` and its `Connection` polled together, no spawned dispatcher, idle
//! pairs pooled per address — with `bench/instructions.sh` (callgrind instructions per
//! proxied request, one worker, repeats within 1.5 %):
//!
//! | benchmark | this client | hyper in-task | hyper ÷ this |
//! |---|---|---|---|
//! | B1 small GET, 64 keep-alive connections | 21,002 | 26,273 | 1.25 |
//! | B3 small GET, a new client connection per request | 35,600 | 40,513 | 1.14 |
//!
//! hyper's extra ~5,000 instructions per request go to its dispatcher state machine polled
//! several times per exchange (10,347 inclusive against this exchange's 4,191), its internal
//! request channel and callback (~1,200), its more general head parsing (2,534 against 737
//! in httparse) and its read buffer re-allocated per response. That is far outside the 5 %
//! within which a well-kept library would win, so the client stays (DESIGN.md, Dependencies).
//!
//! What it deliberately does not do: pipelining; forwarding trailers or interim `1xx`
//! answers; HTTP/1.0 keep-alive requests (requests always go out as HTTP/1.1).

mod body;
mod conn;
mod connect;
mod error;
mod exchange;
mod framing;
mod head;
mod pool;
#[cfg(test)]
mod tests;
mod upload;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tracing::warn;

pub use body::UpstreamBody;
pub use conn::Switched;
pub use connect::UpstreamIo;
pub use error::{BoxError, SendError};
pub use upload::RequestBody;

use conn::Conn;
use connect::connect_io;
use exchange::{exchange, Exchanged};
use pool::Target;

use crate::config::{UpstreamAddr, UpstreamConfig};
use crate::tls::{self, UpstreamTls};

/// One upstream group.
#[derive(Debug)]
pub struct Upstream {
    /// The configured name; the only thing about the upstream that clients see.
    pub name: Arc<str>,
    targets: Vec<Arc<Target>>,
    next: AtomicUsize,
    connect_timeout: Duration,
    /// Time allowed for response headers.
    pub timeout: Duration,
}

/// The upstream's answer to an upgrade request.
#[derive(Debug)]
pub enum UpgradeAnswer {
    /// `101 Switching Protocols`: the head, and the connection, raw from now on.
    Switched(Response<()>, Switched),
    /// Any other answer: an ordinary response.
    Refused(Response<UpstreamBody>),
}

impl Upstream {
    /// A group from its configuration; `tls` is its client config if it speaks https.
    pub fn new(config: &UpstreamConfig, tls: Option<Arc<ClientConfig>>) -> Self {
        let target = |addr: &UpstreamAddr| {
            let tls = tls.as_ref().map(|client| UpstreamTls {
                connector: TlsConnector::from(client.clone()),
                server_name: tls::server_name(config, addr)
                    .expect("server names are checked when TLS is loaded"),
            });
            Arc::new(Target::new(addr.clone(), tls))
        };
        Upstream {
            name: config.name.as_str().into(),
            targets: config.addrs.iter().map(target).collect(),
            next: AtomicUsize::new(0),
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
        }
    }

    /// Sends `req` (which asks for no upgrade) to the next address in turn, failing over as
    /// described in the module doc. The response body gives the connection back to its pool
    /// once it has been read whole.
    pub async fn send<B: RequestBody>(
        &self,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        for target in self.in_turn() {
            // Idle connections first, then a new one; one await of the exchange keeps the
            // future (part of every request's) small.
            loop {
                let (conn, fresh) = match target.take_idle() {
                    Some(mut idle) => {
                        if !idle.is_alive() {
                            continue;
                        }
                        (idle, false)
                    }
                    None => match self.connect(target).await {
                        Some(io) => (Conn::new(io), true),
                        None => break,
                    },
                };
                match exchange(conn, req, target.clone(), false).await? {
                    Exchanged::Answered(resp) => return Ok(resp),
                    Exchanged::NotSent(back) => req = back,
                    // The head parser refuses a 101 nobody asked for; should one slip through,
                    // the connection speaks something else now.
                    Exchanged::Switched(..) => {
                        return Err(SendError::Upstream(framing::invalid("unasked 101")))
                    }
                }
                if fresh {
                    break;
                }
            }
        }
        Err(SendError::Unavailable)
    }

    /// Sends an upgrade request (WebSocket) on a new connection of its own, failing over to
    /// the next address while connecting fails.
    pub async fn send_upgrade<B: RequestBody>(&self, req: Request<B>) -> Result<UpgradeAnswer, SendError> {
        for target in self.in_turn() {
            let Some(io) = self.connect(target).await else { continue };
            return match exchange(Conn::new(io), req, target.clone(), true).await? {
                Exchanged::Switched(head, io) => Ok(UpgradeAnswer::Switched(head, io)),
                Exchanged::Answered(resp) => Ok(UpgradeAnswer::Refused(resp)),
                // Only a reused connection hands a request back; a new one closed unanswered.
                Exchanged::NotSent(_) => Err(SendError::Upstream(io::ErrorKind::UnexpectedEof.into())),
            };
        }
        Err(SendError::Unavailable)
    }

    /// Every address once, starting at the next in round-robin order.
    fn in_turn(&self) -> impl Iterator<Item = &Arc<Target>> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.targets.len();
        (0..n).map(move |i| &self.targets[(first + i) % n])
    }

    /// A new connection to `target`, or `None` (logged) if it cannot be had: the caller
    /// fails over to the next address. Boxed: connecting (TCP, maybe TLS) is a large future,
    /// and inline it would make every request's future that large, pooled or not.
    async fn connect(&self, target: &Target) -> Option<UpstreamIo> {
        let connecting = Box::pin(tokio::time::timeout(
            self.connect_timeout,
            connect_io(&target.addr, target.tls.as_ref()),
        ));
        let error = match connecting.await {
            Ok(Ok(io)) => return Some(io),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        warn!(upstream.name = %self.name, upstream.addr = %target.addr, error = %error, "upstream connect failed");
        None
    }
}
