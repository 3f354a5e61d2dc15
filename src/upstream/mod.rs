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
//! - [`switched`]: a connection after a `101`, for a tunnel;
//! - [`head`]: the request head out, the response head in (httparse);
//! - [`framing`]: response body framing (RFC 9112 §6.3) and the chunked decoder;
//! - [`upload`]: the request body, streamed while the response may already come;
//! - [`exchange`]: one request and its response head on one connection;
//! - [`body`]: the response body, read straight from the connection;
//! - [`hold`]: requests waiting for a paused or unreachable upstream.
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
//! # Pause, hold and resume
//! Each request takes a [`pool::Lease`] on the address it is about to use, then loads one
//! flag ([`hold::Gate`]'s `attention`); only when something is paused does it look further.
//! A paused address is skipped; when every address is paused, or none accepts a connection
//! and `connect_retry` allows, the request waits ([`hold`]). [`control`] is the admin side:
//! pause, resume, and the state `GET /upstreams` shows.
//!
//! What it deliberately does not do: pipelining; forwarding trailers or interim `1xx`
//! answers; HTTP/1.0 keep-alive requests (requests always go out as HTTP/1.1).

mod body;
mod conn;
mod connect;
mod control;
mod error;
mod exchange;
mod framing;
mod head;
mod hold;
mod pool;
mod switched;
#[cfg(test)]
mod tests;
mod upload;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

pub use body::UpstreamBody;
pub use connect::UpstreamIo;
pub use control::{AddrStatus, PauseError, UpstreamChanges, UpstreamStatus, Upstreams};
pub use error::{BoxError, HoldError, SendError};
pub use switched::{Switched, SwitchedIo};
pub use upload::RequestBody;

use conn::Conn;
use connect::connect_io;
use exchange::{exchange, Exchanged};
use hold::{Baton, Blocked, Gate, Waiting};
use pool::{Lease, Target};

use crate::config::{UpstreamAddr, UpstreamConfig};
use crate::tls::{self, UpstreamTls};
use crate::traffic::{ConnectFailure, UpstreamTraffic};

/// One upstream group.
#[derive(Debug)]
pub struct Upstream {
    /// The configured name; the only thing about the upstream that clients see.
    pub name: Arc<str>,
    targets: Vec<Arc<Target>>,
    next: AtomicUsize,
    connect_timeout: Duration,
    /// Time allowed for response headers.
    timeout: Duration,
    /// Pause state and held requests.
    gate: Gate,
    /// What it was built from: a reload keeps an upstream whose config did not change.
    config: UpstreamConfig,
    /// The upstream this one replaced at a reload while requests were held there: a resume
    /// here sends those on too (to the addresses they were held for).
    predecessor: std::sync::Mutex<Option<Arc<Upstream>>>,
    /// Where its requests, durations, bytes and connect errors are counted.
    pub traffic: &'static UpstreamTraffic,
}

/// The upstream's answer to an upgrade request.
#[derive(Debug)]
pub enum UpgradeAnswer {
    /// `101 Switching Protocols`: the head, and the connection, raw from now on.
    Switched(Response<()>, Switched),
    /// Any other answer: an ordinary response.
    Refused(Response<UpstreamBody>),
}

/// What kind of connect failure `e` is. A TCP connection refused or timed out says so;
/// anything else on an https upstream happened in (or because of) the TLS handshake.
fn connect_failure(e: &io::Error, tls: bool) -> ConnectFailure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut => ConnectFailure::Timeout,
        _ if tls && e.get_ref().is_some() => ConnectFailure::Tls,
        _ => ConnectFailure::Other,
    }
}

/// Drives `exchanging`, passing `turn` on to the next held request once its first poll
/// has written the request head: held requests then reach the backend in the order they
/// were held, not in the order their connections happen to complete.
async fn passing_turn<F: Future>(exchanging: F, turn: Baton) -> F::Output {
    let mut exchanging = std::pin::pin!(exchanging);
    let mut turn = Some(turn);
    std::future::poll_fn(|cx| {
        let polled = exchanging.as_mut().poll(cx);
        drop(turn.take());
        polled
    })
    .await
}

