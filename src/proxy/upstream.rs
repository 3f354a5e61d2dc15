//! Upstream groups: round-robin over addresses, failover on connect errors, and a small pool
//! of keep-alive HTTP/1.1 connections per address.
//!
//! A request goes to the next address in turn. An idle pooled connection to it is used if
//! there is one (and the upstream has not closed it meanwhile); otherwise a new connection is
//! made, and if that fails (refused, unreachable, `connect_timeout`) the next address is
//! tried — safe for every method, since nothing was sent. A request the upstream dropped on a
//! reused connection before answering is sent again when that is safe (see
//! [`client::exchange`]). A connection returns to its pool only once its response body has
//! been read to the end.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::client::{self, Conn, ExchangeError, Outcome, UpstreamBody};
use super::connect::{connect_io, UpstreamIo};
use super::error::ProxyError;
use crate::config::{UpstreamAddr, UpstreamConfig};
use crate::tls::{self, UpstreamTls};

/// Idle connections kept per address; more are closed.
const MAX_IDLE_PER_ADDR: usize = 256;

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

/// One address of a group with its idle connections.
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub(super) addr: UpstreamAddr,
    /// Set for https upstreams.
    pub(super) tls: Option<UpstreamTls>,
    idle: Mutex<Vec<Conn>>,
}

impl Target {
    /// Takes back a connection whose last response was read whole.
    pub(super) fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("pool lock is never held across a panic");
        if idle.len() < MAX_IDLE_PER_ADDR {
            idle.push(conn);
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().expect("pool lock is never held across a panic").pop()
    }
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
            Arc::new(Target { addr: addr.clone(), tls, idle: Mutex::new(Vec::new()) })
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
    pub async fn send(&self, mut req: Request<Incoming>) -> Result<Response<UpstreamBody>, ProxyError> {
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
                match client::exchange(conn, req, target.clone()).await.map_err(|e| self.failed(e))? {
                    Outcome::Answered(resp) => return Ok(resp),
                    Outcome::NotSent(back) => req = back,
                }
                if fresh {
                    break;
                }
            }
        }
        Err(ProxyError::Unavailable { upstream: self.name.clone() })
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, through hyper's
    /// client, which hands the connection over if the upstream answers `101`.
    pub async fn send_upgrade(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ProxyError> {
        for target in self.in_turn() {
            let Some(io) = self.connect(target).await else { continue };
            let failed =
                |e: hyper::Error| ProxyError::Failed { upstream: self.name.clone(), source: e.into() };
            let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(failed)?;
            let name = self.name.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(upstream.name = %name, error = %e, "upstream connection ended");
                }
            });
            return sender.send_request(req).await.map_err(|e| match e.is_user() {
                // The client's own body failed (it went away mid-upload): not the upstream's fault.
                true => ProxyError::ClientAborted { source: e },
                false => failed(e),
            });
        }
        Err(ProxyError::Unavailable { upstream: self.name.clone() })
    }

    /// Every address once, starting at the next in round-robin order.
    fn in_turn(&self) -> impl Iterator<Item = &Arc<Target>> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.targets.len();
        (0..n).map(move |i| &self.targets[(first + i) % n])
    }

    fn failed(&self, e: ExchangeError) -> ProxyError {
        match e {
            ExchangeError::ClientAborted(source) => ProxyError::ClientAborted { source },
            ExchangeError::Upstream(e) => {
                ProxyError::Failed { upstream: self.name.clone(), source: e.into() }
            }
        }
    }

    /// A new connection to `target`, or `None` (logged) if it cannot be had: the caller
    /// fails over to the next address. Boxed: connecting (TCP, maybe TLS) is a large future,
    /// and inline it would make every request's future that large, pooled or not.
    async fn connect(&self, target: &Target) -> Option<UpstreamIo> {
        let connecting = Box::pin(tokio::time::timeout(self.connect_timeout, connect_io(target)));
        let error = match connecting.await {
            Ok(Ok(io)) => return Some(io),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        warn!(upstream.name = %self.name, upstream.addr = %target.addr, error = %error, "upstream connect failed");
        None
    }
}
