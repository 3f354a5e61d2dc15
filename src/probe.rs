//! The two helper commands a container needs besides the proxy itself:
//!
//! - [`probe`] (`lameduck probe URL`): one HTTP/1.1 `GET`, success on a 2xx answer. For a
//!   container `HEALTHCHECK` or a Kubernetes `exec` probe in an image that has no curl.
//! - [`wait_drained`] (`lameduck wait-drained`): returns once lameduck's drain has finished,
//!   for a Kubernetes `preStop` hook on the *legacy* container of a sidecar pod, so that the
//!   legacy app gets its SIGTERM only after lameduck has drained.
//!
//! # Why "the admin address refuses connections" means "drained"
//! The admin listener is opened at start-up and kept open until the process exits: it is not
//! closed when the drain starts (so `/readyz` can be watched turning 503), and admin
//! connections are not counted by the drain (a poller never holds the exit back). lameduck
//! exits the moment its drain is over (every connection finished, or the deadline cut them),
//! and the kernel closes the listener with the process. So, seen from inside the pod, the admin
//! address answers connects while lameduck serves, through its grace period and its drain,
//! and refuses them once it has exited. Polling for that needs no endpoint of its own, and no
//! HTTP: a refused connect is the whole answer. The pod's network namespace outlives its
//! containers (the pause container holds it), so the loopback address stays valid for the
//! hook after lameduck's container has exited.
//!
//! The same rule means the command also returns at once when lameduck never listened there
//! (not started yet, or a different `[admin] addr`): a preStop hook must never hold a pod's
//! termination for something that is not running. After a binary-upgrade handover the
//! successor shares the admin socket, so the wait goes on until the successor is gone too.
//!
//! Both run on a small current-thread runtime that `main` builds; neither touches the config.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

/// How often [`wait_drained`] tries the admin address from the command line.
pub const WAIT_EVERY: Duration = Duration::from_millis(100);

/// How much of a non-2xx answer's body is read, to quote its first line in the message.
const BODY_QUOTED: usize = 4096;
/// The longest body excerpt quoted in a message.
const QUOTE_CHARS: usize = 120;

