//! SIGHUP: the config, certificates and admin token reloaded *inside the running process*
//! (the binary upgrade, SIGUSR2, is `systemd/reload.rs`).
//!
//! Each test starts the daemon, rewrites what an operator would (`proxy.toml`, a certificate,
//! the token file), sends SIGHUP and waits for the outcome line — `reload ok` or `reload
//! failed; nothing changed`, looked for after a mark taken before the signal — and only then
//! looks at what changed: which backend answers (each backend's body names it), what is
//! bound, which certificate a handshake sees, what systemd was told. Every reload is also
//! checked to have stayed in place: the first process still runs, and no second `ready`, no
//! `handed over` line appeared.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::harness::*;
use crate::systemd::peer::{exited, Notified, NotifySocket};
use crate::websocket::peers::{ws_client, Behaviour, WsBackend};

const RELOAD_OK: &str = "reload ok";
const RELOAD_FAILED: &str = "reload failed";
/// What the old process of a binary upgrade logs; a reload in place never does.
const HANDED_OVER: &str = "handed over to the new process; draining";
const ADMIN: &str = "[admin]\naddr = \"127.0.0.1:0\"\n";

// ---- configs: small pieces, joined ----

/// `[[listen]]` on `addr`. The harness's configs listen on `127.0.0.1:0`; a reloaded config
/// that names the same (configured) address keeps that listener.
fn listen(addr: &str) -> String {
    format!("[[listen]]\naddr = \"{addr}\"\n")
}

/// `[upstream.NAME]` over `addr`, then `extra` lines.
fn upstream(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[upstream.{name}]\naddrs = [\"{addr}\"]\n{extra}")
}

/// A route for `prefix` (`/` is every path) to `upstream`.
fn route(prefix: &str, upstream: &str) -> String {
    format!("[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n")
}

/// The pieces, in order, one blank line apart (top-level keys such as `workers` come first).
fn toml(pieces: &[&str]) -> String {
    pieces.join("\n")
}

/// One listener on `127.0.0.1:0`, upstream `name` over `addr`, everything routed to it.
fn only(name: &str, addr: SocketAddr, tail: &str) -> String {
    toml(&[&listen("127.0.0.1:0"), &upstream(name, addr, ""), &route("/", name), tail])
}

// ---- reloading ----

/// Sends SIGHUP by `signal` and returns the reload's outcome line; checks that the reload
/// stayed in the process (`proxy`'s own, still running; one `ready` line; no handover).
async fn reload_by(proxy: &Lameduck, signal: impl FnOnce()) -> Value {
    let mark = proxy.logs.mark();
    signal();
    let outcome = |l: &Value| matches!(message(l), RELOAD_OK | RELOAD_FAILED);
    let line = proxy.wait_for_log_after(mark, outcome, PROMPT).await;
    let lines = proxy.logs.lines();
    let count = |msg: &str| lines.iter().filter(|l| message(l) == msg).count();
    assert_eq!(count("ready"), 1, "a reload in place starts no new process:\n{}", proxy.logs.dump());
    assert_eq!(count(HANDED_OVER), 0, "a reload in place hands nothing over:\n{}", proxy.logs.dump());
    assert!(!exited(proxy.pid()), "the process serves on after the reload");
    line
}

/// Deploys a new config: writes `config` over the file the daemon was started with.
fn rewrite(proxy: &Lameduck, config: &str) {
    std::fs::write(proxy.config_dir().join("proxy.toml"), config).expect("rewrite proxy.toml");
}

/// Writes `config` over the daemon's `proxy.toml` and sends SIGHUP; the outcome line.
async fn reload_with(proxy: &Lameduck, config: &str) -> Value {
    rewrite(proxy, config);
    reload_by(proxy, || proxy.sighup()).await
}

/// Panics (with the line) unless `line` is `reload ok`.
fn assert_ok(line: &Value) {
    assert_eq!(message(line), RELOAD_OK, "the reload failed: {line}");
}

/// The `error` of a `reload failed` line; panics if the reload did not fail.
fn failure(line: &Value) -> String {
    assert_eq!(message(line), RELOAD_FAILED, "the reload should have failed: {line}");
    assert_eq!(line["level"], "ERROR", "{line}");
    field_str(line, "error").unwrap_or_else(|| panic!("no error field: {line}"))
}

