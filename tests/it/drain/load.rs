//! Drain under load: 32 keep-alive clients loop requests to a backend that
//! takes 20 ms (pausing 0–15 ms between requests), and SIGTERM arrives in the middle. Every request sent must
//! get a complete 200 or a 503 — none reset or truncated — and every connect
//! after the "draining" line must be refused. Each outcome is counted.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::harness::*;

const CLIENTS: usize = 32;
/// Responses received before the signal is sent.
const BEFORE_SIGNAL: usize = 320;
const REQUEST: &[u8] = b"GET /load HTTP/1.1\r\nHost: lameduck\r\n\r\n";

/// What one client (or all of them, merged) saw.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    ok: u64,
    unavailable: u64,
    /// Requests that got neither a whole 200 nor a 503, and failed connects.
    failures: Vec<String>,
    /// Each connect attempt: when it started, whether it was accepted.
    connects: Vec<(Instant, bool)>,
    /// Clients whose last connect was refused.
    ended_refused: usize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.unavailable += other.unavailable;
        self.failures.extend(other.failures);
        self.connects.extend(other.connects);
        self.ended_refused += other.ended_refused;
    }
}

/// Connects and loops requests until a connect is refused (or `stop_at`),
/// pausing `think` between requests.
async fn load_client(
    addr: SocketAddr,
    think: Duration,
    progress: Arc<watch::Sender<usize>>,
    stop_at: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < stop_at {
        let attempt = Instant::now();
        let stream = match timeout(PROMPT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                tally.connects.push((attempt, false));
                tally.ended_refused = 1;
                return tally;
            }
            other => {
                tally.failures.push(format!("connect: {other:?}"));
                return tally;
            }
        };
        tally.connects.push((attempt, true));
        let conn = RawConn::from(stream);
        requests_on(conn, think, &mut tally, &progress, stop_at).await;
    }
    tally
}

/// Loops requests on one connection until a response says `connection:
/// close`, a request fails, or `stop_at` passes.
async fn requests_on(
    mut conn: RawConn,
    think: Duration,
    tally: &mut Tally,
    progress: &watch::Sender<usize>,
    stop_at: Instant,
) {
    for n in 0.. {
        if Instant::now() >= stop_at {
            return;
        }
        if let Err(e) = conn.try_send(REQUEST).await {
            let what =
                format!("request #{n} on its connection: send: {e} (closed without connection: close)");
            tally.failures.push(what);
            return;
        }
        tally.sent += 1;
        let response = match conn.try_read_response(false, secs(10)).await {
            Ok(response) => response,
            Err(e) => {
                tally.failures.push(format!("request #{n} on its connection: {e}"));
                return;
            }
        };
        match (response.status, response.body.as_slice()) {
            (200, b"ok") => tally.ok += 1,
            (503, _) => tally.unavailable += 1,
            (status, body) => {
                let body = String::from_utf8_lossy(body);
                tally.failures.push(format!("request #{n}: status {status}, body {body:?}"));
            }
        }
        progress.send_modify(|count| *count += 1);
        if response.closes() {
            return;
        }
        // Client think time: some connections are idle when the signal comes.
        tokio::time::sleep(think).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_answers_every_sent_request_with_200_or_503() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(ms(20)).await; // the backend's work takes time
        Response::new(full("ok"))
    })
    .await;
    let tail = "[drain]\ndeadline = \"30s\"\nretry_after = \"1s\"\n";
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", tail)).await;
    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let stop_at = Instant::now() + secs(40);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| ms(i as u64 % 4 * 5)) // 0, 5, 10 or 15 ms
        .map(|think| tokio::spawn(load_client(proxy.addr, think, progress_tx.clone(), stop_at)))
        .collect();
    let warmed = timeout(secs(20), progress.wait_for(|n| *n >= BEFORE_SIGNAL)).await;
    assert!(warmed.is_ok_and(|r| r.is_ok()), "load never reached {BEFORE_SIGNAL} responses");

    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    let draining_seen = Instant::now();
    let mut total = Tally::default();
    for client in clients {
        let tally = timeout(secs(45), client).await.expect("client finished in time");
        total.merge(tally.expect("client task"));
    }
    let status = proxy.exit_within(PROMPT).await;
    let summary = proxy.summary().await;

    let late_accepted =
        total.connects.iter().filter(|(at, accepted)| *at > draining_seen && *accepted).count();
    let report = format!(
        "sent {}, 200 {}, 503 {}, failures {} {:?}, connects {}, ended refused {}, accepted after draining {}",
        total.sent,
        total.ok,
        total.unavailable,
        total.failures.len(),
        total.failures.iter().take(5).collect::<Vec<_>>(),
        total.connects.len(),
        total.ended_refused,
        late_accepted,
    );
    println!("{report}");
    assert!(total.failures.is_empty(), "{report}");
    assert_eq!(total.sent, total.ok + total.unavailable, "{report}");
    assert!(total.ok >= BEFORE_SIGNAL as u64, "{report}");
    // Clients that were thinking when the signal came send into the drain.
    assert!(total.unavailable > 0, "no request met the drain: {report}");
    assert_eq!(total.ended_refused, CLIENTS, "every client ends on a refused connect: {report}");
    assert_eq!(late_accepted, 0, "{report}");
    assert_eq!(status, 0, "{report}");
    let rejected = field_f64(&summary, "requests.rejected");
    assert_eq!(rejected, Some(total.unavailable as f64), "summary {summary} vs {report}");
}
