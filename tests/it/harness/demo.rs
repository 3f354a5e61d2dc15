//! The demo backend (`examples/legacy_backend.rs`) as a real process, and load against it.
//!
//! [`BackendProcess`] runs the demo backend as the test's own child; tests whose daemon
//! supervises the backend itself only need its path ([`backend_binary`]). [`Load`] keeps a
//! proxy busy: client tasks looping GETs of `/pid` and POSTs to `/echo`, each echo checked
//! byte for byte. Every exchange is recorded (when it started, which backend process answered
//! — every answer carries `x-backend-pid` — or what went wrong), for the tests to read by
//! when each request started relative to a deploy's steps; [`Tally`] counts them.
//!
//! Waits are events: the backend's first stdout line (its port accepts), its "slow request"
//! line (it has the request), the admin API's answers and state ([`admin`], [`upstream_where`]),
//! the load's progress; each is bounded. The backend binary is built by `cargo test` with the
//! other examples; `cargo test --test it` alone builds none, hence the check in
//! [`backend_binary`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::{binary, empty, fetch, full, pattern_chunk, H1Client, Lameduck, Logs, PROMPT};

/// Load clients running at once: even ones keep one connection alive, odd ones open a new
/// connection per request.
pub const CLIENTS: usize = 6;
/// The longest one load request may take, held ones included.
pub const REQUEST_BOUND: Duration = Duration::from_secs(10);
/// How long a backend process may take to listen (a debug build on a busy machine).
const BACKEND_START: Duration = Duration::from_secs(10);
/// `target/debug/examples/legacy_backend`, next to the daemon's binary. Panics saying what to
/// run if it is missing or older than its source (`cargo test --test it` builds no example,
/// and a nested cargo would rebuild dependencies under another environment).
pub fn backend_binary() -> PathBuf {
    let dir = Path::new(binary()).parent().expect("the binary's directory");
    let path = dir.join("examples").join("legacy_backend");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/legacy_backend.rs");
    let written = std::fs::metadata(&source).and_then(|m| m.modified()).expect("the example's source");
    match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(built) if built >= written => path,
        _ => panic!(
            "{} is missing or older than {}: run `cargo build --example legacy_backend` \
             (a plain `cargo test` builds it)",
            path.display(),
            source.display()
        ),
    }
}

/// The demo backend as a child process, killed when dropped.
pub struct BackendProcess {
    /// The bound address (a port asked for as 0 is the real one here).
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    /// How many "slow request" lines it has printed: bumped by the stdout reader, whose
    /// sender drops when the process closes stdout.
    slow_arrived: watch::Receiver<usize>,
}

impl BackendProcess {
    /// A backend on a free port.
    pub async fn start() -> BackendProcess {
        BackendProcess::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    /// A backend on `addr`; returns once it prints its address, which it does after binding,
    /// so its port accepts connections from then on.
    pub async fn start_on(addr: SocketAddr) -> BackendProcess {
        let mut child = Command::new(backend_binary())
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn legacy_backend");
        let pid = child.id().expect("a running child has a pid");
        let (bound_tx, bound_rx) = oneshot::channel();
        let (slow_tx, slow_arrived) = watch::channel(0);
        tokio::spawn(read_stdout(child.stdout.take().expect("piped stdout"), bound_tx, slow_tx));
        let bound = match timeout(BACKEND_START, bound_rx).await {
            Ok(Ok(bound)) => bound,
            Ok(Err(_)) => panic!("legacy_backend {addr} ended before listening: {:?}", child.try_wait()),
            Err(_) => panic!("legacy_backend {addr} not listening within {BACKEND_START:?}"),
        };
        BackendProcess { addr: bound, pid, child, slow_arrived }
    }

    /// SIGKILL (a crash, or a backend without graceful shutdown), and waits until the process
    /// is reaped: its sockets, the listening one included, are closed.
    pub async fn kill(&mut self) {
        match timeout(PROMPT, self.child.kill()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("kill legacy_backend {}: {e}", self.addr),
            Err(_) => panic!("legacy_backend {} not reaped within {PROMPT:?} of SIGKILL", self.addr),
        }
    }

    /// Waits until `n` slow requests in all have reached the backend.
    pub async fn wait_slow_arrived(&self, n: usize) {
        let mut arrived = self.slow_arrived.clone();
        if !matches!(timeout(PROMPT, arrived.wait_for(|&k| k >= n)).await, Ok(Ok(_))) {
            panic!("{n} slow requests did not reach backend {} within {PROMPT:?}", self.addr);
        }
    }

    /// Requests it has received (`GET /count`, asked of the backend itself, not counted).
    pub async fn count(&self) -> u64 {
        let mut client = H1Client::connect(self.addr).await;
        let text = client.get("/count").await.text();
        text.trim().parse().unwrap_or_else(|e| panic!("/count {text:?}: {e}"))
    }
}

/// Reads the backend's stdout: the first line names the bound address, then one line per slow
/// request. Keeps reading to the end, so the backend never writes into a closed pipe.
async fn read_stdout(stdout: ChildStdout, bound: oneshot::Sender<SocketAddr>, slow: watch::Sender<usize>) {
    let mut bound = Some(bound);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(rest) = line.strip_prefix("legacy backend on http://") {
            let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            if let (Some(addr), Some(bound)) = (addr, bound.take()) {
                let _ = bound.send(addr);
            }
        } else if line.starts_with("slow request") {
            slow.send_modify(|n| *n += 1);
        }
    }
}

