//! Supervised backend processes (`[upstream.NAME.process]`): lameduck starts each backend
//! before it reports ready, stops it only after its own drain, restarts it without losing a
//! request, and brings it back after a crash.
//!
//! Each backend has a [`Supervisor`]: a task that owns the process and takes commands
//! (restart, stop), so that a crash, an admin restart and the daemon's stop never race.
//!
//! ```text
//!  start ─▶ starting ─ accepts on an addr ─▶ running ─ exits by itself ─▶ backoff ─▶ starting …
//!                                              │                   (restart = "never": the
//!                                              │                    daemon drains, exit 3)
//!                        restart: pause, stop, start, ready, resume
//!                        stop (after the drain): stop_signal, SIGKILL after stop_timeout
//! ```
//! While a backend is down for a restart or a crash its upstream is paused, so requests are
//! held (bounded by `hold`), not refused. [`reap`] waits for every child, orphans included.

mod process;
pub mod reap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{ProcessConfig, RestartPolicy, UpstreamAddr, UpstreamConfig};
use crate::upstream::{Upstream, Upstreams};
use process::{describe, signal_group, spawn, wait_ready, Child};
use reap::Reaper;

/// How long a restart waits for the requests in flight to the backend before it stops it
/// anyway (the same bound as the pause call's default).
const RESTART_QUIET_WAIT: Duration = Duration::from_secs(30);
/// The first wait before starting a crashed backend again; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between starts of a backend that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a SIGKILLed backend may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Every supervised backend.
#[derive(Debug, Default)]
pub struct Backends {
    list: Vec<Supervisor>,
}

/// One backend's supervisor, as the rest of the daemon sees it.
#[derive(Debug)]
struct Supervisor {
    upstream: Arc<str>,
    /// The `process` table it runs from (a reload that changes it restarts the backend).
    process: Mutex<ProcessConfig>,
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<ProcessStatus>>,
}

/// What `GET /upstreams` shows of a backend process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Its pid while it runs (or starts, or stops).
    pub pid: Option<u32>,
    /// `starting`, `running`, `stopping`, `backoff` (waiting to start again after a
    /// failure), `exited` (ended with `restart = "never"`) or `stopped`.
    pub state: &'static str,
    /// How many times it has been started again (restarts and crashes).
    pub restarts: u32,
    /// How the last process ended: `exited with status 143`, `killed after stop_timeout`.
    pub last_exit: Option<String>,
}

/// What `POST /upstreams/{name}/restart` answers.
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    /// The upstream.
    pub upstream: String,
    /// The process stopped.
    pub old_pid: Option<u32>,
    /// The process serving now.
    pub new_pid: u32,
    /// Requests held while it restarted, as the resume found them.
    pub held: usize,
    /// Milliseconds until nothing was in flight to it.
    pub pause_ms: u64,
    /// Milliseconds the old process took to stop.
    pub stop_ms: u64,
    /// Milliseconds from starting the new process until it accepted a connection.
    pub start_ms: u64,
    /// How the old process ended.
    pub old_exit: String,
}

enum Command {
    /// Restart, from a new `process` table if one is given (a reload changed it).
    Restart(Option<ProcessConfig>, oneshot::Sender<Result<RestartReport, String>>),
    Stop {
        kill_now: bool,
        reply: oneshot::Sender<String>,
    },
}

