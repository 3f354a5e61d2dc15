//! The daemon's lifecycle: bind, serve, and on a signal drain and decide the exit status.
//!
//! ```text
//!  Serving --SIGTERM/SIGINT--> Grace --grace over--> Draining --count == 0--> exit 0
//!                                                       `--deadline--> cut all, exit 2
//!  a second SIGTERM/SIGINT at any point after the first ------------> exit 2 at once
//! ```
//! Signal handlers are installed before anything is bound, so an early signal drains too.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::Config;
use crate::drain::{Drain, Phase};
use crate::metrics::Metrics;
use crate::proxy::conn::ConnServer;
use crate::proxy::Proxy;
use crate::tls::TlsMaterial;
use crate::{admin, listener};

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every connection closed before the deadline: exit status 0.
    Drained,
    /// The deadline or a second signal cut connections: exit status 2.
    Cut,
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Drained => 0,
            Outcome::Cut => 2,
        }
    }
}

/// Why the daemon could not start (exit status 1).
#[derive(Debug)]
pub enum StartupError {
    /// A listener could not be bound.
    Bind {
        /// What was configured.
        addr: SocketAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// The runtime or the signal handlers could not be set up.
    Setup(io::Error),
    /// Certificates, keys or CA files could not be used.
    Tls(Vec<String>),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::Bind { addr, .. } => write!(f, "cannot listen on \"{addr}\""),
            StartupError::Setup(_) => f.write_str("cannot set up the runtime"),
            StartupError::Tls(problems) => write!(f, "tls: {}", problems.join("; ")),
        }
    }
}

impl std::error::Error for StartupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartupError::Bind { source, .. } | StartupError::Setup(source) => Some(source),
            StartupError::Tls(_) => None,
        }
    }
}

/// Runs the daemon from a validated config until it has drained.
pub fn run(config: Config) -> Result<Outcome, StartupError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
        .map_err(StartupError::Setup)?;
    let outcome = runtime.block_on(serve(config));
    // Whatever is still open now is cut: do not wait for it.
    runtime.shutdown_background();
    outcome
}

/// The drain signals: SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves at the next SIGTERM or SIGINT, with the signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn serve(config: Config) -> Result<Outcome, StartupError> {
    let mut signals = Signals::install().map_err(StartupError::Setup)?;
    let tls = TlsMaterial::load(&config).map_err(StartupError::Tls)?;
    for warning in &tls.warnings {
        warn!(warning = %warning, "tls");
    }
    let listeners = bind_all(&config)?;
    let admin_listener = match &config.admin {
        Some(admin) => Some(bind_tokio(admin.addr)?),
        None => None,
    };

    let drain = Drain::new();
    let proxy = Arc::new(Proxy::new(&config, &tls));
    let server = Arc::new(ConnServer::new(proxy, &config.limits, config.drain.idle_linger));
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let mut accept_loops = Vec::new();
    for (listener, tls) in listeners.into_iter().zip(tls.listeners) {
        let addr = listener.local_addr().map_err(StartupError::Setup)?;
        info!(listener.addr = %addr, tls = tls.is_some(), "listening");
        let task = listener::accept_loop(listener, tls, server.clone(), drain.watch(), slots.clone());
        accept_loops.push(tokio::spawn(task));
    }
    log_routes(&config);
    if let Some(admin_listener) = admin_listener {
        let addr = admin_listener.local_addr().map_err(StartupError::Setup)?;
        info!(admin.addr = %addr, "admin listening");
        let metrics = Arc::new(Metrics::new(drain.watch()));
        tokio::spawn(admin::serve(admin_listener, drain.watch(), metrics));
    }
    info!(workers = config.workers, "ready");

    let signal = signals.next().await;
    Ok(drain_and_exit(&config, &drain, &mut signals, accept_loops, signal).await)
}

fn bind_all(config: &Config) -> Result<Vec<TcpListener>, StartupError> {
    config.listeners.iter().map(|l| bind_tokio(l.addr)).collect()
}

fn bind_tokio(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    let std_listener = listener::bind(addr).map_err(|source| StartupError::Bind { addr, source })?;
    TcpListener::from_std(std_listener).map_err(|source| StartupError::Bind { addr, source })
}

fn log_routes(config: &Config) {
    for route in &config.routes {
        info!(
            route.host = route.host.as_deref().unwrap_or("*"),
            route.path_prefix = route.path_prefix.as_deref().unwrap_or("/"),
            upstream.name = %config.upstreams[route.upstream].name,
            upstream.addrs = %config.upstreams[route.upstream].addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "route"
        );
    }
}

/// Runs the drain after the first signal and returns how it ended.
async fn drain_and_exit(
    config: &Config,
    drain: &Drain,
    signals: &mut Signals,
    accept_loops: Vec<JoinHandle<()>>,
    signal: &str,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + config.drain.deadline;
    info!(
        signal,
        grace_secs = config.drain.grace.as_secs_f64(),
        deadline_secs = config.drain.deadline.as_secs_f64(),
        "drain started"
    );

    let outcome = 'drain: {
        if !config.drain.grace.is_zero() {
            drain.set_phase(Phase::Grace);
            info!("grace");
            tokio::select! {
                _ = tokio::time::sleep(config.drain.grace) => {}
                second = signals.next() => break 'drain cut_by_signal(second),
            }
        }
        drain.set_phase(Phase::Draining);
        for task in accept_loops {
            // The loops end at once on the phase change; joining them means the listeners are closed.
            let _ = task.await;
        }
        let s = drain.snapshot();
        info!(open = s.open, in_flight = s.in_flight, tunnels = s.tunnels, "draining");
        tokio::select! {
            _ = drain.all_closed() => Outcome::Drained,
            _ = tokio::time::sleep_until(deadline) => {
                warn!(open = drain.snapshot().open, "drain deadline passed; cutting what is left");
                Outcome::Cut
            }
            second = signals.next() => cut_by_signal(second),
        }
    };
    log_summary(drain, started.elapsed(), outcome);
    outcome
}

fn cut_by_signal(signal: &str) -> Outcome {
    warn!(signal, "second signal; cutting every connection");
    Outcome::Cut
}

fn log_summary(drain: &Drain, took: Duration, outcome: Outcome) {
    let s = drain.snapshot();
    let cut = if outcome == Outcome::Cut { s.open } else { 0 };
    info!(
        exit.status = outcome.exit_code(),
        drain.secs = took.as_secs_f64(),
        requests.completed = s.completed_after_signal,
        requests.rejected = s.rejected,
        tunnels.closed = s.tunnels_closed,
        tunnels.cut = if outcome == Outcome::Cut { s.tunnels } else { 0 },
        connections.cut = cut,
        "exit"
    );
}
