//! What the daemon tells systemd while it runs, and when: the `STATUS=` line, watchdog
//! pings, and `EXTEND_TIMEOUT_USEC=` while a drain makes progress.
//!
//! [`crate::systemd`] only knows how to send; the policy — which counts a status line shows,
//! how often, when the stop timeout is pushed back — is the daemon's, here. Everything is a
//! no-op when the [`Notifier`] is disabled (no systemd, or a successor is the main process).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::drain::{DrainWatch, Snapshot};
use crate::systemd::{self, Notifier};

/// How often the status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How far each `EXTEND_TIMEOUT_USEC` pushes systemd's stop timeout while the drain progresses.
const EXTEND_BY: Duration = Duration::from_secs(10);

/// `1 connection`, `2 connections`: a count with its noun, singular for one.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The status line while serving.
pub fn serving_status(open: &Snapshot) -> String {
    format!("serving: {}", count(open.open, "connection"))
}

/// The status line while draining, with the time left until the deadline.
fn draining_status(open: &Snapshot, left: Duration) -> String {
    let (connections, tunnels) = (count(open.open, "connection"), count(open.tunnels, "tunnel"));
    format!("draining: {connections}, {tunnels}, {:.1}s left", left.as_secs_f64())
}

/// The status line sent with `STOPPING=1`: the grace to come, or (without one) the drain's
/// first status line, so the `serving` line is replaced the moment the drain begins.
pub fn stopping_status(open: &Snapshot, grace: Duration, deadline: Duration) -> String {
    if grace.is_zero() {
        draining_status(open, deadline)
    } else {
        format!("stopping: {:.1}s grace, then draining", grace.as_secs_f64())
    }
}

/// The `serving: …` status line's right to be sent, and the one switch that ends it.
///
/// Protocol: the serving reporter sends each line while holding `on`'s lock, and only while
/// it holds `true`; [`ServingLine::end`] sets it to `false` and sends `STOPPING=1` under the
/// same lock. The notify socket keeps datagrams in the order they were sent, so no `serving`
/// line reaches systemd after `STOPPING=1`, whichever thread the reporter runs on. (The
/// phase cannot be the switch: it moves on only after `STOPPING=1`, once the listeners are
/// closed, and a reporter that checked it before its tick sent a stale `serving` line up to a
/// second into the drain.)
#[derive(Debug, Clone)]
pub struct ServingLine {
    notifier: Notifier,
    on: Arc<Mutex<bool>>,
}

impl ServingLine {
    /// Serving lines on, sent through `notifier`.
    pub fn new(notifier: Notifier) -> Self {
        ServingLine { notifier, on: Arc::new(Mutex::new(true)) }
    }

    /// The notifier the lines go through.
    pub fn notifier(&self) -> Notifier {
        self.notifier
    }

    /// Sends `serving: …` for `open` if `changed`, unless serving has ended; returns whether
    /// serving goes on.
    fn send_if(&self, changed: bool, open: &Snapshot) -> bool {
        let on = self.on.lock().unwrap_or_else(PoisonError::into_inner);
        if *on && changed {
            self.notifier.status(&serving_status(open));
        }
        *on
    }

    /// Ends the serving lines for good, then sends `STOPPING=1` with `stopping` as the status
    /// line when given (`None` after a handover: the successor is systemd's main process).
    pub fn end(&self, stopping: Option<&str>) {
        let mut on = self.on.lock().unwrap_or_else(PoisonError::into_inner);
        *on = false;
        if let Some(status) = stopping {
            self.notifier.stopping(status);
        }
    }
}

/// Starts the watchdog pings (until a successor is the main process) and the serving status
/// line (until [`ServingLine::end`]; the drain reports for itself).
pub fn spawn_serving_reporters(drain: DrainWatch, line: &ServingLine) {
    let notifier = line.notifier;
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
    let line = line.clone();
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tick.tick().await;
            let open = drain.snapshot();
            if !line.send_if(last != Some(open.open), &open) {
                return;
            }
            last = Some(open.open);
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

    fn open(open: usize, tunnels: usize) -> Snapshot {
        Snapshot { open, in_flight: 0, tunnels }
    }

    #[test]
    fn status_lines_name_the_counts() {
        assert_eq!(serving_status(&open(3, 0)), "serving: 3 connections");
        let line = draining_status(&open(3, 1), Duration::from_millis(4200));
        assert_eq!(line, "draining: 3 connections, 1 tunnel, 4.2s left");
        assert_eq!(
            draining_status(&open(3, 2), Duration::ZERO),
            "draining: 3 connections, 2 tunnels, 0.0s left"
        );
    }

    #[test]
    fn status_lines_say_one_connection_and_one_tunnel_in_the_singular() {
        assert_eq!(serving_status(&open(1, 0)), "serving: 1 connection");
        assert_eq!(serving_status(&open(0, 0)), "serving: 0 connections");
        let line = draining_status(&open(1, 1), Duration::from_secs(30));
        assert_eq!(line, "draining: 1 connection, 1 tunnel, 30.0s left");
        assert_eq!(
            draining_status(&open(2, 0), Duration::ZERO),
            "draining: 2 connections, 0 tunnels, 0.0s left"
        );
    }

    #[test]
    fn the_stopping_status_is_the_grace_or_the_first_draining_line_never_serving() {
        let deadline = Duration::from_secs(30);
        let line = stopping_status(&open(1, 0), Duration::ZERO, deadline);
        assert_eq!(line, "draining: 1 connection, 0 tunnels, 30.0s left");
        let line = stopping_status(&open(1, 0), Duration::from_millis(2500), deadline);
        assert_eq!(line, "stopping: 2.5s grace, then draining");
    }

    #[test]
    fn no_serving_line_is_sent_once_the_serving_line_has_ended() {
        // A disabled notifier sends nothing; what is under test is the switch.
        let line = ServingLine::new(Notifier::disabled());
        assert!(line.send_if(true, &open(1, 0)), "serving goes on before the end");
        let reporter = line.clone();
        line.end(Some("draining: 1 connection, 0 tunnels, 30.0s left"));
        assert!(!reporter.send_if(true, &open(0, 0)), "a clone sees the end too");
        assert!(!reporter.send_if(false, &open(0, 0)));
    }
}