/// One try at every address: what came of it, or the request and its unused turn back
/// (boxed: rare, and it would make every answer that large) with why it could not go.
enum Attempt<T, B> {
    Done(T),
    Blocked(Box<(Request<B>, Option<Baton>)>, Blocked),
}

impl Upstream {
    /// A group from its configuration; `tls` is its client config if it speaks https; it
    /// counts into `traffic`.
    pub fn new(
        config: &UpstreamConfig,
        tls: Option<Arc<ClientConfig>>,
        traffic: &'static UpstreamTraffic,
    ) -> Self {
        let target = |addr: &UpstreamAddr| {
            let tls = tls.as_ref().map(|client| UpstreamTls {
                connector: TlsConnector::from(client.clone()),
                server_name: tls::server_name(config, addr)
                    .expect("server names are checked when TLS is loaded"),
            });
            Arc::new(Target::new(addr.clone(), tls, traffic))
        };
        Upstream {
            name: config.name.as_str().into(),
            targets: config.addrs.iter().map(target).collect(),
            next: AtomicUsize::new(0),
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            gate: Gate::new(config.hold),
            config: config.clone(),
            predecessor: std::sync::Mutex::new(None),
            traffic,
        }
    }

    /// Sends `req` (which asks for no upgrade) to the next address in turn, failing over as
    /// described in the module doc, and holding it while the upstream is paused or
    /// unreachable. The response body gives the connection back to its pool once it has been
    /// read whole.
    ///
    /// # Errors
    /// [`SendError::Timeout`] when no response head came within `timeout` (of the last try);
    /// [`SendError::Held`] when a held request could wait no longer; the others as they say.
    pub async fn send<B: RequestBody>(&self, req: Request<B>) -> Result<Response<UpstreamBody>, SendError> {
        self.with_hold(req, |req, turn| self.try_send(req, turn)).await
    }

    /// Sends an upgrade request (WebSocket) on a new connection of its own, failing over to
    /// the next address while connecting fails, and held as [`Upstream::send`] is.
    pub async fn send_upgrade<B: RequestBody>(&self, req: Request<B>) -> Result<UpgradeAnswer, SendError> {
        self.with_hold(req, |req, turn| self.try_upgrade(req, turn)).await
    }

    /// Runs `attempt` (bounded by `timeout`) until it is done, holding the request between
    /// tries while it is blocked. A request let go by a resume tries with its turn
    /// ([`Baton`]), which `attempt` passes on once it has a connection.
    async fn with_hold<B, T, F>(
        &self,
        mut req: Request<B>,
        attempt: impl Fn(Request<B>, Option<Baton>) -> F,
    ) -> Result<T, SendError>
    where
        F: Future<Output = Result<Attempt<T, B>, SendError>>,
    {
        let (mut waiting, mut turn) = (None, None);
        loop {
            let tried = match tokio::time::timeout(self.timeout, attempt(req, turn)).await {
                Ok(tried) => tried?,
                Err(_) => {
                    self.traffic.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(SendError::Timeout);
                }
            };
            let blocked = match tried {
                Attempt::Done(done) => return Ok(done),
                Attempt::Blocked(back, blocked) => {
                    let (back, unused) = *back;
                    req = back;
                    match unused {
                        Some(unused) if blocked == Blocked::Paused => unused.park(),
                        unused => drop(unused),
                    }
                    blocked
                }
            };
            // Boxed: rare, and it would enlarge every request's future.
            let waiting: &mut Waiting = waiting.get_or_insert_with(Box::default);
            turn = Box::pin(waiting.wait(&self.gate, &self.name, blocked, || self.all_paused())).await?;
        }
    }

