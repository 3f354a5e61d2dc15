//! Backend deploys under load: pause, kill, restart, resume (real backend processes).
//!
//! Every test here runs the demo backend (`examples/legacy_backend.rs`) as real processes
//! ([`BackendProcess`]) behind the real daemon, keeps it under load ([`Load`]: client tasks
//! looping GETs of `/pid` and POSTs to `/echo`, each echo checked byte for byte), and does to
//! the backend what a deploy does: SIGKILL, then a new process on the same port — around a
//! pause, with `connect_retry`, with neither, and one address of two at a time. Every
//! exchange is recorded (when it started, which backend process answered — every answer
//! carries `x-backend-pid` — or what went wrong), and the assertions read that record by when
//! each request started relative to the deploy's steps. Each test prints its counts.
//!
//! Waits are events: the backend's first stdout line (its port accepts), its "slow request"
//! line (it has the request), the admin API's answers and state, the load's progress; each is
//! bounded. The backend binary is built by `cargo test` with the other examples; `cargo test
//! --test it` alone builds none, hence the check in [`backend_binary`].

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

use crate::harness::{
    binary, config, empty, fetch, full, ms, pattern_chunk, H1Client, Lameduck, DRAIN_30S, PROMPT,
};

/// Load clients running at once: even ones keep one connection alive, odd ones open a new
/// connection per request.
const CLIENTS: usize = 6;
/// The longest one load request may take, held ones included.
const REQUEST_BOUND: Duration = Duration::from_secs(10);
/// How long a backend process may take to listen (a debug build on a busy machine).
const BACKEND_START: Duration = Duration::from_secs(10);
/// How often a condition on the admin API or a backend's counter is checked.
const POLL: Duration = Duration::from_millis(10);

