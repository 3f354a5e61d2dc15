//! Drain on SIGTERM (issue 3), with the real binary and real signals: what
//! in-flight, idle and new connections see, how HTTP/2 is told (GOAWAY), the
//! grace period and `/readyz`, the exit statuses and the summary line, and a
//! load test that counts every outcome.

mod load;

use std::io::ErrorKind;
use std::net::SocketAddr;

use http::Response;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::harness::*;

/// One listener, upstream `app` → `backend`, and `[drain]` with `drain` lines.
fn drain_config(backend: SocketAddr, drain: &str) -> String {
    config(&[backend], "", &format!("[drain]\n{drain}\n"))
}

/// A backend that answers "done" once `gate` opens.
async fn held_backend() -> (Backend, Opener) {
    let (release, held) = gate();
    let backend = Backend::start(move |_req| {
        let held = held.clone();
        async move {
            held.wait().await;
            Response::new(full("done"))
        }
    })
    .await;
    (backend, release)
}

async fn assert_refused(addr: SocketAddr) {
    match timeout(PROMPT, TcpStream::connect(addr)).await {
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connect to {addr} after the drain started: {other:?}, want refused"),
    }
}

/// The exit summary's `key` as a number.
fn summary_f64(summary: &serde_json::Value, key: &str) -> f64 {
    field_f64(summary, key).unwrap_or_else(|| panic!("no numeric {key} in {summary}"))
}

#[tokio::test]
async fn drain_lets_in_flight_request_finish_then_exits_0() {
    let body = pattern_chunk(0, 256 * 1024);
    let slow = body.clone();
    let backend = Backend::start(move |_req| {
        let slow = slow.clone();
        async move {
            tokio::time::sleep(secs(2)).await; // the backend is slow: that is the scenario
            Response::new(full(slow))
        }
    })
    .await;
    let mut proxy = Lameduck::start(&drain_config(backend.addr, "deadline = \"30s\"")).await;
    let client = H1Client::connect(proxy.addr).await;
    let req = client.request("GET", "/slow", empty());
    let in_flight = client.spawn_fetch(req, secs(10));
    backend.arrived().await;
    proxy.sigterm();

    let got = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, body, "full body");
    assert_eq!(got.header("connection"), Some("close"), "in-flight HTTP/1.1 response during drain");
    assert_eq!(proxy.exit_within(secs(2)).await, 0);
    let summary = proxy.summary().await;
    assert_eq!(summary_f64(&summary, "exit.status"), 0.0);
    assert_eq!(summary_f64(&summary, "requests.completed"), 1.0, "{summary}");
    assert_eq!(summary_f64(&summary, "connections.cut"), 0.0, "{summary}");
}

#[tokio::test]
async fn drain_refuses_new_connections_on_every_listener() {
    let (backend, release) = held_backend().await;
    let config =
        format!("[[listen]]\naddr = \"127.0.0.1:0\"\n\n{}", drain_config(backend.addr, "deadline = \"30s\""));
    let mut proxy = Lameduck::start(&config).await;
    assert_eq!(proxy.addrs.len(), 2);
    let in_flight = H1Client::connect(proxy.addr).await;
    let req = in_flight.request("GET", "/", empty());
    let in_flight = in_flight.spawn_fetch(req, secs(10));
    backend.arrived().await;
    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    for addr in proxy.addrs.clone() {
        assert_refused(addr).await;
    }
    release.open();
    assert_eq!(in_flight.await.unwrap().expect("in-flight request").status, 200);
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn drain_answers_keepalive_request_with_503() {
    let backend = Backend::named("ok").await;
    let drain = "deadline = \"30s\"\nidle_linger = \"5s\"\nretry_after = \"7s\"";
    let mut proxy = Lameduck::start(&drain_config(backend.addr, drain)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response().await.status, 200);

    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    conn.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = conn.read_response().await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("7"));
    assert!(got.closes(), "no connection: close: {:?}", got.headers);
    assert!(!got.body.is_empty(), "503 without a text body");
    assert!(conn.closed_within(PROMPT).await, "connection open after connection: close");
    assert_eq!(backend.requests().len(), 1, "the 503 request reached the backend");

    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    assert_eq!(summary_f64(&proxy.summary().await, "requests.rejected"), 1.0);
}