/// What a probe found: a 2xx status (the probe succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub status: StatusCode,
}

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)
    }
}

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// Not an `http://host[:port][/path]` URL.
    BadUrl(String),
    /// The host name did not resolve, or to no address.
    Resolve(std::io::Error),
    /// The TCP connect failed.
    Connect(SocketAddr, std::io::Error),
    /// The HTTP exchange failed (closed early, not HTTP).
    Http(hyper::Error),
    /// No answer (headers) within the timeout.
    Timeout(Duration),
    /// An answer that is not 2xx, with the first line of its body.
    Status(StatusCode, String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::BadUrl(why) => write!(f, "not a URL to probe: {why}"),
            ProbeError::Resolve(e) => write!(f, "resolve: {e}"),
            ProbeError::Connect(addr, e) => write!(f, "connect {addr}: {e}"),
            ProbeError::Http(e) => write!(f, "http: {e}"),
            ProbeError::Timeout(after) => {
                write!(f, "no answer within {}", humantime::format_duration(*after))
            }
            ProbeError::Status(status, body) if body.is_empty() => write!(f, "{status}"),
            ProbeError::Status(status, body) => write!(f, "{status}: {body}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Where a probe goes: the host and port to connect to, the `Host` header, the request target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

/// Parses `http://host[:port][/path[?query]]`; IPv6 hosts in brackets.
fn parse_url(url: &str) -> Result<Target, ProbeError> {
    let uri = url.parse::<Uri>().map_err(|e| ProbeError::BadUrl(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(ProbeError::BadUrl(format!("scheme {other:?}: only http:// is probed"))),
        None => return Err(ProbeError::BadUrl(format!("no scheme: write http://{url}"))),
    }
    let authority = uri.authority().ok_or_else(|| ProbeError::BadUrl("no host".to_owned()))?;
    if authority.as_str().contains('@') {
        return Err(ProbeError::BadUrl("user information (user@) is not supported".to_owned()));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    if host.is_empty() {
        return Err(ProbeError::BadUrl("no host".to_owned()));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let path = if path.is_empty() { "/".to_owned() } else { path };
    Ok(Target { host, port: authority.port_u16().unwrap_or(80), authority: authority.to_string(), path })
}

/// `GET url` over HTTP/1.1, bounded as a whole by `within` (resolving, connecting, the answer's
/// headers, and the excerpt of a failure's body). A 2xx is `Ok`; any other status, and every
/// failure to get one, is the error, which says why in one line.
///
/// # Errors
/// [`ProbeError`]: a bad URL, no connection, no answer in time, or a status that is not 2xx.
pub async fn probe(url: &str, within: Duration) -> Result<Probed, ProbeError> {
    let target = parse_url(url)?;
    let deadline = Instant::now() + within;
    match timeout_at(deadline, exchange(&target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(within)),
    }
}

async fn exchange(target: &Target) -> Result<Probed, ProbeError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(ProbeError::Resolve)?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(ProbeError::Connect(addr, e)),
        }
    }
    let Some(stream) = stream else {
        return Err(last.unwrap_or_else(|| {
            ProbeError::Resolve(std::io::Error::other(format!("{:?} has no address", target.host)))
        }));
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ProbeError::Http)?;
    // The connection future does the I/O; it ends with the exchange (or with this task).
    let conn = tokio::spawn(conn);
    let request = Request::get(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::USER_AGENT, concat!("lameduck-probe/", env!("CARGO_PKG_VERSION")))
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::BadUrl(format!("{}: {e}", target.path)))?;
    let response = sender.send_request(request).await.map_err(ProbeError::Http)?;
    let status = response.status();
    if status.is_success() {
        conn.abort();
        return Ok(Probed { status });
    }
    // Quote the body's first line: `/readyz` says `draining`, a 502 names the upstream.
    let body = Limited::new(response.into_body(), BODY_QUOTED).collect().await;
    conn.abort();
    let quoted = body.map(|b| first_line(&b.to_bytes())).unwrap_or_default();
    Err(ProbeError::Status(status, quoted))
}

/// The first non-empty line of `body` as text, trimmed and shortened to [`QUOTE_CHARS`].
fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    match line.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Why [`wait_drained`] gave up.
#[derive(Debug)]
pub enum WaitError {
    /// Still accepting connections when the timeout passed.
    StillAccepting { admin: SocketAddr, after: Duration },
    /// Connects neither succeeded nor were refused (unreachable, timed out) until the timeout.
    Unknown { admin: SocketAddr, after: Duration, error: std::io::Error },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::StillAccepting { admin, after } => write!(
                f,
                "lameduck's admin address {admin} still accepts connections after {}: not drained",
                humantime::format_duration(*after)
            ),
            WaitError::Unknown { admin, after, error } => write!(
                f,
                "admin address {admin}: neither accepted nor refused within {} (last: {error})",
                humantime::format_duration(*after)
            ),
        }
    }
}

impl std::error::Error for WaitError {}

