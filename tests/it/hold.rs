//! Holding requests: WebSocket tunnels across a pause, the bounds of holding, the drain deadline, and the admin API's security.
//!
//! The tests pause the upstream `app` through the admin API (`POST /upstreams/app/pause`)
//! and watch what clients, the backend, `GET /upstreams` and the log see. "The request is
//! held" is an event the test waits for: `GET /upstreams` shows the `held` count reach the
//! number expected (there is no log line per held request).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Response;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::websocket::peers::{read_until_close, ws_client, Behaviour, WsBackend};

/// `retry_after` in every config here: the 503s of held requests must carry it.
const RETRY_AFTER: &str = "7";

/// `[drain]` with `deadline`, and an admin endpoint on loopback with `admin_extra` lines.
fn tail(deadline: &str, admin_extra: &str) -> String {
    format!(
        "[drain]\ndeadline = \"{deadline}\"\nretry_after = \"{RETRY_AFTER}s\"\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n{admin_extra}"
    )
}

/// Upstream `app` → `backend` with `upstream_extra` lines, a 30 s deadline, an admin endpoint.
fn hold_config(backend: SocketAddr, upstream_extra: &str) -> String {
    config(&[backend], upstream_extra, &tail("30s", ""))
}

fn admin_of(proxy: &Lameduck) -> SocketAddr {
    proxy.admin_addr.expect("an \"admin listening\" line")
}

/// `method path` on the admin endpoint (one connection), with `Authorization: Bearer
/// <token>` when a token is given.
async fn admin_call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\n{auth}Connection: close\r\n\r\n"
    );
    raw_request(admin, request.as_bytes()).await
}

async fn admin_post(admin: SocketAddr, path: &str) -> RawResponse {
    admin_call(admin, "POST", path, None).await
}

/// The JSON body of an admin answer.
fn json_of(resp: &RawResponse) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("admin answer is not JSON ({e}): {:?}", resp.body_text()))
}

/// Pauses `app` (no request in flight, so at once) and checks the 200.
async fn pause(admin: SocketAddr, query: &str) -> Value {
    let resp = admin_post(admin, &format!("/upstreams/app/pause{query}")).await;
    assert_eq!(resp.status, 200, "pause: {}", resp.body_text());
    json_of(&resp)
}

async fn resume(admin: SocketAddr) -> Value {
    let resp = admin_post(admin, "/upstreams/app/resume").await;
    assert_eq!(resp.status, 200, "resume: {}", resp.body_text());
    json_of(&resp)
}

/// `app`'s entry of `GET /upstreams`.
async fn app_status(admin: SocketAddr) -> Value {
    let resp = raw_get(admin, "/upstreams").await;
    assert_eq!(resp.status, 200, "GET /upstreams: {}", resp.body_text());
    let all = json_of(&resp);
    let list = all["upstreams"].as_array().unwrap_or_else(|| panic!("no upstreams list: {all}"));
    list.iter().find(|u| u["upstream"] == "app").cloned().unwrap_or_else(|| panic!("no app in {all}"))
}

/// Waits (at most [`PROMPT`]) until `app` holds exactly `n` requests, looking at
/// `GET /upstreams` again each time the daemon logs something (a request it holds is logged);
/// returns its entry then.
async fn wait_until_held(proxy: &Lameduck, n: u64) -> Value {
    let admin = admin_of(proxy);
    let give_up = Instant::now() + PROMPT;
    loop {
        let mark = proxy.logs.mark();
        let app = app_status(admin).await;
        if app["held"] == n {
            return app;
        }
        assert!(Instant::now() < give_up, "app never held {n} requests within {PROMPT:?}: {app}");
        proxy.logs.next_event_after(mark, give_up).await;
    }
}

fn assert_held_503(resp: &RawResponse) {
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("retry-after"), Some(RETRY_AFTER), "a 503 for a held request: {resp:?}");
}