#[tokio::test]
async fn drain_answers_a_large_post_with_503_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::named("ok").await;
    let drain = "deadline = \"30s\"\nidle_linger = \"5s\"";
    let mut proxy = Lameduck::start(&drain_config(backend.addr, drain)).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(PROMPT, rd.read(&mut first)).await.unwrap().unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&first[..n]));

    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    // 1 MiB that lameduck answers without reading: the 503 must still arrive whole.
    let body = vec![b'x'; 1 << 20];
    let head = format!("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PROMPT, rd.read_to_end(&mut answer)).await.expect("answer in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "read {read:?}, got {:?}", &text[..text.len().min(200)]);
    assert!(read.is_ok(), "the connection was reset instead of closed: {read:?}");
    let _ = writer.await;
    assert_eq!(backend.requests().len(), 1, "the POST reached the backend");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn drain_closes_idle_keepalive_connection_after_idle_linger() {
    let backend = Backend::named("ok").await;
    let drain = "deadline = \"30s\"\nidle_linger = \"1s\"";
    let mut proxy = Lameduck::start(&drain_config(backend.addr, drain)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response().await.status, 200);

    let signalled = Instant::now();
    proxy.sigterm();
    assert!(conn.closed_within(secs(5)).await, "idle connection still open 5 s into a 1 s linger");
    let lingered = signalled.elapsed();
    assert!(lingered >= ms(900), "closed after {lingered:?}: before idle_linger passed");
    assert!(lingered < secs(3), "closed only after {lingered:?}");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn drain_sends_goaway_to_h2_client_and_completes_its_stream() {
    let (backend, release) = held_backend().await;
    let mut proxy = Lameduck::start(&drain_config(backend.addr, "deadline = \"30s\"")).await;
    let (client, mut frames) = tapped_h2(proxy.addr).await;
    let first = client.spawn_fetch(client.request("GET", "/first", empty()), secs(15));
    backend.arrived().await;
    proxy.sigterm();

    let goaway = timeout(PROMPT, async {
        while let Some(frame) = frames.recv().await {
            if let FrameTap::GoAway { .. } = frame {
                return frame;
            }
        }
        panic!("connection closed without GOAWAY");
    });
    let goaway = goaway.await.expect("GOAWAY within PROMPT");
    assert!(matches!(goaway, FrameTap::GoAway { error_code: 0, .. }), "{goaway:?}");

    match client.send(client.request("GET", "/second", empty())).await {
        Err(e) if e.starts_with("no response head") => panic!("a new stream after GOAWAY: {e}"),
        Err(_refused) => {}
        Ok(response) => assert_eq!(response.status(), 503, "a new stream after GOAWAY"),
    }
    release.open();
    let got = first.await.unwrap().expect("the in-flight stream completes");
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "done"));
    assert_eq!(backend.requests().len(), 1, "the new stream reached the backend");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn drain_with_nothing_open_exits_0_promptly() {
    let backend = Backend::named("ok").await;
    let mut proxy = Lameduck::start(&config_for(backend.addr)).await;
    proxy.sigterm();
    proxy.wait_for_message("drain started").await;
    assert_eq!(proxy.exit_within(secs(2)).await, 0);
    let summary = proxy.summary().await;
    assert_eq!(summary_f64(&summary, "exit.status"), 0.0);
    assert!(summary_f64(&summary, "drain.secs") < 1.0, "{summary}");
    for key in ["requests.completed", "requests.rejected", "tunnels.closed", "connections.cut"] {
        assert_eq!(summary_f64(&summary, key), 0.0, "{key} in {summary}");
    }
}

#[tokio::test]
async fn sigint_drains_like_sigterm() {
    let backend = Backend::named("ok").await;
    let mut proxy = Lameduck::start(&config_for(backend.addr)).await;
    proxy.sigint();
    proxy.wait_for_message("drain started").await;
    assert_eq!(proxy.exit_within(secs(2)).await, 0);
}

#[tokio::test]
async fn drain_cuts_response_streaming_past_deadline_and_exits_2() {
    let backend = Backend::start(|_req| async {
        Response::new(dripping_body("tick\n".into(), ms(100), 600)) // 60 s of ticks
    })
    .await;
    let mut proxy = Lameduck::start(&drain_config(backend.addr, "deadline = \"2s\"")).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"GET /ticks HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_head().await.status, 200);
    conn.read_until_contains(b"tick", PROMPT).await.unwrap();

    let signalled = Instant::now();
    proxy.sigterm();
    let rest = conn.read_until_closed(secs(6)).await.expect("cut by the deadline");
    let cut_after = signalled.elapsed();
    assert!(cut_after >= ms(1800) && cut_after < secs(4), "cut {cut_after:?} after the signal, deadline 2s");
    assert!(!rest.windows(5).any(|w| w == b"0\r\n\r\n"), "the cut response looked complete");
    assert_eq!(proxy.exit_within(secs(2)).await, 2);
    let summary = proxy.summary().await;
    assert_eq!(summary_f64(&summary, "exit.status"), 2.0);
    assert!(summary_f64(&summary, "connections.cut") >= 1.0, "{summary}");
}

