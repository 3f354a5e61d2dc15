//! How the drain closes tunnels: what a tunnel sends and how long it waits
//! ([`CloseSettings`]), and when each tunnel starts ([`CloseSpread`]).
//!
//! `close_spread` spreads the drain's close frames over a window, so that clients told to
//! reconnect do not all come back in the same instant (a reconnect storm on the next
//! instance).
//! The window is cut into one slot per WebSocket tunnel open when the first tunnel asks for
//! its slot (the moment the drain reaches the tunnels); each tunnel takes the next slot in
//! turn. Raw (non-WebSocket) tunnels close by no handshake and take no slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the drain closes a WebSocket tunnel (`[drain]` close settings, built once).
#[derive(Debug, Clone)]
pub struct CloseSettings {
    /// Close code sent to both sides (RFC 6455 §7.4; 1001 Going Away by default).
    pub code: u16,
    /// Close reason sent to both sides (at most 123 bytes, RFC 6455 §5.5).
    pub reason: String,
    /// How long to wait for each side's Close before cutting TCP.
    pub timeout: Duration,
    /// The window over which the tunnels' close frames are spread.
    pub spread: Duration,
}

/// The close-spread schedule shared by every WebSocket tunnel.
#[derive(Debug)]
pub struct CloseSpread {
    /// `close_spread`, in milliseconds (a reload may change it).
    window_ms: AtomicU64,
    /// WebSocket tunnels open now; each holds a [`SpreadMember`].
    open: AtomicUsize,
    /// How many slots the window is cut into; 0 until the first slot is taken.
    slots: AtomicUsize,
    /// Slots handed out so far.
    tickets: AtomicUsize,
    /// The longest the window may be, in milliseconds, once the drain has fitted it to its
    /// deadline ([`CloseSpread::fit_within`]); `u64::MAX` until then.
    limit_ms: AtomicU64,
}

/// A WebSocket tunnel's place in the count of [`CloseSpread`]; dropped when the tunnel ends.
#[derive(Debug)]
pub struct SpreadMember {
    spread: Arc<CloseSpread>,
}

impl Drop for SpreadMember {
    fn drop(&mut self) {
        self.spread.leave();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CloseSpread {
    /// A schedule over `window` (zero: every tunnel closes at once).
    pub fn new(window: Duration) -> Self {
        CloseSpread {
            window_ms: AtomicU64::new(millis(window)),
            open: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            tickets: AtomicUsize::new(0),
            limit_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Shrinks the window to at most `room`, the time the deadline leaves for spreading.
    pub fn fit_within(&self, room: Duration) {
        self.limit_ms.fetch_min(millis(room), Ordering::Relaxed);
    }

    /// Sets a new `close_spread` (a reload).
    pub fn set_window(&self, window: Duration) {
        self.window_ms.store(millis(window), Ordering::Relaxed);
    }

    /// The window, fitted.
    fn window(&self) -> Duration {
        let window_ms = self.window_ms.load(Ordering::Relaxed);
        Duration::from_millis(window_ms.min(self.limit_ms.load(Ordering::Relaxed)))
    }

    /// Counts a WebSocket tunnel until the returned member drops.
    pub fn join(self: &Arc<Self>) -> SpreadMember {
        self.open.fetch_add(1, Ordering::Relaxed);
        SpreadMember { spread: self.clone() }
    }

    /// A WebSocket tunnel has ended.
    fn leave(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long after the drain reaches it a tunnel should begin its close, so that the
    /// close frames of all tunnels open at the drain are spread evenly over the window.
    pub fn close_delay(&self) -> Duration {
        let window = self.window();
        if window.is_zero() {
            return Duration::ZERO;
        }
        let open = self.open.load(Ordering::Relaxed).max(1);
        let slots = match self.slots.compare_exchange(0, open, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => open,
            Err(fixed) => fixed,
        };
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed).min(slots - 1);
        window.mul_f64(ticket as f64 / slots as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_delays_spread_evenly_over_the_window() {
        let spread = Arc::new(CloseSpread::new(Duration::from_secs(2)));
        let _tunnels: Vec<_> = (0..4).map(|_| spread.join()).collect();
        let delays: Vec<u128> = (0..4).map(|_| spread.close_delay().as_millis()).collect();
        assert_eq!(delays, vec![0, 500, 1000, 1500]);
        assert_eq!(CloseSpread::new(Duration::ZERO).close_delay(), Duration::ZERO);
    }

    #[test]
    fn only_tunnels_that_joined_take_a_slot() {
        // Raw tunnels do not join: two WebSocket tunnels share the window.
        let spread = Arc::new(CloseSpread::new(Duration::from_secs(2)));
        let _ws: Vec<_> = (0..2).map(|_| spread.join()).collect();
        let delays: Vec<u128> = (0..2).map(|_| spread.close_delay().as_millis()).collect();
        assert_eq!(delays, vec![0, 1000]);
    }

    #[test]
    fn a_window_longer_than_the_deadline_leaves_is_compressed_into_it() {
        let spread = Arc::new(CloseSpread::new(Duration::from_secs(6)));
        let _tunnels: Vec<_> = (0..6).map(|_| spread.join()).collect();
        spread.fit_within(Duration::from_secs(1));
        spread.fit_within(Duration::from_secs(3)); // only ever shrinks
        let delays: Vec<u128> = (0..6).map(|_| spread.close_delay().as_millis()).collect();
        assert_eq!(delays, vec![0, 166, 333, 500, 666, 833]);
    }
}