/// What became of one request of the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx read whole (an echo equal to what was sent), from the backend process `pid`.
    Ok { pid: u32 },
    /// Any other status, read whole.
    Status(u16),
    /// No whole answer: refused, reset, cut mid-body, timed out, or a wrong body.
    Broken(String),
}

/// One request of the load.
#[derive(Debug)]
pub struct Exchange {
    /// When the client started sending it.
    pub started: Instant,
    /// How long until the answer was whole (or the failure known).
    pub took: Duration,
    pub method: &'static str,
    pub answer: Answer,
}

/// Running totals the test waits on; each client bumps them after each exchange.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub bad_gateway: usize,
}

/// [`CLIENTS`] client tasks looping requests through the proxy until stopped.
pub struct Load {
    /// Set to stop: each client finishes the exchange it is in and returns its record.
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    clients: Vec<JoinHandle<Vec<Exchange>>>,
}

impl Load {
    pub fn start(proxy: SocketAddr) -> Load {
        let (stop, stopped) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let progress_tx = Arc::new(progress_tx);
        let clients = (0..CLIENTS)
            .map(|id| tokio::spawn(load_client(proxy, id, stopped.clone(), progress_tx.clone())))
            .collect();
        Load { stop, progress, clients }
    }

    /// Waits until `more` further exchanges have completed, whatever their outcome.
    pub async fn run_for(&self, more: usize) {
        let target = self.progress.borrow().done + more;
        self.wait_until(&format!("{more} more exchanges"), |p| p.done >= target).await;
    }

    pub async fn wait_until(&self, what: &str, pred: impl FnMut(&Progress) -> bool) {
        let mut progress = self.progress.clone();
        if !matches!(timeout(PROMPT, progress.wait_for(pred)).await, Ok(Ok(_))) {
            panic!("load: not {what} within {PROMPT:?} (so far {:?})", *self.progress.borrow());
        }
    }

    /// Exchanges completed so far, whatever their outcome.
    pub fn done(&self) -> usize {
        self.progress.borrow().done
    }

    /// Stops the clients and returns every exchange, in the order they started.
    pub async fn stop(mut self) -> Vec<Exchange> {
        self.stop.send_replace(true);
        let mut all = Vec::new();
        for client in std::mem::take(&mut self.clients) {
            let exchanges = timeout(REQUEST_BOUND + PROMPT, client).await.expect("a client stops in time");
            all.extend(exchanges.expect("a load client"));
        }
        all.sort_by_key(|e| e.started);
        all
    }
}

impl Drop for Load {
    /// A test that fails midway leaves no client running against a daemon being killed.
    fn drop(&mut self) {
        self.clients.iter().for_each(JoinHandle::abort);
    }
}

/// Loops requests until `stop` (see [`timed_request`]).
async fn load_client(
    proxy: SocketAddr,
    id: usize,
    stop: watch::Receiver<bool>,
    progress: Arc<watch::Sender<Progress>>,
) -> Vec<Exchange> {
    let keep_alive = id % 2 == 0;
    let mut exchanges = Vec::new();
    let mut kept: Option<H1Client> = None;
    for n in 0u64.. {
        if *stop.borrow() {
            break;
        }
        let mut client = match kept.take() {
            Some(client) if !client.conn.is_finished() => client,
            _ => H1Client::connect(proxy).await,
        };
        let exchange = timed_request(&mut client, n, id).await;
        progress.send_modify(|p| {
            p.done += 1;
            p.bad_gateway += usize::from(exchange.answer == Answer::Status(502));
        });
        if keep_alive && !matches!(exchange.answer, Answer::Broken(_)) {
            kept = Some(client);
        }
        exchanges.push(exchange);
    }
    exchanges
}

/// Request `n` of client `id`: every third a POST of up to 32 KiB to `/echo`, else `GET /pid`.
async fn timed_request(client: &mut H1Client, n: u64, id: usize) -> Exchange {
    let echo = (n % 3 == 2).then(|| {
        let len = 1 + (n as usize * 7919 + id * 131) % (32 * 1024);
        pattern_chunk(n * 4096 + id as u64, len)
    });
    let method = if echo.is_some() { "POST" } else { "GET" };
    let started = Instant::now();
    let answer = one_request(client, echo).await;
    Exchange { started, took: started.elapsed(), method, answer }
}