/// A field of a log line as text ("" when empty); panics if it is missing.
fn field(line: &Value, key: &str) -> String {
    field_str(line, key).unwrap_or_else(|| panic!("no {key} in {line}"))
}

// ---- clients and backends ----

/// `N` distinct ports that were free a moment ago (bound together to `127.0.0.1:0`, then
/// released), for listeners the config must name before the daemon binds them.
fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held = [(); N].map(|()| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    held.each_ref().map(|l| l.local_addr().expect("addr"))
}

/// Whether a connect to `addr` is refused (as opposed to accepted).
async fn refused(addr: SocketAddr) -> bool {
    match timeout(PROMPT, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => false,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Err(_) => panic!("connect {addr}: neither accepted nor refused within {PROMPT:?}"),
    }
}

/// An admin call with `Authorization: Bearer <token>`.
async fn admin_with_token(proxy: &Lameduck, method: &str, path: &str, token: &str) -> RawResponse {
    let admin = proxy.admin_addr.expect("[admin] is configured");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    raw_request(admin, request.as_bytes()).await
}

/// Upstream `name` as `GET /upstreams` shows it, once it is paused and holds `n` requests.
/// Panics with the last entry seen if that does not happen within [`PROMPT`].
async fn paused_holding(proxy: &Lameduck, name: &str, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        // Looked at again each time the daemon logs something (a held request is logged).
        let mark = proxy.logs.mark();
        let (status, body) = admin(proxy, "GET", "/upstreams").await;
        assert_eq!(status, 200, "GET /upstreams: {body}");
        let list = body["upstreams"].as_array().unwrap_or_else(|| panic!("no upstreams list: {body}"));
        let entry = list.iter().find(|u| u["upstream"] == name);
        let entry = entry.unwrap_or_else(|| panic!("no upstream {name:?}: {body}")).clone();
        if entry["state"] == "paused" && num(&entry["held"]) == n {
            return entry;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "{name} not paused with {n} held within {PROMPT:?}; last seen: {entry}");
        proxy.logs.next_event_after(mark, deadline).await;
    }
}

/// Sends `text` on the tunnel and returns what comes back, within [`PROMPT`].
async fn echo(ws: &mut WebSocketStream<TcpStream>, text: &str) -> Message {
    ws.send(Message::Text(text.into())).await.expect("send");
    let echoed = timeout(PROMPT, ws.next()).await.expect("an answer in time");
    echoed.expect("the tunnel is open").expect("a message")
}

// ---- TLS: a private CA that issues `localhost` certificates into files ----

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    client: Arc<rustls::ClientConfig>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "lameduck reload test ca");
        let ca = params.self_signed(&key).expect("self-signed ca");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("ca as a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ca { issuer: Issuer::new(params, key), client: Arc::new(client) }
    }

    /// A new certificate for `localhost` (and its key) written over `cert` and `key`.
    fn issue(&self, cert: &Path, key: &Path) -> CertificateDer<'static> {
        let leaf_key = KeyPair::generate().expect("leaf key");
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        let leaf = params.signed_by(&leaf_key, &self.issuer).expect("signed leaf");
        std::fs::write(cert, leaf.pem()).expect("write cert");
        std::fs::write(key, leaf_key.serialize_pem()).expect("write key");
        leaf.der().clone()
    }

    /// A TLS connection to `addr` for `localhost`, verified against this CA.
    async fn connect(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").expect("a DNS name");
            TlsConnector::from(self.client.clone()).connect(name, tcp).await
        };
        match timeout(PROMPT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => panic!("TLS handshake with {addr}: {e}"),
            Err(_) => panic!("TLS handshake with {addr}: not done within {PROMPT:?}"),
        }
    }
}

/// The certificate the server presented on `tls`.
fn served_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0].clone()
}

/// HTTP/1.1 over an open TLS connection.
async fn h1_over(tls: TlsStream<TcpStream>) -> http1::SendRequest<Body> {
    let handshake = timeout(PROMPT, http1::handshake(TokioIo::new(tls))).await;
    let (send, conn) = handshake.expect("http1 handshake in time").expect("http1 handshake");
    tokio::spawn(conn);
    send
}