/// `target/debug/examples/legacy_backend`, next to the daemon's binary. Panics saying what to
/// run if it is missing or older than its source (`cargo test --test it` builds no example,
/// and a nested cargo would rebuild dependencies under another environment).
fn backend_binary() -> PathBuf {
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
struct BackendProcess {
    /// The bound address (a port asked for as 0 is the real one here).
    addr: SocketAddr,
    pid: u32,
    child: Child,
    /// How many "slow request" lines it has printed: bumped by the stdout reader, whose
    /// sender drops when the process closes stdout.
    slow_arrived: watch::Receiver<usize>,
}

impl BackendProcess {
    /// A backend on a free port.
    async fn start() -> BackendProcess {
        BackendProcess::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    /// A backend on `addr`; returns once it prints its address, which it does after binding,
    /// so its port accepts connections from then on.
    async fn start_on(addr: SocketAddr) -> BackendProcess {
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
    async fn kill(&mut self) {
        match timeout(PROMPT, self.child.kill()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("kill legacy_backend {}: {e}", self.addr),
            Err(_) => panic!("legacy_backend {} not reaped within {PROMPT:?} of SIGKILL", self.addr),
        }
    }

    /// Waits until `n` slow requests in all have reached the backend.
    async fn wait_slow_arrived(&self, n: usize) {
        let mut arrived = self.slow_arrived.clone();
        if !matches!(timeout(PROMPT, arrived.wait_for(|&k| k >= n)).await, Ok(Ok(_))) {
            panic!("{n} slow requests did not reach backend {} within {PROMPT:?}", self.addr);
        }
    }

    /// Requests it has received (`GET /count`, asked of the backend itself, not counted).
    async fn count(&self) -> u64 {
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
enum Answer {
    /// A 2xx read whole (an echo equal to what was sent), from the backend process `pid`.
    Ok { pid: u32 },
    /// Any other status, read whole.
    Status(u16),
    /// No whole answer: refused, reset, cut mid-body, timed out, or a wrong body.
    Broken(String),
}

/// One request of the load.
#[derive(Debug)]
struct Exchange {
    /// When the client started sending it.
    started: Instant,
    /// How long until the answer was whole (or the failure known).
    took: Duration,
    method: &'static str,
    answer: Answer,
}

/// Running totals the test waits on; each client bumps them after each exchange.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    done: usize,
    bad_gateway: usize,
}

/// [`CLIENTS`] client tasks looping requests through the proxy until stopped.
struct Load {
    /// Set to stop: each client finishes the exchange it is in and returns its record.
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    clients: Vec<JoinHandle<Vec<Exchange>>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let (stop, stopped) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let progress_tx = Arc::new(progress_tx);
        let clients = (0..CLIENTS)
            .map(|id| tokio::spawn(load_client(proxy, id, stopped.clone(), progress_tx.clone())))
            .collect();
        Load { stop, progress, clients }
    }

    /// Waits until `more` further exchanges have completed, whatever their outcome.
    async fn run_for(&self, more: usize) {
        let target = self.progress.borrow().done + more;
        self.wait_until(&format!("{more} more exchanges"), |p| p.done >= target).await;
    }

    async fn wait_until(&self, what: &str, pred: impl FnMut(&Progress) -> bool) {
        let mut progress = self.progress.clone();
        if !matches!(timeout(PROMPT, progress.wait_for(pred)).await, Ok(Ok(_))) {
            panic!("load: not {what} within {PROMPT:?} (so far {:?})", *self.progress.borrow());
        }
    }

    /// Stops the clients and returns every exchange, in the order they started.
    async fn stop(mut self) -> Vec<Exchange> {
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
fn spawn_requests(proxy: SocketAddr, count: usize) -> Vec<JoinHandle<Exchange>> {
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

/// One listener, upstream `app` over `addrs` (plus `upstream_extra`), and the admin API.
fn deploy_config(addrs: &[SocketAddr], upstream_extra: &str) -> String {
    config(addrs, upstream_extra, &format!("{DRAIN_30S}\n[admin]\naddr = \"127.0.0.1:0\"\n"))
}

/// An admin call: the status and the JSON body.
async fn admin(proxy: &Lameduck, method: &str, path: &str) -> (u16, Value) {
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

/// Checks `probe` every [`POLL`] until it gives `Some`, for at most [`PROMPT`].
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PROMPT;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "not {what} within {PROMPT:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// `app` as `GET /upstreams` shows it, once `pred` holds for it.
async fn upstream_once(proxy: &Lameduck, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll(what, || async {
        let (status, body) = admin(proxy, "GET", "/upstreams").await;
        assert_eq!(status, 200, "GET /upstreams: {body}");
        let app = body["upstreams"][0].clone();
        assert_eq!(app["upstream"], "app", "{body}");
        pred(&app).then_some(app)
    })
    .await
}

/// `value` as a number, or 0.
fn num(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// A count of the load's exchanges, printed for the record.
struct Tally<'a> {
    exchanges: &'a [Exchange],
}

impl Tally<'_> {
    /// Exchanges that got no whole 2xx.
    fn failures(&self) -> Vec<&Exchange> {
        self.exchanges.iter().filter(|e| !matches!(e.answer, Answer::Ok { .. })).collect()
    }

    /// `total N (GET g, POST p), ok o, non-2xx s, cut/incomplete c` and the first failures.
    fn line(&self) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_requests_while_the_backend_restarts_under_load() {
    const SLOW: usize = 3;
    const SLOW_MS: u64 = 800;
    let mut old = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[old.addr], "")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;

    // Slow requests in flight (the backend has them) when the pause comes.
    let slow_sent = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let client = H1Client::connect(proxy.addr).await;
        let req = client.request("GET", &format!("/slow?ms={SLOW_MS}"), empty());
        slow.push(client.spawn_fetch(req, PROMPT));
    }
    old.wait_slow_arrived(SLOW).await;

    let pause_called = Instant::now();
    let (status, paused) = admin(&proxy, "POST", "/upstreams/app/pause").await;
    let pause_answered = Instant::now();
    assert_eq!(status, 200, "pause: {paused}");
    assert_eq!((&paused["paused"], &paused["in_flight"]), (&Value::from(true), &Value::from(0)), "{paused}");
    // The answer waited for the slow requests: it cannot have come before they could end.
    let since_slow = pause_answered - slow_sent;
    assert!(since_slow >= ms(SLOW_MS), "pause answered {since_slow:?} after {SLOW_MS} ms requests were sent");
    let waited = num(&paused["waited_ms"]);
    let must_wait = (slow_sent + ms(SLOW_MS)).saturating_duration_since(pause_called).as_millis() as u64;
    let round_trip = (pause_answered - pause_called).as_millis() as u64;
    assert!(
        waited + 200 >= must_wait && waited <= round_trip,
        "waited_ms {waited}: the slow requests had {must_wait} ms to go, the call took {round_trip} ms"
    );
    for slow in slow {
        let fetched = slow.await.expect("slow request task").expect("slow request answered whole");
        assert_eq!(fetched.status, 200, "{}", fetched.text());
        assert_eq!(fetched.header("x-backend-pid"), Some(old.pid.to_string().as_str()));
    }

    old.kill().await;
    // Every load client is now waiting on a held request.
    let during =
        upstream_once(&proxy, "every load client held", |app| num(&app["held"]) >= CLIENTS as u64).await;
    assert_eq!(
        (&during["state"], &during["addrs"][0]["state"]),
        (&"paused".into(), &"paused".into()),
        "{during}"
    );
    let new = BackendProcess::start_on(old.addr).await;
    let resume_called = Instant::now();
    let (status, resumed) = admin(&proxy, "POST", "/upstreams/app/resume").await;
    assert_eq!(status, 200, "resume: {resumed}");
    assert_eq!(resumed["paused"], false, "{resumed}");
    load.run_for(100).await;
    let exchanges = load.stop().await;

    let tally = Tally { exchanges: &exchanges };
    // Sent while paused: started after the pause call and before the resume. The old backend
    // may have answered those that slipped in before the pause took effect (the call waited
    // for them). Held: sent before the resume, answered by the new backend — they waited.
    let paused_window =
        || exchanges.iter().filter(|e| e.started >= pause_called && e.started < resume_called);
    let sent_while_paused = paused_window().count();
    let held: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| e.started < resume_called && e.answer == Answer::Ok { pid: new.pid })
        .collect();
    let longest_held = held.iter().map(|e| e.took).max();
    let report = format!(
        "{}; sent while paused {sent_while_paused}, held (answered by the new backend) {}, longest held \
         {longest_held:?}, held seen in GET /upstreams {}, pause waited_ms {waited}, old pid {}, new pid {}",
        tally.line(),
        held.len(),
        during["held"],
        old.pid,
        new.pid
    );
    eprintln!("pause_holds_requests_while_the_backend_restarts_under_load: {report}");
    assert!(tally.failures().is_empty(), "{report}");
    // Each client had one request held when GET /upstreams showed them all held.
    assert!(held.len() >= CLIENTS, "{report}");
    let late_old: Vec<_> = paused_window()
        .filter(|e| e.answer == Answer::Ok { pid: old.pid } && e.started >= pause_answered)
        .collect();
    assert!(late_old.is_empty(), "sent after the pause answered, answered by the old backend: {late_old:?}");
    let after: Vec<_> = exchanges.iter().filter(|e| e.started >= pause_answered).collect();
    let wrong: Vec<_> = after.iter().filter(|e| e.answer != Answer::Ok { pid: new.pid }).collect();
    assert!(
        wrong.is_empty(),
        "sent after the pause answered, not answered by the new backend: {wrong:?}; {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retry_rides_out_a_backend_restart_without_a_pause() {
    const LATE: usize = 4;
    let mut old = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[old.addr], "connect_retry = \"5s\"")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;

    let kill_sent = Instant::now();
    old.kill().await;
    let killed = Instant::now();
    // Requests that surely arrive after the kill (most load clients are held by now, so they
    // send their next request only after the restart); GETs and a POST, two of each kind.
    let late = spawn_requests(proxy.addr, LATE);
    // The proxy finds the port refusing and keeps every request retrying; the backend stays
    // down until its connect errors span half a second.
    let first = upstream_once(&proxy, "a connect error", |app| {
        !app["addrs"][0]["last_connect_error"].is_null() && num(&app["held"]) > 0
    })
    .await;
    let first_error = &first["addrs"][0]["last_connect_error"];
    assert!(first_error["error"].as_str().is_some_and(|e| e.contains("refused")), "{first}");
    let first_at = num(&first_error["at_unix_ms"]);
    let down = upstream_once(&proxy, "every request held, retrying for 500 ms", |app| {
        num(&app["held"]) >= (CLIENTS + LATE) as u64
            && num(&app["addrs"][0]["last_connect_error"]["at_unix_ms"]) >= first_at + 500
    })
    .await;
    let restarting = Instant::now();
    let new = BackendProcess::start_on(old.addr).await;
    let downtime = killed.elapsed();
    let mut late_exchanges = Vec::new();
    for request in late {
        late_exchanges
            .push(timeout(REQUEST_BOUND + PROMPT, request).await.expect("in time").expect("request"));
    }
    load.run_for(100).await;
    let mut exchanges = load.stop().await;
    exchanges.extend(late_exchanges);
    exchanges.sort_by_key(|e| e.started);

    let tally = Tally { exchanges: &exchanges };
    let after_kill: Vec<&Exchange> = exchanges.iter().filter(|e| e.started >= killed).collect();
    let in_flight_at_kill =
        exchanges.iter().filter(|e| e.started < killed && e.started + e.took >= kill_sent);
    let failed_at_kill = in_flight_at_kill.filter(|e| !matches!(e.answer, Answer::Ok { .. })).count();
    // Held across the restart: sent after the kill and before the new backend started (so
    // answered only once it ran).
    let held: Vec<_> = after_kill.iter().filter(|e| e.started < restarting).collect();
    let longest = held.iter().map(|e| e.took).max();
    let report = format!(
        "{}; sent after the kill {}, held across the restart {}, longest held {longest:?}, failed of those in \
         flight at the kill {failed_at_kill}, backend down {downtime:?}, held seen in GET /upstreams {}",
        tally.line(),
        after_kill.len(),
        held.len(),
        down["held"],
    );
    eprintln!("connect_retry_rides_out_a_backend_restart_without_a_pause: {report}");
    let wrong: Vec<_> = after_kill.iter().filter(|e| e.answer != Answer::Ok { pid: new.pid }).collect();
    assert!(wrong.is_empty(), "sent after the kill, not answered by the new backend: {wrong:?}; {report}");
    assert!(held.len() >= LATE, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_connect_retry_requests_get_502_while_the_backend_is_down() {
    let mut old = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[old.addr], "")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;

    old.kill().await;
    let killed = Instant::now();
    load.wait_until("20 answers 502", |p| p.bad_gateway >= 20).await;
    let new = BackendProcess::start_on(old.addr).await;
    let restarted = Instant::now();
    load.run_for(100).await;
    let exchanges = load.stop().await;

    let tally = Tally { exchanges: &exchanges };
    let down: Vec<&Exchange> =
        exchanges.iter().filter(|e| e.started >= killed && e.started < restarted).collect();
    let bad_gateway: Vec<&&Exchange> = down.iter().filter(|e| e.answer == Answer::Status(502)).collect();
    let slowest_502 = bad_gateway.iter().map(|e| e.took).max();
    let report = format!(
        "{}; sent while down {}, 502 of those {}, slowest 502 {slowest_502:?}",
        tally.line(),
        down.len(),
        bad_gateway.len(),
    );
    eprintln!("without_connect_retry_requests_get_502_while_the_backend_is_down: {report}");
    assert!(!bad_gateway.is_empty(), "{report}");
    // Refused at once, not retried: a 502 comes as fast as a round trip.
    assert!(slowest_502.is_some_and(|t| t < ms(1000)), "{report}");
    let other: Vec<_> =
        down.iter().filter(|e| !matches!(e.answer, Answer::Ok { .. } | Answer::Status(502))).collect();
    assert!(other.is_empty(), "sent while down, neither 2xx nor 502: {other:?}; {report}");
    let after: Vec<_> = exchanges.iter().filter(|e| e.started >= restarted).collect();
    assert!(!after.is_empty(), "{report}");
    let wrong: Vec<_> = after.iter().filter(|e| e.answer != Answer::Ok { pid: new.pid }).collect();
    assert!(wrong.is_empty(), "sent after the restart, not answered by the new backend: {wrong:?}; {report}");
}

/// When one address of a two-address upstream was out of rotation.
#[derive(Debug)]
struct AddrDeploy {
    /// When the pause call answered.
    paused: Instant,
    /// When the resume call was sent.
    resumed: Instant,
    /// Load requests completed while it was paused.
    served_meanwhile: usize,
}

/// Pauses `backend`'s address under load, checks it receives nothing, restarts it and
/// resumes it, then waits until the new process has its share again.
async fn deploy_one_address(proxy: &Lameduck, load: &Load, backend: &mut BackendProcess) -> AddrDeploy {
    let addr = backend.addr;
    let done_before = load.progress.borrow().done;
    let (status, body) = admin(proxy, "POST", &format!("/upstreams/app/pause?addr={addr}")).await;
    let paused = Instant::now();
    assert_eq!(status, 200, "pause {addr}: {body}");
    assert_eq!(body["addr"], addr.to_string(), "{body}");
    assert_eq!((&body["paused"], &body["in_flight"]), (&Value::from(true), &Value::from(0)), "{body}");
    let count = backend.count().await;
    load.run_for(100).await;
    assert_eq!(backend.count().await, count, "the paused backend {addr} received requests");

    backend.kill().await;
    load.run_for(50).await; // the other address serves everything meanwhile
    *backend = BackendProcess::start_on(addr).await;
    let resumed = Instant::now();
    let (status, body) = admin(proxy, "POST", &format!("/upstreams/app/resume?addr={addr}")).await;
    assert_eq!(status, 200, "resume {addr}: {body}");
    assert_eq!(body["paused"], false, "{body}");
    let served_meanwhile = load.progress.borrow().done - done_before;
    poll("the resumed backend back in rotation", || async { (backend.count().await >= 20).then_some(()) })
        .await;
    AddrDeploy { paused, resumed, served_meanwhile }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_one_address_moves_its_traffic_to_the_other_while_it_restarts() {
    let mut first = BackendProcess::start().await;
    let mut second = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[first.addr, second.addr], "")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;
    let (first_pid, second_pid) = (first.pid, second.pid);

    let first_deploy = deploy_one_address(&proxy, &load, &mut first).await;
    let second_deploy = deploy_one_address(&proxy, &load, &mut second).await;
    load.run_for(100).await;
    let exchanges = load.stop().await;

    let tally = Tally { exchanges: &exchanges };
    let answered_by = |pid: u32| exchanges.iter().filter(|e| e.answer == Answer::Ok { pid }).count();
    let report = format!(
        "{}; answered by first {} then {}, second {} then {}; served while first paused {}, while second paused {}",
        tally.line(),
        answered_by(first_pid),
        answered_by(first.pid),
        answered_by(second_pid),
        answered_by(second.pid),
        first_deploy.served_meanwhile,
        second_deploy.served_meanwhile,
    );
    eprintln!("pausing_one_address_moves_its_traffic_to_the_other_while_it_restarts: {report}");
    assert!(tally.failures().is_empty(), "{report}");
    // While an address was paused, only the other one answered: requests sent after the pause
    // answered and done before the resume was sent.
    for (deploy, other_pid) in [(&first_deploy, second_pid), (&second_deploy, first.pid)] {
        let window: Vec<&Exchange> = exchanges
            .iter()
            .filter(|e| e.started >= deploy.paused && e.started + e.took < deploy.resumed)
            .collect();
        assert!(!window.is_empty(), "{deploy:?}: no request while paused; {report}");
        let wrong: Vec<_> = window.iter().filter(|e| e.answer != Answer::Ok { pid: other_pid }).collect();
        assert!(wrong.is_empty(), "{deploy:?}: answered by the paused address: {wrong:?}; {report}");
    }
    for pid in [first_pid, first.pid, second_pid, second.pid] {
        assert!(answered_by(pid) > 0, "backend process {pid} answered nothing; {report}");
    }
}
