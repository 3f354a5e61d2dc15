//! `/metrics` as a scraper sees it: counters that move by exactly what happened, split by
//! status code; histograms whose count moves with them; drain counters; and an exposition a
//! strict OpenMetrics parser accepts while serving, during a drain and after a reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::harness::*;
use crate::websocket::peers::{Behaviour, WsBackend};

const ADMIN: &str = "[admin]\naddr = \"127.0.0.1:0\"\n";

/// One scrape: the body, after checking the content type.
async fn scrape(admin: SocketAddr) -> String {
    let resp = raw_get(admin, "/metrics").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "the content type names the format written"
    );
    let text = resp.body_text();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF: {text}");
    text
}

/// The value of the sample `name{labels}` (labels in any order), or 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(key, _)| {
            let (metric, rest) = key.split_once('{').unwrap_or((key, "}"));
            metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map_or(0.0, |(_, value)| value.parse().unwrap_or_else(|e| panic!("{name}: {value:?}: {e}")))
}

/// A strict OpenMetrics parser (Python `prometheus_client`'s), from the venv `.ci/run` sets
/// up; `None` where it is not installed (the check then runs in CI only).
fn parser() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    let python = target.join("ci-venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("no strict OpenMetrics parser here (.ci/run installs it); exposition not parsed");
    }
    ok.then_some(python)
}