#[tokio::test]
async fn pause_closes_websocket_tunnels_with_1012_on_both_sides_and_holds_reconnects_until_resume() {
    let mut backend = WsBackend::start(Behaviour::Echo).await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "")).await;
    let admin = admin_of(&proxy);
    let mut ws = ws_client(proxy.addr).await;
    ws.send(Message::Text("before".into())).await.expect("send");
    let echoed = timeout(PROMPT, ws.next()).await.expect("echo in time").expect("open").expect("ok");
    assert_eq!(echoed, Message::Text("before".into()));

    // The pause answers once the tunnel (in flight to `app`) has closed.
    let pausing = tokio::spawn(admin_post(admin, "/upstreams/app/pause"));
    let (_, close) = read_until_close(&mut ws, PROMPT).await;
    assert_eq!(close, Some((1012, "service restart".to_owned())), "the client's Close");
    // tungstenite queued its answer to the Close: drive the stream until it has gone out.
    tokio::spawn(async move { while ws.next().await.is_some() {} });
    let backend_close = backend.next_close(PROMPT).await;
    assert_eq!(backend_close.frame, Some((1012, "service restart".to_owned())), "the backend's Close");
    let paused = timeout(PROMPT, pausing).await.expect("pause answered in time").expect("pause task");
    assert_eq!(paused.status, 200, "{}", paused.body_text());
    let body = json_of(&paused);
    assert_eq!(
        (&body["upstream"], &body["paused"], &body["in_flight"]),
        (&json!("app"), &json!(true), &json!(0))
    );
    proxy.wait_for_message("upstream paused").await;

    // A reconnect while paused is held: its handshake does not complete.
    let addr = proxy.addr;
    let reconnect = tokio::spawn(async move { timeout(secs(10), ws_client(addr)).await });
    let app = wait_until_held(&proxy, 1).await;
    assert_eq!(app["state"], "paused", "{app}");
    assert_eq!(app["addrs"][0]["state"], "paused", "{app}");
    assert!(!reconnect.is_finished(), "the reconnect completed while the upstream was paused");

    let resumed = resume(admin).await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    let mut ws = timeout(PROMPT, reconnect)
        .await
        .expect("the held reconnect is served after the resume")
        .expect("reconnect task")
        .expect("handshake within its bound");
    ws.send(Message::Text("after".into())).await.expect("send");
    let echoed = timeout(PROMPT, ws.next()).await.expect("echo in time").expect("open").expect("ok");
    assert_eq!(echoed, Message::Text("after".into()));
    let app = app_status(admin).await;
    assert_eq!((&app["state"], &app["held"]), (&json!("serving"), &json!(0)), "{app}");
}

#[tokio::test]
async fn max_held_overflow_gets_503_with_retry_after_at_once() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "max_held = 1")).await;
    let admin = admin_of(&proxy);
    pause(admin, "").await;
    let first = spawn_get(proxy.addr, "/first").await;
    wait_until_held(&proxy, 1).await;

    let started = Instant::now();
    let second = raw_get(proxy.addr, "/second").await;
    let took = started.elapsed();
    assert_held_503(&second);
    assert!(took < secs(2), "the overflow waited {took:?}; hold is 30s, so it must not wait");
    proxy.wait_for_message("hold queue full; 503").await;
    assert_eq!(app_status(admin).await["held"], 1, "the refused request is not held");
    assert!(backend.requests().is_empty(), "nothing reached the backend while paused");

    resume(admin).await;
    let first = joined(first).await;
    assert_eq!((first.status.as_u16(), first.text().as_str()), (200, "ok"));
    let paths: Vec<String> = backend.requests().iter().map(|r| r.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/first"], "only the held request went out");
}

#[tokio::test]
async fn held_request_gets_503_with_retry_after_when_hold_passes() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "hold = \"1s\"")).await;
    let admin = admin_of(&proxy);
    pause(admin, "").await;

    let started = Instant::now();
    let resp = raw_get(proxy.addr, "/held").await;
    let took = started.elapsed();
    assert_held_503(&resp);
    assert!(took >= ms(900) && took < secs(4), "answered after {took:?}; hold is 1s");
    proxy.wait_for_message("held request timed out; 503").await;
    let app = app_status(admin).await;
    assert_eq!((&app["state"], &app["held"]), (&json!("paused"), &json!(0)), "{app}");
    assert!(backend.requests().is_empty(), "nothing reached the backend while paused");
}

