//! Upstream groups: round-robin over addresses, failover on connect errors, and a small pool
//! of keep-alive HTTP/1.1 connections per address.
//!
//! A request goes to the next address in turn. An idle pooled connection to it is used if
//! there is one; otherwise a new connection is made, and if that fails (refused, unreachable,
//! `connect_timeout`) the next address is tried — safe for every method, since nothing was
//! sent. hyper hands a request back when a pooled connection turned out to be closed before
//! the request was written, so such a request is retried too. A connection returns to its pool
//! only once its response body has been read to the end ([`Pooled::release`]).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::connect::connect_io;
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
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

/// A connection lent to one request; goes back to its pool on [`Pooled::release`].
#[derive(Debug)]
pub struct Pooled {
    target: Arc<Target>,
    sender: SendRequest<Incoming>,
}

impl Pooled {
    /// Returns the connection to its pool; call only after the response body was read whole.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.target.idle.lock().expect("pool lock is never held across a panic");
        if idle.len() < MAX_IDLE_PER_ADDR {
            idle.push(self.sender);
        }
    }
}

/// What became of one attempt to send.
enum Attempt {
    Answered(Response<Incoming>),
    /// Not sent: the connection was already closed. The request comes back for another try.
    NotSent(Request<Incoming>),
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

    /// Sends `req` to the next address in turn, failing over as described in the module doc.
    /// The connection comes back as [`Pooled`], to be released once the body was read whole.
    pub async fn send(&self, mut req: Request<Incoming>) -> Result<(Response<Incoming>, Pooled), ProxyError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.targets.len() {
            let target = &self.targets[(first + i) % self.targets.len()];
            while let Some(sender) = take_idle(target) {
                match self.attempt(target, sender, req).await? {
                    (Attempt::Answered(resp), pooled) => return Ok((resp, pooled)),
                    (Attempt::NotSent(back), _) => req = back,
                }
            }
            // Boxed: connecting (TCP, maybe TLS, the handshake) is a large future, and inline
            // it would make every request's future that large, pooled or not.
            let sender = match Box::pin(self.connect(target)).await {
                Ok(sender) => sender,
                Err(e) => {
                    warn!(upstream.name = %self.name, upstream.addr = %target.addr, error = %e, "upstream connect failed");
                    continue;
                }
            };
            match self.attempt(target, sender, req).await? {
                (Attempt::Answered(resp), pooled) => return Ok((resp, pooled)),
                (Attempt::NotSent(back), _) => req = back,
            }
        }
        Err(ProxyError::Unavailable { upstream: self.name.clone() })
    }

    async fn attempt(
        &self,
        target: &Arc<Target>,
        mut sender: SendRequest<Incoming>,
        req: Request<Incoming>,
    ) -> Result<(Attempt, Pooled), ProxyError> {
        let pooled = |sender| Pooled { target: target.clone(), sender };
        if sender.ready().await.is_err() {
            return Ok((Attempt::NotSent(req), pooled(sender)));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((Attempt::Answered(resp), pooled(sender))),
            Err(mut e) => match e.take_message() {
                Some(req) => Ok((Attempt::NotSent(req), pooled(sender))),
                // The client's own body failed (it went away mid-upload): not the upstream's fault.
                None if e.error().is_user() => Err(ProxyError::ClientAborted { source: e.into_error() }),
                None => Err(ProxyError::Failed { upstream: self.name.clone(), source: e.into_error() }),
            },
        }
    }

    async fn connect(&self, target: &Target) -> io::Result<SendRequest<Incoming>> {
        let stream = tokio::time::timeout(self.connect_timeout, connect_io(target))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(upstream.name = %name, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

fn take_idle(target: &Target) -> Option<SendRequest<Incoming>> {
    let mut idle = target.idle.lock().expect("pool lock is never held across a panic");
    while let Some(sender) = idle.pop() {
        if !sender.is_closed() {
            return Some(sender);
        }
    }
    None
}
