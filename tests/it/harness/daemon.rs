//! The daemon under test. [`Lameduck::start`] writes `proxy.toml` into a temp
//! dir, spawns the real binary with JSON logs at debug level, keeps every
//! stderr line ([`Logs`]), and returns once the `ready` line is logged, with
//! the bound addresses read from the `listening` / `admin listening` lines
//! before it. The child is killed when the handle drops; on a failing test
//! the whole log is printed.
//!
//! [`Lameduck::spawn`] is the same without the wait for `ready` ([`Starting`]),
//! and lets the test edit the command first (environment, inherited fds), for
//! tests that play systemd or expect a start-up failure; [`Lameduck::spawn_under`] runs
//! the binary under a wrapper program (`unshare`, to make it PID 1). The daemon never
//! inherits the test's own systemd variables (`NOTIFY_SOCKET`, `LISTEN_*`,
//! `WATCHDOG_*`): a test that wants them sets them.
//!
//! [`Lameduck::spawn_logging`] is for the tests of logging itself: other logging arguments,
//! and stderr on a pipe named by `JOURNAL_STREAM` (as systemd sets it) or on a terminal
//! ([`StderrTo`]). [`Logs::raw_lines`] has every line exactly as written.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use super::{secs, PROMPT};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");

/// How long start-up may take (a debug build on a busy 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The `message` of a log line ("" when it has none).
pub fn message(line: &Value) -> &str {
    line.get("message").and_then(Value::as_str).unwrap_or("")
}

/// A field as text, whether it was logged as a string or a number.
pub fn field_str(line: &Value, key: &str) -> Option<String> {
    match line.get(key)? {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A field as a number, whether it was logged as a number or a string.
pub fn field_f64(line: &Value, key: &str) -> Option<f64> {
    match line.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Every stderr line of one daemon, parsed as JSON where it parses (else kept
/// as a JSON string). The reader task pushes a line (to `raw` first), then bumps
/// `seen`; the sender drops at EOF, which ends every wait.
#[derive(Clone)]
pub struct Logs {
    lines: Arc<Mutex<Vec<Value>>>,
    /// The same lines as written (a terminal's `\r` before the newline taken off).
    raw: Arc<Mutex<Vec<String>>>,
    seen: watch::Receiver<usize>,
}

impl Logs {
    fn read(stderr: ChildStderr) -> Logs {
        Logs::read_from(stderr, false)
    }

    /// Reads `stderr` to its end; with `strip_priority`, a line's `<N>` prefix is not part
    /// of what is parsed.
    fn read_from(stderr: impl AsyncRead + Unpin + Send + 'static, strip_priority: bool) -> Logs {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0);
        let (sink, raw_sink) = (lines.clone(), raw.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(mut line)) = reader.next_line().await {
                if line.ends_with('\r') {
                    line.pop();
                }
                let text = if strip_priority { without_priority(&line) } else { &line };
                let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(line.clone()));
                raw_sink.lock().unwrap().push(line);
                let mut sink = sink.lock().unwrap();
                sink.push(value);
                tx.send_replace(sink.len());
            }
        });
        Logs { lines, raw, seen }
    }

    /// Every line so far exactly as written: prefixes, colour escapes and all.
    pub fn raw_lines(&self) -> Vec<String> {
        self.raw.lock().unwrap().clone()
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines have been logged so far (see [`Logs::try_wait_for_after`]).
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn find(&self, from: usize, pred: &impl Fn(&Value) -> bool) -> Option<Value> {
        let lines = self.lines.lock().unwrap();
        lines.iter().skip(from).find(|l| pred(l)).cloned()
    }

    /// Waits until the daemon logs something after the first `mark` lines — something
    /// happened — or until `deadline`. Lines about admin calls do not count: a test polling
    /// the admin API causes those itself.
    pub async fn next_event_after(&self, mark: usize, deadline: Instant) {
        let not_admin = |l: &Value| !l["target"].as_str().is_some_and(|t| t.starts_with("lameduck::admin"));
        let _ = self
            .try_wait_for_after(mark, not_admin, deadline.saturating_duration_since(Instant::now()))
            .await;
    }

    /// The first line (already logged or still to come) matching `pred`.
    pub async fn try_wait_for(&self, pred: impl Fn(&Value) -> bool, within: Duration) -> Option<Value> {
        self.try_wait_for_after(0, pred, within).await
    }

    /// The first line after the first `mark` lines matching `pred`.
    pub async fn try_wait_for_after(
        &self,
        mark: usize,
        pred: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Option<Value> {
        let mut seen = self.seen.clone();
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.find(mark, &pred) {
                return Some(line);
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return self.find(mark, &pred), // stderr closed
                Err(_) => return None,
            }
        }
    }

    /// Waits until stderr is closed (the process is gone), at most [`PROMPT`].
    pub async fn wait_closed(&self) {
        let mut seen = self.seen.clone();
        let _ = timeout(PROMPT, async { while seen.changed().await.is_ok() {} }).await;
    }

    pub fn dump(&self) -> String {
        let lines: Vec<String> = self.lines().iter().map(Value::to_string).collect();
        lines.join("\n")
    }
}

/// A running daemon.
pub struct Lameduck {
    /// The first listener's bound address.
    pub addr: SocketAddr,
    /// Every listener's bound address, in config order.
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub logs: Logs,
    child: Child,
    pid: i32,
    dir: TempDir,
}

impl Drop for Lameduck {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- lameduck log ----\n{}\n----", self.logs.dump());
        }
    }
}