/// `count` requests, outside the load, each on a new connection of its own.
pub fn spawn_requests(proxy: SocketAddr, count: usize) -> Vec<JoinHandle<Exchange>> {
    let request = |n| async move { timed_request(&mut H1Client::connect(proxy).await, n, CLIENTS).await };
    (0..count as u64).map(|n| tokio::spawn(request(n))).collect()
}

/// `GET /pid` (`echo` `None`) or `POST /echo`, read whole and checked.
async fn one_request(client: &mut H1Client, echo: Option<Bytes>) -> Answer {
    let req = match &echo {
        Some(body) => client.request("POST", "/echo", full(body.clone())),
        None => client.request("GET", "/pid", empty()),
    };
    let response = match client.send_within(req, REQUEST_BOUND).await {
        Ok(response) => response,
        Err(e) => return Answer::Broken(e),
    };
    let fetched = match fetch(response, REQUEST_BOUND).await {
        Ok(fetched) => fetched,
        Err(e) => return Answer::Broken(e),
    };
    if !fetched.status.is_success() {
        return Answer::Status(fetched.status.as_u16());
    }
    let Some(pid) = fetched.header("x-backend-pid").and_then(|p| p.parse::<u32>().ok()) else {
        return Answer::Broken("no x-backend-pid".into());
    };
    let whole = match &echo {
        Some(sent) => fetched.body == *sent,
        None => fetched.text().trim() == pid.to_string(),
    };
    if whole {
        Answer::Ok { pid }
    } else {
        Answer::Broken(format!("body of {} bytes is not what was expected", fetched.body.len()))
    }
}

/// An admin call: the status and the JSON body.
pub async fn admin(proxy: &Lameduck, method: &str, path: &str) -> (u16, Value) {
    let addr = proxy.admin_addr.expect("[admin] is configured");
    let mut client = H1Client::connect(addr).await;
    let req = client.request(method, path, empty());
    let response =
        client.send_within(req, REQUEST_BOUND).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let fetched = fetch(response, PROMPT).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let body = serde_json::from_slice(&fetched.body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", fetched.text()));
    (fetched.status.as_u16(), body)
}

/// Checks `probe` until it gives `Some`, for at most [`PROMPT`]: first now, then each time
/// the daemon logs that something happened (every change a probe can see is logged).
pub async fn poll<T, F, Fut>(logs: &Logs, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PROMPT;
    loop {
        // Marked before the probe: what happens while it runs wakes the next wait.
        let mark = logs.mark();
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "not {what} within {PROMPT:?}");
        logs.next_event_after(mark, deadline).await;
    }
}

/// Upstream `name` as `GET /upstreams` shows it, once `pred` holds for it.
pub async fn upstream_where(
    proxy: &Lameduck,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    poll(&proxy.logs, what, || async {
        let (status, body) = admin(proxy, "GET", "/upstreams").await;
        assert_eq!(status, 200, "GET /upstreams: {body}");
        let list = body["upstreams"].as_array().unwrap_or_else(|| panic!("no upstreams list: {body}"));
        let found = list.iter().find(|u| u["upstream"] == name);
        let upstream = found.unwrap_or_else(|| panic!("no upstream {name:?}: {body}")).clone();
        pred(&upstream).then_some(upstream)
    })
    .await
}

/// `value` as a number, or 0.
pub fn num(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// A count of the load's exchanges, printed for the record.
pub struct Tally<'a> {
    pub exchanges: &'a [Exchange],
}

impl Tally<'_> {
    /// Exchanges that got no whole 2xx.
    pub fn failures(&self) -> Vec<&Exchange> {
        self.exchanges.iter().filter(|e| !matches!(e.answer, Answer::Ok { .. })).collect()
    }

    /// `total N (GET g, POST p), ok o, non-2xx s, cut/incomplete c` and the first failures.
    pub fn line(&self) -> String {
        let count = |f: &dyn Fn(&Exchange) -> bool| self.exchanges.iter().filter(|e| f(e)).count();
        let failures = self.failures();
        format!(
            "total {} (GET {}, POST {}), ok {}, non-2xx {}, cut/incomplete {}; first failures: {:?}",
            self.exchanges.len(),
            count(&|e| e.method == "GET"),
            count(&|e| e.method == "POST"),
            count(&|e| matches!(e.answer, Answer::Ok { .. })),
            count(&|e| matches!(e.answer, Answer::Status(_))),
            count(&|e| matches!(e.answer, Answer::Broken(_))),
            failures.iter().take(5).map(|e| (e.method, &e.answer)).collect::<Vec<_>>(),
        )
    }
}
