//! Listening sockets and the accept loop.
//!
//! A slot of `max_connections` is taken *before* `accept`, so past the limit lameduck simply
//! stops accepting and the kernel backlog holds new clients until a slot frees. The drain
//! guard is taken right after `accept` and moves into the connection's task. When draining
//! starts, the daemon stops the loop ([`Stop`]): it takes what waits in the backlog (unless
//! systemd holds the socket) and drops its listener, so new connections are refused (or,
//! when systemd holds the socket, wait in its backlog for the next instance). [`open_all`]
//! opens the listeners in the first place: inherited from systemd or a predecessor, or bound.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::ListenConfig;
use crate::drain::{DrainWatch, Phase};
use crate::proxy::conn::{ConnInfo, ConnServer};
use crate::stats::Stats;
use crate::systemd::{InheritedSocket, Notifier, Origin};
use crate::tls::ListenerTls;

use arc_swap::ArcSwap;

/// Kernel accept queue length; the backlog is what holds clients while lameduck is at its
/// connection limit.
const BACKLOG: i32 = 1024;

/// How long the accept loop pauses when the process is out of file descriptors.
const FD_EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` for listening (with `SO_REUSEADDR`, so a restart does not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Why the configured listeners could not be opened.
#[derive(Debug)]
pub enum ListenError {
    /// A listener could not be bound.
    Bind {
        /// What was configured.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// Inherited sockets and `[[listen]]` entries do not fit together; each entry says what
    /// to change.
    Sockets(Vec<String>),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Bind { addr, .. } => write!(f, "cannot listen on \"{addr}\""),
            ListenError::Sockets(problems) => write!(f, "inherited sockets: {}", problems.join("; ")),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::Bind { source, .. } => Some(source),
            ListenError::Sockets(_) => None,
        }
    }
}

/// A configured listener, opened.
#[derive(Debug)]
pub struct Opened {
    /// The listening socket.
    pub listener: std::net::TcpListener,
    /// Where it came from, for the start-up log: `bound`, `socket-activation`, `fd-store`,
    /// or `predecessor`.
    pub source: &'static str,
    /// systemd keeps this socket open after lameduck closes it (socket unit or fd store), so
    /// clients in its backlog wait for the next instance.
    pub held_by_systemd: bool,
}

/// The configured listening sockets, opened.
#[derive(Debug)]
pub struct OpenedSockets {
    /// One per `[[listen]]` entry, in config order.
    pub listeners: Vec<Opened>,
    /// The `[admin]` listener, if configured.
    pub admin: Option<Opened>,
}

/// Opens every `[[listen]]` entry (in config order) and the admin listener: from an
/// inherited socket bound to its address where there is one (an entry with port 0 takes any
/// inherited socket on its IP), else by binding it. Under socket activation every
/// `[[listen]]` entry must have a socket and every socket an entry; sockets from the fd store
/// or a predecessor that the config no longer names are closed. Newly bound sockets are parked
/// in systemd's fd store.
pub fn open_all(
    listen: &[ListenConfig],
    admin_addr: Option<SocketAddr>,
    inherited: Vec<InheritedSocket>,
    notifier: Notifier,
) -> Result<OpenedSockets, ListenError> {
    let strict = inherited.iter().any(|s| s.origin == Origin::SocketUnit);
    let mut pool = SocketPool(inherited.into_iter().map(Some).collect());
    let mut found: Vec<_> = listen.iter().map(|l| pool.claim(l.addr)).collect();
    let mut admin = admin_addr.and_then(|addr| pool.claim(addr));
    for (slot, entry) in found.iter_mut().zip(listen) {
        if slot.is_none() && entry.addr.port() == 0 {
            *slot = pool.claim_on_ip(entry.addr);
        }
    }
    if let Some(addr) = admin_addr.filter(|a| a.port() == 0 && admin.is_none()) {
        admin = pool.claim_on_ip(addr);
    }

    let mut problems = pool.close_leftovers(notifier);
    let mut listeners = Vec::new();
    for (slot, entry) in found.into_iter().zip(listen) {
        match slot {
            None if strict => problems.push(format!(
                "[[listen]] addr = \"{}\" has no socket from systemd: add ListenStream={} to the socket unit",
                entry.addr, entry.addr
            )),
            slot => listeners.push(open_one(slot, entry.addr, notifier)?),
        }
    }
    let admin = admin_addr.map(|addr| open_one(admin, addr, notifier)).transpose()?;
    if problems.is_empty() {
        Ok(OpenedSockets { listeners, admin })
    } else {
        Err(ListenError::Sockets(problems))
    }
}

/// A freshly bound socket for a listener a reload adds (parked in the fd store).
///
/// # Errors
/// [`ListenError::Bind`] when the address cannot be bound.
pub fn open_new(addr: SocketAddr, notifier: Notifier) -> Result<Opened, ListenError> {
    open_one(None, addr, notifier)
}

/// The inherited socket for `addr`, or a freshly bound one (parked in the fd store).
fn open_one(
    inherited: Option<InheritedSocket>,
    addr: SocketAddr,
    notifier: Notifier,
) -> Result<Opened, ListenError> {
    if let Some(socket) = inherited {
        let held_by_systemd = notifier.is_enabled() || socket.origin != Origin::Predecessor;
        return Ok(Opened { listener: socket.listener, source: source_name(socket.origin), held_by_systemd });
    }
    let listener = bind(addr).map_err(|source| ListenError::Bind { addr, source })?;
    notifier.store_listener(listener.as_fd(), listener.local_addr().unwrap_or(addr));
    Ok(Opened { listener, source: "bound", held_by_systemd: notifier.is_enabled() })
}

/// Inherited sockets not yet claimed by a configured listener.
struct SocketPool(Vec<Option<InheritedSocket>>);

impl SocketPool {
    fn take(&mut self, pred: impl Fn(&InheritedSocket) -> bool) -> Option<InheritedSocket> {
        let index = self.0.iter().position(|s| s.as_ref().is_some_and(&pred))?;
        self.0[index].take()
    }

    /// The socket bound to exactly `addr`.
    fn claim(&mut self, addr: SocketAddr) -> Option<InheritedSocket> {
        self.take(|s| s.addr == addr)
    }

    /// Any socket on the IP of `addr` (for entries with port 0).
    fn claim_on_ip(&mut self, addr: SocketAddr) -> Option<InheritedSocket> {
        self.take(|s| s.addr.ip() == addr.ip())
    }

    /// Closes what no entry claimed; a socket unit's leftovers are errors.
    fn close_leftovers(self, notifier: Notifier) -> Vec<String> {
        let mut problems = Vec::new();
        for left in self.0.into_iter().flatten() {
            match left.origin {
                Origin::SocketUnit => problems.push(format!(
                    "socket-activated fd \"{}\" is bound to {}, which no [[listen]] entry names: add [[listen]] addr = \"{}\" or remove it from the socket unit",
                    left.name, left.addr, left.addr
                )),
                Origin::FdStore => {
                    info!(listener.addr = %left.addr, "closing a parked listener the config no longer names");
                    notifier.unstore_listener(left.addr);
                }
                Origin::Predecessor => {
                    info!(listener.addr = %left.addr, "closing an inherited listener the config no longer names");
                    notifier.unstore_listener(left.addr);
                }
            }
        }
        problems
    }
}

fn source_name(origin: Origin) -> &'static str {
    match origin {
        Origin::SocketUnit => "socket-activation",
        Origin::FdStore => "fd-store",
        Origin::Predecessor => "predecessor",
    }
}

/// What the daemon tells accept loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep accepting.
    No,
    /// Stop: accept what already waits in the kernel backlog (those clients connected before
    /// the drain and get an answer — a 503 with Retry-After — instead of a reset), then close
    /// the listener. Skipped for sockets systemd keeps open: their backlog waits for the next
    /// instance.
    TakeBacklogAndClose,
    /// Stop and close the listener at once (a successor shares the socket and takes the backlog).
    Close,
}

/// Everything a listener's connections are served with.
#[derive(Debug, Clone)]
pub struct Acceptor {
    /// How connections are served now: swapped by a reload, loaded once per connection.
    pub live: Arc<ArcSwap<ListenerLive>>,
    /// Turns true when a reload removes the listener: its connections wind down.
    pub retired: watch::Receiver<bool>,
    /// Accepted connections and failed TLS handshakes are counted here.
    pub stats: Arc<Stats>,
    /// Registers each connection with the drain.
    pub drain: DrainWatch,
    /// `max_connections` slots.
    pub slots: Arc<Semaphore>,
    /// Whether a drain takes the backlog before closing (see [`Stop::TakeBacklogAndClose`]).
    pub takes_backlog: bool,
}

/// What a listener serves its next connection with, as the config says now.
#[derive(Debug)]
pub struct ListenerLive {
    /// Serves accepted connections.
    pub server: Arc<ConnServer>,
    /// Set for TLS listeners: the certificates new handshakes use.
    pub tls: Option<ListenerTls>,
}

/// Accepts connections on `listener` and serves each on its own task (after a TLS handshake
/// when the listener has TLS), until `stop` says otherwise; then closes the listener.
pub async fn accept_loop(listener: TcpListener, acceptor: Acceptor, mut stop: watch::Receiver<Stop>) {
    let stopped = loop {
        let slot = tokio::select! {
            slot = acceptor.slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
            stop = stop.wait_for(|s| *s != Stop::No) => break stop.map_or(Stop::Close, |s| *s),
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            stop = stop.wait_for(|s| *s != Stop::No) => break stop.map_or(Stop::Close, |s| *s),
        };
        match accepted {
            Ok((stream, peer)) => acceptor.spawn_connection(stream, peer, slot),
            Err(e) if is_out_of_fds(&e) => {
                warn!(error = %e, backoff_ms = FD_EXHAUSTED_BACKOFF.as_millis() as u64, "out of file descriptors; pausing accept");
                tokio::time::sleep(FD_EXHAUSTED_BACKOFF).await;
            }
            Err(e) => debug!(error = %e, "accept failed"),
        }
    };
    if stopped == Stop::TakeBacklogAndClose && acceptor.takes_backlog {
        take_backlog(listener, &acceptor);
    }
}

/// Accepts every connection already waiting in the backlog (a plain non-blocking `accept`
/// until it would block), so that closing the listener resets no client that connected
/// before the drain.
fn take_backlog(listener: TcpListener, acceptor: &Acceptor) {
    let Ok(listener) = listener.into_std() else { return };
    while let Ok(slot) = acceptor.slots.clone().try_acquire_owned() {
        let Ok((stream, peer)) = listener.accept() else { break };
        let stream = stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream));
        match stream {
            Ok(stream) => acceptor.spawn_connection(stream, peer, slot),
            Err(e) => debug!(client.addr = %peer, error = %e, "cannot adopt a connection from the backlog"),
        }
    }
}

impl Acceptor {
    /// Registers `stream` with the drain and serves it on its own task.
    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let guard = self.drain.conn_guard(Some(slot));
        self.stats.connection_accepted();
        let live = self.live.load_full();
        let (mut drain, retired, stats) = (self.drain.clone(), self.retired.clone(), self.stats.clone());
        tokio::spawn(async move {
            let ListenerLive { server, tls } = &*live;
            if let Err(e) = stream.set_nodelay(true) {
                debug!(client.addr = %peer, error = %e, "set TCP_NODELAY failed");
            }
            match tls {
                None => {
                    let info = ConnInfo { peer, tls: false, h2: false };
                    server.serve(stream, info, guard, drain, retired).await;
                }
                Some(tls) => {
                    // Boxed: the handshake's state would otherwise enlarge every connection's task.
                    let Some(stream) = Box::pin(handshake(tls, stream, peer, &mut drain, &stats)).await
                    else {
                        return;
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let info = ConnInfo { peer, tls: true, h2 };
                    server.serve(stream, info, guard, drain, retired).await;
                }
            }
        });
    }
}

/// Completes the TLS handshake, bounded by its timeout and abandoned when draining starts.
/// A failed handshake concerns only this client: it is logged at debug and counted. A client
/// that speaks plain HTTP instead gets `400` "this port expects TLS".
async fn handshake(
    tls: &ListenerTls,
    stream: TcpStream,
    peer: SocketAddr,
    drain: &mut DrainWatch,
    stats: &Stats,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = tokio::time::timeout(tls.handshake_timeout, async {
        if speaks_plain_http(&stream).await? {
            answer_plain_http(stream).await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "plain HTTP on a TLS port: answered 400"));
        }
        tls.acceptor.accept(stream).await
    });
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                stats.tls_handshake_failed();
                debug!(client.addr = %peer, error = %e, "tls handshake failed");
                None
            }
            Err(_) => {
                stats.tls_handshake_failed();
                debug!(client.addr = %peer, "tls handshake timed out");
                None
            }
        },
        // Only a real drain abandons handshakes; after a reload's handover they finish here.
        _ = drain.reached(Phase::Draining) => {
            debug!(client.addr = %peer, "tls handshake abandoned: draining");
            None
        }
    };
    stream
}

/// Whether the client's first byte starts an HTTP/1 request line (an upper-case method letter)
/// rather than a TLS record (0x16, a handshake); waits for that byte without consuming it.
async fn speaks_plain_http(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0].is_ascii_uppercase())
}

/// The answer nginx and Go give plain HTTP on a TLS port: `400` with a one-line body, then
/// close. The request is read and discarded for up to a second after the answer, so the close
/// does not reset the connection (and destroy the answer) while request bytes are unread.
async fn answer_plain_http(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "this port expects TLS\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// EMFILE or ENFILE: the process or the system has no file descriptor left.
fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
