//! WebSocket tunnels through lameduck: relaying, and the close handshake on drain.

pub mod peers;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{config, field_f64, secs, Lameduck, PROMPT};
use peers::*;

const REASON: &str = "bye now";

fn drain_tail(extra: &str) -> String {
    format!("[drain]\ndeadline = \"10s\"\nclose_reason = \"{REASON}\"\nclose_timeout = \"3s\"\n{extra}")
}

fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + seed) % 251) as u8).collect()
}

/// The n-th test message: mostly small, every 50th up to 1 MiB, text and binary.
fn nth_message(i: usize) -> Message {
    let len = if i % 50 == 0 { (i * 7919) % (1 << 20) + 1 } else { (i * 131) % 4000 };
    if i % 2 == 0 {
        Message::Text("é".repeat(len / 2))
    } else {
        Message::Binary(payload(len, i))
    }
}

/// Sends `msg` as three fragments.
async fn send_fragmented(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, msg: &Message) {
    let (data, kind) = match msg {
        Message::Text(t) => (t.as_bytes().to_vec(), Data::Text),
        Message::Binary(b) => (b.clone(), Data::Binary),
        _ => unreachable!("only data messages are fragmented"),
    };
    let third = data.len() / 3;
    let parts = [&data[..third], &data[third..2 * third], &data[2 * third..]];
    for (i, part) in parts.iter().enumerate() {
        let opcode = OpCode::Data(if i == 0 { kind } else { Data::Continue });
        ws.send(Message::Frame(Frame::message(part.to_vec(), opcode, i == 2))).await.expect("send fragment");
    }
}

#[tokio::test]
async fn websocket_echo_relays_mixed_messages_fragments_and_pings() {
    let backend = WsBackend::start(Behaviour::Echo).await;
    let proxy = Lameduck::start(&config(&[backend.addr], "", &drain_tail(""))).await;
    let mut ws = ws_client(proxy.addr).await;
    for i in 0..1000 {
        let msg = nth_message(i);
        if i % 10 == 3 && msg.len() >= 3 {
            send_fragmented(&mut ws, &msg).await;
        } else {
            ws.send(msg.clone()).await.expect("send");
        }
        let echoed = timeout(PROMPT, ws.next()).await.expect("echo in time").expect("open").expect("ok");
        assert_eq!(echoed, msg, "message {i}");
        if i % 100 == 0 {
            ws.send(Message::Ping(vec![i as u8, 7])).await.expect("ping");
            let pong = timeout(PROMPT, ws.next()).await.expect("pong in time").expect("open").expect("ok");
            assert_eq!(pong, Message::Pong(vec![i as u8, 7]));
        }
    }
}