#[tokio::test]
async fn pause_answers_504_at_its_timeout_while_a_slow_request_runs_and_stays_paused() {
    let (release, backend) = Backend::holding("/slow", "ok").await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "")).await;
    let admin = admin_of(&proxy);
    let slow = spawn_get(proxy.addr, "/slow").await;
    backend.arrived().await;

    let started = Instant::now();
    let resp = admin_post(admin, "/upstreams/app/pause?timeout=300ms").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    assert!(took >= ms(300) && took < secs(3), "the pause answered after {took:?}; timeout is 300ms");
    let body = json_of(&resp);
    assert_eq!(
        (&body["paused"], &body["in_flight"], &body["held"]),
        (&json!(true), &json!(1), &json!(0)),
        "{body}"
    );
    assert!(body["waited_ms"].as_u64().is_some_and(|w| w >= 300), "{body}");
    let app = app_status(admin).await;
    assert_eq!((&app["state"], &app["in_flight"]), (&json!("paused"), &json!(1)), "{app}");

    release.open();
    let slow = joined(slow).await;
    assert_eq!((slow.status.as_u16(), slow.text().as_str()), (200, "ok"), "the slow request completes");
    assert_eq!(app_status(admin).await["state"], "paused", "still paused after the 504");
}

#[tokio::test]
async fn drain_deadline_answers_held_requests_503_and_exits_2_counting_them() {
    let backend = Backend::named("ok").await;
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", &tail("2s", ""))).await;
    let admin = admin_of(&proxy);
    pause(admin, "").await;
    let held = [spawn_get(proxy.addr, "/a").await, spawn_get(proxy.addr, "/b").await];
    wait_until_held(&proxy, 2).await;

    let signalled = Instant::now();
    proxy.sigterm();
    for task in held {
        let resp = joined(task).await;
        let at = signalled.elapsed();
        assert_eq!(resp.status.as_u16(), 503, "{resp:?}");
        assert_eq!(resp.header("retry-after"), Some(RETRY_AFTER), "{resp:?}");
        assert!(at >= ms(1800) && at < secs(4), "answered {at:?} after the signal; the deadline is 2s");
    }
    assert_eq!(proxy.exit_within(PROMPT).await, 2);
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "requests.held_refused"), Some(2.0), "{summary}");
    assert!(backend.requests().is_empty(), "nothing reached the backend");
}

/// A token file (absolute path) in a temp dir of its own.
fn token_file(token: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("admin.token");
    std::fs::write(&path, format!("{token}\n")).expect("write the token file");
    (dir, path)
}

fn token_line(path: &Path) -> String {
    format!("token_file = \"{}\"\n", path.display())
}

#[tokio::test]
async fn admin_posts_need_the_bearer_token_and_gets_do_not() {
    let (_dir, path) = token_file("s3cret-token");
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&config(&[backend.addr], "", &tail("30s", &token_line(&path)))).await;
    let admin = admin_of(&proxy);

    for token in [None, Some("wrong-token"), Some("s3cret-token-and-more")] {
        let resp = admin_call(admin, "POST", "/upstreams/app/pause", token).await;
        assert_eq!(resp.status, 401, "token {token:?}: {}", resp.body_text());
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "token {token:?}: {resp:?}");
    }
    let resp = admin_call(admin, "POST", "/upstreams/app/resume", None).await;
    assert_eq!(resp.status, 401, "resume needs the token too: {}", resp.body_text());
    let app = app_status(admin).await; // a GET, without a token
    assert_eq!(app["state"], "serving", "a refused pause paused nothing: {app}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(raw_get(admin, path).await.status, 200, "GET {path} needs no token");
    }
    proxy
        .wait_for_log(
            |l| {
                message(l) == "admin request"
                    && field_str(l, "method").as_deref() == Some("POST")
                    && field_str(l, "path").as_deref() == Some("/upstreams/app/pause")
                    && field_f64(l, "status") == Some(401.0)
            },
            PROMPT,
        )
        .await;

    let resp = admin_call(admin, "POST", "/upstreams/app/pause", Some("s3cret-token")).await;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(json_of(&resp)["paused"], true);
    assert_eq!(app_status(admin).await["state"], "paused");
    let resp = admin_call(admin, "POST", "/upstreams/app/resume", Some("s3cret-token")).await;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(app_status(admin).await["state"], "serving");
}

