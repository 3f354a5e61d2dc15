//! Reaping children: every child that ends is waited for here, supervised backends and
//! orphans alike, as an init (tini, dumb-init) does.
//!
//! Run as PID 1 in a container, every orphan of the namespace becomes lameduck's child; one
//! that is never waited for stays a zombie for ever. So once the reaper runs, it alone calls
//! `waitpid(-1)` on each SIGCHLD, and hands the exit statuses of the processes someone waits
//! for ([`Reaper::exit_of`]) to them. Nothing else in the process may wait for children
//! then: the re-exec upgrade, which waits for its successor, is refused (see `daemon`).

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tracing::debug;

/// Waits for every child that ends; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    state: Arc<Mutex<Exits>>,
}

/// Exit statuses and who waits for them.
#[derive(Debug, Default)]
struct Exits {
    /// Processes someone waits for.
    waiting: HashMap<u32, oneshot::Sender<ExitStatus>>,
    /// Statuses reaped before anyone asked (a child that ended at once).
    unclaimed: HashMap<u32, ExitStatus>,
    /// Pids someone will ask about: reaped before they ask, they go to `unclaimed`.
    expected: Vec<u32>,
}

impl Reaper {
    /// Starts reaping on every SIGCHLD (and once now, for children that ended before).
    ///
    /// # Errors
    /// When the SIGCHLD handler cannot be installed.
    pub fn start() -> io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper { state: Arc::default() };
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command`, noting its pid before any SIGCHLD can be handled: the reaper holds
    /// the lock meanwhile, so a child that ends at once is kept for [`Reaper::exit_of`], not
    /// taken for an orphan.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(&self, command: &mut std::process::Command) -> io::Result<std::process::Child> {
        let mut exits = self.lock();
        let child = command.spawn()?;
        exits.expected.push(child.id());
        Ok(child)
    }

    /// Resolves with the exit status of `pid`, a child of this process.
    pub fn exit_of(&self, pid: u32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut exits = self.lock();
        exits.expected.retain(|p| *p != pid);
        match exits.unclaimed.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                exits.waiting.insert(pid, tx);
            }
        }
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Exits> {
        self.state.lock().expect("the reaper's lock is never held across a panic")
    }

    /// Waits for every child that has ended, without blocking.
    fn reap_all(&self) {
        while let Some((pid, status)) = reap_one() {
            let mut exits = self.lock();
            if let Some(waiter) = exits.waiting.remove(&pid) {
                let _ = waiter.send(status);
            } else if exits.expected.contains(&pid) {
                exits.unclaimed.insert(pid, status);
            } else {
                debug!(pid, status = %status, "reaped an orphan");
            }
        }
    }
}

/// One ended child and its status, or `None` when no child has ended (or there is none).
fn reap_one() -> Option<(u32, ExitStatus)> {
    let mut status = 0;
    // SAFETY: waitpid with a valid pointer to a local int; WNOHANG never blocks.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then(|| (pid as u32, ExitStatus::from_raw(status)))
}