async fn get_over(send: &mut http1::SendRequest<Body>) -> Fetched {
    let req = Request::get("/").header("host", "localhost").body(empty()).expect("request");
    let response = timeout(PROMPT, send.send_request(req)).await;
    let response = response.expect("a response in time").expect("a response");
    fetch(response, PROMPT).await.expect("whole body")
}

// ---- PID 1 ----

/// Runs the binary as PID 1 of a new PID namespace; `--kill-child`: if the test kills
/// `unshare` (it fails midway), the namespace goes with it.
const UNSHARE: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

fn can_unshare() -> bool {
    match std::process::Command::new(UNSHARE[0]).args(&UNSHARE[1..]).arg("true").output() {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            let why = String::from_utf8_lossy(&output.stderr);
            eprintln!("skipped: `unshare --pid` fails here: {}", why.trim());
            false
        }
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            false
        }
    }
}

/// The one child of `parent` (lameduck under `unshare`), from `/proc`.
fn only_child(parent: i32) -> i32 {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) S ppid …": the parent follows the state, after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    match children.as_slice() {
        [pid] => *pid,
        other => panic!("{parent} has children {other:?}, not one lameduck"),
    }
}

/// Sends `signal` to `pid`, which need not be the test's child.
fn send_signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) on the child of a live `unshare` that the test spawned and has not
    // reaped; while `unshare` waits for it, its pid cannot be recycled.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` counts it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

// ---- the tests ----

#[tokio::test]
async fn reload_moves_open_h1_and_h2c_connections_to_new_routes_and_finishes_the_request_in_flight() {
    let (release, old) = Backend::holding("/held", "old").await;
    let new = Backend::named("new").await;
    let proxy = Lameduck::start(&only("app", old.addr, DRAIN_30S)).await;
    let mut h1 = H1Client::connect(proxy.addr).await;
    let h2 = H2Client::connect(proxy.addr).await;
    assert_eq!(h1.get("/").await.text(), "old");
    assert_eq!(h2.get("/").await.text(), "old");
    let in_flight = spawn_get(proxy.addr, "/held").await;
    while old.arrived().await.uri.path() != "/held" {}

    // `app` (with the request in flight on it) goes, `next` takes every route.
    let line = reload_with(&proxy, &only("next", new.addr, DRAIN_30S)).await;
    assert_ok(&line);
    let changes = ["upstreams.added", "upstreams.removed", "upstreams.changed"].map(|k| field(&line, k));
    assert_eq!(changes, ["next", "app", ""], "{line}");
    assert_eq!(h1.get("/").await.text(), "new", "on the HTTP/1.1 connection opened before the reload");
    assert_eq!(h2.get("/").await.text(), "new", "on the h2c connection opened before the reload");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new", "on a new connection");

    assert!(!in_flight.is_finished(), "the request in flight was answered before its backend did");
    release.open();
    let done = joined(in_flight).await;
    assert_eq!((done.status.as_u16(), done.text().as_str()), (200, "old"), "finished on its own upstream");
}

#[tokio::test]
async fn reload_that_fails_changes_nothing_config_error_taken_port_missing_certificate() {
    let old = Backend::named("old").await;
    let new = Backend::named("new").await;
    let proxy = Lameduck::start(&only("app", old.addr, DRAIN_30S)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let [free, tls_addr] = free_addrs();
    let missing = proxy.config_dir().join("missing.pem");
    // Every candidate also routes to `new`: had any part of it applied, `new` would answer.
    let good = only("app", new.addr, DRAIN_30S);

    // 1. A semantic config error, pointed at by line and column.
    let typo = good.replace("upstream = \"app\"", "upstream = \"legcy\"");
    let line_no = typo.lines().position(|l| l.contains("legcy")).expect("the typo") + 1;
    let error = failure(&reload_with(&proxy, &typo).await);
    let at = format!("proxy.toml:{line_no}:12");
    assert!(error.contains(&at) && error.contains("legcy"), "want {at} and the name in: {error}");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "old");

    // 2. Two new listeners, the second on a port that is taken: neither is kept.
    let two_more = format!("{}\n{}\n{good}", listen(&free.to_string()), listen(&taken_addr.to_string()));
    let error = failure(&reload_with(&proxy, &two_more).await);
    assert!(error.contains(&taken_addr.to_string()), "the error names {taken_addr}: {error}");
    assert!(refused(free).await, "{free}, bound before the failure, is closed again");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "old");

    // 3. A new TLS listener whose certificate file does not exist.
    let tls = format!("tls = {{ cert = \"{0}\", key = \"{0}\" }}\n", missing.display());
    let with_tls = format!("{}{tls}\n{good}", listen(&tls_addr.to_string()));
    let error = failure(&reload_with(&proxy, &with_tls).await);
    assert!(error.contains(&missing.display().to_string()), "the error names the file: {error}");
    assert!(refused(tls_addr).await, "{tls_addr} is not bound");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "old");

    // After three failures a good config still applies.
    assert_ok(&reload_with(&proxy, &good).await);
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new");
    drop(taken);
}

