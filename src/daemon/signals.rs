//! The signals the daemon reacts to, installed before anything is bound so that an early
//! signal drains too.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals the daemon reacts to.
pub(super) struct Signals {
    pub(super) term: Signal,
    pub(super) int: Signal,
    pub(super) hup: Signal,
    /// Restart every supervised backend.
    pub(super) usr1: Signal,
    /// Upgrade the binary (re-exec handover).
    pub(super) usr2: Signal,
}

impl Signals {
    /// Installs the handlers for SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2.
    pub(super) fn install() -> io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT, with the signal's name.
    pub(super) async fn drain_signal(&mut self) -> &'static str {
        next_drain_signal(&mut self.term, &mut self.int).await
    }
}

/// SIGTERM or SIGINT, whichever comes first (a free function, so that `select!` can borrow
/// the SIGHUP stream beside it).
pub(super) async fn next_drain_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
