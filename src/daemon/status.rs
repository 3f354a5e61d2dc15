//! What the daemon tells systemd while it runs, and when: the `STATUS=` line, watchdog
//! pings, and `EXTEND_TIMEOUT_USEC=` while a drain makes progress.
//!
//! [`crate::systemd`] only knows how to send; the policy — which counts a status line shows,
//! how often, when the stop timeout is pushed back — is the daemon's, here. Everything is a
//! no-op when the [`Notifier`] is disabled (no systemd, or a successor is the main process).

use std::time::Duration;

use tokio::time::Instant;

use crate::drain::{DrainWatch, Phase, Snapshot};
use crate::systemd::{self, Notifier};

/// How often the status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How far each `EXTEND_TIMEOUT_USEC` pushes systemd's stop timeout while the drain progresses.
const EXTEND_BY: Duration = Duration::from_secs(10);

/// The status line while serving.
pub fn serving_status(open: &Snapshot) -> String {
    format!("serving: {} connections", open.open)
}

/// The status line while draining, with the time left until the deadline.
fn draining_status(open: &Snapshot, left: Duration) -> String {
    let tunnels = if open.tunnels == 1 { "1 tunnel".to_owned() } else { format!("{} tunnels", open.tunnels) };
    format!("draining: {} connections, {tunnels}, {:.1}s left", open.open, left.as_secs_f64())
}

/// Starts the watchdog pings (until a successor is the main process) and the serving status
/// line (until the drain starts, which reports for itself).
pub fn spawn_serving_reporters(drain: DrainWatch, notifier: Notifier) {
    if !notifier.is_enabled() {
        return;
    }
    if let Some(every) = systemd::watchdog_interval() {
        let drain = drain.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            // After a handover the successor is the main process and pings for itself.
            while !drain.has_successor() {
                tick.tick().await;
                notifier.watchdog();
            }
        });
    }
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(STATUS_EVERY);
        while drain.phase() == Phase::Serving {
            tick.tick().await;
            let open = drain.snapshot();
            if last != Some(open.open) {
                notifier.status(&serving_status(&open));
                last = Some(open.open);
            }
        }
    });
}

/// Keeps `STATUS=` current during the drain and, while connections keep closing, re-sends
/// `EXTEND_TIMEOUT_USEC` so systemd's stop timeout never cuts a drain that makes progress.
/// Runs until dropped.
pub async fn report_drain(drain: DrainWatch, notifier: Notifier, deadline: Instant) {
    if !notifier.is_enabled() {
        return;
    }
    let mut last_open = usize::MAX;
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tick.tick().await;
        let open = drain.snapshot();
        let left = deadline.saturating_duration_since(Instant::now());
        notifier.status(&draining_status(&open, left));
        if open.open < last_open {
            notifier.extend_timeout(EXTEND_BY.min(left + Duration::from_secs(1)));
        }
        last_open = open.open;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_the_counts() {
        let open = Snapshot { open: 3, in_flight: 2, tunnels: 1 };
        assert_eq!(serving_status(&open), "serving: 3 connections");
        let line = draining_status(&open, Duration::from_millis(4200));
        assert_eq!(line, "draining: 3 connections, 1 tunnel, 4.2s left");
        let open = Snapshot { tunnels: 2, ..open };
        assert_eq!(draining_status(&open, Duration::ZERO), "draining: 3 connections, 2 tunnels, 0.0s left");
    }
}