    /// One try at every address for an ordinary request.
    async fn try_send<B: RequestBody>(
        &self,
        mut req: Request<B>,
        mut turn: Option<Baton>,
    ) -> Result<Attempt<Response<UpstreamBody>, B>, SendError> {
        let mut paused = 0;
        for target in self.in_turn() {
            // Idle connections first, then a new one; one await of the exchange keeps the
            // future (part of every request's) small.
            loop {
                let Some(lease) = self.admit(target) else {
                    paused += 1;
                    break;
                };
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
                let exchanging = exchange(conn, req, lease, false);
                let exchanged = match turn.take() {
                    None => exchanging.await?,
                    Some(turn) => passing_turn(exchanging, turn).await?,
                };
                match exchanged {
                    Exchanged::Answered(resp) => return Ok(Attempt::Done(resp)),
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
        Ok(Attempt::Blocked(Box::new((req, turn)), self.blocked_by(paused)))
    }

    /// One try at every address for an upgrade request, each on a new connection.
    async fn try_upgrade<B: RequestBody>(
        &self,
        req: Request<B>,
        mut turn: Option<Baton>,
    ) -> Result<Attempt<UpgradeAnswer, B>, SendError> {
        let mut paused = 0;
        for target in self.in_turn() {
            let Some(lease) = self.admit(target) else {
                paused += 1;
                continue;
            };
            let Some(io) = self.connect(target).await else { continue };
            let exchanging = exchange(Conn::new(io), req, lease, true);
            let exchanged = match turn.take() {
                None => exchanging.await?,
                Some(turn) => passing_turn(exchanging, turn).await?,
            };
            return match exchanged {
                Exchanged::Switched(head, io) => Ok(Attempt::Done(UpgradeAnswer::Switched(head, io))),
                Exchanged::Answered(resp) => Ok(Attempt::Done(UpgradeAnswer::Refused(resp))),
                // Only a reused connection hands a request back; a new one closed unanswered.
                Exchanged::NotSent(_) => Err(SendError::Upstream(io::ErrorKind::UnexpectedEof.into())),
            };
        }
        Ok(Attempt::Blocked(Box::new((req, turn)), self.blocked_by(paused)))
    }

    /// Why no address took a request, `paused` of them being paused.
    fn blocked_by(&self, paused: usize) -> Blocked {
        if paused == self.targets.len() {
            Blocked::Paused
        } else {
            Blocked::Unreachable
        }
    }

    /// A lease on `target` if a request may use it now; `None` if it (or the whole upstream)
    /// is paused. The lease is counted *before* the flags are read, and a pause sets its
    /// flag before it reads the counts (both sequentially consistent): either the request
    /// sees the pause, or the pause waits for the request.
    fn admit(&self, target: &Arc<Target>) -> Option<Lease> {
        let lease = Lease::take(target);
        if self.gate.attention.load(Ordering::SeqCst)
            && (self.gate.paused.load(Ordering::SeqCst) || target.paused.load(Ordering::SeqCst))
        {
            return None;
        }
        Some(lease)
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
        let (error, why) = match connecting.await {
            Ok(Ok(io)) => return Some(io),
            Ok(Err(e)) => {
                let why = connect_failure(&e, target.tls.is_some());
                (e, why)
            }
            Err(_) => (io::Error::new(io::ErrorKind::TimedOut, "connect timed out"), ConnectFailure::Timeout),
        };
        self.traffic.count_connect_error(why);
        // Requests retrying a restarting backend (connect_retry) fail often: one warning per
        // address per second says as much as one per attempt.
        let since_last = target.last_connect_error().and_then(|(_, at)| at.elapsed().ok());
        let recent = since_last.is_some_and(|since| since < Duration::from_secs(1));
        target.note_connect_error(&error);
        if recent {
            debug!(upstream.name = %self.name, upstream.addr = %target.addr, error = %error, "upstream connect failed");
        } else {
            warn!(upstream.name = %self.name, upstream.addr = %target.addr, error = %error, "upstream connect failed");
        }
        None
    }
}
