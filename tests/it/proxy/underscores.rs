//! Request header names with `_` (issue 12 §5): CGI-style backends (PHP, WSGI, Rack) read
//! `X_Forwarded_For` and `X-Forwarded-For` as one variable, so lameduck drops such names
//! before forwarding — over HTTP/1.1, h2c and on WebSocket upgrades — with a debug line, and
//! forwards them only on a route with `underscores_in_headers = true`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;
use crate::websocket::peers::{raw_client_handshake, raw_server_handshake};

/// The spoofing attempt and a harmless custom header, as a client writes them.
const UNDERSCORED: &str = "X_Forwarded_For: evil\r\nx_custom: 1\r\n";

fn get_with_underscores(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: site.example\r\n{UNDERSCORED}X-Kept: yes\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Routes `/legacy/` (to `backend`) with `underscores_in_headers = true`, everything else (to
/// the same backend) with the default.
fn config_keeping_underscores_under_legacy(backend: SocketAddr) -> String {
    format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n\
         [upstream.app]\naddrs = [\"{backend}\"]\n\n\
         [[route]]\npath_prefix = \"/legacy/\"\nupstream = \"app\"\nunderscores_in_headers = true\n\n\
         [[route]]\nupstream = \"app\"\n\n{DRAIN_30S}"
    )
}

fn assert_underscores_dropped(seen: &Recorded) {
    assert_eq!(
        seen.header("x_forwarded_for"),
        None,
        "spoofed header reached the backend: {:?}",
        seen.headers
    );
    assert_eq!(seen.header("x_custom"), None, "{:?}", seen.headers);
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"), "lameduck's own is intact");
}

#[tokio::test]
async fn underscored_request_headers_are_dropped_over_http1_with_a_debug_line() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let got = raw_request(proxy.addr, &get_with_underscores("/")).await;
    assert_eq!(got.status, 200);
    let seen = backend.arrived().await;
    assert_underscores_dropped(&seen);
    assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));

    for name in ["x_forwarded_for", "x_custom"] {
        let dropped = |l: &serde_json::Value| field_str(l, "header.name").as_deref() == Some(name);
        let line = proxy.wait_for_log(dropped, PROMPT).await;
        assert_eq!(field_str(&line, "level").as_deref(), Some("DEBUG"), "{line}");
        assert!(field_str(&line, "client.addr").is_some_and(|a| a.starts_with("127.0.0.1:")), "{line}");
    }
}

#[tokio::test]
async fn underscored_request_headers_are_dropped_over_h2c() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let client = H2Client::connect(proxy.addr).await;
    let mut req = client.request("GET", "/h2", empty());
    req.headers_mut().insert("x_forwarded_for", "evil".parse().unwrap());
    req.headers_mut().insert("x_custom", "1".parse().unwrap());
    let got = fetch(client.send(req).await.expect("response"), PROMPT).await.unwrap();
    assert_eq!(got.status, 200);
    assert_underscores_dropped(&backend.arrived().await);
}

#[tokio::test]
async fn underscored_request_headers_are_dropped_from_websocket_upgrades() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Lameduck::start(&config_for(listener.local_addr().unwrap())).await;
    let client = tokio::spawn(async move {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect to lameduck");
        raw_client_handshake(&mut stream, UNDERSCORED).await;
        (stream, proxy)
    });
    let upgrade = tokio::time::timeout(PROMPT, raw_server_handshake(&listener, ""));
    let (_upstream, head) = upgrade.await.expect("the upgrade request reaches the backend");
    let _client = client.await.expect("client handshake");
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("x_forwarded_for") && !head.contains("x_custom"), "{head}");
    assert!(head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
}

#[tokio::test]
async fn route_with_underscores_in_headers_forwards_them() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&config_keeping_underscores_under_legacy(backend.addr)).await;

    assert_eq!(raw_request(proxy.addr, &get_with_underscores("/legacy/form.php")).await.status, 200);
    let seen = backend.arrived().await;
    assert_eq!(seen.header("x_forwarded_for").as_deref(), Some("evil"));
    assert_eq!(seen.header("x_custom").as_deref(), Some("1"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"), "lameduck's own is intact");

    let client = H2Client::connect(proxy.addr).await;
    let mut req = client.request("GET", "/legacy/h2", empty());
    req.headers_mut().insert("x_custom", "2".parse().unwrap());
    assert_eq!(fetch(client.send(req).await.expect("response"), PROMPT).await.unwrap().status, 200);
    assert_eq!(backend.arrived().await.header("x_custom").as_deref(), Some("2"), "over h2c too");

    // The other route keeps the default.
    assert_eq!(raw_request(proxy.addr, &get_with_underscores("/other")).await.status, 200);
    assert_underscores_dropped(&backend.arrived().await);
}
