//! The drain signal and connection accounting.
//!
//! One owner, [`Drain`], publishes the [`Phase`] on a `watch` channel; every accept loop,
//! connection and tunnel holds a [`DrainWatch`] and reacts to phase changes. Every accepted
//! connection holds a [`ConnGuard`] from `accept` until its socket is closed: hyper's
//! connection future ends at a `101`, so at an upgrade the guard is shared with the tunnel
//! task (it is an `Arc`), and the connection counts as open until the tunnel ends too.
//!
//! The owner learns that the last connection closed through [`Drain::all_closed`], woken by
//! the guard whose drop took the count to zero — there is no polling timer, so the process can
//! exit the instant the count reaches zero.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Accepting and forwarding normally.
    Serving = 0,
    /// A drain signal arrived; still serving normally, but `/readyz` answers 503 so load
    /// balancers take this instance out of rotation.
    Grace = 1,
    /// Listeners are closed; new requests get 503, in-flight work finishes, tunnels close.
    Draining = 2,
    /// Like `Draining`, but a successor process now owns the listeners, so requests that
    /// still arrive on old connections are forwarded (with `Connection: close`) instead of 503.
    HandedOver = 3,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Serving,
            1 => Phase::Grace,
            2 => Phase::Draining,
            _ => Phase::HandedOver,
        }
    }

    /// True once listeners are closed and connections should wind down.
    pub fn is_draining(self) -> bool {
        self >= Phase::Draining
    }
}

/// Counters shared by the owner and every guard.
#[derive(Debug, Default)]
struct Shared {
    /// Mirror of the watch value for the per-request hot path (a load instead of a lock).
    phase: AtomicU8,
    /// Bumped before every publication on the watch (and when its sender goes), so a waiter
    /// can tell that a wake-up may have come from it; see [`DrainWatch::reached`].
    publications: AtomicU64,
    /// Accepted connections whose sockets are still open (tunnels included).
    open: AtomicUsize,
    /// Requests whose response has not finished.
    in_flight: AtomicUsize,
    /// Upgraded connections being relayed.
    tunnels: AtomicUsize,
    /// Of those, WebSocket tunnels (the ones that close with a handshake, in a `close_spread` slot).
    websocket_tunnels: AtomicUsize,
    /// Woken (`notify_waiters`) by the guard that takes `open` to zero.
    zero: Notify,
    /// Requests that completed after the drain signal.
    completed_after_signal: AtomicUsize,
    /// Requests answered 503 because the daemon was draining.
    rejected: AtomicUsize,
    /// WebSocket tunnels that finished with a close handshake during the drain.
    tunnels_closed: AtomicUsize,
    /// Tunnels cut before the deadline (a side did not answer its Close within `close_timeout`).
    tunnels_cut: AtomicUsize,
    /// WebSocket tunnels open when draining started: the number of slots `close_spread` is cut into.
    tunnels_at_drain: AtomicUsize,
    /// Slots of the `close_spread` window handed out so far.
    close_tickets: AtomicUsize,
}

impl Shared {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            open: self.open.load(Ordering::Acquire),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            tunnels: self.tunnels.load(Ordering::Relaxed),
            completed_after_signal: self.completed_after_signal.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            tunnels_closed: self.tunnels_closed.load(Ordering::Relaxed),
            tunnels_cut: self.tunnels_cut.load(Ordering::Relaxed),
        }
    }
}

/// The owner's side: changes the phase and waits for the connections to go.
#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    shared: Arc<Shared>,
}

/// Counts at one moment, for logs, status lines and the exit summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Open connections, tunnels included.
    pub open: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Open tunnels.
    pub tunnels: usize,
    /// Requests completed after the signal.
    pub completed_after_signal: usize,
    /// Requests answered 503 while draining.
    pub rejected: usize,
    /// Tunnels closed with a close handshake.
    pub tunnels_closed: usize,
    /// Tunnels cut by `close_timeout` (those still open at a cut are not counted here).
    pub tunnels_cut: usize,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // The watch's sender drops after this and wakes its waiters: let them look.
        self.shared.publications.fetch_add(1, Ordering::Release);
    }
}

impl Drain {
    /// A drain in the `Serving` phase with nothing open.
    pub fn new() -> Self {
        let (phase, _) = watch::channel(Phase::Serving);
        Drain { phase, shared: Arc::default() }
    }