#[tokio::test]
async fn websocket_permessage_deflate_is_negotiated_end_to_end() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        Compress::new(Compression::default(), false)
            .compress_vec(data, &mut out, FlushCompress::Sync)
            .expect("deflate");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }
    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut input = data.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(64 * 1024);
        Decompress::new(false).decompress_vec(&input, &mut out, FlushDecompress::Sync).expect("inflate");
        out
    }
    const EXT: &str = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let proxy = Lameduck::start(&config(&[backend_addr], "", &drain_tail(""))).await;
    let backend = tokio::spawn(async move {
        let (mut stream, head) = raw_server_handshake(&listener, EXT).await;
        assert!(head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate"), "{head}");
        let got = read_frame(&mut stream).await.expect("compressed frame");
        assert_eq!(got.first, 0xC1, "FIN, RSV1 (compressed) and text must arrive untouched");
        assert_eq!(inflate(&got.payload), b"hello hello hello hello compressed world".to_vec());
        let reply = deflate(&payload(10_000, 3));
        stream.write_all(&frame(0xC2, &reply, None)).await.unwrap();
        let _ = stream.read(&mut [0u8; 1]).await;
    });
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let head = raw_client_handshake(&mut client, EXT).await;
    assert!(head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate"), "{head}");
    let compressed = deflate(b"hello hello hello hello compressed world");
    client.write_all(&frame(0xC1, &compressed, Some([9, 8, 7, 6]))).await.unwrap();
    let reply = timeout(PROMPT, read_frame(&mut client)).await.expect("reply in time").expect("reply");
    assert_eq!(reply.first, 0xC2);
    assert_eq!(inflate(&reply.payload), payload(10_000, 3));
    drop(client);
    timeout(PROMPT, backend).await.expect("backend done").expect("backend assertions");
}

/// Two upstreams: `/push` to a pushing backend, everything else to an echo backend.
fn two_backends(echo: &WsBackend, push: &WsBackend, drain: &str) -> String {
    format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n[upstream.echo]\naddrs = [\"{}\"]\n\n[upstream.push]\naddrs = [\"{}\"]\n\n\
         [[route]]\npath_prefix = \"/push\"\nupstream = \"push\"\n\n[[route]]\nupstream = \"echo\"\n\n{drain}",
        echo.addr, push.addr
    )
}

#[tokio::test]
async fn drain_sends_close_1001_to_both_sides() {
    let mut echo = WsBackend::start(Behaviour::Echo).await;
    let mut push = WsBackend::start(Behaviour::Push { every: Duration::from_millis(10) }).await;
    let mut proxy = Lameduck::start(&two_backends(&echo, &push, &drain_tail(""))).await;

    let mut echo_clients = Vec::new();
    for i in 0..3 {
        let mut ws = ws_client(proxy.addr).await;
        ws.send(Message::Text(format!("hi {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text(format!("hi {i}")));
        echo_clients.push(ws);
    }
    let mut pushed = ws_client_at(proxy.addr, "/push").await;
    let mut received = Vec::new();
    while received.len() < 5 {
        received.push(timeout(PROMPT, pushed.next()).await.unwrap().unwrap().unwrap());
    }

    proxy.sigterm();
    for mut ws in echo_clients {
        let (_, close) = read_until_close(&mut ws, PROMPT).await;
        assert_eq!(close, Some((1001, REASON.to_owned())));
        tokio::spawn(async move { while ws.next().await.is_some() {} });
    }
    let (more, close) = read_until_close(&mut pushed, PROMPT).await;
    assert_eq!(close, Some((1001, REASON.to_owned())));
    let last_client_close = Instant::now();
    tokio::spawn(async move { while pushed.next().await.is_some() {} });
    received.extend(more);
    let numbers: Vec<u64> =
        received.iter().map(|m| m.to_text().expect("text").parse().expect("a number")).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "every pushed message, in order, none lost");

    for _ in 0..3 {
        let close = echo.next_close(PROMPT).await;
        assert_eq!(close.frame, Some((1001, REASON.to_owned())));
    }
    let push_close = push.next_close(PROMPT).await;
    assert_eq!(push_close.frame, Some((1001, REASON.to_owned())));
    assert_eq!(
        push_close.last_sent,
        Some(numbers.len() as u64),
        "the client got all the backend sent before it answered"
    );

    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    assert!(last_client_close.elapsed() < Duration::from_secs(2), "exit right after the last handshake");
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "tunnels.closed"), Some(4.0), "{summary}");
}

#[tokio::test]
async fn drain_lets_16mib_messages_in_flight_finish_before_the_close() {
    const SIZE: usize = 16 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let mut proxy = Lameduck::start(&config(&[backend_addr], "", &drain_tail(""))).await;
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let (backend_has_part, backend_part) = tokio::sync::oneshot::channel();
    let (client_has_part, client_part) = tokio::sync::oneshot::channel();

    let backend_go = go_rx.clone();
    let backend = tokio::spawn(async move {
        let (stream, _) = raw_server_handshake(&listener, "").await;
        let (mut rd, wr) = stream.into_split();
        let writer = tokio::spawn(send_in_two_halves(wr, payload(SIZE, 1), None, backend_go));
        let msg = read_split_frame(&mut rd, backend_has_part).await;
        assert!(msg.first == 0x82 && msg.payload == payload(SIZE, 2), "the client's 16 MiB arrived intact");
        let close = read_frame(&mut rd).await.expect("close after the message");
        assert_eq!(close.close_code(), Some(1001));
        let mut wr = writer.await.unwrap();
        wr.write_all(&frame(0x88, &close.payload, None)).await.unwrap();
    });

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    raw_client_handshake(&mut stream, "").await;
    let (mut rd, wr) = stream.into_split();
    let client_writer = tokio::spawn(send_in_two_halves(wr, payload(SIZE, 2), Some([1, 2, 3, 4]), go_rx));
    let client_reader = tokio::spawn(async move {
        let msg = read_split_frame(&mut rd, client_has_part).await;
        (rd, msg)
    });
    // Both messages are truly mid-flight: each receiver holds part of its message.
    timeout(PROMPT, backend_part).await.unwrap().unwrap();
    timeout(PROMPT, client_part).await.unwrap().unwrap();

    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    go_tx.send(true).unwrap();
    let (mut rd, msg) = timeout(secs(10), client_reader).await.unwrap().unwrap();
    assert!(msg.first == 0x82 && msg.payload == payload(SIZE, 1), "the backend's 16 MiB arrived intact");
    let close = timeout(PROMPT, read_frame(&mut rd)).await.unwrap().expect("close");
    assert_eq!(close.close_code(), Some(1001));
    let mut wr = client_writer.await.unwrap();
    wr.write_all(&frame(0x88, &close.payload, Some([5, 6, 7, 8]))).await.unwrap();
    timeout(PROMPT, backend).await.expect("backend done").expect("backend assertions");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

/// Writes one binary frame carrying `data`: the header and the first half, then (once `go`
/// turns true) the rest.
async fn send_in_two_halves(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut data: Vec<u8>,
    mask: Option<[u8; 4]>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> tokio::net::tcp::OwnedWriteHalf {
    if let Some(key) = mask {
        data.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    }
    wr.write_all(&frame_header(0x82, data.len(), mask)).await.unwrap();
    wr.write_all(&data[..data.len() / 2]).await.unwrap();
    go.wait_for(|go| *go).await.unwrap();
    wr.write_all(&data[data.len() / 2..]).await.unwrap();
    wr
}

/// Reads one frame, reporting on `part` once its header and the first MiB have arrived.
async fn read_split_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    part: tokio::sync::oneshot::Sender<()>,
) -> RawFrame {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.unwrap();
    assert_eq!(h[1] & 0x7F, 127, "a 64-bit length");
    let len = r.read_u64().await.unwrap() as usize;
    let mut key = [0u8; 4];
    if h[1] & 0x80 != 0 {
        r.read_exact(&mut key).await.unwrap();
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data[..1 << 20]).await.unwrap();
    part.send(()).unwrap();
    r.read_exact(&mut data[1 << 20..]).await.unwrap();
    if h[1] & 0x80 != 0 {
        data.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    }
    RawFrame { first: h[0], payload: data }
}

/// A raw client that completes the handshake and then never answers anything.
async fn deaf_client(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    raw_client_handshake(&mut stream, "").await;
    stream
}

/// Reads the Close, then waits for the connection to be cut; returns the time in between.
async fn close_then_cut(stream: &mut TcpStream) -> Duration {
    let close = timeout(PROMPT, read_frame(stream)).await.expect("close in time").expect("close");
    assert_eq!(close.close_code(), Some(1001));
    let got_close = Instant::now();
    let mut rest = Vec::new();
    let _ = timeout(secs(15), stream.read_to_end(&mut rest)).await.expect("the connection is cut");
    got_close.elapsed()
}

#[tokio::test]
async fn drain_cuts_a_client_that_ignores_the_close_after_close_timeout() {
    let backend = WsBackend::start(Behaviour::Echo).await;
    let tail = format!("[drain]\ndeadline = \"10s\"\nclose_timeout = \"1s\"\nclose_reason = \"{REASON}\"\n");
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", &tail)).await;
    let mut client = deaf_client(proxy.addr).await;
    proxy.sigterm();
    let waited = close_then_cut(&mut client).await;
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(3), "cut after {waited:?}");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn drain_cuts_a_deaf_client_at_the_deadline_with_status_2() {
    let backend = WsBackend::start(Behaviour::Echo).await;
    let tail = "[drain]\ndeadline = \"1s\"\nclose_timeout = \"20s\"\n";
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", tail)).await;
    let mut client = deaf_client(proxy.addr).await;
    let signalled = Instant::now();
    proxy.sigterm();
    close_then_cut(&mut client).await;
    let cut_after = signalled.elapsed();
    assert!(cut_after >= Duration::from_millis(900) && cut_after < Duration::from_secs(4), "{cut_after:?}");
    assert_eq!(proxy.exit_within(PROMPT).await, 2);
}

#[tokio::test]
async fn drain_spreads_close_frames_over_close_spread() {
    let backend = WsBackend::start(Behaviour::Echo).await;
    let mut proxy =
        Lameduck::start(&config(&[backend.addr], "", &drain_tail("close_spread = \"2s\"\n"))).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut ws = ws_client(proxy.addr).await;
        ws.send(Message::Text("up".into())).await.unwrap();
        ws.next().await.unwrap().unwrap();
        clients.push(ws);
    }
    let signalled = Instant::now();
    proxy.sigterm();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let (_, close) = read_until_close(&mut ws, secs(6)).await;
                let at = signalled.elapsed();
                while ws.next().await.is_some() {}
                (close, at)
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        let (close, at) = task.await.unwrap();
        assert_eq!(close.map(|c| c.0), Some(1001));
        times.push(at);
    }
    times.sort();
    let early = times.iter().filter(|t| **t < Duration::from_millis(100)).count();
    assert!(early < 5, "not all in the first 100 ms: {times:?}");
    assert!(*times.last().unwrap() < Duration::from_millis(2600), "all within the window: {times:?}");
    assert!(
        *times.last().unwrap() > Duration::from_millis(1500),
        "spread to the end of the window: {times:?}"
    );
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

/// A backend that switches its first connection to `myproto` and hands the stream to `then`.
async fn myproto_backend<F, Fut>(then: F) -> std::net::SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await;
        let resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: myproto\r\nConnection: Upgrade\r\n\r\n";
        stream.write_all(resp.as_bytes()).await.unwrap();
        then(stream).await;
    });
    addr
}

