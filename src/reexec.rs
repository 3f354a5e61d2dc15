//! The binary upgrade, zero-downtime re-exec on SIGUSR2: start the binary on disk again, hand it the listening
//! sockets, and wait until it reports ready.
//!
//! The successor inherits the listening fds (their numbers in [`INHERIT_FDS_ENV`]) and the
//! write end of a pipe ([`READY_FD_ENV`]); it writes `ready` there once it serves, or its
//! start-up error before it exits. Both processes share the sockets meanwhile, so the kernel
//! backlog keeps every new connection: nothing is refused. If the successor fails, crashes or
//! is not ready in time, it is killed and this process goes on serving.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::systemd::{INHERIT_FDS_ENV, PAUSED_ENV, READY_FD_ENV};

/// How long a successor may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start this program again: recorded at start-up, because `/proc/self/exe` names a
/// deleted file once the binary on disk has been replaced.
#[derive(Debug, Clone)]
pub struct Program {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Program {
    /// The running program's path and arguments.
    pub fn current() -> io::Result<Program> {
        Ok(Program { exe: std::env::current_exe()?, args: std::env::args_os().skip(1).collect() })
    }

    /// Starts the program again with `listeners` inherited and the upstreams in `paused`
    /// (see `Upstreams::paused_list`) paused, and waits until it is ready. Returns its pid,
    /// or why it could not take over (it is gone by then).
    pub async fn spawn_successor(&self, listeners: &[RawFd], paused: &str) -> Result<u32, String> {
        let (read_end, write_end) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let write_fd = write_end.as_raw_fd();
        let fds: Vec<String> = listeners.iter().map(ToString::to_string).collect();
        let mut inheritable = listeners.to_vec();
        inheritable.push(write_fd);

        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(&self.args)
            .env(INHERIT_FDS_ENV, fds.join(","))
            .env(READY_FD_ENV, write_fd.to_string())
            .env(PAUSED_ENV, paused)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            // systemd set WATCHDOG_PID to this process; the successor pings for itself.
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null())
            // Until it reports ready, dropping this future (a drain signal during the reload)
            // must not leave a half-started successor behind.
            .kill_on_drop(true);
        // SAFETY: between fork and exec the closure only calls fcntl (async-signal-safe) on fds
        // that are open in the parent, to let exactly these survive the exec.
        unsafe {
            command.pre_exec(move || {
                for &fd in &inheritable {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        drop(write_end);
        let pid = child.id().unwrap_or(0);

        let report = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut text);
            text
        });
        match tokio::time::timeout(READY_TIMEOUT, report).await {
            Ok(Ok(text)) if text.trim() == "ready" => {
                // It serves now and outlives this process: neither kill it on drop nor reap it.
                std::mem::forget(child);
                Ok(pid)
            }
            Ok(report) => {
                let text = report.unwrap_or_default();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = child.start_kill();
                let status = match status {
                    Ok(Ok(status)) => status.to_string(),
                    _ => "still running; killed".to_owned(),
                };
                let why = text.trim();
                let why = if why.is_empty() { "it exited before it was ready" } else { why };
                Err(format!("new process {pid} failed ({status}): {why}"))
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(format!("new process {pid} was not ready within {READY_TIMEOUT:?}; killed"))
            }
        }
    }
}

/// A pipe whose ends are closed on exec (the write end is opened up for the child only).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds on success, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
