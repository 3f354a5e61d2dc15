//! One request and its response head: the bytes that go out, the head that comes back (1xx
//! skipped, 101 switching, garbage refused), and which failures hand the request back.

use http::{Method, StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test(start_paused = true)]
async fn a_get_goes_out_byte_exact_through_partial_writes_and_a_head_split_mid_line_and_mid_crlf_is_parsed() {
    let wire = b"GET /search?q=duck HTTP/1.1\r\nhost: app.test\r\nx-request-id: 7\r\n\r\n";
    let req = Request::get("/search?q=duck")
        .header("host", "app.test")
        .header("x-request-id", "7")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (resp, target) = Script::new()
        .accepts(wire, &[1, after(wire, b"/sea"), after(wire, b"HTTP/1.1\r"), wire.len() - 1])
        .answers(&[
            b"HTTP/1.",
            b"1 200 O",
            b"K\r",
            b"\nContent-Length: 5\r\nX-Upstream: a",
            b"\r\n\r",
            b"\nhel",
            b"lo",
        ])
        .then_next_request()
        .answer_to(req)
        .await;

    assert_eq!((resp.status(), resp.version()), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(resp.headers()["content-length"], "5");
    assert_eq!(resp.headers()["x-upstream"], "a");
    assert_body_then_pooled(resp, b"hello", &target).await;
}

#[tokio::test(start_paused = true)]
async fn interim_1xx_answers_are_skipped_and_the_final_answer_is_returned() {
    let (resp, target) = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Ea",
            b"rly Hints\r\nLink: </style.css>; rel=preload\r\n\r",
            b"\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .then_next_request()
        .answer_to(get("/"))
        .await;

    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("link").is_none(), "the 103's headers are not the answer's");
    assert_body_then_pooled(resp, b"ok", &target).await;
}

fn upgrade_request() -> Request<Empty<Bytes>> {
    Request::get("/chat")
        .header("host", "app.test")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Empty::new())
        .unwrap()
}

const UPGRADE_WIRE: &[u8] =
    b"GET /chat HTTP/1.1\r\nhost: app.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";

/// What [`upgrade_request`], sent as an upgrade, gets from a new connection playing `script`,
/// and the target whose pool the connection would go back to.
async fn exchange_upgrade(script: &mut Script) -> (Exchanged<Empty<Bytes>>, Arc<Target>) {
    let target = target();
    let exchanged = within(exchange(script.conn(), upgrade_request(), Lease::take(&target), true)).await;
    (exchanged.expect("the upgrade exchange fails"), target)
}

