//! The daemon's lifecycle: open listeners, start supervised backends, serve, reload in place
//! on SIGHUP, re-exec on SIGUSR2, and on a drain signal drain and decide the exit status.
//!
//! ```text
//!  Serving --SIGTERM/SIGINT--> Grace --grace over--> Draining --count == 0--> exit 0
//!   |  ^                                                `--deadline--> cut all, exit 2
//!   |  `--SIGHUP: config swapped in place ([`reload`]); nothing open is touched
//!   |--SIGUSR1: supervised backends restarted
//!   |--a supervised backend died, restart = "never" --> Draining ... exit 3
//!   `--SIGUSR2, successor ready--> HandedOver (winds down like Draining, but forwards)
//!                                      `--SIGTERM/SIGINT--> Draining
//!  a second SIGTERM/SIGINT at any point after the first ------------> exit 2 at once
//! ```
//! Signal handlers are installed before anything is bound, so an early signal drains too.
//! The drain itself is [`shutdown`]'s, in named steps; what systemd is told is [`status`]'s.

mod reload;
mod shutdown;
mod signals;
mod status;

pub use shutdown::Outcome;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use shutdown::{Running, Trigger};
use signals::{next_drain_signal, Signals};

use crate::backend::reap::Reaper;
use crate::backend::Backends;
use crate::config::{AdminConfig, Config, DrainConfig};
use crate::drain::Drain;
use crate::listener::{Acceptor, ListenError, ListenerLive, Opened, Stop};
use crate::metrics::{Metrics, Sources};
use crate::proxy::conn::ConnServer;
use crate::proxy::{Counting, LiveProxy, Proxy};
use crate::reexec::Program;
use crate::stats::Stats;
use crate::systemd::{Inherited, Notifier};
use crate::tls::TlsMaterial;
use crate::traffic::TrafficBook;
use crate::upstream::{Upstream, Upstreams};
use crate::websocket::{CloseSettings, Tunnels};
use crate::{admin, listener};

/// Why the daemon could not start (exit status 1).
#[derive(Debug)]
pub enum StartupError {
    /// The listeners could not be opened (bound or inherited).
    Listen(ListenError),
    /// The runtime or the signal handlers could not be set up.
    Setup(io::Error),
    /// Certificates, keys or CA files could not be used.
    Tls(Vec<String>),
    /// `[admin] token_file` could not be read, or holds no token.
    AdminToken(String),
    /// A supervised backend did not start, or did not accept connections in time.
    Backend(String),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Transparent: the listener's error says what failed, and its source why.
            StartupError::Listen(e) => e.fmt(f),
            StartupError::Setup(_) => f.write_str("cannot set up the runtime"),
            StartupError::Tls(problems) => write!(f, "tls: {}", problems.join("; ")),
            StartupError::AdminToken(why) | StartupError::Backend(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StartupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartupError::Listen(e) => e.source(),
            StartupError::Setup(source) => Some(source),
            StartupError::Tls(_) | StartupError::AdminToken(_) | StartupError::Backend(_) => None,
        }
    }
}

/// Runs the daemon from a validated config until it has drained. `inherited` holds the
/// sockets and the readiness pipe handed over at start (see [`crate::systemd`]).
pub fn run(config: Config, inherited: Inherited) -> Result<Outcome, StartupError> {
    // One worker: a current-thread runtime, with none of the work-stealing machinery.
    let mut builder = match config.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = builder.enable_all().build().map_err(StartupError::Setup)?;
    let outcome = runtime.block_on(serve(config, inherited));
    // Whatever is still open now is cut: do not wait for it.
    runtime.shutdown_background();
    outcome
}

async fn serve(config: Config, mut inherited: Inherited) -> Result<Outcome, StartupError> {
    let mut signals = Signals::install().map_err(StartupError::Setup)?;
    let notifier = Notifier::from_env();
    let mut running = match start(config, &mut inherited, notifier).await {
        Ok(running) => running,
        Err(e) => {
            inherited.report_to_predecessor(&format!("{e}\n"));
            return Err(e);
        }
    };
    let status = status::serving_status(&running.drain.snapshot());
    if inherited.ready_pipe.is_some() {
        notifier.ready_as_main(&status);
    } else {
        notifier.ready(&status);
    }
    inherited.report_to_predecessor("ready\n");
    status::spawn_serving_reporters(running.drain.watch(), &running.serving_line);

    let trigger = serve_until_trigger(&mut running, &mut signals).await;
    Ok(shutdown::drain_and_exit(running, &mut signals, trigger).await)
}

