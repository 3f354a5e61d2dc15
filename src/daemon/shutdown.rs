//! The drain, from the trigger to the exit status, as named steps:
//!
//! 1. [`announce`]: log the trigger, end the `serving` status line and tell systemd
//!    `STOPPING=1` with the drain's status (not after a handover: the successor is systemd's
//!    main process now), and note the signal in the stats;
//! 2. [`serve_grace`]: keep serving for `[drain] grace` while `/readyz` says 503;
//! 3. [`close_listeners`]: stop the accept loops, which take their backlog first where a
//!    drain should answer it;
//! 4. [`wind_down`]: tell every connection and tunnel (phase `Draining`, or `HandedOver`);
//! 5. [`wait_for_zero`]: until the last connection closes (exit 0), the deadline or a second
//!    signal (exit 2). After a handover the first signal only moves on to `Draining`. At the
//!    deadline, requests still held for a paused upstream are answered 503 before the cut
//!    ([`answer_held`]).
//!
//! A second signal during step 2 or 5 ends the drain at once; the summary line is logged
//! whatever the ending.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::signals::Signals;
use super::status::{self, ServingLine};
use crate::backend::Backends;
use crate::config::{Config, DrainConfig};
use crate::drain::{Drain, Phase};
use crate::listener::Stop;
use crate::proxy::LiveProxy;
use crate::stats::Stats;
use crate::systemd::Notifier;
use crate::traffic::TrafficBook;
use crate::upstream::Upstreams;

use super::Serving;
use crate::websocket::Tunnels;
use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every connection closed before the deadline: exit status 0.
    Drained,
    /// The deadline or a second signal cut connections: exit status 2.
    Cut,
    /// A supervised backend with `restart = "never"` died; lameduck drained and exits with
    /// status 3, for the service manager to restart the whole unit.
    BackendDied,
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Drained => 0,
            Outcome::Cut => 2,
            Outcome::BackendDied => 3,
        }
    }
}

/// What ended the serving phase.
pub(super) enum Trigger {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// A successor (this pid) serves now.
    HandedOver(u32),
    /// The supervised backend of this upstream died, and is not to be restarted.
    BackendDied(String),
}

/// The serving daemon: what the drain needs once serving ends.
pub(super) struct Running {
    pub(super) config: Config,
    pub(super) drain: Drain,
    /// What happened, for the exit summary.
    pub(super) stats: Arc<Stats>,
    /// The tunnels' shared close schedule, fitted to the time the deadline leaves.
    pub(super) tunnels: Tunnels,
    /// Their held requests are answered at a handover or at the deadline; swapped by a
    /// reload.
    pub(super) upstreams: Arc<ArcSwap<Upstreams>>,
    /// Stopped once the drain is over, never before.
    pub(super) backends: Arc<Backends>,
    /// Names the upstream whose backend died with `restart = "never"`.
    pub(super) died: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The proxy requests are served with now; swapped by a reload.
    pub(super) proxy: LiveProxy,
    /// Per-upstream request figures, kept across reloads.
    pub(super) traffic: Arc<TrafficBook>,
    /// The listeners being served, in config order.
    pub(super) listeners: Vec<Serving>,
    /// `max_connections` slots, resized by a reload.
    pub(super) slots: Arc<Semaphore>,
    /// The admin listener's fd, handed to a successor with the others.
    pub(super) admin_fd: Option<RawFd>,
    /// The admin token, swapped by a reload.
    pub(super) admin_token: Arc<ArcSwap<Option<String>>>,
    pub(super) notifier: Notifier,
    /// Ended (with `STOPPING=1`) when the drain is announced.
    pub(super) serving_line: ServingLine,
}

impl Running {
    /// Listening fds (the admin listener's last), for a successor to inherit.
    pub(super) fn listener_fds(&self) -> Vec<RawFd> {
        self.listeners.iter().map(|l| l.fd).chain(self.admin_fd).collect()
    }
}

/// How this drain goes, decided by what started it.
struct Plan {
    /// How long to keep serving first.
    grace: Duration,
    /// How the accept loops stop.
    stop: Stop,
    /// A successor serves: requests on old connections are forwarded until a signal.
    handed_over: bool,
    /// Sends the drain's status lines (disabled after a handover).
    notifier: Notifier,
}

