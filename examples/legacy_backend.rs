//! A demo backend with no graceful shutdown of its own: on SIGTERM it simply dies, cutting
//! whatever it was doing. Put lameduck in front of it to see the difference.
//!
//! ```text
//! cargo run --example legacy_backend            # listens on 127.0.0.1:9000
//! cargo run --example legacy_backend -- 127.0.0.1:9001
//! cargo run --example legacy_backend -- 127.0.0.1:0    # any free port (printed)
//! ```
//! - `GET /`            a short text answer naming this backend's address
//! - `GET /pid`         this process's id (tells a restarted backend from the one before)
//! - `GET /count`       how many requests this process has answered, `/count` itself not counted
//! - `GET /slow?ms=N`   answers after N milliseconds (default 2000); prints a line on arrival
//! - `GET /stream`      ten lines, one every 200 ms
//! - `POST /echo`       echoes the request body
//! - `GET /ws`          WebSocket: echoes messages and sends a tick every second
//!
//! Every answer carries `x-backend-pid: <pid>`. The first line printed to stdout, once the
//! port accepts connections, is `legacy backend on http://IP:PORT …` with the bound address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// Requests answered (or being answered) by this process, `GET /count` not included.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr =
        std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".into()).parse().expect("an IP:PORT");
    let listener = TcpListener::bind(addr).await?;
    // The bound address: a port given as 0 is a real one now.
    let addr = listener.local_addr()?;
    println!("legacy backend on http://{addr} (no graceful shutdown: SIGTERM kills it mid-request)");
    tokio::spawn(die_on_sigterm());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, addr));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
}

/// No graceful shutdown: on SIGTERM it says so and exits at once, cutting whatever it was
/// doing, with the status a process killed by SIGTERM has (128 + 15).
async fn die_on_sigterm() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    term.recv().await;
    eprintln!("legacy backend: got SIGTERM; exiting now, mid-request");
    std::process::exit(143);
}

async fn handle(req: Request<Incoming>, me: SocketAddr) -> Result<Response<Body>, Infallible> {
    let mut resp = answer(req, me).await;
    resp.headers_mut().insert("x-backend-pid", std::process::id().into());
    Ok(resp)
}

async fn answer(req: Request<Incoming>, me: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path != "/count" {
        REQUESTS.fetch_add(1, Ordering::SeqCst);
    }
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/ws") => websocket(req),
        ("GET", "/pid") => text(StatusCode::OK, format!("{}\n", std::process::id())),
        ("GET", "/count") => text(StatusCode::OK, format!("{}\n", REQUESTS.load(Ordering::SeqCst))),
        ("GET", "/slow") => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000);
            println!("slow request: answering in {ms} ms");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms} ms at {me}\n"))
        }
        ("GET", "/stream") => {
            let lines = futures_util::stream::iter(0..10).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("line {i}\n"))))
            });
            Response::new(BodyExt::boxed(StreamBody::new(lines)))
        }
        ("POST", "/echo") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::new(Full::new(body).boxed())
        }
        _ => text(StatusCode::OK, format!("hello from the legacy backend at {me}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp
}

/// Answers a WebSocket handshake and serves the connection once upgraded.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket handshake\n".into());
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut tx, mut rx) = ws.split();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n += 1;
                    if tx.send(Message::Text(format!("tick {n}"))).await.is_err() { return; }
                }
                msg = rx.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        println!("websocket closed by peer: {frame:?}");
                        let _ = tx.send(Message::Close(frame)).await;
                        return;
                    }
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        if tx.send(m).await.is_err() { return; }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert("upgrade", "websocket".parse().expect("static"));
    headers.insert("connection", "upgrade".parse().expect("static"));
    headers.insert("sec-websocket-accept", derive_accept_key(key.as_bytes()).parse().expect("base64"));
    resp
}