/// Waits until `admin` refuses TCP connections (see the module doc for why that means lameduck
/// has drained and exited), connecting every `every`, for at most `within`. Returns how long
/// it waited. Each connect that succeeds is closed at once, without a request.
///
/// # Errors
/// [`WaitError`] when `within` passes first.
pub async fn wait_drained(
    admin: SocketAddr,
    within: Duration,
    every: Duration,
) -> Result<Duration, WaitError> {
    let start = Instant::now();
    let deadline = start + within;
    // One connect may take this long (a blackholed address); loopback answers at once.
    let attempt = every.max(Duration::from_millis(100));
    loop {
        let unknown = match timeout(attempt, TcpStream::connect(admin)).await {
            Ok(Ok(stream)) => {
                drop(stream);
                None
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(start.elapsed()),
            Ok(Err(e)) => Some(e),
            Err(_) => Some(std::io::ErrorKind::TimedOut.into()),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(match unknown {
                Some(error) => WaitError::Unknown { admin, after: within, error },
                None => WaitError::StillAccepting { admin, after: within },
            });
        }
        // The last attempt falls on the deadline itself, so a drain that ends just then counts.
        tokio::time::sleep_until((now + every).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const BOUND: Duration = Duration::from_secs(5);

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:9901/healthz").unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 9901,
                authority: "127.0.0.1:9901".into(),
                path: "/healthz".into()
            }
        );
        let t = parse_url("http://[::1]:9901/readyz?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 9901, "/readyz?x=1"));
        assert_eq!(t.authority, "[::1]:9901");
        let t = parse_url("http://localhost").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("localhost", 80, "/"));
        for bad in
            ["https://127.0.0.1/", "127.0.0.1:9901/healthz", "http:///x", "http://u:p@host/", "not a url"]
        {
            let e = parse_url(bad).expect_err(bad);
            assert!(matches!(e, ProbeError::BadUrl(_)), "{bad}: {e}");
        }
        let e = parse_url("https://h/").unwrap_err().to_string();
        assert!(e.contains("only http://"), "{e}");
    }

    #[test]
    fn quotes_the_first_line() {
        assert_eq!(first_line(b"\n  draining \nmore"), "draining");
        assert_eq!(first_line(b""), "");
        let long = "x".repeat(500);
        assert_eq!(first_line(long.as_bytes()).chars().count(), QUOTE_CHARS + 1);
    }

    /// A server that answers one connection with `answer` after reading the request head, and
    /// hands the head it read to the test.
    async fn one_shot(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the head ended");
                head.extend_from_slice(&buf[..n]);
            }
            stream.write_all(answer).await.unwrap();
            let _ = stream.shutdown().await;
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn two_hundred_is_success_and_the_request_is_plain() {
        let (addr, server) = one_shot(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
        let probed = probe(&format!("http://{addr}/healthz"), BOUND).await.unwrap();
        assert_eq!(probed.status, StatusCode::OK);
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    }

    #[tokio::test]
    async fn other_statuses_fail_quoting_the_body() {
        let (addr, _server) =
            one_shot(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\ndraining\n").await;
        let e = probe(&format!("http://{addr}/readyz"), BOUND).await.unwrap_err();
        assert!(matches!(e, ProbeError::Status(StatusCode::SERVICE_UNAVAILABLE, _)), "{e:?}");
        assert_eq!(e.to_string(), "503 Service Unavailable: draining");
        let (addr, _server) = one_shot(b"HTTP/1.1 301 Moved Permanently\r\ncontent-length: 0\r\n\r\n").await;
        let e = probe(&format!("http://{addr}/"), BOUND).await.unwrap_err();
        assert_eq!(e.to_string(), "301 Moved Permanently");
    }

    #[tokio::test]
    async fn garbage_and_early_close_fail() {
        let (addr, _server) = one_shot(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let e = probe(&format!("http://{addr}/"), BOUND).await.unwrap_err();
        assert!(matches!(e, ProbeError::Http(_)), "{e:?}");
        let (addr, _server) = one_shot(b"").await;
        let e = probe(&format!("http://{addr}/"), BOUND).await.unwrap_err();
        assert!(matches!(e, ProbeError::Http(_)), "{e:?}");
    }

    #[tokio::test]
    async fn refused_and_silent_fail() {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let e = probe(&format!("http://{dead_addr}/"), BOUND).await.unwrap_err();
        assert!(matches!(e, ProbeError::Connect(a, _) if a == dead_addr), "{e:?}");
        // Accepts (in the kernel backlog) but never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        let e = probe(&format!("http://{silent_addr}/"), Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(_)), "{e:?}");
        assert_eq!(e.to_string(), "no answer within 300ms");
        assert!(started.elapsed() < BOUND, "bounded by its timeout: {:?}", started.elapsed());
        drop(silent);
    }

    #[tokio::test]
    async fn wait_drained_returns_at_once_when_nothing_listens() {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let waited = wait_drained(addr, BOUND, Duration::from_millis(100)).await.unwrap();
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    #[tokio::test]
    async fn wait_drained_waits_for_the_listener_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let waiter = tokio::spawn(wait_drained(addr, BOUND * 2, Duration::from_millis(10)));
        // Two polls seen: the waiter has found the address accepting, and kept polling.
        for _ in 0..2 {
            timeout(BOUND, listener.accept()).await.expect("a poll within the bound").unwrap();
        }
        assert!(!waiter.is_finished(), "returned while the listener was open");
        drop(listener);
        let waited = timeout(BOUND, waiter).await.expect("returns once refused").unwrap();
        assert!(waited.is_ok(), "{waited:?}");
    }

    #[tokio::test]
    async fn wait_drained_times_out_while_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        let e = wait_drained(addr, Duration::from_millis(300), Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(e, WaitError::StillAccepting { .. }), "{e:?}");
        assert!(e.to_string().contains("still accepts connections after 300ms"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        assert!(started.elapsed() < BOUND, "{:?}", started.elapsed());
        drop(listener);
    }
}
