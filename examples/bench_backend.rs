//! The backend for `bench/run.sh`: as cheap as possible per request, so the proxy's cost is
//! what the benchmark measures. One thread (the script pins it to the load generator's core).
//!
//! ```text
//! cargo run --release --example bench_backend -- 127.0.0.1:9100
//! ```
//! - `GET /small`   13 bytes
//! - `GET /1m`      1 MiB
//! - `POST /upload` reads and discards the body, answers `ok`
//! - `GET /ws`      WebSocket; echoes, otherwise idles (for the tunnel benchmarks)

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

const SMALL: &[u8] = b"hello, world\n";

fn main() -> std::io::Result<()> {
    let addr: SocketAddr =
        std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9100".into()).parse().expect("an IP:PORT");
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("bench backend on {addr}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let big = big.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, big.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.with_upgrades().await;
            });
        }
    })
}

async fn handle(req: Request<Incoming>, big: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/1m" => Response::new(Full::new(big)),
        "/upload" => {
            let _ = req.into_body().collect().await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
        "/ws" => websocket(req),
        _ => Response::new(Full::new(Bytes::from_static(SMALL))),
    })
}

fn websocket(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes()));
    let Some(accept) = key else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"not a websocket handshake\n")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert("upgrade", "websocket".parse().expect("static"));
    headers.insert("connection", "upgrade".parse().expect("static"));
    headers.insert("sec-websocket-accept", accept.parse().expect("base64"));
    resp
}
