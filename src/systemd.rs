//! systemd integration: `sd_notify` messages, listening sockets handed over at start (socket
//! activation, the fd store, or a predecessor's re-exec), and the watchdog interval.
//!
//! This room knows sockets and message strings only; what to report and when is the
//! daemon's policy (`daemon::status`).
//!
//! Everything here is a no-op without systemd: [`Notifier`] sends nothing when
//! `NOTIFY_SOCKET` is unset, and [`Inherited::take`] finds nothing when no fds were passed.
//! [`Inherited::take`] reads (and clears) the environment, so it runs in `main` before any
//! thread exists.

use std::env;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// Env var naming the listening fds a predecessor passed at a SIGUSR2 re-exec (`"7,8"`).
pub const INHERIT_FDS_ENV: &str = "LAMEDUCK_INHERIT_FDS";
/// Env var naming the pipe on which a re-exec'd process reports `ready` (or its error).
pub const READY_FD_ENV: &str = "LAMEDUCK_READY_FD";
/// Env var listing what a predecessor had paused (`legacy,api@127.0.0.1:9001`), so that a
/// binary upgrade does not send requests to a backend being restarted.
pub const PAUSED_ENV: &str = "LAMEDUCK_PAUSED";
/// Prefix of the names under which listening sockets are parked in systemd's fd store.
const STORE_PREFIX: &str = "lameduck-listen-";

/// Where an inherited listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `.socket` unit (socket activation): it must match a `[[listen]]` entry.
    SocketUnit,
    /// systemd's fd store, where an earlier run of lameduck parked it.
    FdStore,
    /// The process that re-exec'd this one on SIGUSR2.
    Predecessor,
}

/// One inherited listening socket.
#[derive(Debug)]
pub struct InheritedSocket {
    /// The socket, still owned by nobody else in this process.
    pub listener: std::net::TcpListener,
    /// Its `LISTEN_FDNAMES` name (or `predecessor`).
    pub name: String,
    /// Who passed it.
    pub origin: Origin,
    /// The address it is bound to.
    pub addr: SocketAddr,
}

/// What this process was handed at start.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Listening sockets, in fd order.
    pub sockets: Vec<InheritedSocket>,
    /// Set when a predecessor waits for this process to report ready.
    pub ready_pipe: Option<OwnedFd>,
    /// What the predecessor had paused ([`PAUSED_ENV`]), if anything.
    pub paused: Option<String>,
}

impl Inherited {
    /// Takes the fds passed by systemd (`LISTEN_FDS`) or by a predecessor
    /// ([`INHERIT_FDS_ENV`]) and clears those variables so no child inherits them.
    /// Call before any thread is started.
    pub fn take() -> io::Result<Inherited> {
        let mut inherited = Inherited::default();
        let activated: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()?.collect();
        for (fd, name) in activated {
            let origin = if name.starts_with(STORE_PREFIX) { Origin::FdStore } else { Origin::SocketUnit };
            inherited.sockets.push(adopt(fd, name, origin)?);
        }
        if let Ok(list) = env::var(INHERIT_FDS_ENV) {
            for fd in list.split(',').filter(|s| !s.is_empty()) {
                let fd: RawFd = fd.parse().map_err(|_| invalid(format!("{INHERIT_FDS_ENV}={list:?}")))?;
                inherited.sockets.push(adopt(fd, "predecessor".to_owned(), Origin::Predecessor)?);
            }
        }
        if let Ok(fd) = env::var(READY_FD_ENV) {
            let fd: RawFd = fd.parse().map_err(|_| invalid(format!("{READY_FD_ENV}={fd:?}")))?;
            set_cloexec(fd)?;
            // SAFETY: the predecessor opened this pipe end for us and passed its number; nothing
            // else in this process owns it.
            inherited.ready_pipe = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        inherited.paused = env::var(PAUSED_ENV).ok().filter(|list| !list.is_empty());
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", INHERIT_FDS_ENV, READY_FD_ENV, PAUSED_ENV] {
            env::remove_var(var);
        }
        Ok(inherited)
    }

    /// Reports to a waiting predecessor: `ready`, or why this process cannot start.
    pub fn report_to_predecessor(&mut self, message: &str) {
        if let Some(pipe) = self.ready_pipe.take() {
            let mut file = std::fs::File::from(pipe);
            let _ = io::Write::write_all(&mut file, message.as_bytes());
        }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("invalid {what}"))
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd number; it fails cleanly (EBADF) if the fd is not open.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of an inherited fd that must be a listening TCP socket.
fn adopt(fd: RawFd, name: String, origin: Origin) -> io::Result<InheritedSocket> {
    set_cloexec(fd).map_err(|e| io::Error::new(e.kind(), format!("inherited fd {fd} ({name}): {e}")))?;
    // SAFETY: systemd or the predecessor passed this fd to us for exactly this purpose, and it
    // was just checked to be open; from here on the listener owns it.
    let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
    let is_listening_stream =
        socket.r#type().ok() == Some(socket2::Type::STREAM) && socket.is_listener().unwrap_or(false);
    let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
    match addr {
        Some(addr) if is_listening_stream => {
            socket.set_nonblocking(true)?;
            Ok(InheritedSocket { listener: socket.into(), name, origin, addr })
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited fd {fd} ({name}) is not a listening TCP socket"),
        )),
    }
}

/// Sends `sd_notify` messages when running under systemd (`NOTIFY_SOCKET` set).
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier that is active only if systemd gave us a notify socket.
    pub fn from_env() -> Self {
        Notifier { enabled: env::var_os("NOTIFY_SOCKET").is_some() }
    }

    /// A notifier that sends nothing (a process that is no longer systemd's main process).
    pub fn disabled() -> Self {
        Notifier { enabled: false }
    }

    /// True under systemd.
    pub fn is_enabled(self) -> bool {
        self.enabled
    }

    fn send(self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                debug!(error = %e, "sd_notify failed");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `MAINPID=` and `READY=1`: a re-exec'd successor takes over as the main process.
    pub fn ready_as_main(self, status: &str) {
        let pid = std::process::id();
        self.send(&[NotifyState::MainPid(pid), NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`, as systemd wants for a reload.
    pub fn reloading(self, status: &str) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(e) => debug!(error = %e, "no monotonic clock for RELOADING"),
        }
    }

    /// `STATUS=`.
    pub fn status(self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `EXTEND_TIMEOUT_USEC=`: keeps systemd's stop timeout from firing for `by` more.
    pub fn extend_timeout(self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// Parks a listening socket in the fd store, so that a restart or a crash keeps it open.
    pub fn store_listener(self, fd: BorrowedFd<'_>, addr: SocketAddr) {
        if !self.enabled {
            return;
        }
        let name = store_name(addr);
        let states = [NotifyState::FdStore, NotifyState::FdName(&name)];
        if let Err(e) = sd_notify::notify_with_fds(&states, &[fd]) {
            debug!(error = %e, "FDSTORE failed");
        }
    }

    /// Removes a parked socket that the configuration no longer names.
    pub fn unstore_listener(self, addr: SocketAddr) {
        let name = store_name(addr);
        self.send(&[NotifyState::FdStoreRemove, NotifyState::FdName(&name)]);
    }
}

/// The fd store name of the listener on `addr` (fd names may not contain `:`).
fn store_name(addr: SocketAddr) -> String {
    format!("{STORE_PREFIX}{}", addr.to_string().replace(':', "_"))
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the watchdog is on.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
