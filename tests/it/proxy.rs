//! Forwarding, failures and logs (issue 2): what a client and a backend see
//! of a request passing through lameduck over HTTP/1.1 and h2c, how upstream
//! failures reach the client ([`failures`]), and the access and JSON logs.
//! The config checks (`--check`, bad config at start-up) are in [`check`].

mod check;
mod failures;
mod underscores;
mod wire;

use http::Response;
use http_body_util::BodyExt;
use tokio::time::timeout;

use crate::harness::*;

/// Answers `"<method> <uri> <body>"`, reading the whole request body.
async fn describe(req: Req) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Response::builder().status(500).body(full(e.to_string())).unwrap(),
    };
    let text = format!("{} {} {}", parts.method, parts.uri, String::from_utf8_lossy(&body));
    Response::new(full(text))
}

fn get_with_host(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn forwards_get_over_http1_keepalive() {
    let backend = Backend::named("hello").await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut client = H1Client::connect(proxy.addr).await;
    let got = client.get("/greeting?x=1").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "hello"));
    let seen = backend.arrived().await;
    assert_eq!((seen.method.as_str(), seen.uri.to_string().as_str()), ("GET", "/greeting?x=1"));
    // The same client connection serves a second request.
    assert_eq!(client.get("/again").await.text(), "hello");
    assert_eq!(backend.requests().len(), 2);
}

#[tokio::test]
async fn forwards_post_body_over_http1() {
    let backend = Backend::start(describe).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut client = H1Client::connect(proxy.addr).await;
    let req = client.request("POST", "/submit", full("name=lameduck"));
    let got = fetch(client.send(req).await.expect("response"), PROMPT).await.unwrap();
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "POST /submit name=lameduck"));
    assert_eq!(backend.arrived().await.body(), b"name=lameduck");
}

#[tokio::test]
async fn forwards_get_and_post_over_h2c_prior_knowledge() {
    let backend = Backend::start(describe).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let client = H2Client::connect(proxy.addr).await;
    let got = client.get("/h2?q=1").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "GET /h2?q=1 "));
    let seen = backend.arrived().await;
    assert_eq!(seen.version, http::Version::HTTP_11, "upstream speaks HTTP/1.1");
    assert_eq!(seen.header("host"), Some(proxy.addr.to_string()), ":authority becomes Host");

    let req = client.request("POST", "/h2", full("over h2"));
    let got = fetch(client.send(req).await.expect("response"), PROMPT).await.unwrap();
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "POST /h2 over h2"));
}

#[tokio::test]
async fn routes_by_host_and_path_prefix_first_match_wins_else_404() {
    let [a, b, c, d] = [
        Backend::named("a").await,
        Backend::named("b").await,
        Backend::named("c").await,
        Backend::named("d").await,
    ];
    let config = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n\
         [upstream.a]\naddrs = [\"{}\"]\n[upstream.b]\naddrs = [\"{}\"]\n\
         [upstream.c]\naddrs = [\"{}\"]\n[upstream.d]\naddrs = [\"{}\"]\n\n\
         [[route]]\nhost = \"api.example.com\"\npath_prefix = \"/v1/\"\nupstream = \"a\"\n\n\
         [[route]]\nhost = \"api.example.com\"\nupstream = \"b\"\n\n\
         [[route]]\npath_prefix = \"/static/\"\nupstream = \"c\"\n\n\
         [[route]]\npath_prefix = \"/v1/\"\nupstream = \"d\"\n\n{DRAIN_30S}",
        a.addr, b.addr, c.addr, d.addr
    );
    let proxy = Lameduck::start(&config).await;
    let cases = [
        ("api.example.com:8443", "/v1/users", "a"), // port ignored
        ("api.example.com", "/v1/users", "a"),
        ("api.example.com", "/static/logo.png", "b"), // route 2 comes before route 3
        ("www.example.com", "/static/logo.png", "c"),
        ("www.example.com:80", "/v1/users", "d"),
    ];
    for (host, path, expected) in cases {
        let got = raw_request(proxy.addr, &get_with_host(host, path)).await;
        assert_eq!((got.status, got.body_text()), (200, expected.to_string()), "Host {host}, {path}");
    }
    let h2 = H2Client::connect(proxy.addr).await;
    let req = h2.request_to("api.example.com:8443", "GET", "/other", empty());
    let got = fetch(h2.send(req).await.expect("h2 response"), PROMPT).await.unwrap();
    assert_eq!(got.text(), "b", ":authority routes like Host");

    let got = raw_request(proxy.addr, &get_with_host("www.example.com", "/nothing")).await;
    assert_eq!(got.status, 404);
    let reached: usize = [&a, &b, &c, &d].iter().map(|b| b.requests().len()).sum();
    assert_eq!(reached, cases.len() + 1, "the unrouted request reached a backend");
}