/// Opens the listeners and starts accepting; everything before "ready".
async fn start(
    config: Config,
    inherited: &mut Inherited,
    notifier: Notifier,
) -> Result<Running, StartupError> {
    let tls = TlsMaterial::load(&config).map_err(StartupError::Tls)?;
    for warning in &tls.warnings {
        warn!(warning = %warning, "tls");
    }
    for warning in config.warnings() {
        warn!(warning = %warning, "config");
    }
    let token =
        config.admin.as_ref().map(AdminConfig::read_token).transpose().map_err(StartupError::AdminToken)?;
    let sockets = std::mem::take(&mut inherited.sockets);
    let admin_addr = config.admin.as_ref().map(|a| a.addr);
    let opened =
        listener::open_all(&config.listeners, admin_addr, sockets, notifier).map_err(StartupError::Listen)?;
    let drain = Drain::new();
    let stats = Arc::new(Stats::default());
    let tunnels = Tunnels::new(close_settings(&config.drain), stats.clone());
    let traffic = Arc::new(TrafficBook::default());
    let upstreams = Arc::new(build_upstreams(&config, &tls, &traffic));
    if let Some(paused) = inherited.paused.take() {
        let gone = upstreams.pause_from_list(&paused);
        info!(paused = %paused, "paused as the previous process had them");
        if !gone.is_empty() {
            warn!(unknown = %gone.join(","), "the previous process had paused upstreams this config lacks");
        }
    }
    let (died_tx, died) = mpsc::unbounded_channel();
    let backends = Arc::new(start_backends(&config, &upstreams, died_tx).await?);
    let proxy: LiveProxy =
        Arc::new(ArcSwap::from_pointee(build_proxy(&config, upstreams.clone(), &tunnels, &stats, &traffic)));
    let upstreams = Arc::new(ArcSwap::new(upstreams));
    let server = Arc::new(ConnServer::new(proxy.clone(), &config.limits, config.drain.idle_linger));
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let mut listeners = Vec::new();
    for ((opened, tls), entry) in opened.listeners.into_iter().zip(tls.listeners).zip(&config.listeners) {
        let live = ListenerLive { server: server.clone(), tls };
        listeners.push(Serving::start(entry.addr, opened, live, &drain, &slots, &stats)?);
    }
    log_routes(&config);
    let admin_token = Arc::new(ArcSwap::from_pointee(token.flatten()));
    let mut admin_fd = None;
    if let Some(admin) = opened.admin {
        let admin_listener = TcpListener::from_std(admin.listener).map_err(StartupError::Setup)?;
        let addr = admin_listener.local_addr().map_err(StartupError::Setup)?;
        info!(admin.addr = %addr, source = admin.source, "admin listening");
        // Handed to a successor too; this process stops accepting on it at the handover.
        admin_fd = Some(admin_listener.as_raw_fd());
        let metrics = Arc::new(Metrics::new(Sources {
            drain: drain.watch(),
            stats: stats.clone(),
            traffic: traffic.clone(),
            upstreams: upstreams.clone(),
        }));
        let admin = admin::Admin {
            drain: drain.watch(),
            metrics,
            upstreams: upstreams.clone(),
            backends: backends.clone(),
            token: admin_token.clone(),
        };
        tokio::spawn(admin::serve(admin_listener, Arc::new(admin)));
    }
    info!(workers = config.workers, pid = std::process::id(), "ready");
    Ok(Running {
        config,
        drain,
        stats,
        tunnels,
        upstreams,
        backends,
        died,
        proxy,
        traffic,
        listeners,
        slots,
        admin_fd,
        admin_token,
        notifier,
        serving_line: status::ServingLine::new(notifier),
    })
}

