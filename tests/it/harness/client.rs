//! hyper clients: [`H1Client`] (HTTP/1.1, one keep-alive connection) and
//! [`H2Client`] (h2c with prior knowledge). [`tapped_h2`] puts a relay
//! between an h2 client and the proxy that decodes the proxy's frame headers,
//! so a test can await "the proxy sent GOAWAY" as an event.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::body::{empty, Body};
use super::PROMPT;

/// A whole response.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii header"))
    }
}

/// A response head within `within`, every failure as text.
async fn bounded(
    exchange: impl std::future::Future<Output = Result<Response<Incoming>, hyper::Error>>,
    within: Duration,
) -> Result<Response<Incoming>, String> {
    match timeout(within, exchange).await {
        Ok(result) => result.map_err(|e| format!("request: {e}")),
        Err(_) => Err(format!("no response head within {within:?}")),
    }
}

/// Reads a response body to its end, within `within`.
pub async fn fetch(response: Response<Incoming>, within: Duration) -> Result<Fetched, String> {
    let (parts, body) = response.into_parts();
    let body = match timeout(within, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return Err(format!("body: {e}")),
        Err(_) => return Err(format!("body: not complete within {within:?}")),
    };
    Ok(Fetched { status: parts.status, headers: parts.headers, body })
}

async fn connect(addr: SocketAddr) -> TcpStream {
    match timeout(PROMPT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => panic!("connect {addr}: {e}"),
        Err(_) => panic!("connect {addr}: no answer within {PROMPT:?}"),
    }
}

/// HTTP/1.1 over one keep-alive connection.
pub struct H1Client {
    send: http1::SendRequest<Body>,
    /// Ends when the connection does.
    pub conn: JoinHandle<Result<(), hyper::Error>>,
    pub addr: SocketAddr,
}

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> H1Client {
        let io = TokioIo::new(connect(addr).await);
        let handshake = timeout(PROMPT, http1::handshake(io)).await;
        let (send, conn) = handshake.expect("http1 handshake in time").expect("http1 handshake");
        let conn = tokio::spawn(conn);
        H1Client { send, conn, addr }
    }

    /// A request for `path` with `Host` set to the proxy's address.
    pub fn request(&self, method: &str, path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .body(body)
            .expect("valid request")
    }

    /// Sends `req` and returns the response head (the body still streams).
    /// Sends `req`; the response head (its body still streams) or an error,
    /// within [`PROMPT`].
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, String> {
        self.send_within(req, PROMPT).await
    }

    pub async fn send_within(
        &mut self,
        req: Request<Body>,
        within: Duration,
    ) -> Result<Response<Incoming>, String> {
        let exchange = async {
            self.send.ready().await?;
            self.send.send_request(req).await
        };
        bounded(exchange, within).await
    }

    pub async fn get(&mut self, path: &str) -> Fetched {
        let req = self.request("GET", path, empty());
        let response = self.send(req).await.expect("response");
        fetch(response, PROMPT).await.expect("whole body")
    }

    /// Moves the client into a task that sends `req` and fetches the whole
    /// response (all within `within`), so the test can go on meanwhile.
    pub fn spawn_fetch(
        mut self,
        req: Request<Body>,
        within: Duration,
    ) -> JoinHandle<Result<Fetched, String>> {
        tokio::spawn(async move {
            let exchange = async {
                let response = self.send_within(req, within).await?;
                fetch(response, within).await
            };
            timeout(within, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("no whole response within {within:?}")))
        })
    }
}

/// HTTP/2 with prior knowledge (h2c); clone-free concurrent streams via `&self`.
pub struct H2Client {
    send: http2::SendRequest<Body>,
    pub conn: JoinHandle<Result<(), hyper::Error>>,
    pub authority: String,
}

impl H2Client {
    pub async fn connect(addr: SocketAddr) -> H2Client {
        H2Client::over(connect(addr).await, addr.to_string()).await
    }