/// [`config`] whose route lets `myproto` through besides WebSocket (`[[route]] upgrades`).
fn myproto_config(backend: std::net::SocketAddr, tail: &str) -> String {
    let route = "[[route]]\nupstream = \"app\"\n";
    let allowing = "[[route]]\nupstream = \"app\"\nupgrades = [\"websocket\", \"myproto\"]\n";
    let text = config(&[backend], "", tail);
    assert!(text.contains(route), "the harness config changed: {text}");
    text.replace(route, allowing)
}

/// A client that asked to switch to `myproto` through the proxy at `addr` and got its `101`.
async fn myproto_client(addr: std::net::SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nUpgrade: myproto\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(
        head.starts_with("HTTP/1.1 101") && head.to_ascii_lowercase().contains("upgrade: myproto"),
        "{head}"
    );
    client
}

#[tokio::test]
async fn raw_upgrade_tunnel_is_relayed_through_the_drain_and_cut_at_the_deadline() {
    let backend_addr = myproto_backend(|mut stream| async move {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => stream.write_all(&buf[..n]).await.unwrap(),
            }
        }
    })
    .await;
    let mut proxy = Lameduck::start(&myproto_config(backend_addr, "[drain]\ndeadline = \"1s\"\n")).await;
    let mut client = myproto_client(proxy.addr).await;
    let mut echo = [0u8; 4];
    client.write_all(b"ping").await.unwrap();
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");

    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    client.write_all(b"more").await.unwrap();
    timeout(PROMPT, client.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"more", "a raw tunnel keeps relaying during the drain");
    assert_eq!(proxy.exit_within(secs(4)).await, 2);
    let mut rest = Vec::new();
    let _ = timeout(PROMPT, client.read_to_end(&mut rest)).await.expect("cut");
    assert!(rest.is_empty());
}