#[tokio::test]
async fn admin_answers_unknown_names_404_wrong_method_405_and_bad_queries_400() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "")).await;
    let admin = admin_of(&proxy);

    let resp = admin_post(admin, "/upstreams/nope/pause").await;
    assert_eq!(resp.status, 404, "{}", resp.body_text());
    assert_eq!(json_of(&resp), json!({"error": "unknown upstream \"nope\"", "upstreams": ["app"]}));
    let resp = admin_post(admin, "/upstreams/nope/resume").await;
    assert_eq!(resp.status, 404, "{}", resp.body_text());

    let resp = admin_call(admin, "GET", "/upstreams/app/pause", None).await;
    assert_eq!(resp.status, 405, "{resp:?}");
    assert_eq!(resp.header("allow"), Some("POST"), "{resp:?}");

    for query in ["?timeout=soon", "?expire=later", "?wait=1s"] {
        let resp = admin_post(admin, &format!("/upstreams/app/pause{query}")).await;
        assert_eq!(resp.status, 400, "{query}: {}", resp.body_text());
        assert!(json_of(&resp)["error"].is_string(), "{query}: {}", resp.body_text());
    }
    let resp = admin_post(admin, "/upstreams/app/pause?addr=127.0.0.1:1").await;
    assert_eq!(resp.status, 404, "{}", resp.body_text());
    assert_eq!(json_of(&resp)["addrs"], json!([backend.addr.to_string()]));

    let app = app_status(admin).await;
    assert_eq!(app["state"], "serving", "no refused call paused anything: {app}");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "ok");
}

/// A config whose admin endpoint listens on `admin` with `extra` lines.
fn admin_on(admin: &str, extra: &str) -> String {
    config(&["127.0.0.1:9".parse().unwrap()], "", &format!("[admin]\naddr = \"{admin}\"\n{extra}"))
}

#[tokio::test]
async fn check_warns_when_admin_is_not_loopback_and_has_no_token() {
    const WARNING: &str = "not a loopback address";
    let out = Finished::check(&admin_on("0.0.0.0:0", "")).await;
    assert_eq!((out.status, out.stdout.trim()), (0, "ok"), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains(WARNING), "no warning in stderr:\n{}", out.stderr);

    let out = Finished::check(&admin_on("127.0.0.1:0", "")).await;
    assert_eq!(out.status, 0, "stderr:\n{}", out.stderr);
    assert!(!out.stderr.contains(WARNING), "loopback needs no warning:\n{}", out.stderr);
    let (_dir, path) = token_file("t0ken");
    let out = Finished::check(&admin_on("0.0.0.0:0", &token_line(&path))).await;
    assert_eq!(out.status, 0, "stderr:\n{}", out.stderr);
    assert!(!out.stderr.contains(WARNING), "a token needs no warning:\n{}", out.stderr);
}

#[tokio::test]
async fn unreadable_token_file_fails_check_and_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such.token");
    let config = admin_on("127.0.0.1:0", &token_line(&missing));
    let name = missing.display().to_string();

    let out = Finished::check(&config).await;
    assert_ne!(out.status, 0, "--check passed; stdout:\n{}", out.stdout);
    assert!(out.stderr.contains(&name), "--check does not name {name}:\n{}", out.stderr);
    let out = Finished::start_expecting_exit(&config).await;
    assert_eq!(out.status, 1, "start-up exit status; stderr:\n{}", out.stderr);
    assert!(out.stderr.contains(&name), "start-up does not name {name}:\n{}", out.stderr);
}