    /// A receiver for tasks that must react to phase changes.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch { phase: self.phase.subscribe(), shared: self.shared.clone() }
    }

    /// Moves every watcher to `phase`. `send_replace` works even with no receiver left.
    pub fn set_phase(&self, phase: Phase) {
        if phase.is_draining() && !self.phase().is_draining() {
            let tunnels = self.shared.websocket_tunnels.load(Ordering::Relaxed);
            self.shared.tunnels_at_drain.store(tunnels, Ordering::Relaxed);
        }
        self.shared.phase.store(phase as u8, Ordering::Release);
        self.shared.publications.fetch_add(1, Ordering::Release);
        self.phase.send_replace(phase);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Current counts.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Resolves the moment no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.shared.zero.notified();
            tokio::pin!(notified);
            // Register before checking, so a drop between the check and the await still wakes us.
            notified.as_mut().enable();
            if self.shared.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A task's view of the drain: the phase, and the means to register connections and requests.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    phase: watch::Receiver<Phase>,
    shared: Arc<Shared>,
}

impl DrainWatch {
    /// The current phase (one atomic load).
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.shared.phase.load(Ordering::Acquire))
    }

    /// Resolves once the phase is at least `phase` (at once if it already is).
    ///
    /// Made to sit in a `select!` next to a connection, which polls it at every wake-up of
    /// the task: the watch itself (a lock and a waiter list) is polled again only when a
    /// publication happened or the task's waker changed since it last was.
    pub async fn reached(&mut self, phase: Phase) {
        let DrainWatch { phase: receiver, shared } = self;
        // An error means the owner is gone, which only happens at exit: treat it as reached.
        let mut waiting = pin!(receiver.wait_for(|p| *p >= phase));
        let mut registered: Option<(u64, Waker)> = None;
        poll_fn(|cx| {
            let publications = shared.publications.load(Ordering::Acquire);
            if let Some((seen, waker)) = &registered {
                if *seen == publications && waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
            }
            registered = Some((publications, cx.waker().clone()));
            waiting.as_mut().poll(cx).map(|_| ())
        })
        .await
    }

    /// Resolves once the phase is exactly `phase` (at once if it already is).
    pub async fn entered(&mut self, phase: Phase) {
        // An error means the owner is gone, which only happens at exit: treat it as entered.
        let _ = self.phase.wait_for(|p| *p == phase).await;
    }

    /// Registers an accepted connection. `slot` is its `max_connections` permit, given back
    /// when the guard drops.
    pub fn conn_guard(&self, slot: Option<OwnedSemaphorePermit>) -> Arc<ConnGuard> {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Arc::new(ConnGuard { shared: self.shared.clone(), _slot: slot })
    }

    /// Registers a request; the returned guard must live until its response has finished.
    pub fn request_guard(&self) -> RequestGuard {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard { shared: self.shared.clone(), completes: true }
    }

    /// Current counts.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// How long after the drain start this tunnel should begin its close, so that the close
    /// frames of all tunnels open at the drain are spread evenly over `spread`.
    pub fn close_delay(&self, spread: Duration) -> Duration {
        if spread.is_zero() {
            return Duration::ZERO;
        }
        let slots = self.shared.tunnels_at_drain.load(Ordering::Relaxed).max(1);
        let ticket = self.shared.close_tickets.fetch_add(1, Ordering::Relaxed).min(slots - 1);
        spread.mul_f64(ticket as f64 / slots as f64)
    }

    /// Counts a request answered 503 because of the drain.
    pub fn count_rejected(&self) {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a tunnel, which keeps `conn` (and so the open count) alive while it runs.
    pub fn tunnel_guard(&self, conn: Arc<ConnGuard>, websocket: bool) -> TunnelGuard {
        self.shared.tunnels.fetch_add(1, Ordering::Relaxed);
        if websocket {
            self.shared.websocket_tunnels.fetch_add(1, Ordering::Relaxed);
        }
        TunnelGuard { shared: self.shared.clone(), _conn: conn, websocket }
    }
}

/// Held for as long as an accepted connection's socket is open.
#[derive(Debug)]
pub struct ConnGuard {
    shared: Arc<Shared>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.shared.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.zero.notify_waiters();
        }
    }
}

/// Held until a request's response has been sent completely (or abandoned).
#[derive(Debug)]
pub struct RequestGuard {
    shared: Arc<Shared>,
    /// Counted as completed after the signal (false for requests answered 503).
    completes: bool,
}