fn write_config(config: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).expect("write proxy.toml");
    (dir, path)
}

/// The variables systemd hands a service; never inherited from the test's own environment.
const SYSTEMD_VARS: [&str; 6] =
    ["NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The path of the binary under test.
pub fn binary() -> &'static str {
    BIN
}

/// How the binary is started.
#[derive(Debug, Clone, Copy)]
enum Launch<'a> {
    /// As the test's own child.
    Direct,
    /// exec'd by `/bin/sh` with `LISTEN_PID` set to the shell's (soon lameduck's) pid.
    ListenPid,
    /// By a program that runs it, its arguments first (`unshare --pid --fork …`).
    Under(&'a [&'a str]),
}

/// `line` without a leading sd-daemon priority prefix (`<4>…` → `…`).
pub fn without_priority(line: &str) -> &str {
    match line.as_bytes() {
        [b'<', digit, b'>', ..] if digit.is_ascii_digit() => &line[3..],
        _ => line,
    }
}

/// Where a daemon started by [`Lameduck::spawn_logging`] writes its stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrTo {
    /// A pipe, as every other test has it.
    Pipe,
    /// A pipe that `JOURNAL_STREAM` names by its `DEVICE:INODE`, as systemd sets it for a
    /// service whose stderr is the journal. A line's `<N>` prefix is left out of what is
    /// parsed ([`Logs::raw_lines`] keeps it).
    JournalPipe,
    /// A pipe, with `JOURNAL_STREAM` naming another stream (same device, another inode), as
    /// a child of a service that writes elsewhere inherits it.
    PipeNotJournal,
    /// A pseudo-terminal.
    Terminal,
}

/// How [`Lameduck::spawn_logging`] runs the daemon: `args` instead of
/// `--log-format json --log-level debug`, and stderr to `stderr`.
#[derive(Debug, Clone, Copy)]
pub struct Logging<'a> {
    pub args: &'a [&'a str],
    pub stderr: StderrTo,
}

/// What every test but the logging ones runs with.
const DEFAULT_LOGGING: Logging<'static> =
    Logging { args: &["--log-format", "json", "--log-level", "debug"], stderr: StderrTo::Pipe };

/// A stderr reader the harness made itself (a pipe's or a terminal's other end).
type StderrReader = Box<dyn AsyncRead + Unpin + Send>;

/// Sets up `command`'s stderr for `to`; returns the reading end when it is not the child's
/// own piped stderr.
fn stderr_for(to: StderrTo, command: &mut Command) -> Option<StderrReader> {
    let named = match to {
        StderrTo::Pipe => {
            command.stderr(Stdio::piped());
            return None;
        }
        StderrTo::Terminal => {
            let (master, slave) = pseudo_terminal();
            command.stderr(Stdio::from(slave));
            // Not a pipe, but read the same way: non-blocking, through the reactor. It reads
            // EIO once no process has the slave side open (the daemon has exited).
            let master = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(master.into());
            return Some(Box::new(master.expect("read the terminal through the reactor")));
        }
        StderrTo::JournalPipe => 0,
        StderrTo::PipeNotJournal => 1,
    };
    let (tx, rx) = tokio::net::unix::pipe::pipe().expect("pipe");
    let tx = tx.into_blocking_fd().expect("pipe write end");
    let meta = File::from(tx.try_clone().expect("dup")).metadata().expect("fstat the pipe");
    command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino() + named));
    command.stderr(Stdio::from(tx));
    Some(Box::new(rx))
}