/// Runs the drain after `trigger` and returns how it ended.
pub(super) async fn drain_and_exit(running: Running, signals: &mut Signals, trigger: Trigger) -> Outcome {
    let Running { config, drain, stats, tunnels, upstreams, backends, listeners, serving_line, .. } = running;
    let upstreams = upstreams.load_full();
    let started = Instant::now();
    let deadline = started + config.drain.deadline;
    let deadline_at = std::time::SystemTime::now() + config.drain.deadline;
    let unix_ms = deadline_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    stats.set_deadline(unix_ms);
    let backend_died = matches!(trigger, Trigger::BackendDied(_));
    let plan = announce(trigger, &config.drain, &serving_line, &drain, &stats);
    let outcome = match serve_grace(&drain, plan.grace, signals).await {
        Err(cut) => cut,
        Ok(()) => {
            // Close the listeners before any connection learns of the drain: a client told
            // `Connection: close` must find the port refusing, not a backlog about to be reset.
            close_listeners(listeners, plan.stop).await;
            // Every tunnel's close handshake must fit before the deadline, after a grace too.
            tunnels.fit_closes_within(deadline.saturating_duration_since(Instant::now()));
            wind_down(&drain, plan.handed_over, &upstreams);
            let reporter = tokio::spawn(status::report_drain(drain.watch(), plan.notifier, deadline));
            let outcome = wait_for_zero(&drain, signals, deadline, plan.handed_over).await;
            reporter.abort();
            if outcome == Outcome::Cut {
                answer_held(&upstreams).await;
            }
            outcome
        }
    };
    // Cut before the deadline: by a second signal, which kills the backends at once too.
    let kill_now = outcome == Outcome::Cut && Instant::now() < deadline;
    let backends = stop_backends(&backends, signals, kill_now).await;
    let outcome = if backend_died { Outcome::BackendDied } else { outcome };
    log_summary(&drain, &stats, started.elapsed(), outcome, &backends);
    outcome
}

/// Step 6, once nothing is left to drain (or it was cut): the supervised backends get their
/// stop signal — only now, so everything in flight to them has finished. A drain cut by a
/// second signal kills them at once, and so does a signal while they stop.
async fn stop_backends(backends: &Backends, signals: &mut Signals, kill_now: bool) -> String {
    if backends.is_empty() {
        return String::new();
    }
    let stopping = backends.stop_all(kill_now);
    tokio::pin!(stopping);
    let endings = tokio::select! {
        endings = &mut stopping => endings,
        signal = signals.drain_signal() => {
            warn!(signal, "signal while the backends stop; killing them");
            backends.kill_all();
            stopping.await
        }
    };
    let endings: Vec<String> = endings.iter().map(|(upstream, how)| format!("{upstream}: {how}")).collect();
    endings.join("; ")
}

/// Step 1: says why the drain starts, and to whom it matters. systemd hears `STOPPING=1`
/// with the first status line of the drain, and no `serving` line after it.
fn announce(
    trigger: Trigger,
    config: &DrainConfig,
    serving: &ServingLine,
    drain: &Drain,
    stats: &Stats,
) -> Plan {
    stats.mark_signal();
    let deadline_secs = config.deadline.as_secs_f64();
    let notifier = serving.notifier();
    let stopping =
        |grace| serving.end(Some(&status::stopping_status(&drain.snapshot(), grace, config.deadline)));
    match trigger {
        Trigger::Signal(signal) => {
            info!(signal, grace_secs = config.grace.as_secs_f64(), deadline_secs, "drain started");
            stopping(config.grace);
            Plan { grace: config.grace, stop: Stop::TakeBacklogAndClose, handed_over: false, notifier }
        }
        Trigger::BackendDied(upstream) => {
            warn!(upstream.name = %upstream, deadline_secs, "drain started: the backend died and restart = \"never\"");
            stopping(Duration::ZERO);
            Plan { grace: Duration::ZERO, stop: Stop::TakeBacklogAndClose, handed_over: false, notifier }
        }
        Trigger::HandedOver(pid) => {
            info!(successor.pid = pid, deadline_secs, "handed over to the new process; draining");
            // The successor is systemd's main process now; status lines are its to send.
            serving.end(None);
            let notifier = Notifier::disabled();
            Plan { grace: Duration::ZERO, stop: Stop::Close, handed_over: true, notifier }
        }
    }
}

