//! WebSocket peers for the tunnel tests: tokio-tungstenite backends (echo, push) and a raw
//! frame codec for peers that must stop mid-frame, ignore a Close, or send garbage.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// What a backend connection saw of the close handshake.
#[derive(Debug, Clone)]
pub struct BackendClose {
    /// Close code and reason the backend received (`None` if the stream just ended).
    pub frame: Option<(u16, String)>,
    /// Push backends: the number of the last message sent before answering the Close.
    pub last_sent: Option<u64>,
}

/// A tungstenite backend; every connection reports how it ended on `closes`.
pub struct WsBackend {
    pub addr: SocketAddr,
    pub closes: mpsc::UnboundedReceiver<BackendClose>,
}

/// What a backend connection does.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Echo every data message.
    Echo,
    /// Send `"<n>"` (n = 1, 2, …) every `every` until the client (or lameduck) sends Close.
    Push { every: Duration },
}

impl WsBackend {
    pub async fn start(behaviour: Behaviour) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let (tx, closes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let close = match behaviour {
                        Behaviour::Echo => echo(ws).await,
                        Behaviour::Push { every } => push(ws, every).await,
                    };
                    let _ = tx.send(close);
                });
            }
        });
        WsBackend { addr, closes }
    }

    /// The next connection's ending, waiting at most `within`.
    pub async fn next_close(&mut self, within: Duration) -> BackendClose {
        tokio::time::timeout(within, self.closes.recv())
            .await
            .expect("a backend connection should end in time")
            .expect("backend alive")
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

fn close_parts(frame: Option<CloseFrame<'_>>) -> Option<(u16, String)> {
    frame.map(|f| (u16::from(f.code), f.reason.into_owned()))
}

async fn echo(mut ws: Ws) -> BackendClose {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Close(frame)) => {
                let frame = close_parts(frame);
                // tungstenite queued the Close answer; drive the stream until it has gone out.
                while ws.next().await.is_some() {}
                return BackendClose { frame, last_sent: None };
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    BackendClose { frame: None, last_sent: None }
}

async fn push(mut ws: Ws, every: Duration) -> BackendClose {
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if ws.send(Message::Text((sent + 1).to_string())).await.is_err() {
                    return BackendClose { frame: None, last_sent: Some(sent) };
                }
                sent += 1;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    let frame = close_parts(frame);
                    while ws.next().await.is_some() {}
                    return BackendClose { frame, last_sent: Some(sent) };
                }
                Some(Ok(_)) => {}
                _ => return BackendClose { frame: None, last_sent: Some(sent) },
            }
        }
    }
}

/// A tungstenite client connected through lameduck at `addr`.
pub async fn ws_client(addr: SocketAddr) -> Ws {
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), connect(addr).await)
        .await
        .expect("websocket handshake through lameduck");
    assert_eq!(resp.status(), 101);
    ws
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads messages until a Close arrives; returns the data messages before it and the Close.
pub async fn read_until_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> (Vec<Message>, Option<(u16, String)>) {
    let mut before = Vec::new();
    let result = tokio::time::timeout(within, async {
        while let Some(msg) = ws.next().await {
            match msg.expect("a clean stream up to the Close") {
                Message::Close(frame) => return close_parts(frame),
                m => before.push(m),
            }
        }
        panic!("stream ended without a Close frame");
    })
    .await
    .expect("a Close frame in time");
    (before, result)
}

// ---- raw frames, for peers that must misbehave on purpose ----

/// A raw WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub first: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A frame header for `len` payload bytes.
pub fn frame_header(first: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut h = vec![first];
    match len {
        0..=125 => h.push(mask_bit | len as u8),
        126..=0xFFFF => {
            h.push(mask_bit | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(mask_bit | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        h.extend_from_slice(&key);
    }
    h
}

/// A whole frame, masked when `mask` is given.
pub fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = frame_header(first, payload.len(), mask);
    match mask {
        Some(key) => f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4])),
        None => f.extend_from_slice(payload),
    }
    f
}

/// Reads one frame (unmasking it if masked).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<RawFrame> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let len = match h[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if h[1] & 0x80 != 0 {
        r.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if h[1] & 0x80 != 0 {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Ok(RawFrame { first: h[0], payload })
}

/// The client half of a handshake over a raw socket; returns the response head.
pub async fn raw_client_handshake(stream: &mut TcpStream, extra_headers: &str) -> String {
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("send handshake");
    let head = read_head(stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "no 101: {head}");
    head
}

/// Accepts one connection on `listener` and answers its handshake with a 101 carrying
/// `extra_headers`; returns the stream and the request head.
pub async fn raw_server_handshake(listener: &TcpListener, extra_headers: &str) -> (TcpStream, String) {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let head = read_head(&mut stream).await;
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-key: ").or_else(|| l.strip_prefix("Sec-WebSocket-Key: ")))
        .expect("a Sec-WebSocket-Key header");
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{extra_headers}\r\n",
        derive_accept_key(key.trim().as_bytes())
    );
    stream.write_all(resp.as_bytes()).await.expect("send 101");
    (stream, head)
}

/// Reads an HTTP head byte by byte (so no frame byte after it is consumed).
pub async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(Duration::from_secs(5), stream.read_u8())
            .await
            .expect("head in time")
            .expect("head byte");
        head.push(b);
    }
    String::from_utf8(head).expect("ascii head")
}

/// A tungstenite client for `path` through lameduck at `addr`.
pub async fn ws_client_at(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), connect(addr).await)
        .await
        .expect("websocket handshake through lameduck");
    assert_eq!(resp.status(), 101);
    ws
}