/// Bytes a broken backend sends after its 101: a frame with a reserved opcode, then text.
const GARBAGE: &[u8] = b"\x83\xff\xfe garbage that is no frame";

#[tokio::test]
async fn garbage_after_a_101_is_relayed_raw_and_breaks_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = raw_server_handshake(&listener, "").await;
            tokio::spawn(async move {
                stream.write_all(GARBAGE).await.unwrap();
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
    let mut proxy = Lameduck::start(&config(&[backend_addr], "", &drain_tail(""))).await;
    for _ in 0..2 {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        raw_client_handshake(&mut client, "").await;
        let mut got = vec![0u8; GARBAGE.len()];
        timeout(PROMPT, client.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, GARBAGE);
        client.write_all(b"\x00\x01 more garbage").await.unwrap();
    }
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    raw_client_handshake(&mut client, "").await;
    drop(client);
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

/// A client that reads everything and answers nothing, and never closes its socket.
async fn keep_reading(mut stream: TcpStream) -> tokio::task::JoinHandle<TcpStream> {
    tokio::spawn(async move {
        let mut sink = [0u8; 1024];
        while let Ok(Ok(n)) = timeout(secs(20), stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
        stream
    })
}

/// A session that already ended (both Close frames exchanged, the backend's FIN relayed) but
/// whose client keeps its socket open is not waited for until the deadline: it gets
/// `close_timeout`, then is closed, counted as closed, not cut.
#[tokio::test]
async fn drain_closes_an_ended_websocket_session_after_close_timeout_not_at_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let (mut stream, _) = raw_server_handshake(&listener, "").await;
        let close = read_frame(&mut stream).await.expect("the client's close");
        stream.write_all(&frame(0x88, &close.payload, None)).await.unwrap();
        // The backend ends the session and closes TCP, as RFC 6455 §7.1.1 says it should.
    });
    let tail = "[drain]\ndeadline = \"12s\"\nclose_timeout = \"2s\"\n";
    let mut proxy = Lameduck::start(&config(&[backend_addr], "", tail)).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    raw_client_handshake(&mut client, "").await;
    client.write_all(&frame(0x88, &[0x03, 0xE8], Some([1, 2, 3, 4]))).await.unwrap();
    let answer = timeout(PROMPT, read_frame(&mut client)).await.unwrap().expect("the backend's close");
    assert_eq!(answer.close_code(), Some(1000));
    timeout(PROMPT, backend).await.unwrap().unwrap();
    let mut rest = [0u8; 1];
    assert_eq!(timeout(PROMPT, client.read(&mut rest)).await.unwrap().unwrap(), 0, "the FIN is relayed");
    // The client keeps its side open.

    let signalled = Instant::now();
    proxy.sigterm();
    assert_eq!(proxy.exit_within(secs(6)).await, 0, "not cut at the 12 s deadline");
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(1800), "close_timeout is given first: {took:?}");
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "tunnels.cut"), Some(0.0), "{summary}");
    assert_eq!(field_f64(&summary, "tunnels.closed"), Some(1.0), "{summary}");
    drop(client);
}