/// The proxy for `config` over `upstreams`: routes, `Retry-After`, the tunnels, and where
/// answers no upstream gave are counted.
fn build_proxy(
    config: &Config,
    upstreams: Arc<Upstreams>,
    tunnels: &Tunnels,
    stats: &Arc<Stats>,
    traffic: &TrafficBook,
) -> Proxy {
    let counting = Counting { stats: stats.clone(), none: traffic.none() };
    Proxy::new(config.routes.clone(), upstreams, config.drain.retry_after, tunnels.clone(), counting)
}

/// One listener being served: what a reload swaps, and what a drain or a reload stops.
pub(super) struct Serving {
    /// The `[[listen]] addr` it was configured as (a reload matches entries by it).
    pub(super) configured: SocketAddr,
    /// The socket's fd, for a successor to inherit.
    pub(super) fd: RawFd,
    /// What new connections are served with.
    pub(super) live: Arc<ArcSwap<ListenerLive>>,
    /// Stops its accept loop, which then closes the socket.
    pub(super) stop: watch::Sender<Stop>,
    /// Tells its connections that a reload removed it: they wind down as in a drain.
    pub(super) retire: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
    /// systemd passed the socket (socket activation): a reload cannot close or add such.
    pub(super) from_socket_unit: bool,
}

impl Serving {
    /// Starts accepting on `opened`, configured as `configured`.
    fn start(
        configured: SocketAddr,
        opened: Opened,
        live: ListenerLive,
        drain: &Drain,
        slots: &Arc<Semaphore>,
        stats: &Arc<Stats>,
    ) -> Result<Serving, StartupError> {
        let listener = TcpListener::from_std(opened.listener)
            .map_err(|source| StartupError::Listen(ListenError::Bind { addr: configured, source }))?;
        let addr = listener.local_addr().map_err(StartupError::Setup)?;
        info!(listener.addr = %addr, tls = live.tls.is_some(), source = opened.source, "listening");
        let fd = listener.as_raw_fd();
        let live = Arc::new(ArcSwap::from_pointee(live));
        let (retire, retired) = watch::channel(false);
        let acceptor = Acceptor {
            live: live.clone(),
            retired,
            stats: stats.clone(),
            drain: drain.watch(),
            slots: slots.clone(),
            takes_backlog: !opened.held_by_systemd,
        };
        let (stop, stop_rx) = watch::channel(Stop::No);
        let task = tokio::spawn(listener::accept_loop(listener, acceptor, stop_rx));
        Ok(Serving {
            configured,
            fd,
            live,
            stop,
            retire,
            task,
            from_socket_unit: opened.source == "socket-activation",
        })
    }
}

/// Starts the reaper when lameduck must wait for children it did not start itself (as PID
/// 1) or for backends it supervises, then the backends, each until it accepts.
async fn start_backends(
    config: &Config,
    upstreams: &Upstreams,
    died: mpsc::UnboundedSender<String>,
) -> Result<Backends, StartupError> {
    let supervises = config.upstreams.iter().any(|u| u.process.is_some());
    if !supervises && !is_pid1() {
        return Ok(Backends::default());
    }
    let reaper = Reaper::start().map_err(StartupError::Setup)?;
    Backends::start(&config.upstreams, upstreams, &reaper, died).await.map_err(StartupError::Backend)
}

/// Whether lameduck runs as PID 1 (a container's entrypoint): orphans are its to reap, and
/// its exit ends the whole PID namespace.
fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The upstream groups of `config`, with `tls` client configs for https ones, counting into
/// `book`.
fn build_upstreams(config: &Config, tls: &TlsMaterial, book: &TrafficBook) -> Upstreams {
    let upstreams = config
        .upstreams
        .iter()
        .zip(&tls.upstreams)
        .map(|(upstream, client)| Upstream::new(upstream, client.clone(), book.upstream(&upstream.name)))
        .collect();
    Upstreams::new(upstreams)
}

/// What a WebSocket tunnel needs of `[drain]`.
fn close_settings(drain: &DrainConfig) -> CloseSettings {
    CloseSettings {
        code: drain.close_code,
        reason: drain.close_reason.clone(),
        timeout: drain.close_timeout,
        spread: drain.close_spread,
    }
}

