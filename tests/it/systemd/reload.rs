//! Zero-downtime re-exec on SIGUSR2 (the binary upgrade): under load nothing is refused or cut and every old
//! process exits 0, WebSocket clients get Close 1001 and reconnect at once, a broken config
//! leaves the old process serving, and a SIGUSR2 during a re-exec is ignored.
//!
//! Each generation's config points at its own backend, whose answer names it: the body of a
//! response says which process served it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use http::Response;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::load::Load;
use super::peer::{exited, wait_exited, NotifySocket, Successors};
use super::{
    config_on, exits, expect_log, lines_with, pid_field, reload, HANDED_OVER, RELOAD_FAILED, RELOAD_IGNORED,
    RELOAD_STARTED, RELOAD_WITHIN,
};
use crate::harness::*;
use crate::websocket::peers::{read_until_close, ws_client, Behaviour, WsBackend};

/// A backend that answers `name` after a little work, so that requests are in flight when a
/// handover comes.
async fn generation(name: &'static str) -> Backend {
    Backend::start(move |_req| async move {
        tokio::time::sleep(ms(2)).await; // the backend's work takes time
        Response::new(full(name))
    })
    .await
}

fn config_path(proxy: &Lameduck) -> PathBuf {
    proxy.config_dir().join("proxy.toml")
}

/// Deploys a new config: rewrites the file the daemon was started with.
fn deploy(proxy: &Lameduck, config: &str) {
    std::fs::write(config_path(proxy), config).expect("rewrite proxy.toml");
}

const DRAIN_10S: &str = "[drain]\ndeadline = \"10s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_twice_under_load_refuses_nothing_fails_nothing_and_old_processes_exit_0() {
    let gens = [generation("gen1").await, generation("gen2").await, generation("gen3").await];
    let mut proxy = Lameduck::start(&config(&[gens[0].addr], "", DRAIN_10S)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);
    let first = proxy.pid();
    let started = Instant::now();
    let load = Load::start(proxy.addr, 16);
    let served = |load: &Load, gen: &str| format!("{gen} served too little: {:?}", load.counts());

    assert!(load.served("gen1", 100, secs(10)).await, "{}", served(&load, "gen1"));
    deploy(&proxy, &config_on(proxy.addr, gens[1].addr, DRAIN_10S));
    let second = reload(&proxy.logs, first).await;
    assert!(load.served("gen2", 100, secs(10)).await, "{}", served(&load, "gen2"));
    deploy(&proxy, &config_on(proxy.addr, gens[2].addr, DRAIN_10S));
    let third = reload(&proxy.logs, second).await;
    assert!(load.served("gen3", 100, secs(10)).await, "{}", served(&load, "gen3"));
    // The load runs for 3 s at least, whatever the reloads took.
    tokio::time::sleep_until(started + secs(3)).await;
    let tally = load.stop().await;
    let report = tally.assert_nothing_lost();
    for gen in ["gen1", "gen2", "gen3"] {
        assert!(tally.served_by(gen) > 0, "{gen} served nothing: {report}");
    }
    assert_eq!(tally.by_body.len(), 3, "only the three generations answer: {report}");
    assert!(tally.told_to_close > 0, "keep-alive clients of old processes were told to close: {report}");

    // The first process is the test's child; the second is the first's: its exit line (the
    // third process still runs, so the two exit lines are theirs) and /proc tell.
    assert_eq!(proxy.exit_within(PROMPT).await, 0, "the first process's exit status");
    for exit in exits(&proxy.logs, 2, RELOAD_WITHIN).await {
        assert_eq!(pid_field(&exit, "exit.status"), 0, "{exit}");
        assert_eq!(field_f64(&exit, "connections.cut"), Some(0.0), "{exit}");
    }
    assert!(wait_exited(second, PROMPT).await, "the second process still runs after its exit line");
    assert!(!exited(third), "the third process serves");
    let answer = raw_get(proxy.addr, "/").await;
    assert_eq!((answer.status, answer.body_text().as_str()), (200, "gen3"), "a different process serves now");
    let inherited = lines_with(&proxy.logs, "listening")
        .iter()
        .filter(|l| field_str(l, "source").as_deref() == Some("predecessor"))
        .count();
    assert_eq!(inherited, 2, "each successor took the listener over from its predecessor");
}