#[tokio::test]
async fn reload_keeps_held_requests_of_kept_upstreams_until_resume_and_503s_those_of_a_removed_one() {
    let (kept, changed, gone) =
        (Backend::named("kept").await, Backend::named("changed").await, Backend::named("gone").await);
    let routes = [route("/changed", "changed"), route("/gone", "gone"), route("/", "kept")];
    let before = toml(&[
        &listen("127.0.0.1:0"),
        &upstream("kept", kept.addr, ""),
        &upstream("changed", changed.addr, ""),
        &upstream("gone", gone.addr, ""),
        &routes.concat(),
        DRAIN_30S,
        ADMIN,
    ]);
    let proxy = Lameduck::start(&before).await;
    let mut held = Vec::new();
    for (name, path) in [("kept", "/k"), ("changed", "/changed"), ("gone", "/gone")] {
        let (status, body) = admin(&proxy, "POST", &format!("/upstreams/{name}/pause")).await;
        assert_eq!(status, 200, "pause {name}: {body}");
        held.push(spawn_get(proxy.addr, path).await);
        paused_holding(&proxy, name, 1).await;
    }
    let [on_kept, on_changed, on_gone] = <[_; 3]>::try_from(held).expect("three requests");

    // `kept` as it was, `changed` with another timeout, `gone` gone.
    let after = toml(&[
        &listen("127.0.0.1:0"),
        &upstream("kept", kept.addr, ""),
        &upstream("changed", changed.addr, "timeout = \"59s\"\n"),
        &route("/changed", "changed"),
        &route("/", "kept"),
        DRAIN_30S,
        ADMIN,
    ]);
    let line = reload_with(&proxy, &after).await;
    assert_ok(&line);
    let changes = ["upstreams.added", "upstreams.removed", "upstreams.changed"].map(|k| field(&line, k));
    assert_eq!(changes, ["", "gone", "changed"], "{line}");
    assert_eq!(joined(on_gone).await.status, 503, "a request held by a removed upstream");

    // The kept ones are still paused, each still holding its request; nothing went out.
    paused_holding(&proxy, "kept", 1).await;
    let changed_now = upstream_where(&proxy, "changed", "changed paused", |u| u["state"] == "paused").await;
    assert!(!on_kept.is_finished() && !on_changed.is_finished(), "a held request was answered");
    assert_eq!(kept.requests().len() + changed.requests().len() + gone.requests().len(), 0);
    for (name, task) in [("kept", on_kept), ("changed", on_changed)] {
        let (status, body) = admin(&proxy, "POST", &format!("/upstreams/{name}/resume")).await;
        assert_eq!(status, 200, "resume {name}: {body}");
        let done = joined(task).await;
        assert_eq!((done.status.as_u16(), done.text().as_str()), (200, name), "held by {name}, resumed");
    }
    // Checked last, so that everything above is checked either way: while it was paused,
    // `GET /upstreams` counted the request the changed upstream held (through the upstream it
    // replaced), as it does for the kept one.
    assert_eq!(changed_now["held"], 1, "GET /upstreams showed the changed upstream as {changed_now}");
}