/// A raw (non-WebSocket) tunnel half-closed by the backend gets the same bound in a drain.
#[tokio::test]
async fn drain_closes_a_half_closed_raw_tunnel_after_close_timeout() {
    let backend_addr = myproto_backend(|mut stream| async move {
        stream.write_all(b"done").await.unwrap();
        stream.shutdown().await.unwrap();
        // Keeps reading, so only the client's silence holds the tunnel open.
        let mut buf = [0u8; 64];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let tail = "[drain]\ndeadline = \"12s\"\nclose_timeout = \"1s\"\n";
    let mut proxy = Lameduck::start(&myproto_config(backend_addr, tail)).await;
    let reader = keep_reading(myproto_client(proxy.addr).await).await;
    proxy.wait_for_message("request").await;

    let signalled = Instant::now();
    proxy.sigterm();
    assert_eq!(proxy.exit_within(secs(6)).await, 0, "not cut at the 12 s deadline");
    assert!(signalled.elapsed() >= Duration::from_millis(800), "{:?}", signalled.elapsed());
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "tunnels.cut"), Some(0.0), "{summary}");
    assert_eq!(field_f64(&summary, "tunnels.closed"), Some(1.0), "counted as closed: {summary}");
    reader.abort();
}

/// The bound is on silence, not on the tunnel's age: a tunnel half-closed by the client whose
/// backend is still streaming keeps going past `close_timeout`, until the backend is done.
#[tokio::test]
async fn drain_lets_a_half_closed_raw_tunnel_that_still_streams_finish() {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let backend_addr = myproto_backend(|mut stream| async move {
        // A byte every 100 ms (well inside close_timeout) until the test has seen enough.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut sent = 0usize;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {
                    stream.write_all(b"x").await.unwrap();
                    sent += 1;
                }
            }
        }
        stream.shutdown().await.unwrap();
        let _ = sent_tx.send(sent);
    })
    .await;
    let tail = "[drain]\ndeadline = \"12s\"\nclose_timeout = \"1s\"\n";
    let mut proxy = Lameduck::start(&myproto_config(backend_addr, tail)).await;
    let mut client = myproto_client(proxy.addr).await;
    client.shutdown().await.unwrap(); // the client has said all it will say
    proxy.wait_for_message("request").await;
    proxy.sigterm();
    proxy.wait_for_message("draining").await;
    let draining = Instant::now();
    let mut got = Vec::new();
    let mut byte = [0u8; 64];
    // Read for twice close_timeout into the drain: a cut tunnel would end the stream first.
    while draining.elapsed() < Duration::from_secs(2) {
        let n = timeout(PROMPT, client.read(&mut byte)).await.expect("bytes keep coming").unwrap();
        assert!(
            n > 0,
            "the tunnel ended {:?} into the drain, while the backend streamed",
            draining.elapsed()
        );
        got.extend_from_slice(&byte[..n]);
    }
    stop.send(()).unwrap();
    timeout(PROMPT, client.read_to_end(&mut got)).await.expect("the stream ends").unwrap();
    let sent = timeout(PROMPT, sent_rx).await.unwrap().unwrap();
    assert_eq!(got.len(), sent, "every byte arrived");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let summary = proxy.summary().await;
    assert_eq!(field_f64(&summary, "tunnels.cut"), Some(0.0), "{summary}");
}