impl Backends {
    /// Starts the backend of every upstream in `configs` that has a `process` table, each in
    /// turn, and waits until each accepts on one of its addresses. A backend that dies with
    /// `restart = "never"` is reported on `died` (its upstream's name).
    ///
    /// # Errors
    /// The first backend that could not start, in words (`legacy: exited with status 1
    /// before it accepted on 127.0.0.1:9000`); those already started are stopped first.
    pub async fn start(
        configs: &[UpstreamConfig],
        upstreams: &Upstreams,
        reaper: &Reaper,
        died: mpsc::UnboundedSender<String>,
    ) -> Result<Backends, String> {
        let mut backends = Backends::default();
        for config in configs {
            let Some(process) = &config.process else { continue };
            let upstream = upstreams.by_name(&config.name).expect("built from the same config").clone();
            let mut actor = Actor {
                upstream,
                config: process.clone(),
                addrs: config.addrs.clone(),
                reaper: reaper.clone(),
                status: Arc::new(Mutex::new(ProcessStatus {
                    pid: None,
                    state: "starting",
                    restarts: 0,
                    last_exit: None,
                })),
                died: died.clone(),
                child: None,
            };
            if let Err(why) = actor.bring_up().await {
                backends.stop_all(true).await;
                return Err(format!("backend of upstream \"{}\": {why}", config.name));
            }
            let (commands, rx) = mpsc::channel(4);
            backends.list.push(Supervisor {
                upstream: actor.upstream.name.clone(),
                process: Mutex::new(process.clone()),
                commands,
                status: actor.status.clone(),
            });
            tokio::spawn(actor.run(rx));
        }
        Ok(backends)
    }

    /// Whether `upstream`'s backend is supervised.
    pub fn supervises(&self, upstream: &str) -> bool {
        self.find(upstream).is_some()
    }

    /// Whether any backend is supervised.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The process state of `upstream`'s backend, if it has one.
    pub fn status_of(&self, upstream: &str) -> Option<ProcessStatus> {
        self.find(upstream).map(|s| lock(&s.status).clone())
    }

    /// Restarts `upstream`'s backend without losing a request: pause, stop, start, wait
    /// until it accepts, resume. `None` if it has no supervised backend.
    ///
    /// # Errors
    /// Why the new process did not come up (it is retried per `restart`, the upstream stays
    /// paused meanwhile).
    pub async fn restart(&self, upstream: &str) -> Option<Result<RestartReport, String>> {
        let supervisor = self.find(upstream)?;
        let (reply, answer) = oneshot::channel();
        if supervisor.commands.send(Command::Restart(None, reply)).await.is_err() {
            return Some(Err("the backend is being stopped".to_owned()));
        }
        Some(answer.await.unwrap_or_else(|_| Err("the backend is being stopped".to_owned())))
    }

    /// A reload's `process` table for `upstream`: when it differs from the running one, the
    /// backend is restarted from it (as `POST …/restart` does), in the background. Returns
    /// whether it did.
    pub fn reconfigure(self: &Arc<Self>, upstream: &str, process: &ProcessConfig) -> bool {
        let Some(supervisor) = self.find(upstream) else { return false };
        {
            let mut running = supervisor.process.lock().expect("never held across a panic");
            if *running == *process {
                return false;
            }
            *running = process.clone();
        }
        let (commands, process, name) = (supervisor.commands.clone(), process.clone(), upstream.to_owned());
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            if commands.send(Command::Restart(Some(process), reply)).await.is_ok() {
                match answer.await {
                    Ok(Ok(report)) => {
                        info!(upstream.name = %name, new_pid = report.new_pid, "backend restarted with its new process table")
                    }
                    Ok(Err(why)) => {
                        error!(upstream.name = %name, error = %why, "backend restart after a reload failed")
                    }
                    Err(_) => {}
                }
            }
        });
        true
    }

    /// Restarts every backend, one after another (SIGUSR1).
    pub async fn restart_all(&self) {
        for supervisor in &self.list {
            if let Some(Err(why)) = self.restart(&supervisor.upstream).await {
                error!(upstream.name = %supervisor.upstream, error = %why, "backend restart failed");
            }
        }
    }

    /// Stops every backend, in parallel: `stop_signal`, then SIGKILL after `stop_timeout`
    /// (`kill_now`: SIGKILL at once). Returns how each ended, by upstream.
    pub async fn stop_all(&self, kill_now: bool) -> Vec<(String, String)> {
        let mut answers = Vec::new();
        for supervisor in &self.list {
            let (reply, answer) = oneshot::channel();
            if supervisor.commands.send(Command::Stop { kill_now, reply }).await.is_ok() {
                answers.push((supervisor.upstream.to_string(), answer));
            }
        }
        let mut endings = Vec::new();
        for (upstream, answer) in answers {
            endings.push((upstream, answer.await.unwrap_or_else(|_| "stopped".to_owned())));
        }
        endings
    }

    /// SIGKILLs every backend's process group now (a second signal during their stop).
    pub fn kill_all(&self) {
        for supervisor in &self.list {
            if let Some(pid) = lock(&supervisor.status).pid {
                signal_group(pid, libc::SIGKILL);
            }
        }
    }

    fn find(&self, upstream: &str) -> Option<&Supervisor> {
        self.list.iter().find(|s| &*s.upstream == upstream)
    }
}