/// A pseudo-terminal: its master side (non-blocking) to read, its slave side to be a child's
/// stderr.
fn pseudo_terminal() -> (File, OwnedFd) {
    // SAFETY: posix_openpt returns a new fd (or -1), owned from here on; fcntl, grantpt,
    // unlockpt and ptsname_r work on that open fd, ptsname_r writing a NUL-terminated name
    // into the buffer it is given with its length.
    let (master, name) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(fd);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK), 0, "O_NONBLOCK");
        assert_eq!(libc::grantpt(fd), 0, "grantpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt: {}", std::io::Error::last_os_error());
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), 0, "ptsname_r");
        (master, CStr::from_ptr(name.as_ptr()).to_str().expect("a UTF-8 pty name").to_owned())
    };
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .unwrap_or_else(|e| panic!("open {name}: {e}"));
    (File::from(master), slave.into())
}

fn spawn(path: &PathBuf, launch: Launch<'_>, configure: impl FnOnce(&mut Command)) -> Child {
    spawn_logging(path, launch, DEFAULT_LOGGING, configure).0
}

fn spawn_logging(
    path: &PathBuf,
    launch: Launch<'_>,
    logging: Logging<'_>,
    configure: impl FnOnce(&mut Command),
) -> (Child, Option<StderrReader>) {
    let mut command = match launch {
        Launch::Direct => Command::new(BIN),
        Launch::ListenPid => {
            // The shell's pid becomes lameduck's at `exec`, so `$$` is the pid lameduck will have.
            let mut command = Command::new("/bin/sh");
            command.args(["-c", "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"", BIN]);
            command
        }
        Launch::Under([program, args @ ..]) => {
            let mut command = Command::new(program);
            command.args(args).arg(BIN);
            command
        }
        Launch::Under([]) => unreachable!("a wrapper names its program"),
    };
    command.arg("--config").arg(path).args(logging.args);
    for var in SYSTEMD_VARS {
        command.env_remove(var);
    }
    configure(&mut command);
    let reader = stderr_for(logging.stderr, &mut command);
    let child = command.stdin(Stdio::null()).stdout(Stdio::null()).kill_on_drop(true).spawn();
    (child.expect("spawn lameduck"), reader)
}

fn addr_field(line: &Value, key: &str) -> SocketAddr {
    let text = field_str(line, key).unwrap_or_else(|| panic!("no {key} in {line}"));
    text.parse().unwrap_or_else(|e| panic!("{key} {text:?}: {e}"))
}

/// A daemon spawned by [`Lameduck::spawn`] that has not (yet) logged `ready`:
/// it may still become ready ([`Starting::ready`]) or exit
/// ([`Starting::exit_within`]). Killed when dropped; on a failing test the
/// whole log is printed.
pub struct Starting {
    pub logs: Logs,
    child: Child,
    pid: i32,
    dir: TempDir,
    config: String,
    dump: DumpOnPanic,
}

/// Prints the log when dropped during a panic, unless disarmed (taken).
struct DumpOnPanic(Option<Logs>);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if let Some(logs) = self.0.take().filter(|_| std::thread::panicking()) {
            eprintln!("---- lameduck log ----\n{}\n----", logs.dump());
        }
    }
}

impl Starting {
    fn spawn(config: &str, launch: Launch<'_>, configure: impl FnOnce(&mut Command)) -> Starting {
        let (dir, path) = write_config(config);
        let mut child = spawn(&path, launch, configure);
        let pid = child.id().expect("child pid") as i32;
        let logs = Logs::read(child.stderr.take().expect("piped stderr"));
        let dump = DumpOnPanic(Some(logs.clone()));
        Starting { logs, child, pid, dir, config: config.to_owned(), dump }
    }

