//! One backend process: started in its own process group with its output forwarded to
//! lameduck's log, signalled as a group, and checked for readiness by connecting to it.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::reap::Reaper;
use crate::config::{ProcessConfig, UpstreamAddr};

/// Variables of lameduck's own environment a backend must not inherit: systemd's (the
/// backend is not the service's main process, and must not send READY=1 for it) and the
/// re-exec's.
const NOT_INHERITED: [&str; 8] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LAMEDUCK_INHERIT_FDS",
    "LAMEDUCK_READY_FD",
];

/// How often readiness is probed while a backend starts.
const READY_PROBE: Duration = Duration::from_millis(50);

/// How long, once the backend has ended, its last output lines may take to be logged.
const OUTPUT_FLUSH: Duration = Duration::from_millis(500);

/// A running backend process.
#[derive(Debug)]
pub struct Child {
    /// Its pid, which is also its process group's id.
    pub pid: u32,
    /// Resolves when it has ended.
    exited: oneshot::Receiver<ExitStatus>,
    /// How it ended, once [`Child::exit`] has seen it (`Some(None)`: the reaper is gone).
    ended: Option<Option<ExitStatus>>,
    /// The tasks logging its stdout and stderr; each ends at its pipe's EOF. [`Child::exit`]
    /// waits for them (bounded), so its last words are logged before its end is.
    output: Vec<tokio::task::JoinHandle<()>>,
}

impl Child {
    /// Waits until the process has ended; again and again, once it has. Cancel-safe.
    pub async fn exit(&mut self) -> Option<ExitStatus> {
        if let Some(ended) = self.ended {
            return ended;
        }
        let ended = (&mut self.exited).await.ok();
        self.ended = Some(ended);
        // A child of the backend that outlives it may hold the pipes open: bounded.
        let flushed_by = Instant::now() + OUTPUT_FLUSH;
        for task in std::mem::take(&mut self.output) {
            let _ = tokio::time::timeout_at(flushed_by, task).await;
        }
        ended
    }
}

/// Starts `config.command` in a process group of its own (so that a terminal's Ctrl-C, or
/// a signal to lameduck's group, never reaches it), stdin from /dev/null, stdout and
/// stderr forwarded line by line as log events tagged with `upstream`.
///
/// # Errors
/// When the program cannot be started (not found, not executable, bad `cwd`).
pub fn spawn(upstream: &str, config: &ProcessConfig, reaper: &Reaper) -> io::Result<Child> {
    let mut command = std::process::Command::new(&config.command[0]);
    command.args(&config.command[1..]);
    for var in NOT_INHERITED {
        command.env_remove(var);
    }
    command.envs(config.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &config.cwd {
        command.current_dir(cwd);
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = reaper.spawn(&mut command)?;
    let pid = child.id();
    // Logged here, before its output is forwarded, so that its first line never comes first.
    info!(upstream.name = %upstream, pid, command = ?config.command, "backend started");
    let mut output = Vec::new();
    if let Some(out) = child.stdout.take() {
        output.extend(forward_lines(upstream, "stdout", OwnedFd::from(out)));
    }
    if let Some(err) = child.stderr.take() {
        output.extend(forward_lines(upstream, "stderr", OwnedFd::from(err)));
    }
    // Dropping a std Child neither waits nor kills: the reaper has its status.
    drop(child);
    Ok(Child { pid, exited: reaper.exit_of(pid), ended: None, output })
}

/// Logs each line the backend writes to `fd` as a `backend output` event, on a task that
/// ends at EOF.
fn forward_lines(upstream: &str, stream: &'static str, fd: OwnedFd) -> Option<tokio::task::JoinHandle<()>> {
    let receiver = match pipe::Receiver::from_owned_fd(fd) {
        Ok(receiver) => receiver,
        Err(e) => {
            warn!(upstream.name = upstream, stream, error = %e, "backend output lost");
            return None;
        }
    };
    let upstream = upstream.to_owned();
    let task = tokio::spawn(async move {
        let mut lines = BufReader::new(receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            info!(upstream.name = %upstream, stream, line = %line, "backend output");
        }
    });
    Some(task)
}

/// Sends `signal` to the backend's process group (its children too, as systemd's default
/// `KillMode=control-group` would). A group already gone is not an error.
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
    let rc = unsafe { libc::kill(-(pid as i32), signal) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            warn!(pid, signal, error = %e, "cannot signal the backend");
        }
    }
}

/// Waits until the backend accepts a TCP connection on one of `addrs`.
///
/// # Errors
/// What went wrong, for the start-up error or log line: the backend's exit status if it
/// ended first, or that it did not accept within `within`.
pub async fn wait_ready(addrs: &[UpstreamAddr], within: Duration, child: &mut Child) -> Result<(), String> {
    let give_up = Instant::now() + within;
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    loop {
        for addr in addrs {
            if accepts(addr).await {
                return Ok(());
            }
        }
        if Instant::now() >= give_up {
            return Err(format!(
                "did not accept on {} within {}",
                shown.join(" or "),
                humantime::format_duration(within)
            ));
        }
        tokio::select! {
            status = child.exit() => {
                let status = status.map_or_else(|| "an unknown status".to_owned(), describe);
                return Err(format!("exited with {status} before it accepted on {}", shown.join(" or ")));
            }
            _ = tokio::time::sleep_until((Instant::now() + READY_PROBE).min(give_up)) => {}
        }
    }
}

async fn accepts(addr: &UpstreamAddr) -> bool {
    let connecting = async {
        match addr {
            UpstreamAddr::Ip(ip) => tokio::net::TcpStream::connect(ip).await,
            UpstreamAddr::Name { host, port } => tokio::net::TcpStream::connect((host.as_str(), *port)).await,
        }
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), connecting).await, Ok(Ok(_)))
}

/// `status 143`, `signal 9 (SIGKILL)`: how a process ended, in words.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => {
            format!("signal {signal}{}", signal_name(signal).map(|n| format!(" ({n})")).unwrap_or_default())
        }
        _ => status.to_string(),
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => return None,
    })
}
