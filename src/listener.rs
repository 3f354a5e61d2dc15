//! Listening sockets and the accept loop.
//!
//! A slot of `max_connections` is taken *before* `accept`, so past the limit lameduck simply
//! stops accepting and the kernel backlog holds new clients until a slot frees. The drain
//! guard is taken right after `accept` and moves into the connection's task. When draining
//! starts, the loop ends and drops its listener, so new connections are refused (or, under
//! socket activation, wait in the backlog for the next instance).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::drain::{ConnGuard, DrainWatch, Phase};
use crate::proxy::conn::{ConnInfo, ConnServer};
use crate::tls::ListenerTls;

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

/// Accepts connections on `listener` and serves each on its own task (after a TLS handshake
/// when `tls` is set), until draining starts.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<ListenerTls>,
    server: Arc<ConnServer>,
    mut drain: DrainWatch,
    slots: Arc<Semaphore>,
) {
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
            _ = drain.reached(Phase::Draining) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.reached(Phase::Draining) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = drain.conn_guard(Some(slot));
                let server = server.clone();
                let drain = drain.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(client.addr = %peer, error = %e, "set TCP_NODELAY failed");
                    }
                    match tls {
                        None => {
                            let info = ConnInfo { peer, tls: false, h2: false };
                            server.serve(stream, info, guard, drain).await;
                        }
                        Some(tls) => serve_tls(&server, &tls, stream, peer, guard, drain).await,
                    }
                });
            }
            Err(e) if is_out_of_fds(&e) => {
                warn!(error = %e, backoff_ms = FD_EXHAUSTED_BACKOFF.as_millis() as u64, "out of file descriptors; pausing accept");
                tokio::time::sleep(FD_EXHAUSTED_BACKOFF).await;
            }
            Err(e) => debug!(error = %e, "accept failed"),
        }
    }
}

/// Completes the TLS handshake (bounded by its timeout, abandoned when draining starts) and
/// serves the connection. A failed handshake concerns only this client: it is logged at debug.
async fn serve_tls(
    server: &ConnServer,
    tls: &ListenerTls,
    stream: TcpStream,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
    mut drain: DrainWatch,
) {
    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return debug!(client.addr = %peer, error = %e, "tls handshake failed"),
            Err(_) => return debug!(client.addr = %peer, "tls handshake timed out"),
        },
        _ = drain.reached(Phase::Draining) => return debug!(client.addr = %peer, "tls handshake abandoned: draining"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let info = ConnInfo { peer, tls: true, h2 };
    server.serve(stream, info, guard, drain).await;
}

/// EMFILE or ENFILE: the process or the system has no file descriptor left.
fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