#[tokio::test]
async fn reload_forwards_requests_on_old_keep_alive_connections_with_connection_close_not_503() {
    let old_backend = Backend::named("old").await;
    let new_backend = Backend::named("new").await;
    let tail = "[drain]\ndeadline = \"10s\"\nidle_linger = \"5s\"\n";
    let mut proxy = Lameduck::start(&config(&[old_backend.addr], "", tail)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);
    let request = b"GET /again HTTP/1.1\r\nHost: lameduck\r\n\r\n";
    let mut old_conn = RawConn::connect(proxy.addr).await;
    old_conn.send(request).await;
    let first = old_conn.read_response().await;
    assert_eq!((first.status, first.body_text().as_str(), first.closes()), (200, "old", false));

    // The connection is idle, kept alive by the old process, when the handover comes.
    deploy(&proxy, &config_on(proxy.addr, new_backend.addr, tail));
    reload(&proxy.logs, proxy.pid()).await;
    old_conn.send(request).await;
    let late = old_conn.read_response().await;
    assert_eq!(late.status, 200, "a successor serves, so the old process forwards: {late:?}");
    assert_eq!(late.body_text(), "old", "forwarded by the old process, to its own upstream");
    assert!(late.closes(), "with Connection: close, so the client reconnects to the new process: {late:?}");
    assert!(old_conn.closed_within(PROMPT).await, "the old process closes the connection after it");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "new");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "requests.rejected"), Some(0.0), "{summary}");
}

#[tokio::test]
async fn reload_closes_websockets_with_1001_and_clients_reconnect_at_once_to_the_new_process() {
    let backend = WsBackend::start(Behaviour::Echo).await;
    let tail = "[drain]\ndeadline = \"10s\"\nclose_timeout = \"2s\"\n";
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", tail)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);
    let mut old_ws = ws_client(proxy.addr).await;
    old_ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(
        timeout(PROMPT, old_ws.next()).await.unwrap().unwrap().unwrap(),
        Message::Text("before".into())
    );

    let successor = reload(&proxy.logs, proxy.pid()).await;
    let (_, close) = read_until_close(&mut old_ws, PROMPT).await;
    assert_eq!(close.as_ref().map(|(code, _)| *code), Some(1001), "close frame: {close:?}");
    // At once: no wait, no retry.
    let mut new_ws = ws_client(proxy.addr).await;
    new_ws.send(Message::Text("after".into())).await.unwrap();
    assert_eq!(
        timeout(PROMPT, new_ws.next()).await.unwrap().unwrap().unwrap(),
        Message::Text("after".into())
    );

    // The old client answers the Close (tungstenite does on the next poll) and the old process,
    // its last tunnel closed cleanly, exits 0.
    let finished = timeout(PROMPT, async { while old_ws.next().await.is_some() {} }).await;
    assert!(finished.is_ok(), "the old connection ends after the close handshake");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "tunnels.closed"), Some(1.0), "{summary}");
    // The new tunnel outlives the old process: it is the new one's.
    new_ws.send(Message::Text("still".into())).await.unwrap();
    assert_eq!(
        timeout(PROMPT, new_ws.next()).await.unwrap().unwrap().unwrap(),
        Message::Text("still".into())
    );
    assert!(!exited(successor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_broken_config_keeps_the_old_process_serving_and_logs_the_error() {
    let backend = generation("old").await;
    let notify = NotifySocket::bind();
    let mut proxy = Lameduck::start_with(&config_for(backend.addr), |c| notify.pass_to(c)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);
    let load = Load::start(proxy.addr, 8);
    assert!(load.served("old", 50, secs(10)).await, "{:?}", load.counts());

    let broken = config_on(proxy.addr, backend.addr, "[drain]\ndeadline = \"thirty seconds\"\n");
    let bad_line = broken.lines().position(|l| l.contains("thirty seconds")).unwrap() + 1;
    deploy(&proxy, &broken);
    let mark = proxy.logs.mark();
    proxy.sigusr2();
    let failed =
        expect_log(&proxy.logs, mark, RELOAD_FAILED, |l| message(l) == RELOAD_FAILED, RELOAD_WITHIN).await;
    let error = field_str(&failed, "error").unwrap_or_default();
    let location = format!("{}:{bad_line}:", config_path(&proxy).display());
    assert!(error.contains(&location), "the reload error points at {location}COL: {error}");
    assert!(error.contains("deadline = \"thirty seconds\""), "and quotes the line: {error}");

    // The old process goes on serving after the failure too.
    let before = load.counts().get("old").copied().unwrap_or(0);
    assert!(load.served("old", before + 50, secs(10)).await, "{:?}", load.counts());
    let tally = load.stop().await;
    tally.assert_nothing_lost();
    assert!(!proxy.has_exited(), "the old process serves on");
    assert_eq!(lines_with(&proxy.logs, "ready").len(), 1, "no new process got ready");
    assert!(lines_with(&proxy.logs, HANDED_OVER).is_empty());

    // The failed new process is gone (the error names it), and systemd is told the reload is
    // over: READY=1 again, from the old process.
    let failed_pid = error
        .strip_prefix("new process ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("the error names the new process: {error}"));
    assert!(wait_exited(failed_pid, PROMPT).await, "the failed new process {failed_pid} still runs");
    let (reloading_at, _) = notify.wait_for(0, "RELOADING=1", |m| m.has("RELOADING=1")).await;
    let (_, ready_again) =
        notify.wait_for(reloading_at, "READY=1 after RELOADING=1", |m| m.has("READY=1")).await;
    assert_eq!(ready_again.pid, Some(proxy.pid()), "{ready_again:?}");

    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

/// Writes `text` into the FIFO at `path` once a reader opens it (within [`RELOAD_WITHIN`]).
async fn feed_fifo(path: &Path, text: String) {
    let fifo = path.to_owned();
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new().write(true).open(&fifo)?;
        file.write_all(text.as_bytes())
    });
    match timeout(RELOAD_WITHIN, writer).await {
        Ok(written) => written.expect("writer task").expect("write the config into the FIFO"),
        Err(_) => {
            // Release the blocked writer thread before failing.
            let _ = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path);
            panic!("nobody opened {} for reading within {RELOAD_WITHIN:?}", path.display());
        }
    }
}

#[tokio::test]
async fn reload_ignores_a_second_sigusr2_while_the_new_process_starts() {
    let first_backend = Backend::named("first").await;
    let second_backend = Backend::named("second").await;
    let mut proxy = Lameduck::start(&config_for(first_backend.addr)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);

    // The new process reads its config from a FIFO, so it cannot get ready before the test
    // writes the config into it: the re-exec is under way for as long as the test wants.
    let path = config_path(&proxy);
    std::fs::remove_file(&path).unwrap();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");

    let mark = proxy.logs.mark();
    proxy.sigusr2();
    expect_log(&proxy.logs, mark, RELOAD_STARTED, |l| message(l) == RELOAD_STARTED, PROMPT).await;
    proxy.sigusr2();
    expect_log(&proxy.logs, mark, RELOAD_IGNORED, |l| message(l) == RELOAD_IGNORED, PROMPT).await;
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "first", "the old process serves meanwhile");

    feed_fifo(&path, config_on(proxy.addr, second_backend.addr, DRAIN_30S)).await;
    let handed =
        expect_log(&proxy.logs, mark, HANDED_OVER, |l| message(l) == HANDED_OVER, RELOAD_WITHIN).await;
    let successor = pid_field(&handed, "successor.pid");
    // Once the old process drains, its accept loops have ended: only the new one accepts.
    expect_log(&proxy.logs, mark, "draining", |l| message(l) == "draining", PROMPT).await;
    assert_eq!(lines_with(&proxy.logs, RELOAD_STARTED).len(), 1, "one re-exec, not two");
    assert_eq!(lines_with(&proxy.logs, "ready").len(), 2, "one new process");
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "second", "the new process serves");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    assert!(!exited(successor));
}