#[tokio::test]
async fn round_robin_alternates_between_two_addresses() {
    let (one, two) = (Backend::named("one").await, Backend::named("two").await);
    let proxy = Lameduck::start(&config(&[one.addr, two.addr], "", DRAIN_30S)).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(raw_get(proxy.addr, "/").await.body_text());
    }
    assert_eq!((one.requests().len(), two.requests().len()), (2, 2), "answers: {answers:?}");
    assert!(answers.windows(2).all(|w| w[0] != w[1]), "not alternating: {answers:?}");
}

#[tokio::test]
async fn connect_failure_falls_over_to_next_address_for_get_and_post() {
    let dead = DeadPort::new();
    let live = Backend::start(describe).await;
    let proxy = Lameduck::start(&config(&[dead.addr, live.addr], "", DRAIN_30S)).await;
    // Round robin starts on either address; four requests try both orders.
    for i in 0..4 {
        let body = format!("payload-{i}");
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let got = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!((got.status, got.body_text()), (200, format!("POST /upload {body}")));
        assert_eq!(raw_get(proxy.addr, "/get").await.status, 200);
    }
    assert_eq!(live.requests().len(), 8);
}

const BIG: u64 = 64 << 20;
/// A proxy that buffered a whole 64 MiB body would peak far above this.
const RSS_LIMIT_KIB: u64 = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_64_mib_upload_without_buffering_it() {
    let backend = Backend::start(|req: Req| async move {
        let mut body = req.into_body();
        let mut check = PatternCheck::default();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => check.feed(frame.data_ref().map_or(&[][..], |d| &d[..])),
                Err(e) => return Response::builder().status(500).body(full(e.to_string())).unwrap(),
            }
        }
        Response::new(full(format!("{} {}", check.len, check.mismatches)))
    })
    .await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut client = H1Client::connect(proxy.addr).await;
    let req = client.request("POST", "/upload", pattern_body(BIG));
    let response = client.send_within(req, secs(120)).await;
    let got = fetch(response.expect("upload answered within 120s"), PROMPT).await.unwrap();
    assert_eq!(got.text(), format!("{BIG} 0"), "bytes received, mismatches");
    let peak = proxy.peak_rss_kib();
    println!("peak RSS {peak} KiB");
    assert!(peak < RSS_LIMIT_KIB, "lameduck peaked at {peak} KiB for a 64 MiB upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_64_mib_download_without_buffering_it() {
    let backend = Backend::start(|_req| async { Response::new(pattern_body(BIG)) }).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut client = H1Client::connect(proxy.addr).await;
    let response = client.send(client.request("GET", "/download", empty())).await;
    let mut body = response.expect("response").into_body();
    let mut check = PatternCheck::default();
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("download body");
            check.feed(frame.data_ref().map_or(&[][..], |d| &d[..]));
        }
    };
    timeout(secs(120), read_all).await.expect("download within 120s");
    assert_eq!(check, PatternCheck { len: BIG, mismatches: 0 });
    let peak = proxy.peak_rss_kib();
    println!("peak RSS {peak} KiB");
    assert!(peak < RSS_LIMIT_KIB, "lameduck peaked at {peak} KiB for a 64 MiB download");
}

#[tokio::test]
async fn removes_hop_by_hop_headers_and_sets_forwarded_headers() {
    let backend = Backend::start(|_req| async {
        Response::builder()
            .header("connection", "x-backend-hop")
            .header("x-backend-hop", "1")
            .header("keep-alive", "timeout=99")
            .header("x-visible", "yes")
            .body(full("headers"))
            .unwrap()
    })
    .await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let request = "GET /headers HTTP/1.1\r\nHost: site.example:8080\r\n\
                   Connection: keep-alive, X-Secret\r\nX-Secret: hop\r\nKeep-Alive: timeout=5\r\n\
                   Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\
                   X-Forwarded-For: 10.1.2.3\r\nX-End-To-End: kept\r\n\r\n";
    let got = raw_request(proxy.addr, request.as_bytes()).await;
    assert_eq!(got.status, 200);
    let seen = backend.arrived().await;
    for hop in ["x-secret", "keep-alive", "proxy-connection", "te", "trailer"] {
        assert_eq!(seen.header(hop), None, "{hop} reached the backend");
    }
    let connection = seen.header("connection").unwrap_or_default().to_ascii_lowercase();
    assert!(!connection.contains("x-secret"), "connection: {connection}");
    assert_eq!(seen.header("host").as_deref(), Some("site.example:8080"), "Host kept");
    assert_eq!(seen.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen.header("x-forwarded-host").as_deref(), Some("site.example:8080"));
    // And on the way back.
    assert_eq!(got.header("x-visible"), Some("yes"));
    assert_eq!(got.header("x-backend-hop"), None);
    assert_eq!(got.header("keep-alive"), None);
}