#[tokio::test]
async fn second_signal_exits_2_at_once() {
    let (backend, _never_released) = held_backend().await;
    let mut proxy = Lameduck::start(&drain_config(backend.addr, "deadline = \"30s\"")).await;
    let client = H1Client::connect(proxy.addr).await;
    let req = client.request("GET", "/", empty());
    let _in_flight = client.spawn_fetch(req, secs(30));
    backend.arrived().await;
    proxy.sigterm();
    proxy.wait_for_message("drain started").await;
    proxy.sigint();
    assert_eq!(proxy.exit_within(secs(2)).await, 2);
    let summary = proxy.summary().await;
    assert!(summary_f64(&summary, "connections.cut") >= 1.0, "{summary}");
}

#[tokio::test]
async fn grace_keeps_serving_while_readyz_is_503_then_drains() {
    let backend = Backend::named("served").await;
    let tail = "[drain]\ndeadline = \"30s\"\ngrace = \"1s\"\nidle_linger = \"5s\"\n\n\
                [admin]\naddr = \"127.0.0.1:0\"\n";
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", tail)).await;
    let admin = proxy.admin_addr.expect("admin listening line");
    assert_eq!(raw_get(admin, "/readyz").await.status, 200);
    assert_eq!(raw_get(admin, "/healthz").await.status, 200);
    let keepalive = b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut kept = RawConn::connect(proxy.addr).await;
    kept.send(keepalive).await;
    assert_eq!(kept.read_response().await.status, 200);

    let signalled = Instant::now();
    proxy.sigterm();
    proxy.wait_for_message("grace").await;
    assert_eq!(raw_get(admin, "/readyz").await.status, 503, "readyz during grace");
    assert_eq!(raw_get(admin, "/healthz").await.status, 200, "healthz during grace");
    let got = raw_get(proxy.addr, "/during-grace").await; // a new connection, served normally
    assert_eq!((got.status, got.body_text()), (200, "served".to_string()));
    kept.send(keepalive).await;
    let got = kept.read_response().await;
    assert_eq!((got.status, got.closes()), (200, false), "keep-alive during grace");
    assert!(signalled.elapsed() < secs(1), "grace checks took longer than the grace period");

    proxy.wait_for_message("draining").await;
    let grace = signalled.elapsed();
    assert!(grace >= ms(900), "draining after {grace:?}, grace is 1s");
    assert_refused(proxy.addr).await;
    kept.send(keepalive).await;
    let got = kept.read_response().await;
    assert_eq!((got.status, got.closes()), (503, true), "keep-alive after grace");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn admin_connection_does_not_hold_the_exit_back() {
    let backend = Backend::named("ok").await;
    let tail = format!("{DRAIN_30S}\n[admin]\naddr = \"127.0.0.1:0\"\n");
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", &tail)).await;
    let admin = proxy.admin_addr.expect("admin listening line");
    let mut probe = RawConn::connect(admin).await; // keep-alive, left open
    probe.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(probe.read_response().await.status, 200);
    proxy.sigterm();
    assert_eq!(proxy.exit_within(secs(2)).await, 0);
}

/// An HTTP/2 client whose request completed, and that then reads and sends nothing and never
/// closes (so it never acknowledges the PING of the two-step GOAWAY), does not hold the drain
/// to its deadline: after `idle_linger` its idle connection is closed, which is not a cut.
#[tokio::test]
async fn drain_closes_an_idle_h2_connection_whose_client_went_silent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::named("ok").await;
    let tail = "deadline = \"15s\"\nidle_linger = \"1s\"";
    let mut proxy = Lameduck::start(&drain_config(backend.addr, tail)).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Prior knowledge: the preface, an empty SETTINGS, then HEADERS for `GET /` on stream 1
    // (HPACK: indexed :method GET, :path /, :scheme http; :authority "x"), ending the stream.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 6, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x84, 0x86, 0x41, 1, b'x']);
    client.write_all(&hello).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(2).any(|w| w == b"ok") {
        let n = timeout(PROMPT, client.read(&mut buf)).await.expect("the answer").unwrap();
        assert!(n > 0, "the proxy closed the connection before answering");
        seen.extend_from_slice(&buf[..n]);
    }
    proxy.wait_for_message("request").await;
    // From here on the client is silent: it reads nothing and answers no PING.

    let signalled = Instant::now();
    proxy.sigterm();
    assert_eq!(proxy.exit_within(secs(6)).await, 0, "not held to the 15 s deadline");
    assert!(signalled.elapsed() >= std::time::Duration::from_millis(800), "{:?}", signalled.elapsed());
    let summary = proxy.summary().await;
    assert_eq!(summary_f64(&summary, "connections.cut"), 0.0, "{summary}");
    drop(client);
}