#[tokio::test(start_paused = true)]
async fn a_101_to_an_upgrade_request_switches_and_the_bytes_read_past_its_head_come_first() {
    let (exchanged, target) = exchange_upgrade(
        Script::new()
            .accepts(UPGRADE_WIRE, &[after(UPGRADE_WIRE, b"upgrade\r")])
            .answers(&[
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r",
                b"\nConnection: upgrade\r\n\r\n\x81\x02hi",
                b"\x81\x04more",
            ])
            .accepts(b"\x88\x00", &[]),
    )
    .await;

    let Exchanged::Switched(head, switched) = exchanged else {
        panic!("no switch");
    };
    assert_eq!(head.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(head.headers()["upgrade"], "websocket");
    assert_eq!(&switched.read_first[..], b"\x81\x02hi", "the bytes that came with the head");
    let mut io = switched.io;
    let mut buf = [0u8; 64];
    let n = within(io.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"\x81\x04more", "then the socket's");
    within(io.write_all(b"\x88\x00")).await.unwrap();
    assert_eq!(within(io.read(&mut buf)).await.unwrap(), 0, "then the socket's end");
    assert_not_pooled(&target);
}

#[tokio::test(start_paused = true)]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_an_error() {
    let conn = Script::new()
        .accepts(UPGRADE_WIRE, &[])
        .answers(&[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"])
        .conn();
    let why = "a switch the request did not ask for";
    assert_upstream_error_and_not_pooled(conn, upgrade_request(), io::ErrorKind::InvalidData, why).await;
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_refused_with_an_ordinary_answer_reads_like_one_and_its_connection_is_not_pooled() {
    let (exchanged, target) = exchange_upgrade(
        Script::new()
            .accepts(UPGRADE_WIRE, &[])
            .answers(&[b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\n", b"denied"]),
    )
    .await;

    let Exchanged::Answered(resp) = exchanged else {
        panic!("no answer");
    };
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_body_then_not_pooled(resp, b"denied", &target).await;
}

#[tokio::test(start_paused = true)]
async fn garbage_instead_of_a_response_head_is_an_error() {
    let garbage: [&[u8]; 5] = [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ];
    for garbage in garbage {
        let conn = Script::new().accepts(GET_ROOT, &[]).answers(&[garbage]).conn();
        let label = String::from_utf8_lossy(garbage);
        assert_upstream_error_and_not_pooled(conn, get("/"), io::ErrorKind::InvalidData, &label).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_head_past_the_size_limit_is_an_error() {
    let mut head = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
    head.resize(70 * 1024, b'a');
    let conn = Script::new().accepts(GET_ROOT, &[]).answers(&[&head]).conn();
    let why = "a head of 70 KiB";
    assert_upstream_error_and_not_pooled(conn, get("/"), io::ErrorKind::InvalidData, why).await;
}

#[tokio::test(start_paused = true)]
async fn a_get_on_a_reused_connection_closed_before_any_answer_comes_back_unsent() {
    let wire = b"GET /again HTTP/1.1\r\nhost: app.test\r\nx-request-id: 9\r\n\r\n";
    let request = || {
        Request::get("/again")
            .header("host", "app.test")
            .header("x-request-id", "9")
            .body(Empty::<Bytes>::new())
    };
    // The upstream closed it while it sat in the pool: the request goes out, then EOF; or the
    // write itself fails.
    let closed = ("closed, then EOF", Script::new().accepts(wire, &[]).reused_conn());
    let reset = ("reset on write", Script::new().write_fails(io::ErrorKind::ConnectionReset).reused_conn());
    for (label, conn) in [closed, reset] {
        let target = target();
        match within(exchange(conn, request().unwrap(), Lease::take(&target), false)).await {
            Ok(Exchanged::NotSent(back)) => {
                assert_eq!((back.method(), back.uri().path()), (&Method::GET, "/again"), "{label}");
                assert_eq!(back.headers()["x-request-id"], "9", "{label}");
            }
            Ok(_) => panic!("{label}: an answer or a switch from a closed connection"),
            Err(e) => panic!("{label}: not handed back: {e:?}"),
        }
        assert_not_pooled_in(&target, label);
    }
}

#[tokio::test(start_paused = true)]
async fn a_get_with_content_length_0_on_a_reused_connection_closed_before_any_answer_comes_back_unsent() {
    let target = target();
    let conn = Script::new()
        .accepts(b"GET / HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\n\r\n", &[])
        .reused_conn();
    let req = Request::get("/")
        .header("host", "app.test")
        .header("content-length", "0")
        .body(Empty::<Bytes>::new());

    match within(exchange(conn, req.unwrap(), Lease::take(&target), false)).await {
        Ok(Exchanged::NotSent(back)) => assert_eq!(back.headers()["content-length"], "0"),
        Ok(_) => panic!("an answer or a switch from a closed connection"),
        Err(e) => panic!("an empty body is no reason not to resend: {e:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_on_a_reused_connection_closed_before_any_answer_is_an_error() {
    let conn = Script::new().accepts(b"POST /order HTTP/1.1\r\nhost: app.test\r\n\r\n", &[]).reused_conn();
    let post = Request::post("/order").header("host", "app.test").body(Empty::<Bytes>::new()).unwrap();
    let why = "a POST is not resent";
    assert_upstream_error_and_not_pooled(conn, post, io::ErrorKind::UnexpectedEof, why).await;
}

#[tokio::test(start_paused = true)]
async fn a_put_whose_body_went_out_on_a_reused_connection_closed_before_any_answer_is_an_error() {
    let conn = Script::new()
        .accepts(b"PUT /doc HTTP/1.1\r\nhost: app.test\r\ncontent-length: 3\r\n\r\n", &[])
        .accepts(b"abc", &[])
        .reused_conn();
    let put = Request::put("/doc")
        .header("host", "app.test")
        .header("content-length", "3")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let why = "the body is gone: it cannot go again";
    assert_upstream_error_and_not_pooled(conn, put, io::ErrorKind::UnexpectedEof, why).await;
}

#[tokio::test(start_paused = true)]
async fn a_get_on_a_reused_connection_closed_after_part_of_an_answer_is_an_error() {
    let conn = Script::new().accepts(GET_ROOT, &[]).answers(&[b"HTTP/1.1 200"]).reused_conn();
    let why = "the upstream saw the request: not resent";
    assert_upstream_error_and_not_pooled(conn, get("/"), io::ErrorKind::UnexpectedEof, why).await;
}

#[tokio::test(start_paused = true)]
async fn a_get_on_a_fresh_connection_closed_before_any_answer_is_an_error() {
    let conn = Script::new().accepts(GET_ROOT, &[]).conn();
    let why = "a new connection is no stale one to retry";
    assert_upstream_error_and_not_pooled(conn, get("/"), io::ErrorKind::UnexpectedEof, why).await;
}