    /// Like [`Starting::spawn`], logging as `logging` asks.
    fn spawn_logging(config: &str, logging: Logging<'_>, configure: impl FnOnce(&mut Command)) -> Starting {
        let (dir, path) = write_config(config);
        let (mut child, reader) = spawn_logging(&path, Launch::Direct, logging, configure);
        let pid = child.id().expect("child pid") as i32;
        let logs = match reader {
            Some(reader) => Logs::read_from(reader, logging.stderr == StderrTo::JournalPipe),
            None => Logs::read(child.stderr.take().expect("piped stderr")),
        };
        let dump = DumpOnPanic(Some(logs.clone()));
        Starting { logs, child, pid, dir, config: config.to_owned(), dump }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid; it cannot have been reaped and reused,
        // because reaping happens only in `exit_within`.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.pid, std::io::Error::last_os_error());
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn config_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Waits until the daemon logs `ready` (panicking with the log if it does
    /// not within the start-up bound) and reads its bound addresses.
    pub async fn ready(mut self) -> Lameduck {
        let logs = self.logs.clone();
        if logs.try_wait_for(|l| message(l) == "ready", READY_TIMEOUT).await.is_none() {
            let status = self.child.try_wait();
            panic!(
                "lameduck logged no \"ready\" within {READY_TIMEOUT:?} (exit: {status:?})\nconfig:\n{}\nlog:\n{}",
                self.config,
                logs.dump()
            );
        }
        let lines = logs.lines();
        let before_ready = lines.iter().take_while(|l| message(l) != "ready");
        let mut addrs = Vec::new();
        let mut admin_addr = None;
        for line in before_ready {
            match message(line) {
                "listening" => addrs.push(addr_field(line, "listener.addr")),
                "admin listening" => admin_addr = Some(addr_field(line, "admin.addr")),
                _ => {}
            }
        }
        assert!(!addrs.is_empty(), "no \"listening\" line before \"ready\":\n{}", logs.dump());
        // From here on the Lameduck prints the log on a panic.
        self.dump.0 = None;
        let Starting { child, pid, dir, .. } = self;
        Lameduck { addr: addrs[0], addrs, admin_addr, logs, child, pid, dir }
    }

    /// The exit code, waiting at most `within`; panics (with the log) if the
    /// process is still running then or was killed by a signal.
    pub async fn exit_within(&mut self, within: Duration) -> i32 {
        exit_code(&mut self.child, &self.logs, within).await
    }
}

impl Lameduck {
    /// Starts the daemon and waits until it logs `ready`.
    pub async fn start(config: &str) -> Lameduck {
        Lameduck::start_with(config, |_| {}).await
    }

    /// Like [`Lameduck::start`], with `configure` editing the command first
    /// (environment variables, fds to inherit through `pre_exec`, …).
    pub async fn start_with(config: &str, configure: impl FnOnce(&mut Command)) -> Lameduck {
        Lameduck::spawn(config, configure).ready().await
    }

    /// Spawns the daemon (the command edited by `configure`) without waiting for `ready`.
    pub fn spawn(config: &str, configure: impl FnOnce(&mut Command)) -> Starting {
        Starting::spawn(config, Launch::Direct, configure)
    }

    /// Like [`Lameduck::spawn`], with the logging arguments and stderr of `logging` (see
    /// [`StderrTo`]). [`Starting::ready`] needs JSON lines; a test of text lines waits for
    /// its own.
    pub fn spawn_logging(
        config: &str,
        logging: Logging<'_>,
        configure: impl FnOnce(&mut Command),
    ) -> Starting {
        Starting::spawn_logging(config, logging, configure)
    }

    /// Like [`Lameduck::spawn`], but the binary is exec'd by `/bin/sh` with
    /// `LISTEN_PID` set to its own pid, as systemd does for socket activation
    /// (the test sets `LISTEN_FDS` and puts the fds in place in `configure`).
    pub fn spawn_with_listen_pid(config: &str, configure: impl FnOnce(&mut Command)) -> Starting {
        Starting::spawn(config, Launch::ListenPid, configure)
    }

    /// Like [`Lameduck::spawn`], but the binary (with its arguments) is run by `wrapper`, a
    /// program and its first arguments (`["unshare", "--pid", "--fork"]`). The handle's
    /// [`pid`](Starting::pid), signals and exit status are the wrapper's; the test finds
    /// lameduck's own pid among the wrapper's children.
    pub fn spawn_under(wrapper: &[&str], config: &str, configure: impl FnOnce(&mut Command)) -> Starting {
        assert!(!wrapper.is_empty(), "a wrapper names its program");
        Starting::spawn(config, Launch::Under(wrapper), configure)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn config_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid; it cannot have been reaped
        // and reused, because reaping happens only in `exit_within` and `kill`.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.pid, std::io::Error::last_os_error());
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// Reload the config in place.
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Upgrade the binary: re-exec and hand over.
    pub fn sigusr2(&self) {
        self.signal(libc::SIGUSR2);
    }

    /// The exit code, waiting at most `within`; panics (with the log) if the
    /// process is still running then or was killed by a signal.
    pub async fn exit_within(&mut self, within: Duration) -> i32 {
        exit_code(&mut self.child, &self.logs, within).await
    }

    /// Kills the daemon with SIGKILL (a crash, as far as it can tell) and reaps it.
    pub async fn kill(&mut self) {
        match timeout(PROMPT, self.child.kill()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("kill lameduck: {e}"),
            Err(_) => panic!("lameduck not reaped within {PROMPT:?} of SIGKILL"),
        }
    }

    /// Whether the process has exited yet (without waiting).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The first line matching `pred`, waiting at most `within`; panics with
    /// the whole log if none comes.
    pub async fn wait_for_log(&self, pred: impl Fn(&Value) -> bool, within: Duration) -> Value {
        match self.logs.try_wait_for(pred, within).await {
            Some(line) => line,
            None => panic!("no matching log line within {within:?}; log:\n{}", self.logs.dump()),
        }
    }

    /// The first line logged after `mark` (see [`Logs::mark`]) matching `pred`.
    pub async fn wait_for_log_after(
        &self,
        mark: usize,
        pred: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        match self.logs.try_wait_for_after(mark, pred, within).await {
            Some(line) => line,
            None => panic!("no matching log line within {within:?}; log:\n{}", self.logs.dump()),
        }
    }

    /// The first line whose `message` is `msg`, waiting at most [`PROMPT`].
    pub async fn wait_for_message(&self, msg: &str) -> Value {
        let msg = msg.to_string();
        self.wait_for_log(move |l| message(l) == msg, PROMPT).await
    }

    /// The exit summary line (call after the process exited).
    pub async fn summary(&self) -> Value {
        self.wait_for_message("exit").await
    }

    /// Access log lines so far.
    pub fn access_log(&self) -> Vec<Value> {
        let lines = self.logs.lines();
        lines.into_iter().filter(is_access_line).collect()
    }

    /// Peak resident memory of the daemon in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("proc status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value")
    }
}

async fn exit_code(child: &mut Child, logs: &Logs, within: Duration) -> i32 {
    match timeout(within, child.wait()).await {
        Ok(Ok(status)) => status
            .code()
            .unwrap_or_else(|| panic!("lameduck died of a signal ({status}); log:\n{}", logs.dump())),
        Ok(Err(e)) => panic!("wait for lameduck: {e}"),
        Err(_) => panic!("lameduck still running after {within:?}; log:\n{}", logs.dump()),
    }
}

pub fn is_access_line(line: &Value) -> bool {
    line.get("target").and_then(Value::as_str) == Some("lameduck::access") && message(line) == "request"
}

/// What a run to completion left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// The config file's path as passed to the binary.
    pub path: PathBuf,
}

impl Finished {
    async fn run(config: &str, check: bool) -> Finished {
        let (_dir, path) = write_config(config);
        let mut command = Command::new(BIN);
        if check {
            command.arg("--check");
        } else {
            command.args(["--log-format", "json"]);
        }
        command.arg("--config").arg(&path).stdin(Stdio::null()).kill_on_drop(true);
        let output = match timeout(secs(15), command.output()).await {
            Ok(output) => output.expect("run lameduck"),
            Err(_) => {
                panic!("lameduck (check: {check}) still running after 15s\nconfig:\n{config}")
            }
        };
        Finished {
            status: output.status.code().expect("exit code, not a signal"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            path,
        }
    }

    /// `lameduck --check --config <tmp>/proxy.toml`.
    pub async fn check(config: &str) -> Finished {
        Finished::run(config, true).await
    }

    /// The daemon started normally, expected to exit on its own.
    pub async fn start_expecting_exit(config: &str) -> Finished {
        Finished::run(config, false).await
    }
}
