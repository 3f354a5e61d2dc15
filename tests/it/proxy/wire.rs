//! The upstream side on the wire (lameduck's own HTTP/1.1 client): a scripted upstream
//! writes exact response bytes — chunked with extensions and trailers, 1xx before the
//! answer, HEAD and 204 without bodies, read-to-close bodies, garbage — and closes pooled
//! connections the way real servers do, to show each is followed, that connections are
//! reused only when that is safe, and that a closed pooled connection costs no request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// What the scripted upstream does with one request.
#[derive(Clone, Copy)]
enum Reply {
    /// Writes these bytes and waits for the next request on the connection.
    Send(&'static [u8]),
    /// Writes these bytes and closes the connection (no `Connection: close` needed).
    SendAndClose(&'static [u8]),
    /// Answers right after the head, reads no body, and closes once the proxy does.
    SendEarly(&'static [u8]),
    /// Closes the connection without answering.
    Drop,
}

/// An upstream that answers by script: `script(connection, request_on_it, head)`.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (count, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let index = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, index, script.clone(), seen.clone()));
            }
        });
        Scripted { addr, connections, heads }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

type Script = dyn Fn(usize, usize, &str) -> Reply + Send + Sync;

async fn serve(mut stream: TcpStream, conn: usize, script: Arc<Script>, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    for request in 0.. {
        let Some(head) = read_head(&mut stream, &mut buf).await else { return };
        heads.lock().unwrap().push(head.clone());
        let reply = script(conn, request, &head);
        if !matches!(reply, Reply::SendEarly(_)) && !skip_body(&mut stream, &mut buf, &head).await {
            return;
        }
        match reply {
            Reply::Send(bytes) => stream.write_all(bytes).await.unwrap(),
            Reply::SendAndClose(bytes) => return stream.write_all(bytes).await.unwrap(),
            Reply::SendEarly(bytes) => {
                stream.write_all(bytes).await.unwrap();
                // Read on until the proxy closes, so closing sends no reset over the answer.
                let mut sink = [0u8; 64 * 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Reply::Drop => return,
        }
    }
}

/// Reads one request head; `None` at EOF.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads and discards the request body (`Content-Length` or chunked); false at EOF.
async fn skip_body(stream: &mut TcpStream, buf: &mut Vec<u8>, head: &str) -> bool {
    let head = head.to_ascii_lowercase();
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
    let chunked = header("transfer-encoding:").is_some_and(|te| te.contains("chunked"));
    let length = header("content-length:").map_or(0, |v| v.parse::<usize>().unwrap());
    // A chunked body here is small: it ends at the first empty last chunk.
    let end = |buf: &[u8]| {
        if chunked {
            buf.windows(5).position(|w| w == b"0\r\n\r\n").map(|i| i + 5)
        } else {
            (buf.len() >= length).then_some(length)
        }
    };
    loop {
        if let Some(end) = end(buf) {
            buf.drain(..end);
            return true;
        }
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn response_framings_are_followed_and_the_connection_reused() {
    let upstream = Scripted::start(|_, _, head| {
        let path = head.split(' ').nth(1).unwrap_or_default();
        match path {
            "/chunked" => Reply::Send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
            "/hints" => Reply::Send(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ),
            "/empty" => Reply::Send(b"HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n"),
            "/head" => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            "/old" => Reply::SendAndClose(b"HTTP/1.0 200 OK\r\nX-Old: 1\r\n\r\nuntil the end"),
            _ => Reply::Send(OK_HELLO),
        }
    })
    .await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let mut client = RawConn::connect(proxy.addr).await;

    client.send(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let chunked = client.read_response().await;
    assert_eq!((chunked.status, chunked.body_text().as_str()), (200, "hello, world"));
    client.send(b"GET /hints HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let hinted = client.read_response().await;
    assert_eq!((hinted.status, hinted.body_text().as_str()), (200, "ok"), "the 103 is not the answer");
    client.send(b"DELETE /empty HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let empty = client.read_response().await;
    assert_eq!((empty.status, empty.header("x-empty")), (204, Some("1")));
    client.send(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = client.try_read_response(true, PROMPT).await.unwrap();
    assert_eq!((head.status, head.header("content-length")), (200, Some("5")));
    client.send(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.read_response().await.body_text(), "hello", "HEAD left nothing behind");
    assert_eq!(upstream.connections(), 1, "every answer so far left the connection reusable");

    client.send(b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let old = client.read_response().await;
    assert_eq!((old.status, old.body_text().as_str()), (200, "until the end"));
    client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.read_response().await.status, 200);
    assert_eq!(upstream.connections(), 2, "a body read to the close takes its connection with it");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_costs_no_request() {
    // Closed after each answer, the way an upstream's keep-alive timeout closes it.
    let upstream = Scripted::start(|_, _, _| Reply::SendAndClose(OK_HELLO)).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let mut client = RawConn::connect(proxy.addr).await;
    // Whether the proxy has seen the upstream's FIN when the next request comes or meets it
    // on the wire, the request is answered.
    for _ in 0..3 {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(client.read_response().await.status, 200);
    }
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn a_request_dropped_on_a_reused_connection_is_retried_only_if_idempotent() {
    // Every connection answers its first request and drops its second: the race in which an
    // upstream closes an idle connection just as the proxy sends on it.
    let upstream =
        Scripted::start(|_, request, _| if request == 0 { Reply::Send(OK_HELLO) } else { Reply::Drop }).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;

    let first = raw_get(proxy.addr, "/warm").await;
    assert_eq!(first.status, 200);
    let retried = raw_get(proxy.addr, "/again").await;
    assert_eq!((retried.status, retried.body_text().as_str()), (200, "hello"), "GET is sent again");
    assert_eq!(upstream.connections(), 2);

    let post = raw_request(
        proxy.addr,
        b"POST /once HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(post.status, 502, "a POST the upstream may have acted on is not sent twice");
    let posts = upstream.heads().iter().filter(|h| h.starts_with("POST /once")).count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn an_upstream_answering_before_the_upload_ends_is_heard() {
    let upstream = Scripted::start(|_, _, _| {
        Reply::SendEarly(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
    })
    .await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let mut client = RawConn::connect(proxy.addr).await;
    client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n").await;
    // Some of the body, far from all of it: the answer must not wait for the rest.
    let _ = client.try_send(&vec![b'x'; 256 * 1024]).await;
    let answer = client.try_read_response(false, PROMPT).await.expect("the upstream's answer");
    assert_eq!((answer.status, answer.body_text().as_str()), (413, "too large"));
}

#[tokio::test]
async fn an_upstream_speaking_garbage_gets_502() {
    let upstream = Scripted::start(|_, _, _| Reply::SendAndClose(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let got = raw_get(proxy.addr, "/").await;
    assert_eq!(got.status, 502);
    assert!(got.body_text().contains("app"), "the 502 names the upstream: {:?}", got.body_text());
}

#[tokio::test]
async fn chunked_uploads_reach_the_upstream_chunked() {
    let upstream = Scripted::start(|_, _, _| Reply::SendAndClose(OK_HELLO)).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let sent = raw_request(
        proxy.addr,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(sent.status, 200);
    let head = upstream.heads().pop().unwrap().to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{head}");
}

/// RFC 9112 §6.3: with `Transfer-Encoding`, `Content-Length` is ignored and never forwarded,
/// and such a connection is not used again; a coding lameduck does not decode gets 502, never
/// a body passed off as complete.
#[tokio::test]
async fn response_framing_follows_transfer_encoding_alone_and_refuses_other_codings() {
    let upstream = Scripted::start(|_, _, head| match head.split(' ').nth(1).unwrap_or_default() {
        "/both" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              b\r\nhello world\r\n0\r\n\r\n",
        ),
        "/gzip" => Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot gzip at all"),
        "/twice" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        _ => Reply::Send(OK_HELLO),
    })
    .await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let mut client = RawConn::connect(proxy.addr).await;

    client.send(b"GET /both HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let both = client.read_response().await;
    assert_eq!((both.status, both.body_text().as_str()), (200, "hello world"), "the chunked body, whole");
    assert_ne!(both.header("content-length"), Some("5"), "the upstream's Content-Length is not forwarded");
    client.send(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.read_response().await.body_text(), "hello");
    assert_eq!(upstream.connections(), 2, "the connection that sent both headers was not used again");

    for path in ["/gzip", "/twice"] {
        let got = raw_get(proxy.addr, path).await;
        assert_eq!(got.status, 502, "{path}: a coding lameduck cannot decode");
    }
}

/// RFC 9112 §7.1: a chunk size is hex digits alone, then an optional extension and CRLF.
/// Anything else aborts the client's response (it is never passed off as complete).
#[tokio::test]
async fn a_chunk_size_line_that_is_not_strictly_framed_aborts_the_response() {
    let upstream = Scripted::start(|_, _, head| match head.split(' ').nth(1).unwrap_or_default() {
        // Once read as a last chunk of size 0, the rest taken as trailers: an empty 200.
        "/0x5" => {
            Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n")
        }
        "/garbage" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 garbage\r\nhello\r\n0\r\n\r\n",
        ),
        "/bare-cr" => {
            Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n")
        }
        _ => Reply::Send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ok=\"a b\"\r\nhello\r\n0\r\n\r\n",
        ),
    })
    .await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    for path in ["/0x5", "/garbage", "/bare-cr"] {
        let mut client = RawConn::connect(proxy.addr).await;
        client.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        let got = client.try_read_response(false, PROMPT).await;
        assert!(got.is_err(), "{path}: the response must be aborted, not completed: {got:?}");
    }
    let good = raw_get(proxy.addr, "/extension").await;
    assert_eq!((good.status, good.body_text().as_str()), (200, "hello"), "an extension is fine");
}

/// Answers an upgrade request with `101` to the protocol it names (echoing `Upgrade`), or
/// `forced` when set; any other request with `hello`.
fn upgrade_script(
    forced: Option<&'static str>,
) -> impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static {
    move |_, _, head| {
        let asked =
            head.lines().find_map(|l| l.strip_prefix("upgrade: ").or_else(|| l.strip_prefix("Upgrade: ")));
        match asked {
            None => Reply::Send(OK_HELLO),
            Some(asked) => {
                let protocol = forced.unwrap_or(asked);
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\n\r\n"
                );
                Reply::Send(Box::leak(reply.into_boxed_str()).as_bytes())
            }
        }
    }
}

/// RFC 9113 §3.1: the h2c upgrade is obsolete. `Upgrade: h2c` and `HTTP2-Settings` never reach
/// a backend, so a client cannot turn a routed request into a raw tunnel to it: the request
/// goes upstream as an ordinary one.
#[tokio::test]
async fn h2c_upgrades_never_reach_the_backend() {
    let upstream = Scripted::start(upgrade_script(None)).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    let got = raw_request(
        proxy.addr,
        b"GET /public/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!((got.status, got.body_text().as_str()), (200, "hello"), "an ordinary answer, no 101");
    let head = upstream.heads().pop().expect("the request reached the backend").to_ascii_lowercase();
    assert!(!head.contains("upgrade") && !head.contains("http2-settings"), "{head}");
}

/// Only `websocket` is let through by default; `[[route]] upgrades` allows more, per route;
/// a `101` to a protocol the client did not ask for gets 502.
#[tokio::test]
async fn upgrades_go_through_only_where_a_route_allows_them_and_as_asked() {
    let upstream = Scripted::start(upgrade_script(None)).await;
    let custom = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n[upstream.app]\naddrs = [\"{}\"]\n\n\
         [[route]]\npath_prefix = \"/custom/\"\nupstream = \"app\"\nupgrades = [\"websocket\", \"x-custom\"]\n\n\
         [[route]]\nupstream = \"app\"\n",
        upstream.addr
    );
    let proxy = Lameduck::start(&custom).await;
    let ask = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x-custom/2\r\n\r\n")
            .into_bytes()
    };
    let plain = raw_request(proxy.addr, &ask("/other")).await;
    assert_eq!(plain.status, 200, "x-custom is not allowed on the catch-all route");
    let head = upstream.heads().pop().unwrap().to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "sent as an ordinary request: {head}");

    let mut client = RawConn::connect(proxy.addr).await;
    client.send(&ask("/custom/x")).await;
    let switched = client.read_head().await;
    assert_eq!((switched.status, switched.header("upgrade")), (101, Some("x-custom/2")));

    let forced = Scripted::start(upgrade_script(Some("x-other"))).await;
    let proxy = Lameduck::start(&config_for(forced.addr)).await;
    let got = raw_request(
        proxy.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 502, "a 101 to x-other when websocket was asked for");
}

/// `[[route]] websocket_origins`: a WebSocket upgrade from an unlisted `Origin` (or none) gets
/// 403 and never reaches the backend; a listed one goes through.
#[tokio::test]
async fn websocket_upgrades_from_unlisted_origins_get_403_before_the_backend() {
    let upstream = Scripted::start(upgrade_script(None)).await;
    let listed = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n[upstream.app]\naddrs = [\"{}\"]\n\n\
         [[route]]\nupstream = \"app\"\nwebsocket_origins = [\"https://app.example.com\"]\n",
        upstream.addr
    );
    let proxy = Lameduck::start(&listed).await;
    let upgrade = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: a\r\n{origin}\r\n"
        )
        .into_bytes()
    };
    for origin in ["Origin: https://evil.example\r\n", ""] {
        let got = raw_request(proxy.addr, &upgrade(origin)).await;
        assert_eq!(got.status, 403, "{origin:?}");
    }
    assert!(upstream.heads().is_empty(), "nothing reached the backend: {:?}", upstream.heads());
    let mut client = RawConn::connect(proxy.addr).await;
    client.send(&upgrade("Origin: https://App.example.com\r\n")).await;
    assert_eq!(client.read_head().await.status, 101, "a listed origin, in any case");
}

/// RFC 9112 §3.2: no `Host`, two of them, or one that is not `uri-host [":" port]` is answered
/// 400 and reaches no upstream; so is a target that is neither origin- nor absolute-form. An
/// absolute-form target's authority wins over `Host`, and `Connection: Host` strips nothing.
#[tokio::test]
async fn requests_with_a_bad_host_or_target_get_400_and_reach_no_upstream() {
    let upstream = Scripted::start(|_, _, _| Reply::Send(OK_HELLO)).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/../b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:70000\r\n\r\n",
        b"GET a HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a:99999/x HTTP/1.1\r\nHost: ok\r\n\r\n",
        b"GET http://a,b/x HTTP/1.1\r\nHost: ok\r\n\r\n",
    ] {
        let got = raw_request(proxy.addr, bad).await;
        assert_eq!(got.status, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(upstream.heads().is_empty(), "nothing reached the upstream: {:?}", upstream.heads());

    let absolute =
        raw_request(proxy.addr, b"GET http://target.example/x HTTP/1.1\r\nHost: other\r\n\r\n").await;
    assert_eq!(absolute.status, 200);
    let kept =
        raw_request(proxy.addr, b"GET /y HTTP/1.1\r\nHost: app.example\r\nConnection: Host\r\n\r\n").await;
    assert_eq!(kept.status, 200);
    let heads: Vec<String> = upstream.heads().iter().map(|h| h.to_ascii_lowercase()).collect();
    assert!(heads[0].starts_with("get /x ") && heads[0].contains("host: target.example\r\n"), "{}", heads[0]);
    assert!(heads[1].contains("host: app.example\r\n"), "Connection: Host strips nothing: {}", heads[1]);
}

/// RFC 9112 §7.1 on the client side: a chunked upload whose size line is not strictly framed
/// is refused with 400, and its upstream request is aborted, never completed.
#[tokio::test]
async fn a_client_chunk_size_line_that_is_not_strictly_framed_gets_400() {
    let upstream = Scripted::start(|_, _, _| Reply::Send(OK_HELLO)).await;
    let proxy = Lameduck::start(&config_for(upstream.addr)).await;
    for body in
        ["0x5\r\nhello\r\n0\r\n\r\n", "5 garbage\r\nhello\r\n0\r\n\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n"]
    {
        let request = format!("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let got = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(got.status, 400, "{body:?}");
    }
}