#[tokio::test]
async fn reload_binds_an_added_listener_and_closes_a_removed_one_whose_open_connection_winds_down() {
    let backend = Backend::named("app").await;
    let [stays, goes, comes] = free_addrs();
    let listeners = |addrs: [SocketAddr; 2]| addrs.map(|a| listen(&a.to_string())).concat();
    let with =
        |addrs| toml(&[&listeners(addrs), &upstream("app", backend.addr, ""), &route("/", "app"), DRAIN_30S]);
    let proxy = Lameduck::start(&with([stays, goes])).await;
    assert_eq!(proxy.addrs, [stays, goes]);
    let mut open_on_goes = H1Client::connect(goes).await;
    assert_eq!(open_on_goes.get("/").await.text(), "app");

    let line = reload_with(&proxy, &with([stays, comes])).await;
    assert_ok(&line);
    let changes = ["listeners.added", "listeners.removed"].map(|k| field(&line, k));
    assert_eq!(changes, [comes.to_string(), goes.to_string()], "{line}");
    assert_eq!(raw_get(comes, "/").await.body_text(), "app", "the added listener serves");
    assert_eq!(raw_get(stays, "/").await.body_text(), "app", "the kept listener serves");
    assert!(refused(goes).await, "the removed listener {goes} still accepts");
    // Its open connection winds down as in a drain: still served, then closed.
    let again = open_on_goes.get("/").await;
    assert_eq!((again.status.as_u16(), again.text().as_str()), (200, "app"), "the open connection on it");
    assert_eq!(again.header("connection"), Some("close"), "the removed listener's connection is wound down");
}

