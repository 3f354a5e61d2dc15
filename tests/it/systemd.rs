//! systemd support (issue 6), with the real binary: the test plays systemd. It owns the
//! `NOTIFY_SOCKET` and reads every `sd_notify` datagram ([`peer::NotifySocket`]), binds
//! sockets itself and passes them as fds 3… with `LISTEN_FDS`/`LISTEN_PID` (socket activation
//! and the fd store), and sends SIGUSR2 to upgrade: the running process re-execs itself, hands
//! over its listening sockets, and drains once the successor is ready.
//!
//! A successor is the old process's child, not the test's: the test learns its pid from the
//! `handed over…` and `ready` log lines (every generation writes to the same stderr pipe) and
//! a [`peer::Successors`] guard kills whatever is left when the test ends, pass or fail.

mod activation;
mod load;
mod notify;
// The notify socket and /proc helpers serve the supervised-backend tests (`backend.rs`) too.
pub(crate) mod peer;
mod reload;
mod units;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{field_f64, message, secs, Logs, PROMPT};

/// How long a re-exec'd successor may take to report ready (a debug build on a busy machine).
const RELOAD_WITHIN: Duration = Duration::from_secs(15);

/// The `handed over` line of an old process.
const HANDED_OVER: &str = "handed over to the new process; draining";
const RELOAD_STARTED: &str = "binary upgrade: starting a new process with the listening sockets";
const RELOAD_FAILED: &str = "binary upgrade failed; this process goes on serving";
const RELOAD_IGNORED: &str = "binary upgrade already under way; SIGUSR2 ignored";

/// Sends `signal` to `pid` (which need not be the test's child).
fn send_signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid the test learnt from the daemon's own log; it is alive (it has
    // not logged its exit), so the pid has not been recycled.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// The first log line after `mark` matching `pred`, within `within`; panics with the whole
/// log (every generation's) if none comes.
async fn expect_log(
    logs: &Logs,
    mark: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
    within: Duration,
) -> Value {
    match logs.try_wait_for_after(mark, pred, within).await {
        Some(line) => line,
        None => panic!("no log line {what} within {within:?}; log:\n{}", logs.dump()),
    }
}

fn pid_field(line: &Value, key: &str) -> i32 {
    field_f64(line, key).unwrap_or_else(|| panic!("no numeric {key} in {line}")) as i32
}

/// Sends SIGUSR2 to `pid` and waits for the handover: the successor logs `ready`, `pid` logs
/// `handed over…` naming it and then `draining` (its accept loops have ended, so from here on
/// only the successor accepts, and requests on `pid`'s old connections are answered with
/// `Connection: close`). Returns the successor's pid.
async fn reload(logs: &Logs, pid: i32) -> i32 {
    let mark = logs.mark();
    send_signal(pid, libc::SIGUSR2);
    let handed = expect_log(logs, mark, "handed over", |l| message(l) == HANDED_OVER, RELOAD_WITHIN).await;
    let successor = pid_field(&handed, "successor.pid");
    assert_ne!(successor, pid, "the successor is a new process");
    let is_its_ready = |l: &Value| message(l) == "ready" && field_f64(l, "pid") == Some(f64::from(successor));
    expect_log(logs, mark, "ready from the successor", is_its_ready, secs(1)).await;
    expect_log(logs, mark, "draining (the old process)", |l| message(l) == "draining", PROMPT).await;
    successor
}

/// Lines with `message` == `msg` so far.
fn lines_with(logs: &Logs, msg: &str) -> Vec<Value> {
    logs.lines().into_iter().filter(|l| message(l) == msg).collect()
}

/// Waits until `cond` holds for the whole log so far (re-checked at every new line), within
/// `within`; panics with the log if it does not.
async fn wait_until(logs: &Logs, what: &str, cond: impl Fn(&[Value]) -> bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mark = logs.mark();
        if cond(&logs.lines()) {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || logs.try_wait_for_after(mark, |_| true, left).await.is_none() {
            if cond(&logs.lines()) {
                return;
            }
            panic!("{what}: not within {within:?}; log:\n{}", logs.dump());
        }
    }
}

/// Waits until `n` processes have logged their `exit` line; returns those lines.
async fn exits(logs: &Logs, n: usize, within: Duration) -> Vec<Value> {
    let enough = |lines: &[Value]| lines.iter().filter(|l| message(l) == "exit").count() >= n;
    wait_until(logs, &format!("{n} exit lines"), enough, within).await;
    lines_with(logs, "exit")
}

/// A port that was free a moment ago (bound to `127.0.0.1:0`, then released), for a test that
/// must know the address before the daemon binds it.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A config with one listener on `listen`, upstream `app` → `backend`, a catch-all route, and
/// `tail` verbatim.
fn config_on(listen: SocketAddr, backend: SocketAddr, tail: &str) -> String {
    format!(
        "[[listen]]\naddr = \"{listen}\"\n\n[upstream.app]\naddrs = [\"{backend}\"]\n\n\
         [[route]]\nupstream = \"app\"\n\n{tail}"
    )
}