fn lock(status: &Mutex<ProcessStatus>) -> std::sync::MutexGuard<'_, ProcessStatus> {
    status.lock().expect("the status lock is never held across a panic")
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// The task that owns one backend process.
struct Actor {
    upstream: Arc<Upstream>,
    config: ProcessConfig,
    addrs: Vec<UpstreamAddr>,
    reaper: Reaper,
    status: Arc<Mutex<ProcessStatus>>,
    died: mpsc::UnboundedSender<String>,
    child: Option<Child>,
}

/// What woke the actor.
enum Event {
    Exited(Option<std::process::ExitStatus>),
    Command(Option<Command>),
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let exited = async {
                match self.child.as_mut() {
                    Some(child) => child.exit().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                status = exited => Event::Exited(status),
                command = commands.recv() => Event::Command(command),
            };
            match event {
                Event::Exited(status) => {
                    self.child = None;
                    if let Some((kill_now, reply)) = self.crashed(status, &mut commands).await {
                        let _ = reply.send(self.stop(kill_now).await);
                        return;
                    }
                }
                Event::Command(Some(Command::Restart(process, reply))) => {
                    if let Some(process) = process {
                        self.config = process;
                    }
                    let restarted = self.restart().await;
                    if let Err(why) = &restarted {
                        error!(upstream.name = %self.name(), error = %why, "backend restart failed; upstream stays paused while it is started again");
                    }
                    let failed = restarted.is_err();
                    let _ = reply.send(restarted);
                    if failed {
                        if let Some((kill_now, reply)) = self.recover(&mut commands).await {
                            let _ = reply.send(self.stop(kill_now).await);
                            return;
                        }
                    }
                }
                Event::Command(Some(Command::Stop { kill_now, reply })) => {
                    let _ = reply.send(self.stop(kill_now).await);
                    return;
                }
                Event::Command(None) => return,
            }
        }
    }

    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn set(&self, state: &'static str, pid: Option<u32>) {
        let mut status = lock(&self.status);
        status.state = state;
        status.pid = pid;
    }

    /// Starts the process and waits until it accepts; on failure it is gone again.
    async fn bring_up(&mut self) -> Result<u32, String> {
        let started = Instant::now();
        let mut child = spawn(self.name(), &self.config, &self.reaper)
            .map_err(|e| format!("cannot start {:?}: {e}", self.config.command[0]))?;
        let pid = child.pid;
        self.set("starting", Some(pid));
        if let Err(why) = wait_ready(&self.addrs, self.config.ready_timeout, &mut child).await {
            // Still running but not accepting: it goes, with its group.
            signal_group(pid, libc::SIGKILL);
            let _ = tokio::time::timeout(KILL_WAIT, child.exit()).await;
            self.set("backoff", None);
            lock(&self.status).last_exit = Some(why.clone());
            return Err(why);
        }
        info!(upstream.name = %self.name(), pid, ready_ms = millis(started), "backend ready");
        self.set("running", Some(pid));
        self.child = Some(child);
        Ok(pid)
    }

    /// The process ended by itself: logged; then started again or, with `restart =
    /// "never"`, reported to the daemon. Returns a stop command that came meanwhile.
    async fn crashed(
        &mut self,
        status: Option<std::process::ExitStatus>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<(bool, oneshot::Sender<String>)> {
        let how = format!("exited with {}", status.map_or_else(|| "an unknown status".to_owned(), describe));
        let restart = match self.config.restart {
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        };
        warn!(upstream.name = %self.name(), exit = %how, restart, "backend exited by itself");
        {
            let mut status = lock(&self.status);
            status.last_exit = Some(how);
            status.pid = None;
        }
        match self.config.restart {
            RestartPolicy::Never => {
                self.set("exited", None);
                let _ = self.died.send(self.name().to_owned());
                None
            }
            RestartPolicy::OnFailure => self.recover(commands).await,
        }
    }

    /// Brings a failed backend back, with capped exponential back-off, its upstream paused
    /// meanwhile (requests held, bounded by `hold`). Returns a stop command that came
    /// meanwhile; restarts asked for meanwhile are answered with an error.
    async fn recover(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<(bool, oneshot::Sender<String>)> {
        let _ = self.upstream.pause(None, None);
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.set("backoff", None);
            let wake = Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    command = commands.recv() => match command {
                        Some(Command::Stop { kill_now, reply }) => return Some((kill_now, reply)),
                        Some(Command::Restart(_, reply)) => {
                            let _ = reply.send(Err("the backend is down; it is being started again".to_owned()));
                        }
                        None => return None,
                    },
                }
            }
            match self.bring_up().await {
                Ok(_) => {
                    lock(&self.status).restarts += 1;
                    let _ = self.upstream.resume(None);
                    return None;
                }
                Err(why) => {
                    error!(upstream.name = %self.name(), error = %why, retry_secs = backoff.as_secs_f64(), "backend did not come up; upstream stays paused");
                    if self.config.restart == RestartPolicy::Never {
                        let _ = self.died.send(self.name().to_owned());
                        self.set("exited", None);
                        return None;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Pause, stop, start, ready, resume.
    async fn restart(&mut self) -> Result<RestartReport, String> {
        let old_pid = self.child.as_ref().map(|c| c.pid);
        info!(upstream.name = %self.name(), old_pid, "backend restart");
        let started = Instant::now();
        let _ = self.upstream.pause(None, None);
        if !self.upstream.wait_quiet(None, RESTART_QUIET_WAIT).await.unwrap_or(true) {
            warn!(upstream.name = %self.name(), "requests still in flight after 30s; stopping the backend anyway");
        }
        let pause_ms = millis(started);
        let stopping = Instant::now();
        let old_exit = self.stop(false).await;
        let stop_ms = millis(stopping);
        let starting = Instant::now();
        let new_pid = self.bring_up().await?;
        lock(&self.status).restarts += 1;
        let held = self.upstream.held();
        let _ = self.upstream.resume(None);
        Ok(RestartReport {
            upstream: self.name().to_owned(),
            old_pid,
            new_pid,
            held,
            pause_ms,
            stop_ms,
            start_ms: millis(starting),
            old_exit,
        })
    }

    /// Stops the process: `stop_signal` to its group, SIGKILL after `stop_timeout`
    /// (`kill_now`: at once). Returns how it ended.
    async fn stop(&mut self, kill_now: bool) -> String {
        let Some(mut child) = self.child.take() else {
            let last = lock(&self.status).last_exit.clone();
            return last.unwrap_or_else(|| "was not running".to_owned());
        };
        self.set("stopping", Some(child.pid));
        let signal = if kill_now { libc::SIGKILL } else { self.config.stop_signal };
        info!(upstream.name = %self.name(), pid = child.pid, signal, "backend stopping");
        signal_group(child.pid, signal);
        let how = match tokio::time::timeout(self.config.stop_timeout, child.exit()).await {
            Ok(status) => {
                format!("exited with {}", status.map_or_else(|| "an unknown status".to_owned(), describe))
            }
            Err(_) => {
                signal_group(child.pid, libc::SIGKILL);
                let _ = tokio::time::timeout(KILL_WAIT, child.exit()).await;
                format!(
                    "killed after stop_timeout ({})",
                    humantime::format_duration(self.config.stop_timeout)
                )
            }
        };
        info!(upstream.name = %self.name(), pid = child.pid, exit = %how, "backend stopped");
        let mut status = lock(&self.status);
        status.state = "stopped";
        status.pid = None;
        status.last_exit = Some(how.clone());
        how
    }
}
