//! Client load for the reload tests: tasks that loop requests until told to stop (or a hard
//! bound passes), half opening a new connection per request, half on keep-alive connections
//! (reconnecting when a response says `Connection: close`, and pausing 0–15 ms between
//! requests, so that some are idle when a handover comes and send into it). Every request must get a whole
//! `200`; every connect must be accepted. Responses are counted by body, which names the
//! backend — and so the config generation — that served them.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::harness::{secs, RawConn, PROMPT};

/// A client stops on its own this long after the load started, told or not.
const HARD_STOP: Duration = Duration::from_secs(60);

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests written.
    pub sent: u64,
    /// Whole `200` responses, by body.
    pub by_body: BTreeMap<String, u64>,
    /// Connects refused.
    pub refused: u64,
    /// Connections opened.
    pub connections: u64,
    /// Keep-alive connections the proxy ended with `Connection: close`.
    pub told_to_close: u64,
    /// Everything that was not a whole `200` (and refused connects), described.
    pub failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        for (body, n) in other.by_body {
            *self.by_body.entry(body).or_default() += n;
        }
        self.refused += other.refused;
        self.connections += other.connections;
        self.told_to_close += other.told_to_close;
        self.failures.extend(other.failures);
    }

    pub fn ok(&self) -> u64 {
        self.by_body.values().sum()
    }

    pub fn served_by(&self, body: &str) -> u64 {
        self.by_body.get(body).copied().unwrap_or(0)
    }

    /// Asserts that nothing was refused, failed or cut; returns the report for more checks.
    pub fn assert_nothing_lost(&self) -> String {
        let report = self.report();
        println!("{report}");
        assert_eq!(self.refused, 0, "{report}");
        assert!(self.failures.is_empty(), "{report}");
        assert_eq!(self.sent, self.ok(), "{report}");
        report
    }

    pub fn report(&self) -> String {
        format!(
            "sent {}, 200 {} {:?}, connections {}, told to close {}, refused {}, failures {}: {:?}",
            self.sent,
            self.ok(),
            self.by_body,
            self.connections,
            self.told_to_close,
            self.refused,
            self.failures.len(),
            self.failures.iter().take(5).collect::<Vec<_>>()
        )
    }
}

/// Running clients.
pub struct Load {
    stop: watch::Sender<bool>,
    clients: Vec<JoinHandle<Tally>>,
    progress: watch::Receiver<BTreeMap<String, u64>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `Connection: close` on every request: one connection each.
    Fresh,
    /// Requests on one connection with `think` between them, a new one when the proxy closes it.
    KeepAlive { think: Duration },
}

impl Load {
    /// Starts `clients` clients against `addr` (even ones fresh-connection, odd ones keep-alive).
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let (stop, stopped) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(BTreeMap::new());
        let progress_tx = Arc::new(progress_tx);
        let hard_stop = Instant::now() + HARD_STOP;
        let clients = (0..clients)
            .map(|i| {
                let think = Duration::from_millis(i as u64 / 2 % 4 * 5); // 0, 5, 10 or 15 ms
                let mode = if i % 2 == 0 { Mode::Fresh } else { Mode::KeepAlive { think } };
                tokio::spawn(client(addr, mode, stopped.clone(), progress_tx.clone(), hard_stop))
            })
            .collect();
        Load { stop, clients, progress }
    }

    /// Waits until at least `n` responses came with body `body`; false if not within `within`.
    pub async fn served(&self, body: &str, n: u64, within: Duration) -> bool {
        let mut progress = self.progress.clone();
        let reached =
            timeout(within, progress.wait_for(|counts| counts.get(body).copied().unwrap_or(0) >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Responses so far, by body.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.progress.borrow().clone()
    }

    /// Tells the clients to stop after their current request and merges what they saw.
    pub async fn stop(self) -> Tally {
        self.stop.send_replace(true);
        let mut total = Tally::default();
        for client in self.clients {
            let tally = timeout(secs(20), client).await.expect("a load client finished in time");
            total.merge(tally.expect("load client task"));
        }
        total
    }
}

async fn client(
    addr: SocketAddr,
    mode: Mode,
    stop: watch::Receiver<bool>,
    progress: Arc<watch::Sender<BTreeMap<String, u64>>>,
    hard_stop: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let running = || !*stop.borrow() && Instant::now() < hard_stop;
    while running() {
        let stream = match timeout(PROMPT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                tally.refused += 1;
                tally.failures.push(format!("connect refused at {:?}", Instant::now()));
                return tally;
            }
            other => {
                tally.failures.push(format!("connect: {other:?}"));
                return tally;
            }
        };
        tally.connections += 1;
        let mut conn = RawConn::from(stream);
        for n in 0.. {
            let request: &[u8] = match mode {
                Mode::Fresh => b"GET /load HTTP/1.1\r\nHost: lameduck\r\nConnection: close\r\n\r\n",
                Mode::KeepAlive { .. } => b"GET /load HTTP/1.1\r\nHost: lameduck\r\n\r\n",
            };
            if let Err(e) = conn.try_send(request).await {
                tally.failures.push(format!("request #{n} on its connection: send: {e}"));
                break;
            }
            tally.sent += 1;
            let response = match conn.try_read_response(false, secs(10)).await {
                Ok(response) => response,
                Err(e) => {
                    tally.failures.push(format!("request #{n} on its connection: {e}"));
                    break;
                }
            };
            if response.status != 200 {
                let what =
                    format!("request #{n}: status {}, body {:?}", response.status, response.body_text());
                tally.failures.push(what);
                break;
            }
            let body = response.body_text();
            progress.send_modify(|counts| *counts.entry(body.clone()).or_default() += 1);
            *tally.by_body.entry(body).or_default() += 1;
            let Mode::KeepAlive { think } = mode else { break };
            if response.closes() {
                tally.told_to_close += 1;
                break;
            }
            if !running() {
                break;
            }
            // Client think time: the connection is idle meanwhile.
            tokio::time::sleep(think).await;
        }
    }
    tally
}