impl RequestGuard {
    /// Leaves this request out of "completed after the signal" (it was rejected instead).
    pub fn not_completed(&mut self) {
        self.completes = false;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.shared;
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.completes && s.phase.load(Ordering::Relaxed) != Phase::Serving as u8 {
            s.completed_after_signal.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Held by a tunnel task; keeps the connection counted until the relay ends.
#[derive(Debug)]
pub struct TunnelGuard {
    shared: Arc<Shared>,
    _conn: Arc<ConnGuard>,
    websocket: bool,
}

impl TunnelGuard {
    /// Counts this tunnel as closed with a close handshake.
    pub fn closed_with_handshake(&self) {
        self.shared.tunnels_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts this tunnel as cut during the drain.
    pub fn cut(&self) {
        self.shared.tunnels_cut.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.shared.tunnels.fetch_sub(1, Ordering::Relaxed);
        if self.websocket {
            self.shared.websocket_tunnels.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn all_closed_fires_when_last_guard_drops() {
        let drain = Drain::new();
        let watch = drain.watch();
        let a = watch.conn_guard(None);
        let b = watch.conn_guard(None);
        let tunnel = watch.tunnel_guard(b.clone(), true);
        drop(b);
        assert_eq!(drain.snapshot().open, 2);
        drop(a);
        let waiting = tokio::time::timeout(Duration::from_millis(50), drain.all_closed());
        assert!(waiting.await.is_err(), "the tunnel still holds a connection open");
        let closer = tokio::spawn(async move { drop(tunnel) });
        tokio::time::timeout(Duration::from_secs(1), drain.all_closed()).await.expect("closed");
        closer.await.unwrap();
        assert_eq!(drain.snapshot().tunnels, 0);
    }

    #[tokio::test]
    async fn watchers_see_phase_changes() {
        let drain = Drain::new();
        let mut watch = drain.watch();
        assert_eq!(watch.phase(), Phase::Serving);
        drain.set_phase(Phase::Draining);
        tokio::time::timeout(Duration::from_secs(1), watch.reached(Phase::Grace)).await.unwrap();
        assert!(watch.phase().is_draining());
    }

    /// A task waiting for `Draining`, polled once so that it is registered.
    async fn waiting_for_draining(drain: &Drain) -> tokio::task::JoinHandle<()> {
        let mut watch = drain.watch();
        let waiter = tokio::spawn(async move { watch.reached(Phase::Draining).await });
        tokio::task::yield_now().await;
        waiter
    }

    /// A waiter polled at every wake-up (as in a `select!`) must not lose its place in the
    /// watch to a publication that did not reach its phase.
    #[tokio::test]
    async fn reached_waits_through_earlier_phases_and_repeats() {
        let drain = Drain::new();
        let waiter = waiting_for_draining(&drain).await;
        for phase in [Phase::Grace, Phase::Grace, Phase::Serving] {
            drain.set_phase(phase);
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished(), "{phase:?} is not Draining");
        }
        drain.set_phase(Phase::Draining);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("reached").unwrap();
    }

    #[tokio::test]
    async fn reached_resolves_when_the_owner_goes() {
        let drain = Drain::new();
        let waiter = waiting_for_draining(&drain).await;
        drop(drain);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("resolved").unwrap();
    }

    #[test]
    fn close_delays_spread_evenly_over_the_window() {
        let drain = Drain::new();
        let watch = drain.watch();
        let conn = watch.conn_guard(None);
        let _tunnels: Vec<_> = (0..4).map(|_| watch.tunnel_guard(conn.clone(), true)).collect();
        drain.set_phase(Phase::Draining);
        let spread = Duration::from_secs(2);
        let delays: Vec<u128> = (0..4).map(|_| watch.close_delay(spread).as_millis()).collect();
        assert_eq!(delays, vec![0, 500, 1000, 1500]);
        assert_eq!(watch.close_delay(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn raw_tunnels_take_no_close_spread_slot() {
        let drain = Drain::new();
        let watch = drain.watch();
        let conn = watch.conn_guard(None);
        let _ws: Vec<_> = (0..2).map(|_| watch.tunnel_guard(conn.clone(), true)).collect();
        let _raw: Vec<_> = (0..2).map(|_| watch.tunnel_guard(conn.clone(), false)).collect();
        drain.set_phase(Phase::Draining);
        let spread = Duration::from_secs(2);
        let delays: Vec<u128> = (0..2).map(|_| watch.close_delay(spread).as_millis()).collect();
        assert_eq!(delays, vec![0, 1000]);
    }

    #[test]
    fn requests_finished_after_the_signal_are_counted() {
        let drain = Drain::new();
        let watch = drain.watch();
        let before = watch.request_guard();
        drop(before);
        let during = watch.request_guard();
        drain.set_phase(Phase::Draining);
        assert_eq!(drain.snapshot().in_flight, 1);
        drop(during);
        assert_eq!(drain.snapshot().completed_after_signal, 1);
    }
}
