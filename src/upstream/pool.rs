//! One address of an upstream group: its idle keep-alive connections, and what the admin API
//! sees of it (requests in flight, paused or not, the last connect error).
//!
//! A connection enters the pool only from a response body read to its end on a connection
//! that can carry another request (see `body.rs`); it leaves it for the next request,
//! which first checks that the upstream has not closed it meanwhile.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use super::conn::Conn;
use crate::config::UpstreamAddr;
use crate::tls::UpstreamTls;
use crate::traffic::UpstreamTraffic;

/// Idle connections kept per address; more are closed.
const MAX_IDLE_PER_ADDR: usize = 256;

/// The idle connections of an address.
#[derive(Debug, Default)]
struct Pool {
    conns: Vec<Conn>,
    /// Set while the address is paused: connections coming back are closed, since the
    /// backend behind them is about to restart.
    closed: bool,
}

/// One address of a group with its idle connections.
#[derive(Debug)]
pub struct Target {
    /// Where to connect.
    pub(super) addr: UpstreamAddr,
    /// Set for https upstreams.
    pub(super) tls: Option<UpstreamTls>,
    idle: Mutex<Pool>,
    /// Requests and tunnels using this address: each holds a [`Lease`] from before it
    /// connects until its response body ends or its tunnel closes.
    in_flight: AtomicUsize,
    /// Taken out of rotation by `pause?addr=` (changed only under the gate's lock).
    pub(super) paused: AtomicBool,
    /// Signalled when the address is paused: its tunnels close with 1012 Service Restart.
    restart: watch::Sender<()>,
    /// The last failed connect: why, and when.
    last_error: Mutex<Option<(String, SystemTime)>>,
    /// Its upstream's figures (request bytes are counted as they are sent).
    pub(super) traffic: &'static UpstreamTraffic,
}

impl Target {
    /// An address with no idle connection yet, counting into `traffic`.
    pub(super) fn new(
        addr: UpstreamAddr,
        tls: Option<UpstreamTls>,
        traffic: &'static UpstreamTraffic,
    ) -> Self {
        Target {
            addr,
            tls,
            idle: Mutex::new(Pool::default()),
            in_flight: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            restart: watch::Sender::new(()),
            last_error: Mutex::new(None),
            traffic,
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.idle.lock().expect("pool lock is never held across a panic")
    }

    /// Takes back a connection whose last response was read whole.
    pub(super) fn give_back(&self, mut conn: Conn) {
        conn.make_idle();
        let mut pool = self.pool();
        if pool.conns.len() < MAX_IDLE_PER_ADDR && !pool.closed {
            pool.conns.push(conn);
        }
    }

    /// The most recently used idle connection, if any (it may have been closed since).
    pub(super) fn take_idle(&self) -> Option<Conn> {
        self.pool().conns.pop()
    }

    /// Closes every idle connection, and those that come back until [`Target::reopen_pool`]:
    /// a backend about to restart should see no idle socket of ours, and none of them would
    /// survive the restart.
    pub(super) fn close_pool(&self) {
        let closed = {
            let mut pool = self.pool();
            pool.closed = true;
            std::mem::take(&mut pool.conns)
        };
        drop(closed);
    }

    /// Pools idle connections again (the address resumed).
    pub(super) fn reopen_pool(&self) {
        self.pool().closed = false;
    }

    /// Idle connections pooled now.
    pub(super) fn idle_count(&self) -> usize {
        self.pool().conns.len()
    }

    /// Requests and tunnels using this address now.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Tells this address's tunnels to close (the address is paused for a restart).
    pub(super) fn signal_restart(&self) {
        self.restart.send_replace(());
    }

    /// Resolves when the address is next paused; tunnels wait on it.
    pub(super) fn restarts(&self) -> watch::Receiver<()> {
        self.restart.subscribe()
    }

    /// Records why connecting failed, for `GET /upstreams`.
    pub(super) fn note_connect_error(&self, error: &std::io::Error) {
        *self.last_error.lock().expect("never held across a panic") =
            Some((error.to_string(), SystemTime::now()));
    }

    /// The last connect error and when it happened, if any.
    pub(super) fn last_connect_error(&self) -> Option<(String, SystemTime)> {
        self.last_error.lock().expect("never held across a panic").clone()
    }
}

/// A request's (or a tunnel's) place in its address's in-flight count, released on drop.
///
/// Taken *before* the pause flags are read (see `Upstream::admit`): a pause sets its flag
/// and then waits for the count, so every request either sees the pause or is counted.
#[derive(Debug)]
pub struct Lease(Arc<Target>);

impl Lease {
    /// Counts one more user of `target`.
    pub(super) fn take(target: &Arc<Target>) -> Lease {
        target.in_flight.fetch_add(1, Ordering::SeqCst);
        Lease(target.clone())
    }
}

impl Deref for Lease {
    type Target = Target;

    fn deref(&self) -> &Target {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
