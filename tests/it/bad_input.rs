//! Bad client input (issue 2, item 4), each over a raw `TcpStream`: a clear
//! 4xx that reaches no backend, slow senders cut, absolute-form targets routed
//! like any other request (never an open forward proxy), and
//! `max_connections` holding new connections in the kernel backlog.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::*;

/// Sends `request` on a fresh connection; asserts the status and that the
/// backend never saw a request.
async fn assert_rejected(request: &[u8], status: u16) {
    let backend = Backend::named("should not be reached").await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    // The proxy may answer and close before reading everything we send.
    let _ = conn.try_send(request).await;
    let got = conn.try_read_response(false, PROMPT).await.expect("a response");
    assert_eq!(got.status, status, "body: {:?}", got.body_text());
    assert!(conn.closed_within(PROMPT).await, "connection left open after {status}");
    assert!(backend.requests().is_empty(), "reached the backend: {:?}", backend.requests());
}

#[tokio::test]
async fn malformed_request_line_gets_400() {
    assert_rejected(b"GET / HTTP/1.1 junk\r\nHost: x\r\n\r\n", 400).await;
}

#[tokio::test]
async fn header_line_without_colon_gets_400() {
    assert_rejected(b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400).await;
}

#[tokio::test]
async fn content_length_with_chunked_transfer_encoding_gets_400_and_reaches_no_backend() {
    let smuggling = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                      0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_rejected(smuggling, 400).await;
}

#[tokio::test]
async fn two_differing_content_lengths_get_400() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    )
    .await;
}

#[tokio::test]
async fn header_block_of_100_kib_gets_431() {
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10 {
        request.extend(format!("X-Pad-{i}: {}\r\n", "a".repeat(10 * 1024)).into_bytes());
    }
    request.extend(b"\r\n");
    assert_rejected(&request, 431).await;
}

/// Writes `bytes` one per second until the peer closes; returns how long the
/// connection stayed open (or `None` if it outlived `within`).
async fn trickle(addr: std::net::SocketAddr, bytes: &'static [u8], within: Duration) -> Option<Duration> {
    let connect = tokio::time::timeout(PROMPT, TcpStream::connect(addr)).await;
    let stream = connect.expect("connect in time").expect("connect");
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for byte in bytes {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
            tokio::time::sleep(secs(1)).await; // the point of the test: time passes
        }
    });
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = read.read(&mut buf).await {}
    })
    .await;
    writer.abort();
    closed.ok().map(|()| started.elapsed())
}

#[tokio::test]
async fn slow_header_sender_is_cut_after_header_read_timeout() {
    let backend = Backend::named("should not be reached").await;
    let tail = format!("{DRAIN_30S}\n[limits]\nheader_read_timeout = \"1s\"\n");
    let proxy = Lameduck::start(&config(&[backend.addr], "", &tail)).await;
    // 48 bytes at one per second would take 48 s to finish.
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789\r\n\r\n";
    let open_for = trickle(proxy.addr, request, secs(8)).await;
    let open_for = open_for.expect("still open 8 s into a 48 s header block");
    assert!(open_for >= ms(900), "cut after {open_for:?}, before the 1 s timeout");
    assert!(open_for < secs(5), "cut only after {open_for:?}");
    assert!(backend.requests().is_empty());
}

fn two_upstream_config(a: &Backend, b: &Backend, default_route: bool) -> String {
    let default = if default_route { "[[route]]\nupstream = \"a\"\n" } else { "" };
    format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n\
         [upstream.a]\naddrs = [\"{}\"]\n[upstream.b]\naddrs = [\"{}\"]\n\n\
         [[route]]\nhost = \"other.example\"\nupstream = \"b\"\n\n{default}\n{DRAIN_30S}",
        a.addr, b.addr
    )
}

#[tokio::test]
async fn absolute_form_target_is_routed_by_its_host() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let bystander = Backend::named("bystander").await; // not in the config
    let proxy = Lameduck::start(&two_upstream_config(&a, &b, true)).await;

    let request =
        b"GET http://other.example/path?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let got = raw_request(proxy.addr, request).await;
    assert_eq!((got.status, got.body_text()), (200, "b".to_string()));
    assert_eq!(b.arrived().await.uri.path(), "/path");

    // A target naming some other server goes to the default route, not there.
    let target = bystander.addr;
    let request = format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let got = raw_request(proxy.addr, request.as_bytes()).await;
    assert_eq!((got.status, got.body_text()), (200, "a".to_string()));
    assert!(bystander.requests().is_empty(), "lameduck acted as a forward proxy");
}

#[tokio::test]
async fn absolute_form_target_with_unrouted_host_gets_404() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let proxy = Lameduck::start(&two_upstream_config(&a, &b, false)).await;
    let request =
        b"GET http://elsewhere.example/ HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(proxy.addr, request).await.status, 404);
    assert!(a.requests().is_empty() && b.requests().is_empty());
}

#[tokio::test]
async fn max_connections_holds_a_third_connection_until_a_slot_frees() {
    let backend = Backend::named("ok").await;
    let tail = format!("{DRAIN_30S}\n[limits]\nmax_connections = 2\n");
    let proxy = Lameduck::start(&config(&[backend.addr], "", &tail)).await;
    let keepalive = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = RawConn::connect(proxy.addr).await;
    first.send(keepalive).await;
    assert_eq!(first.read_response().await.status, 200);
    let mut second = RawConn::connect(proxy.addr).await;
    second.send(keepalive).await;
    assert_eq!(second.read_response().await.status, 200);

    let mut third = RawConn::connect(proxy.addr).await; // the kernel's backlog accepts it
    third.send(b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    // The point here is that time passes without an answer.
    let early = third.try_read_head(secs(1)).await;
    assert!(early.as_ref().is_err_and(|e| e.contains("timed out")), "third connection: {early:?}");

    drop(first);
    let got = third.try_read_response(false, PROMPT).await.expect("served once a slot is free");
    assert_eq!(got.status, 200);
    assert_eq!(backend.requests().len(), 3);
}

#[tokio::test]
async fn connect_method_gets_405_and_reaches_no_backend() {
    let backend = Backend::named("never").await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let got =
        raw_request(proxy.addr, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert_eq!(got.status, 405, "{got:?}");
    assert!(backend.requests().is_empty(), "CONNECT reached the backend");
}

#[tokio::test]
async fn accept_loop_survives_running_out_of_file_descriptors() {
    let backend = Backend::named("still here").await;
    // A low descriptor limit for the daemon alone, so that idle clients exhaust it.
    let proxy = Lameduck::start_with(&config_for(backend.addr), |cmd| {
        // SAFETY: setrlimit is async-signal-safe and only affects the child about to exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: 48, rlim_max: 48 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(proxy.addr).await.expect("the kernel backlog takes the connection"));
    }
    proxy.wait_for_log(|l| message(l).contains("out of file descriptors"), PROMPT).await;
    drop(idle);
    // Once descriptors free up, the loop accepts again.
    let got = tokio::time::timeout(PROMPT, async {
        loop {
            let response = raw_get(proxy.addr, "/").await;
            if response.status == 200 {
                return response;
            }
        }
    })
    .await
    .expect("served again after the descriptors came back");
    assert_eq!(got.body_text(), "still here");
}
