//! Upstream failures (issue 2, "Failures"): refused → 502 naming the
//! upstream, silent → 504 after `timeout`, unreachable → answered within
//! `connect_timeout`, dying mid-body → the client's response is aborted
//! (HTTP/1.1: closed without the final chunk or short of Content-Length;
//! h2: RST_STREAM), never passed off as complete.

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::time::{timeout, Instant};

use crate::harness::*;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn refused_upstream_gets_502_naming_the_upstream_not_its_address() {
    let dead = DeadPort::new();
    let config = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n[upstream.legacy]\naddrs = [\"{}\"]\n\n\
         [[route]]\nupstream = \"legacy\"\n\n{DRAIN_30S}",
        dead.addr
    );
    let proxy = Lameduck::start(&config).await;
    let mark = proxy.logs.mark();
    let got = raw_get(proxy.addr, "/").await;
    assert_eq!(got.status, 502);
    let body = got.body_text();
    assert!(body.contains("legacy"), "502 body does not name the upstream: {body:?}");
    let port = dead.addr.port().to_string();
    assert!(!body.contains(&port) && !body.contains("127.0.0.1"), "502 body leaks the address: {body:?}");
    let detail = dead.addr.to_string();
    proxy.wait_for_log_after(mark, |l| l.to_string().contains(&detail), PROMPT).await;
}

#[tokio::test]
async fn upstream_silent_past_timeout_gets_504() {
    let backend = Backend::start(|_req| std::future::pending::<Response<Body>>()).await;
    let proxy = Lameduck::start(&config(&[backend.addr], "timeout = \"500ms\"", DRAIN_30S)).await;
    let started = Instant::now();
    let got = raw_get(proxy.addr, "/").await;
    let took = started.elapsed();
    assert_eq!(got.status, 504);
    assert!(took >= ms(450) && took < secs(4), "504 after {took:?}, timeout 500ms");
}

/// The blackhole is a full accept queue on 127.0.0.1, so this stays local.
#[tokio::test]
async fn connect_timeout_answers_502_for_an_address_that_never_answers() {
    let hole = Blackhole::start().await;
    let upstream = "connect_timeout = \"300ms\"\ntimeout = \"30s\"";
    let proxy = Lameduck::start(&config(&[hole.addr], upstream, DRAIN_30S)).await;
    let started = Instant::now();
    let got = raw_get(proxy.addr, "/").await;
    let took = started.elapsed();
    assert_eq!(got.status, 502, "an unreachable upstream is a 502");
    assert!(took >= ms(250) && took < secs(3), "answered after {took:?}, connect_timeout 300ms");
}

/// A backend that sends `partial-data`, then dies when `die` opens.
async fn dying_backend(content_length: Option<u64>) -> (Backend, Opener) {
    let (die, dying) = gate();
    let backend = Backend::start(move |_req| {
        let dying = dying.clone();
        async move {
            let mut response = Response::builder();
            if let Some(len) = content_length {
                response = response.header("content-length", len);
            }
            let body = dying_body(Bytes::from_static(b"partial-data"), dying);
            response.body(body).unwrap()
        }
    })
    .await;
    (backend, die)
}

#[tokio::test]
async fn upstream_dying_mid_body_closes_http1_response_without_final_chunk() {
    let (backend, die) = dying_backend(None).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"), "{:?}", head.headers);
    conn.read_until_contains(b"partial-data", PROMPT).await.unwrap();
    die.open();
    let rest = conn.read_until_closed(PROMPT).await.expect("lameduck closes the connection");
    assert!(!contains(&rest, b"0\r\n\r\n"), "final chunk sent: {:?}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn upstream_dying_mid_fixed_length_body_closes_http1_connection_short() {
    let (backend, die) = dying_backend(Some(100)).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = conn.read_head().await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("100")));
    conn.read_until_contains(b"partial-data", PROMPT).await.unwrap();
    die.open();
    let body = conn.read_until_closed(PROMPT).await.expect("lameduck closes the connection");
    assert_eq!(body, b"partial-data", "only what the backend sent, then the close");
}

#[tokio::test]
async fn upstream_dying_mid_body_resets_h2_stream() {
    let (backend, die) = dying_backend(None).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let (client, mut frames) = tapped_h2(proxy.addr).await;
    let response = client.send(client.request("GET", "/stream", empty())).await;
    let response = response.expect("response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.len() < b"partial-data".len() {
        let frame = timeout(PROMPT, body.frame()).await.expect("first data").expect("not the end");
        received.extend_from_slice(frame.expect("data frame").data_ref().expect("data"));
    }
    die.open();
    let end = timeout(PROMPT, body.collect()).await.expect("the stream ends");
    assert!(end.is_err(), "the h2 body ended as if complete");
    let reset = timeout(PROMPT, async {
        while let Some(frame) = frames.recv().await {
            if let FrameTap::Reset { stream_id: 1, error_code } = frame {
                return error_code;
            }
        }
        panic!("connection closed without RST_STREAM on stream 1");
    });
    let code = reset.await.expect("RST_STREAM within PROMPT");
    assert_ne!(code, 0, "RST_STREAM with NO_ERROR");
}