#[tokio::test]
async fn pause_with_expire_resumes_by_itself_and_serves_the_held_request() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "")).await;
    let admin = admin_of(&proxy);
    let paused_at = Instant::now();
    pause(admin, "?expire=500ms").await;
    let held = spawn_get(proxy.addr, "/held").await;

    let got = joined(held).await;
    let took = paused_at.elapsed();
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));
    assert!(took >= ms(500), "served {took:?} after the pause; it expires after 500ms");
    let expired = proxy.wait_for_message("pause expired").await;
    assert_eq!(field_str(&expired, "upstream.name").as_deref(), Some("app"), "{expired}");
    let resumed = proxy.wait_for_message("upstream resumed").await;
    assert_eq!(field_f64(&resumed, "held"), Some(1.0), "the request was held at the expiry: {resumed}");
    assert_eq!(app_status(admin).await["state"], "serving");
}

/// A process the test did not spawn (a re-exec'd successor): SIGKILLed when dropped if it is
/// still a running lameduck, so none outlives the test.
struct Successor(i32);

impl Successor {
    fn is_running_lameduck(&self) -> bool {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.0));
        let ours = Path::new(binary()).canonicalize();
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
            .unwrap_or(true);
        matches!((exe, ours), (Ok(exe), Ok(ours)) if exe == ours) && !zombie
    }

    fn signal(&self, signal: libc::c_int) {
        assert!(self.is_running_lameduck(), "successor {} is not running", self.0);
        // SAFETY: kill(2) on a pid just checked to be a running lameduck.
        let rc = unsafe { libc::kill(self.0, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.0, std::io::Error::last_os_error());
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.is_running_lameduck() {
            // SAFETY: kill(2) on a pid just checked to be a running lameduck.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// How long a re-exec'd successor may take to report ready (a debug build on a busy machine).
const RELOAD_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn binary_upgrade_successor_starts_with_the_upstream_paused() {
    let backend = Backend::named("ok").await;
    let mut proxy = Lameduck::start(&hold_config(backend.addr, "")).await;
    let admin = admin_of(&proxy);
    pause(admin, "").await;

    let mark = proxy.logs.mark();
    proxy.sigusr2();
    let handed = proxy
        .wait_for_log_after(mark, |l| message(l) == "handed over to the new process; draining", RELOAD_WITHIN)
        .await;
    let pid =
        field_f64(&handed, "successor.pid").unwrap_or_else(|| panic!("no successor.pid: {handed}")) as i32;
    let successor = Successor(pid);
    let is_its = move |l: &Value| field_f64(l, "pid") == Some(f64::from(pid));
    proxy.wait_for_log_after(mark, move |l| message(l) == "ready" && is_its(l), PROMPT).await;
    let inherited = proxy
        .wait_for_log_after(mark, |l| message(l) == "paused as the previous process had them", PROMPT)
        .await;
    assert_eq!(field_str(&inherited, "paused").as_deref(), Some("app"), "{inherited}");
    // The old process had nothing in flight: once it is gone, only the successor answers.
    assert_eq!(proxy.exit_within(PROMPT).await, 0, "the old process's exit status");

    let app = app_status(admin).await;
    assert_eq!((&app["state"], &app["addrs"][0]["state"]), (&json!("paused"), &json!("paused")), "{app}");
    let held = spawn_get(proxy.addr, "/after-reload").await;
    wait_until_held(&proxy, 1).await;
    assert!(backend.requests().is_empty(), "the successor sent nothing while paused");
    resume(admin).await;
    let got = joined(held).await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));

    let mark = proxy.logs.mark();
    successor.signal(libc::SIGTERM);
    let exit = proxy.wait_for_log_after(mark, |l| message(l) == "exit", PROMPT).await;
    assert_eq!(field_f64(&exit, "exit.status"), Some(0.0), "{exit}");
}

#[tokio::test]
async fn held_requests_go_out_oldest_first_after_resume() {
    // A backend that takes its connections one at a time, in the order they were made, and
    // reads each one's head before the next: what it records is the order lameduck sent in,
    // not the order its own tasks happened to run.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    let in_order = tokio::spawn(async move {
        let mut order = Vec::new();
        for _ in 0..3 {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.expect("a request head");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            order.push(head.split(' ').nth(1).unwrap_or_default().to_owned());
            tokio::spawn(
                async move { stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await },
            );
        }
        order
    });
    let proxy = Lameduck::start(&hold_config(backend_addr, "")).await;
    let admin = admin_of(&proxy);
    pause(admin, "").await;
    let mut held = Vec::new();
    for (n, path) in ["/first", "/second", "/third"].into_iter().enumerate() {
        held.push(spawn_get(proxy.addr, path).await);
        wait_until_held(&proxy, n as u64 + 1).await;
    }

    let resumed = resume(admin).await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    let order =
        timeout(PROMPT, in_order).await.expect("three requests reach the backend").expect("backend task");
    assert_eq!(order, ["/first", "/second", "/third"], "held requests go out oldest first");
    for task in held {
        assert_eq!(joined(task).await.status.as_u16(), 200);
    }
}