/// Serves until a drain signal, or until a successor started by SIGUSR2 is ready; reloads
/// the config in place on SIGHUP.
async fn serve_until_trigger(running: &mut Running, signals: &mut Signals) -> Trigger {
    let program = Program::current();
    let (reload_tx, mut reload_rx) = mpsc::channel::<Result<u32, String>>(1);
    let mut reloading: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            signal = next_drain_signal(&mut signals.term, &mut signals.int) => {
                if let Some(reload) = reloading.take() {
                    // Stopping wins over reloading: the half-started successor is killed.
                    reload.abort();
                    let _ = reload.await;
                    warn!("drain signal during a reload: the new process was stopped");
                }
                return Trigger::Signal(signal);
            }
            Some(upstream) = running.died.recv() => return Trigger::BackendDied(upstream),
            _ = signals.usr1.recv() => {
                info!("SIGUSR1: restarting every supervised backend");
                let backends = running.backends.clone();
                tokio::spawn(async move { backends.restart_all().await });
            }
            _ = signals.hup.recv() => {
                if reloading.is_some() {
                    info!("binary upgrade under way; SIGHUP ignored");
                    continue;
                }
                info!("SIGHUP: reloading the configuration in place");
                reload::reload(running).await;
            }
            _ = signals.usr2.recv() => {
                if let Some(why) = upgrade_refused(running) {
                    warn!(reason = why, "SIGUSR2: binary upgrade refused");
                    continue;
                }
                if reloading.is_some() {
                    info!("binary upgrade already under way; SIGUSR2 ignored");
                    continue;
                }
                let program = match &program {
                    Ok(program) => program.clone(),
                    Err(e) => {
                        error!(error = %e, "cannot reload: the path of the running binary is unknown");
                        continue;
                    }
                };
                info!("binary upgrade: starting a new process with the listening sockets");
                running.notifier.reloading("upgrading: starting a new process");
                let (fds, tx) = (running.listener_fds(), reload_tx.clone());
                let paused = running.upstreams.load().paused_list();
                reloading = Some(tokio::spawn(async move {
                    let _ = tx.send(program.spawn_successor(&fds, &paused).await).await;
                }));
            }
            Some(result) = reload_rx.recv() => {
                reloading = None;
                match result {
                    Ok(pid) => return Trigger::HandedOver(pid),
                    Err(e) => {
                        error!(error = %e, "binary upgrade failed; this process goes on serving");
                        running.notifier.ready(&status::serving_status(&running.drain.snapshot()));
                    }
                }
            }
        }
    }
}

/// Why a re-exec upgrade cannot be done here, if it cannot: a successor would start a
/// second backend on the same port, and the reaper would take its exit status; as PID 1, or
/// under a container init shim, the old process's exit would end the container, successor
/// included. A config change needs none of this: SIGHUP reloads in place.
fn upgrade_refused(running: &Running) -> Option<&'static str> {
    if !running.backends.is_empty() {
        return Some("supervised backends: a new process would start a second backend on the same port; restart the service instead (SIGHUP reloads the config in place)");
    }
    if is_pid1() {
        return Some("running as PID 1: the old process's exit would end the container; upgrade by replacing the image (SIGHUP reloads the config in place)");
    }
    if under_init_shim() {
        return Some("the parent is a container init (tini, dumb-init, docker-init): the old process's exit would end the container; upgrade by replacing the image (SIGHUP reloads the config in place)");
    }
    None
}

/// Whether the parent process is a container init shim, which ends the container when its
/// one child (this process) exits.
fn under_init_shim() -> bool {
    let parent = std::os::unix::process::parent_id();
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
    matches!(comm.trim(), "tini" | "dumb-init" | "docker-init" | "catatonit")
}

fn log_routes(config: &Config) {
    for route in &config.routes {
        let upstream = &config.upstreams[route.upstream];
        let addrs: Vec<String> = upstream.addrs.iter().map(ToString::to_string).collect();
        info!(
            route.host = route.host.as_deref().unwrap_or("*"),
            route.path_prefix = route.path_prefix.as_deref().unwrap_or("/"),
            upstream.name = %upstream.name,
            upstream.addrs = %addrs.join(","),
            "route"
        );
    }
}