#[tokio::test]
async fn reload_keeps_readyz_200_on_the_admin_port_while_the_old_process_drains() {
    let (release, backend) = Backend::holding("/held", "ok").await;
    let tail = format!("{DRAIN_30S}\n[admin]\naddr = \"127.0.0.1:0\"\n");
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", &tail)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);
    let admin = proxy.admin_addr.expect("admin listener");
    // A request held at the backend keeps the old process draining while the test probes.
    let client = H1Client::connect(proxy.addr).await;
    let req = client.request("GET", "/held", empty());
    let in_flight = client.spawn_fetch(req, secs(30));
    backend.arrived().await;

    reload(&proxy.logs, proxy.pid()).await;
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.push(raw_get(admin, "/readyz").await.status);
    }
    release.open();
    let done = in_flight.await.unwrap().expect("the held request completes");
    assert_eq!(done.text(), "ok");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let not_ready = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(not_ready, 0, "a reload is invisible to health checks too; /readyz answered {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_signal_after_the_handover_lets_the_old_process_finish_instead_of_cutting() {
    let (release, backend) = Backend::holding("/held", "ok").await;
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", DRAIN_30S)).await;
    let _successors = Successors::of(proxy.pid(), &proxy.logs);
    let client = H1Client::connect(proxy.addr).await;
    let req = client.request("GET", "/held", empty());
    let in_flight = client.spawn_fetch(req, secs(30));
    backend.arrived().await;

    reload(&proxy.logs, proxy.pid()).await;
    // With KillMode=control-group a stop signals every process of the unit, the old one too:
    // for it this is the first drain signal, not a second one that cuts.
    let mark = proxy.logs.mark();
    proxy.sigterm();
    let signalled =
        |l: &serde_json::Value| message(l) == "drain signal while handing over: new requests now get 503";
    expect_log(&proxy.logs, mark, "drain signal while handing over", signalled, PROMPT).await;
    release.open();
    let done = in_flight.await.unwrap().expect("the held request completes");
    assert_eq!(done.text(), "ok");
    assert_eq!(proxy.exit_within(PROMPT).await, 0, "the old process drained; nothing was cut");
}
