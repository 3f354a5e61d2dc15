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

use crate::drain::{DrainWatch, Phase};
use crate::proxy::conn::{ConnInfo, ConnServer};

/// Kernel accept queue length; the backlog is what holds clients while lameduck is at its
/// connection limit.
const BACKLOG: i32 = 1024;

/// How long the accept loop pauses when the process is out of file descriptors.
const FD_EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` for listening (with `SO_REUSEADDR`, so a restart does not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts connections on `listener` and serves each on its own task, until draining starts.
pub async fn accept_loop(
    listener: TcpListener,
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
                tokio::spawn(async move {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(client.addr = %peer, error = %e, "set TCP_NODELAY failed");
                    }
                    serve_plain(&server, stream, peer, guard, drain).await;
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

async fn serve_plain(
    server: &ConnServer,
    stream: TcpStream,
    peer: SocketAddr,
    guard: Arc<crate::drain::ConnGuard>,
    drain: DrainWatch,
) {
    let info = ConnInfo {
        peer,
        tls: false,
        h2: false,
    };
    server.serve(stream, info, guard, drain).await;
}

/// EMFILE or ENFILE: the process or the system has no file descriptor left.
fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