#[tokio::test]
async fn expect_100_continue_gets_interim_then_final_response() {
    let backend = Backend::start(describe).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = conn.read_head().await;
    assert_eq!(interim.status, 100, "the client waits for 100 Continue before its body");
    conn.send(b"hello world").await;
    let got = conn.read_response().await;
    assert_eq!((got.status, got.body_text()), (200, "POST /expect hello world".to_string()));
}

#[tokio::test]
async fn head_request_gets_headers_and_no_body() {
    let backend = Backend::start(|_req| async { Response::new(full("five!")) }).await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = conn.try_read_response(true, PROMPT).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5"));
    assert_eq!(backend.arrived().await.method, "HEAD");
    // No stray body bytes: the next response on the connection parses cleanly.
    conn.send(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let got = conn.read_response().await;
    assert_eq!((got.status, got.body_text()), (200, "five!".to_string()));
}

#[tokio::test]
async fn chunked_request_and_response_bodies_are_forwarded() {
    let backend = Backend::echo().await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await;
    conn.send(b"5\r\nhello\r\n6\r\n world\r\n").await;
    conn.send(b"0\r\n\r\n").await;
    let got = conn.read_response().await;
    assert_eq!(got.status, 200);
    assert!(got.chunked, "an echo of unknown length comes back chunked: {:?}", got.headers);
    assert_eq!(got.body_text(), "hello world");
    assert_eq!(backend.arrived().await.body(), b"hello world");
}

#[tokio::test]
async fn access_log_line_has_method_path_status_upstream_duration_bytes() {
    let backend = Backend::named("12345").await;
    let proxy = Lameduck::start(&config_for(backend.addr)).await;
    assert_eq!(raw_get(proxy.addr, "/logged?x=1").await.status, 200);
    let posted = raw_request(
        proxy.addr,
        b"POST /logged/post HTTP/1.1\r\nHost: site.example\r\nUser-Agent: test/1\r\nX-Request-Id: r-42\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(posted.status, 200);
    let is_ours = |l: &serde_json::Value| {
        is_access_line(l) && field_str(l, "http.path").is_some_and(|p| p.starts_with("/logged"))
    };
    let line = proxy.wait_for_log(is_ours, PROMPT).await;
    assert_eq!(field_str(&line, "http.method").as_deref(), Some("GET"), "{line}");
    assert_eq!(field_f64(&line, "http.status"), Some(200.0), "{line}");
    assert_eq!(field_str(&line, "upstream.name").as_deref(), Some("app"), "{line}");
    assert!(field_f64(&line, "duration_ms").is_some_and(|d| d >= 0.0), "{line}");
    assert_eq!(field_f64(&line, "bytes.out"), Some(5.0), "response body bytes: {line}");
    assert_eq!(field_str(&line, "http.query").as_deref(), Some("x=1"), "{line}");
    assert_eq!(field_str(&line, "http.version").as_deref(), Some("HTTP/1.1"), "{line}");
    assert_eq!(field_str(&line, "upstream.addr"), Some(backend.addr.to_string()), "{line}");
    assert!(field_f64(&line, "upstream.duration_ms").is_some_and(|d| d >= 0.0), "{line}");
    assert_eq!(line["drain"], false, "{line}");
    // A request without X-Request-Id gets one, and the upstream sees it.
    let made = field_str(&line, "request_id").expect("a request id");
    assert_eq!(made.len(), 16, "{line}");
    let first = backend.arrived().await;
    assert_eq!(first.header("x-request-id"), Some(made), "the generated id goes upstream");

    let is_post = |l: &serde_json::Value| {
        is_access_line(l) && field_str(l, "http.path").as_deref() == Some("/logged/post")
    };
    let line = proxy.wait_for_log(is_post, PROMPT).await;
    assert_eq!(field_str(&line, "request_id").as_deref(), Some("r-42"), "the client's id is kept: {line}");
    assert_eq!(field_str(&line, "http.host").as_deref(), Some("site.example"), "{line}");
    assert_eq!(field_str(&line, "user_agent").as_deref(), Some("test/1"), "{line}");
    assert_eq!(field_f64(&line, "bytes.in"), Some(3.0), "request body bytes: {line}");
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let backend = Backend::named("ok").await;
    let mut proxy = Lameduck::start(&config_for(backend.addr)).await;
    assert_eq!(raw_get(proxy.addr, "/").await.status, 200);
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    proxy.logs.wait_closed().await;
    let lines = proxy.logs.lines();
    assert!(lines.len() >= 4, "too few log lines: {lines:?}");
    for line in &lines {
        assert!(line.is_object(), "not a JSON object: {line}");
        for key in ["timestamp", "level", "target"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
}