/// An upgraded request is logged twice: at its `101`, and when its tunnel ends, with the
/// tunnel's duration, the bytes relayed each way, and how it ended.
#[tokio::test]
async fn a_websocket_gets_a_second_access_line_when_its_tunnel_ends() {
    let backend = WsBackend::start(Behaviour::Echo).await;
    let proxy = Lameduck::start(&config(&[backend.addr], "", &drain_tail(""))).await;
    let mut ws = ws_client(proxy.addr).await;
    ws.send(Message::Text("hello".into())).await.expect("send");
    let echoed = timeout(PROMPT, ws.next()).await.expect("echo in time").expect("a message").expect("ok");
    assert_eq!(echoed, Message::Text("hello".into()));
    let going_away = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "".into(),
    };
    ws.close(Some(going_away)).await.expect("close");
    while timeout(PROMPT, ws.next()).await.expect("closed in time").is_some() {}
    drop(ws);

    let is_end = |l: &serde_json::Value| crate::harness::message(l) == "tunnel ended";
    let line = proxy.wait_for_log(is_end, PROMPT).await;
    assert_eq!(line["target"], "lameduck::access", "{line}");
    assert_eq!(line["http.path"], "/ws", "{line}");
    assert_eq!(line["end"], "client_close", "{line}");
    assert_eq!(line["close_code.client"], 1001, "the client's Close code: {line}");
    assert_eq!(line["close_code.upstream"], 1001, "the backend answered with the same code: {line}");
    // "hello" as a masked client frame is 11 bytes, its echo 7; then the Close frames.
    let bytes_in = field_f64(&line, "bytes.in").expect("bytes.in");
    let bytes_out = field_f64(&line, "bytes.out").expect("bytes.out");
    assert!(bytes_in >= 11.0 + 6.0 && bytes_out >= 7.0 + 2.0, "real byte counts: {line}");
    assert!(field_f64(&line, "duration_ms").is_some_and(|d| d > 0.0), "{line}");
    let upgraded = |l: &serde_json::Value| {
        crate::harness::is_access_line(l) && l["http.status"] == 101 && l["http.path"] == "/ws"
    };
    proxy.wait_for_log(upgraded, PROMPT).await;
}
