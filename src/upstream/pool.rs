//! One address of an upstream group and its idle keep-alive connections.
//!
//! A connection enters the pool only from a response body read to its end on a connection
//! that can carry another request (see `body.rs`); it leaves it for the next request,
//! which first checks that the upstream has not closed it meanwhile.

use std::sync::Mutex;

use super::conn::Conn;
use crate::config::UpstreamAddr;
use crate::tls::UpstreamTls;

/// Idle connections kept per address; more are closed.
const MAX_IDLE_PER_ADDR: usize = 256;

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
    /// An address with no idle connection yet.
    pub(super) fn new(addr: UpstreamAddr, tls: Option<UpstreamTls>) -> Self {
        Target { addr, tls, idle: Mutex::new(Vec::new()) }
    }

    /// Takes back a connection whose last response was read whole.
    pub(super) fn give_back(&self, mut conn: Conn) {
        conn.make_idle();
        let mut idle = self.idle.lock().expect("pool lock is never held across a panic");
        if idle.len() < MAX_IDLE_PER_ADDR {
            idle.push(conn);
        }
    }

    /// The most recently used idle connection, if any (it may have been closed since).
    pub(super) fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().expect("pool lock is never held across a panic").pop()
    }
}
