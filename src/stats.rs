//! What happened, counted: requests completed and refused, tunnels closed and cut.
//!
//! The `drain` module counts what is *open* (connections, requests, tunnels) because the exit
//! decision depends on it; this store counts what has *happened*, for `/metrics` and the exit
//! summary line. The proxy and the tunnels write to it, through one shared [`Stats`]; nothing
//! branches on its values. Counters only grow, so a scraper can take rates of them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// What an open client connection is, for `lameduck_connections{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// Serving HTTP/1.1 requests.
    Http1,
    /// Serving HTTP/2 streams.
    Http2,
    /// A WebSocket tunnel, after its `101`.
    WebSocket,
    /// Another upgraded protocol, relayed raw.
    Tunnel,
}

impl ConnKind {
    /// Every kind, in label order.
    pub const ALL: [ConnKind; 4] = [ConnKind::Http1, ConnKind::Http2, ConnKind::WebSocket, ConnKind::Tunnel];

    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnKind::Http1 => "http1",
            ConnKind::Http2 => "http2",
            ConnKind::WebSocket => "websocket",
            ConnKind::Tunnel => "tunnel",
        }
    }
}

/// Monotonic event counters, shared by every connection and tunnel.
#[derive(Debug)]
pub struct Stats {
    /// Requests whose response finished (forwarded or answered by lameduck), 503s excepted.
    requests_completed: AtomicU64,
    /// `requests_completed` when the drain signal came; `u64::MAX` before it.
    completed_at_signal: AtomicU64,
    /// Requests answered 503 because the daemon was draining.
    requests_rejected: AtomicU64,
    /// Held requests answered 503 because the drain's deadline (or a handover) came.
    held_refused: AtomicU64,
    /// WebSocket tunnels closed with the drain's close handshake.
    tunnels_closed: AtomicU64,
    /// Tunnels cut during the drain because a side did not answer its Close in time.
    tunnels_cut: AtomicU64,
    /// Client connections accepted.
    connections_accepted: AtomicU64,
    /// TLS handshakes that failed or timed out.
    tls_handshake_errors: AtomicU64,
    /// Connections (tunnels included) still open when the deadline or a second signal cut.
    connections_cut: AtomicU64,
    /// When the drain's deadline cuts, in milliseconds since the epoch; 0 while serving.
    deadline_unix_ms: AtomicU64,
    /// Open connections by kind (as [`ConnKind`] indexes) and TLS (0 no, 1 yes): a gauge.
    open_by_kind: [[AtomicI64; 2]; 4],
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests completed since start.
    pub requests_completed: u64,
    /// Of those, the ones that completed after the drain signal (0 before it).
    pub completed_after_signal: u64,
    /// Requests answered 503 while draining.
    pub requests_rejected: u64,
    /// Held requests answered 503 at the drain's deadline or a handover.
    pub held_refused: u64,
    /// Tunnels closed with a close handshake on the drain.
    pub tunnels_closed: u64,
    /// Tunnels cut by `close_timeout` (those still open at the deadline are not counted here).
    pub tunnels_cut: u64,
    /// Client connections accepted.
    pub connections_accepted: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_errors: u64,
    /// Connections still open when the deadline or a second signal cut.
    pub connections_cut: u64,
    /// When the drain's deadline cuts, in milliseconds since the epoch; 0 while serving.
    pub deadline_unix_ms: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests_completed: AtomicU64::new(0),
            completed_at_signal: AtomicU64::new(u64::MAX),
            requests_rejected: AtomicU64::new(0),
            held_refused: AtomicU64::new(0),
            tunnels_closed: AtomicU64::new(0),
            tunnels_cut: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            tls_handshake_errors: AtomicU64::new(0),
            connections_cut: AtomicU64::new(0),
            deadline_unix_ms: AtomicU64::new(0),
            open_by_kind: std::array::from_fn(|_| std::array::from_fn(|_| AtomicI64::new(0))),
        }
    }
}

impl Stats {
    /// Counts a request whose response has finished (or was abandoned by the client).
    pub fn request_completed(&self) {
        self.requests_completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request answered 503 because of the drain.
    pub fn request_rejected(&self) {
        self.requests_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a held request answered 503 because the drain's deadline (or a handover) came.
    pub fn held_refused(&self) {
        self.held_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a tunnel closed with the drain's close handshake.
    pub fn tunnel_closed(&self) {
        self.tunnels_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a tunnel cut during the drain.
    pub fn tunnel_cut(&self) {
        self.tunnels_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted client connection.
    pub fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TLS handshake that failed or timed out.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the connections a cut closed.
    pub fn connections_cut(&self, n: u64) {
        self.connections_cut.fetch_add(n, Ordering::Relaxed);
    }

    /// Notes when the drain's deadline will cut, in milliseconds since the epoch.
    pub fn set_deadline(&self, unix_ms: u64) {
        self.deadline_unix_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Counts a connection that is now of `kind` (opened, or changed kind).
    pub fn conn_kind_open(&self, kind: ConnKind, tls: bool) {
        self.open_by_kind[kind as usize][usize::from(tls)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that is no longer of `kind` (closed, or changed kind).
    pub fn conn_kind_closed(&self, kind: ConnKind, tls: bool) {
        self.open_by_kind[kind as usize][usize::from(tls)].fetch_sub(1, Ordering::Relaxed);
    }

    /// Open connections of `kind` over TLS or not.
    pub fn open_of_kind(&self, kind: ConnKind, tls: bool) -> i64 {
        self.open_by_kind[kind as usize][usize::from(tls)].load(Ordering::Relaxed)
    }

    /// Notes that the drain signal came: requests completed from now on count as "completed
    /// after the signal". Only the first call counts.
    pub fn mark_signal(&self) {
        let now = self.requests_completed.load(Ordering::Relaxed);
        let _ =
            self.completed_at_signal.compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        let completed = self.requests_completed.load(Ordering::Relaxed);
        let at_signal = self.completed_at_signal.load(Ordering::Relaxed);
        Counts {
            requests_completed: completed,
            // Before the signal `at_signal` is u64::MAX: nothing after it yet.
            completed_after_signal: completed.saturating_sub(at_signal),
            requests_rejected: self.requests_rejected.load(Ordering::Relaxed),
            held_refused: self.held_refused.load(Ordering::Relaxed),
            tunnels_closed: self.tunnels_closed.load(Ordering::Relaxed),
            tunnels_cut: self.tunnels_cut.load(Ordering::Relaxed),
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            tls_handshake_errors: self.tls_handshake_errors.load(Ordering::Relaxed),
            connections_cut: self.connections_cut.load(Ordering::Relaxed),
            deadline_unix_ms: self.deadline_unix_ms.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_finished_after_the_signal_are_counted() {
        let stats = Stats::default();
        stats.request_completed();
        assert_eq!(stats.counts().completed_after_signal, 0, "no signal yet");
        stats.mark_signal();
        stats.request_completed();
        stats.mark_signal();
        let counts = stats.counts();
        assert_eq!((counts.requests_completed, counts.completed_after_signal), (2, 1));
    }
}