/// Bytes `server` has received on its connection from `client` that its process has not read
/// yet (the `rx_queue` of `/proc/net/tcp`).
fn unread_by(server: SocketAddr, client: SocketAddr) -> u64 {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => unreachable!("the tests listen on 127.0.0.1"),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[1] == local && f[2] == remote)
        .and_then(|f| u64::from_str_radix(f[4].split_once(':')?.1, 16).ok())
        .unwrap_or_else(|| panic!("no socket {server} <- {client} in /proc/net/tcp"))
}

#[tokio::test]
async fn held_post_body_stays_unread_until_resume_and_arrives_whole() {
    const TOTAL: u64 = 1 << 20;
    const BEFORE: usize = 48 * 1024;
    let backend = Backend::start(|req: Req| async move {
        let mut check = PatternCheck::default();
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => frame.data_ref().into_iter().for_each(|d| check.feed(d)),
                Err(e) => return Response::builder().status(500).body(full(e.to_string())).unwrap(),
            }
        }
        Response::new(full(format!("{} {}", check.len, check.mismatches)))
    })
    .await;
    let proxy = Lameduck::start(&hold_config(backend.addr, "")).await;
    let admin = admin_of(&proxy);
    pause(admin, "").await;

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    let client_addr = stream.local_addr().expect("client addr");
    let mut conn = RawConn::from(stream);
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n");
    conn.send(head.as_bytes()).await;
    conn.send(&pattern_chunk(0, BEFORE)).await;
    wait_until_held(&proxy, 1).await;
    let unread = unread_by(proxy.addr, client_addr);
    assert!(
        unread >= (BEFORE / 2) as u64,
        "lameduck read the body of a held request: {unread} of {BEFORE} bytes sent are still unread"
    );
    assert!(backend.requests().is_empty(), "nothing reached the backend while paused");

    resume(admin).await;
    let arrived = backend.arrived().await;
    assert_eq!(arrived.uri.path(), "/upload");
    conn.send(&pattern_chunk(BEFORE as u64, TOTAL as usize - BEFORE)).await;
    let resp = conn.read_response().await;
    assert_eq!((resp.status, resp.body_text()), (200, format!("{TOTAL} 0")), "the body arrived whole");
    assert_eq!((arrived.body_len(), arrived.body_complete()), (TOTAL, true));
}

/// `token_file = "cred:NAME"` reads the systemd credential NAME (`LoadCredential=`), which a
/// `DynamicUser=` can read; without `$CREDENTIALS_DIRECTORY` it is an error at the key.
#[tokio::test]
async fn the_token_can_be_a_systemd_credential() {
    let config = admin_on("127.0.0.1:0", "token_file = \"cred:admin.token\"\n");
    let out = Finished::check(&config).await;
    assert_eq!(out.status, 1, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("error: \"cred:admin.token\" names a systemd credential"), "{}", out.stderr);
    assert!(out.stderr.contains("LoadCredential=admin.token:"), "{}", out.stderr);

    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(credentials.path().join("admin.token"), "s3cret\n").expect("write the credential");
    let dir = credentials.path().to_owned();
    let proxy = Lameduck::start_with(&config, |c| {
        c.env("CREDENTIALS_DIRECTORY", &dir);
    })
    .await;
    let admin = proxy.admin_addr.expect("admin listening");
    let refused = admin_call(admin, "POST", "/upstreams/app/pause?timeout=1s", None).await;
    assert_eq!(refused.status, 401);
    let done = admin_call(admin, "POST", "/upstreams/app/resume", Some("s3cret")).await;
    assert_eq!(done.status, 200, "{done:?}");
}