#[tokio::test]
async fn reload_serves_a_replaced_certificate_to_new_handshakes_and_keeps_the_open_tls_connection() {
    let ca = Ca::new();
    let backend = Backend::named("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    let first = ca.issue(&cert, &key);
    let tls = format!("tls = {{ cert = \"{}\", key = \"{}\" }}\n", cert.display(), key.display());
    let listener = format!("{}{tls}", listen("127.0.0.1:0"));
    let proxy = Lameduck::start(&toml(&[
        &listener,
        &upstream("app", backend.addr, ""),
        &route("/", "app"),
        DRAIN_30S,
    ]))
    .await;
    let opened = ca.connect(proxy.addr).await;
    assert_eq!(served_cert(&opened), first);
    let mut open = h1_over(opened).await;
    assert_eq!(get_over(&mut open).await.text(), "app");

    // A renewal gone wrong (not a PEM certificate): refused, the first certificate stays.
    std::fs::write(&cert, "not a certificate\n").expect("write cert");
    let error = failure(&reload_by(&proxy, || proxy.sighup()).await);
    assert!(error.contains(&cert.display().to_string()), "the error names the file: {error}");
    assert_eq!(served_cert(&ca.connect(proxy.addr).await), first, "after the failed reload");

    let second = ca.issue(&cert, &key);
    let line = reload_by(&proxy, || proxy.sighup()).await;
    assert_ok(&line);
    assert_eq!(field_f64(&line, "certificates"), Some(1.0), "{line}");
    let renewed = ca.connect(proxy.addr).await;
    assert_eq!(served_cert(&renewed), second, "a new handshake sees the new certificate");
    assert_eq!(get_over(&mut h1_over(renewed).await).await.text(), "app");
    let again = get_over(&mut open).await;
    assert_eq!((again.status.as_u16(), again.text().as_str()), (200, "app"), "the connection opened before");
}

#[tokio::test]
async fn reload_tells_systemd_reloading_with_monotonic_usec_then_ready_from_the_same_pid() {
    let old = Backend::named("old").await;
    let new = Backend::named("new").await;
    let notify = NotifySocket::bind();
    let proxy = Lameduck::start_with(&only("app", old.addr, DRAIN_30S), |c| notify.pass_to(c)).await;
    let pid = proxy.pid();
    let (ready_at, _) = notify.wait_for(0, "READY=1", |m| m.has("READY=1")).await;

    let clock_before = monotonic_usec();
    assert_ok(&reload_with(&proxy, &only("app", new.addr, DRAIN_30S)).await);
    let clock_after = monotonic_usec();
    let (reloading_at, reloading) = notify.wait_for(ready_at, "RELOADING=1", |m| m.has("RELOADING=1")).await;
    assert_eq!(reloading.pid, Some(pid), "{reloading:?}");
    let stamp = reloading.value("MONOTONIC_USEC").expect("MONOTONIC_USEC= with RELOADING=1");
    let stamp: u64 = stamp.parse().unwrap_or_else(|e| panic!("MONOTONIC_USEC={stamp}: {e}"));
    assert!(
        (clock_before..=clock_after).contains(&stamp),
        "MONOTONIC_USEC={stamp} is CLOCK_MONOTONIC at the reload ({clock_before}..={clock_after})"
    );
    let (_, ready) =
        notify.wait_for(reloading_at + 1, "READY=1 after RELOADING=1", |m| m.has("READY=1")).await;
    assert_eq!(ready.pid, Some(pid), "the same process reports ready again: {ready:?}");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new");

    let messages = notify.messages();
    let mainpid: Vec<&Notified> = messages.iter().filter(|m| m.value("MAINPID").is_some()).collect();
    assert!(mainpid.is_empty(), "the main process did not change: {mainpid:?}");
    assert!(messages.iter().all(|m| m.pid == Some(pid)), "only lameduck itself sent:\n{}", notify.dump());
    assert!(!messages.iter().any(|m| m.has("STOPPING=1")), "a reload is no stop:\n{}", notify.dump());
}

#[tokio::test]
async fn as_pid_1_sighup_reloads_in_place_sigusr2_is_refused_and_sigterm_drains_with_exit_0() {
    if !can_unshare() {
        return;
    }
    let (release, old) = Backend::holding("/held", "old").await;
    let new = Backend::named("new").await;
    let mut proxy = Lameduck::spawn_under(&UNSHARE, &only("app", old.addr, DRAIN_30S), |_| {}).ready().await;
    let host_pid = only_child(proxy.pid());
    let ready = proxy.wait_for_message("ready").await;
    assert_eq!(field_f64(&ready, "pid"), Some(1.0), "lameduck is PID 1 in its namespace: {ready}");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "old");

    rewrite(&proxy, &only("app", new.addr, DRAIN_30S));
    assert_ok(&reload_by(&proxy, || send_signal(host_pid, libc::SIGHUP)).await);
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new", "the route change applies");
    assert_eq!(only_child(proxy.pid()), host_pid, "still the same PID 1");

    let mark = proxy.logs.mark();
    send_signal(host_pid, libc::SIGUSR2);
    let is_refusal = |l: &Value| message(l) == "SIGUSR2: binary upgrade refused";
    let refused = proxy.wait_for_log_after(mark, is_refusal, PROMPT).await;
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert!(field(&refused, "reason").contains("PID 1"), "{refused}");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new", "serves on after the refusal");

    // SIGTERM with a request in flight: it is answered, then lameduck exits 0 (so does unshare).
    rewrite(&proxy, &only("app", old.addr, DRAIN_30S));
    assert_ok(&reload_by(&proxy, || send_signal(host_pid, libc::SIGHUP)).await);
    let in_flight = spawn_get(proxy.addr, "/held").await;
    while old.arrived().await.uri.path() != "/held" {}
    let mark = proxy.logs.mark();
    send_signal(host_pid, libc::SIGTERM);
    proxy.wait_for_log_after(mark, |l| message(l) == "draining", PROMPT).await;
    release.open();
    let done = joined(in_flight).await;
    assert_eq!((done.status.as_u16(), done.text().as_str()), (200, "old"));
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn reload_applies_what_it_can_and_names_workers_and_the_admin_addr_as_not_applied() {
    let old = Backend::named("old").await;
    let new = Backend::named("new").await;
    let [other_admin] = free_addrs();
    let proxy = Lameduck::start(&toml(&["workers = 2\n", &only("app", old.addr, DRAIN_30S), ADMIN])).await;
    let admin_addr = proxy.admin_addr.expect("admin listening");

    let moved_admin = format!("[admin]\naddr = \"{other_admin}\"\n");
    let line =
        reload_with(&proxy, &toml(&["workers = 3\n", &only("app", new.addr, DRAIN_30S), &moved_admin])).await;
    assert_ok(&line);
    assert_eq!(
        field(&line, "not_applied"),
        "workers 2 -> 3 (takes SIGUSR2 or a restart); [admin] addr (takes SIGUSR2 or a restart)",
        "{line}"
    );
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new", "the rest of the config applies");
    assert_eq!(raw_get(admin_addr, "/healthz").await.status, 200, "the admin endpoint stays where it was");
    assert!(refused(other_admin).await, "nothing listens on the new admin address {other_admin}");
}

#[tokio::test]
async fn reload_rereads_the_admin_token_file() {
    let backend = Backend::named("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "first-token\n").expect("write token");
    let admin_section = format!("{ADMIN}token_file = \"{}\"\n", token_file.display());
    let proxy = Lameduck::start(&only("app", backend.addr, &format!("{DRAIN_30S}\n{admin_section}"))).await;
    let pause = |token| admin_with_token(&proxy, "POST", "/upstreams/app/pause", token);
    let resume = |token| admin_with_token(&proxy, "POST", "/upstreams/app/resume", token);
    assert_eq!(pause("first-token").await.status, 200);
    assert_eq!(resume("first-token").await.status, 200);

    // Only the token file changes; proxy.toml is the same.
    std::fs::write(&token_file, "second-token\n").expect("write token");
    assert_ok(&reload_by(&proxy, || proxy.sighup()).await);
    let old_token = pause("first-token").await;
    assert_eq!(old_token.status, 401, "the replaced token: {old_token:?}");
    assert_eq!(pause("second-token").await.status, 200, "the token read at the reload");
    assert_eq!(resume("second-token").await.status, 200);
}

#[tokio::test]
async fn reload_leaves_an_open_websocket_tunnel_alone_even_when_its_upstream_is_removed() {
    let mut ws_backend = WsBackend::start(Behaviour::Echo).await;
    let next = Backend::named("next").await;
    let proxy = Lameduck::start(&only("app", ws_backend.addr, DRAIN_30S)).await;
    let mut ws = ws_client(proxy.addr).await;
    assert_eq!(echo(&mut ws, "before").await, Message::Text("before".into()));

    let line = reload_with(&proxy, &only("next", next.addr, DRAIN_30S)).await;
    assert_ok(&line);
    assert_eq!(field(&line, "upstreams.removed"), "app", "{line}");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "next");
    assert_eq!(echo(&mut ws, "after").await, Message::Text("after".into()), "the tunnel outlives the reload");
    assert!(ws_backend.closes.try_recv().is_err(), "the backend's side of the tunnel ended");
}

/// Under a container init (a process named `tini` that forks lameduck and waits for it, as
/// tini does), the binary upgrade is refused: the init would end the container when the old
/// process exits. SIGHUP still reloads in place.
#[tokio::test]
async fn under_a_container_init_sigusr2_is_refused_and_sighup_still_reloads() {
    let old = Backend::named("old").await;
    let new = Backend::named("new").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tini = dir.path().join("tini");
    std::fs::copy("/bin/sh", &tini).expect("a shell to play tini");
    // Not `exec`: the shell stays lameduck's parent, as an init does.
    let tini = tini.to_str().expect("a UTF-8 path").to_owned();
    let wrapper = [tini.as_str(), "-c", "\"$0\" \"$@\"; exit $?"];
    let mut proxy = Lameduck::spawn_under(&wrapper, &only("app", old.addr, DRAIN_30S), |_| {}).ready().await;
    let lameduck = only_child(proxy.pid());

    let mark = proxy.logs.mark();
    send_signal(lameduck, libc::SIGUSR2);
    let is_refusal = |l: &Value| message(l) == "SIGUSR2: binary upgrade refused";
    let refused = proxy.wait_for_log_after(mark, is_refusal, PROMPT).await;
    assert!(field(&refused, "reason").contains("container init"), "{refused}");

    rewrite(&proxy, &only("app", new.addr, DRAIN_30S));
    assert_ok(&reload_by(&proxy, || send_signal(lameduck, libc::SIGHUP)).await);
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new", "the reload applies");
    assert_eq!(only_child(proxy.pid()), lameduck, "the same process serves");
    send_signal(lameduck, libc::SIGTERM);
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}