    pub async fn over<T>(io: T, authority: String) -> H2Client
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = http2::handshake(TokioExecutor::new(), TokioIo::new(io));
        let handshake = timeout(PROMPT, handshake).await;
        let (send, conn) = handshake.expect("h2 handshake in time").expect("h2 handshake");
        let conn = tokio::spawn(conn);
        H2Client { send, conn, authority }
    }

    /// A request for `path` on `http://<authority>` (h2 needs absolute URIs).
    pub fn request(&self, method: &str, path: &str, body: Body) -> Request<Body> {
        self.request_to(&self.authority, method, path, body)
    }

    pub fn request_to(&self, authority: &str, method: &str, path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .body(body)
            .expect("valid request")
    }

    /// Sends `req` on a new stream; the response head or an error (a refused
    /// stream, GOAWAY), within [`PROMPT`].
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, String> {
        let mut send = self.send.clone();
        let exchange = async move {
            send.ready().await?;
            send.send_request(req).await
        };
        bounded(exchange, PROMPT).await
    }

    pub async fn get(&self, path: &str) -> Fetched {
        let req = self.request("GET", path, empty());
        let response = self.send(req).await.expect("response");
        fetch(response, PROMPT).await.expect("whole body")
    }

    /// Sends `req` on its own stream in a task and fetches the whole
    /// response (all within `within`), so the test can go on meanwhile.
    pub fn spawn_fetch(&self, req: Request<Body>, within: Duration) -> JoinHandle<Result<Fetched, String>> {
        let mut send = self.send.clone();
        tokio::spawn(async move {
            let exchange = async {
                send.ready().await.map_err(|e| format!("ready: {e}"))?;
                let response = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
                fetch(response, within).await
            };
            timeout(within, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("no whole response within {within:?}")))
        })
    }
}

/// An HTTP/2 frame header the proxy sent, as decoded by the tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameTap {
    /// GOAWAY: last stream id the server will process, error code.
    GoAway { last_stream_id: u32, error_code: u32 },
    /// RST_STREAM: stream id, error code.
    Reset { stream_id: u32, error_code: u32 },
    /// Any other frame type.
    Other { kind: u8, stream_id: u32 },
}

/// An h2c client to `addr` through a relay that reports every frame the
/// proxy sends, in order, on the returned channel.
pub async fn tapped_h2(addr: SocketAddr) -> (H2Client, mpsc::UnboundedReceiver<FrameTap>) {
    let upstream = connect(addr).await;
    let (client_side, relay_side) = tokio::io::duplex(1 << 16);
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let (mut up_read, mut up_write) = upstream.into_split();
    let (mut relay_read, mut relay_write) = tokio::io::split(relay_side);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut relay_read, &mut up_write).await;
        let _ = up_write.shutdown().await;
    });
    tokio::spawn(async move {
        let mut pending = BytesMut::new();
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = up_read.read(&mut chunk).await {
            pending.extend_from_slice(&chunk[..n]);
            while let Some(frame) = next_frame(&mut pending) {
                let _ = frames_tx.send(frame);
            }
            if relay_write.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
        let _ = relay_write.shutdown().await;
    });
    (H2Client::over(client_side, addr.to_string()).await, frames_rx)
}

/// Decodes one whole frame off the front of `pending`, if there is one.
fn next_frame(pending: &mut BytesMut) -> Option<FrameTap> {
    if pending.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
    if pending.len() < 9 + len {
        return None;
    }
    let mut frame = pending.split_to(9 + len);
    frame.advance(3);
    let kind = frame.get_u8();
    let _flags = frame.get_u8();
    let stream_id = frame.get_u32() & 0x7fff_ffff;
    Some(match kind {
        0x3 => FrameTap::Reset { stream_id, error_code: frame.get_u32() },
        0x7 => {
            FrameTap::GoAway { last_stream_id: frame.get_u32() & 0x7fff_ffff, error_code: frame.get_u32() }
        }
        _ => FrameTap::Other { kind, stream_id },
    })
}

/// `GET path` on a connection of its own, in a task (the whole response within 10 s).
pub async fn spawn_get(addr: SocketAddr, path: &str) -> JoinHandle<Result<Fetched, String>> {
    let client = H1Client::connect(addr).await;
    let req = client.request("GET", path, empty());
    client.spawn_fetch(req, Duration::from_secs(10))
}

/// The response of a [`spawn_get`], within [`PROMPT`]; panics saying what failed.
pub async fn joined(task: JoinHandle<Result<Fetched, String>>) -> Fetched {
    match timeout(PROMPT, task).await {
        Ok(Ok(Ok(fetched))) => fetched,
        Ok(Ok(Err(e))) => panic!("request failed: {e}"),
        Ok(Err(e)) => panic!("request task: {e}"),
        Err(_) => panic!("request not answered within {PROMPT:?}"),
    }
}