/// Step 2: serves normally (with `/readyz` at 503) for `grace`; a second signal cuts.
async fn serve_grace(drain: &Drain, grace: Duration, signals: &mut Signals) -> Result<(), Outcome> {
    if grace.is_zero() {
        return Ok(());
    }
    drain.set_phase(Phase::Grace);
    info!("grace");
    tokio::select! {
        _ = tokio::time::sleep(grace) => Ok(()),
        second = signals.drain_signal() => Err(cut_by_signal(second)),
    }
}

/// Step 3: stops every accept loop and waits until each has closed its listener.
pub(super) async fn close_listeners(listeners: Vec<Serving>, how: Stop) {
    for listener in &listeners {
        listener.stop.send_replace(how);
    }
    for listener in listeners {
        let _ = listener.task.await;
    }
}

/// Step 4: tells every connection and tunnel to wind down. After a handover, requests held
/// here are answered 503 at once: the successor's admin API resumes the upstream, never
/// this process's, and their clients find the upstream held alike at the successor.
fn wind_down(drain: &Drain, handed_over: bool, upstreams: &Upstreams) {
    if handed_over {
        drain.hand_over();
        upstreams.release_held();
    } else {
        drain.set_phase(Phase::Draining);
    }
    let s = drain.snapshot();
    info!(open = s.open, in_flight = s.in_flight, tunnels = s.tunnels, "draining");
}

/// Step 5: waits for the last connection to close, the deadline, or a second signal.
async fn wait_for_zero(
    drain: &Drain,
    signals: &mut Signals,
    deadline: Instant,
    handed_over: bool,
) -> Outcome {
    // After a handover no drain signal has come yet: the first one only ends forwarding.
    let mut signalled = !handed_over;
    loop {
        tokio::select! {
            _ = drain.all_closed() => return Outcome::Drained,
            _ = tokio::time::sleep_until(deadline) => {
                warn!(open = drain.snapshot().open, "drain deadline passed; cutting what is left");
                return Outcome::Cut;
            }
            signal = signals.drain_signal() => {
                if signalled {
                    return cut_by_signal(signal);
                }
                signalled = true;
                info!(signal, "drain signal while handing over: new requests now get 503");
                drain.set_phase(Phase::Draining);
            }
        }
    }
}

/// Before the cut: every request still held gets its 503, and the cut waits (at most
/// [`HELD_ANSWER_WAIT`]) until each has been handed to its connection, then a moment for
/// the bytes to be written.
async fn answer_held(upstreams: &Upstreams) {
    let held = upstreams.held();
    upstreams.release_held();
    if held == 0 {
        return;
    }
    let give_up = Instant::now() + HELD_ANSWER_WAIT;
    while upstreams.held() > 0 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The 503 is in the connection's buffer once the request is no longer held; its task
    // writes it on its next poll.
    tokio::time::sleep(Duration::from_millis(20)).await;
    info!(held, "held requests answered 503 at the deadline");
}

/// The longest the cut waits for held requests to get their 503.
const HELD_ANSWER_WAIT: Duration = Duration::from_millis(500);

fn cut_by_signal(signal: &str) -> Outcome {
    warn!(signal, "second signal; cutting every connection");
    Outcome::Cut
}

/// The one summary line of every exit; `backends` says how each supervised backend ended.
fn log_summary(drain: &Drain, stats: &Stats, took: Duration, outcome: Outcome, backends: &str) {
    let open = drain.snapshot();
    let cut = |n| if outcome == Outcome::Cut { n } else { 0 };
    stats.connections_cut(cut(open.open as u64));
    let counts = stats.counts();
    info!(
        exit.status = outcome.exit_code(),
        drain.secs = took.as_secs_f64(),
        requests.completed = counts.completed_after_signal,
        requests.rejected = counts.requests_rejected,
        requests.held_refused = counts.held_refused,
        tunnels.closed = counts.tunnels_closed,
        tunnels.cut = counts.tunnels_cut + cut(open.tunnels as u64),
        connections.cut = cut(open.open as u64),
        backends = backends,
        "exit"
    );
}