/// Fails unless the strict parser reads `text` whole.
async fn assert_parses(python: &Option<PathBuf>, text: &str, when: &str) {
    let Some(python) = python else { return };
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nn = len(list(p(sys.stdin.read())))\nprint(n)";
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).await.expect("feed the parser");
    let out =
        timeout(PROMPT, child.wait_with_output()).await.expect("the parser ends").expect("parser output");
    assert!(
        out.status.success(),
        "{when}: the strict OpenMetrics parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn request_counters_move_by_exactly_what_was_answered_split_by_code() {
    let backend = Backend::start(|req: Req| async move {
        let status = match req.uri().path() {
            "/missing" => 404,
            "/broken" => 500,
            _ => 200,
        };
        Response::builder().status(status).body(full("x")).unwrap()
    })
    .await;
    let proxy = Lameduck::start(&config(&[backend.addr], "", &format!("{DRAIN_30S}{ADMIN}"))).await;
    let admin = proxy.admin_addr.expect("admin listening");
    let python = parser();
    let before = scrape(admin).await;
    assert_parses(&python, &before, "while serving").await;

    let mut client = H1Client::connect(proxy.addr).await;
    for path in ["/", "/", "/", "/missing", "/missing", "/broken"] {
        client.get(path).await;
    }
    let h2 = H2Client::connect(proxy.addr).await;
    h2.get("/").await;
    let bad = raw_request(proxy.addr, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").await;
    assert_eq!(bad.status, 400);

    let after = scrape(admin).await;
    assert_parses(&python, &after, "after requests").await;
    let moved = |labels: &[(&str, &str)]| {
        sample(&after, "lameduck_http_requests_total", labels)
            - sample(&before, "lameduck_http_requests_total", labels)
    };
    let app = [("upstream", "app"), ("method", "GET")];
    assert_eq!(moved(&[app[0], app[1], ("code", "200"), ("protocol", "http/1.1")]), 3.0, "{after}");
    assert_eq!(moved(&[app[0], app[1], ("code", "404"), ("protocol", "http/1.1")]), 2.0);
    assert_eq!(moved(&[app[0], app[1], ("code", "500"), ("protocol", "http/1.1")]), 1.0);
    assert_eq!(moved(&[app[0], app[1], ("code", "200"), ("protocol", "http/2")]), 1.0);
    assert_eq!(moved(&[("upstream", "none"), ("code", "400")]), 1.0, "answered by lameduck itself");
    let count = |text: &str, upstream| {
        sample(text, "lameduck_http_request_duration_seconds_count", &[("upstream", upstream)])
    };
    assert_eq!(count(&after, "app") - count(&before, "app"), 7.0, "one observation per request");
    let headers =
        |text: &str| sample(text, "lameduck_upstream_response_headers_seconds_count", &[("upstream", "app")]);
    assert_eq!(headers(&after) - headers(&before), 7.0);
    let out = |text: &str| sample(text, "lameduck_http_response_bytes_total", &[("upstream", "app")]);
    assert_eq!(out(&after) - out(&before), 7.0, "one body byte per response");
    assert!(sample(&after, "lameduck_connections_accepted_total", &[]) >= 3.0);
    let open = |kind| sample(&after, "lameduck_connections", &[("kind", kind), ("tls", "false")]);
    assert_eq!(open("http2"), 1.0, "the h2c client, seen as HTTP/2 by its preface: {after}");
    assert!(open("http1") >= 1.0, "the keep-alive HTTP/1.1 client: {after}");
    drop((client, h2));
    assert_eq!(sample(&after, "lameduck_phase", &[("phase", "serving")]), 1.0);
    assert!(sample(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(after.contains("lameduck_build_info{version=\""), "{after}");
}

/// A WebSocket client that never answers lameduck's Close: its tunnel is cut after
/// `close_timeout`, counted while a slow request keeps the drain (and `/metrics`) going.
#[tokio::test]
async fn a_drain_counts_its_cut_tunnel_and_parses_during_the_drain_and_after_a_reload() {
    let ws = WsBackend::start(Behaviour::Echo).await;
    let (release, app) = Backend::holding("/slow", "ok").await;
    let text = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n[upstream.ws]\naddrs = [\"{}\"]\n\n[upstream.app]\naddrs = [\"{}\"]\n\n\
         [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n\n[[route]]\nupstream = \"app\"\n\n\
         [drain]\ndeadline = \"20s\"\nclose_timeout = \"300ms\"\n\n{ADMIN}",
        ws.addr, app.addr
    );
    let mut proxy = Lameduck::start(&text).await;
    let admin = proxy.admin_addr.expect("admin listening");
    let python = parser();

    // A reload in place, then a scrape.
    let mark = proxy.logs.mark();
    proxy.sighup();
    proxy.wait_for_log_after(mark, |l| message(l) == "reload ok", PROMPT).await;
    assert_parses(&python, &scrape(admin).await, "after a reload").await;

    // A client that upgrades, then reads nothing and answers no Close.
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let upgrade = "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    silent.write_all(upgrade.as_bytes()).await.expect("send the upgrade");
    let mut head = [0u8; 12];
    silent.read_exact(&mut head).await.expect("the 101");
    assert_eq!(&head, b"HTTP/1.1 101");
    let tunnelled =
        |text: &str| sample(text, "lameduck_connections", &[("kind", "websocket"), ("tls", "false")]);
    let mut scraped = scrape(admin).await;
    for _ in 0..100 {
        // The tunnel is counted once its task runs, right after the 101.
        if tunnelled(&scraped) == 1.0 {
            break;
        }
        tokio::task::yield_now().await;
        scraped = scrape(admin).await;
    }
    assert_eq!(tunnelled(&scraped), 1.0, "the open WebSocket: {scraped}");
    let client = H1Client::connect(proxy.addr).await;
    let req = client.request("GET", "/slow", empty());
    let slow = client.spawn_fetch(req, secs(20));
    while app.arrived().await.uri.path() != "/slow" {}

    let mark = proxy.logs.mark();
    proxy.sigterm();
    proxy.wait_for_log_after(mark, |l| message(l) == "draining", PROMPT).await;
    // The cut is logged just before it is counted: scrape until it shows (bounded).
    proxy.wait_for_log_after(mark, |l| message(l) == "tunnel cut", PROMPT).await;
    let mut during = scrape(admin).await;
    for _ in 0..100 {
        if sample(&during, "lameduck_drain_tunnels_cut_total", &[]) >= 1.0 {
            break;
        }
        tokio::task::yield_now().await;
        during = scrape(admin).await;
    }
    assert_eq!(sample(&during, "lameduck_drain_tunnels_cut_total", &[]), 1.0, "{during}");
    assert_eq!(sample(&during, "lameduck_phase", &[("phase", "draining")]), 1.0);
    assert!(sample(&during, "lameduck_drain_deadline_timestamp_seconds", &[]) > 1.7e9, "{during}");
    assert_parses(&python, &during, "during a drain").await;
    release.open();
    assert_eq!(timeout(PROMPT, slow).await.expect("answered").expect("task").expect("fetched").status, 200);
    drop(silent);
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}
