//! One request and its response head: the bytes that go out, the head that comes back (1xx
//! skipped, 101 switching, garbage refused), and which failures hand the request back.

use http::{Method, StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test(start_paused = true)]
async fn a_get_goes_out_byte_exact_through_partial_writes_and_a_head_split_mid_line_and_mid_crlf_is_parsed() {
    let wire = b"GET /search?q=duck HTTP/1.1\r\nhost: app.test\r\nx-request-id: 7\r\n\r\n";
    let target = target();
    let conn = Script::new()
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
        .conn();
    let req = Request::get("/search?q=duck")
        .header("host", "app.test")
        .header("x-request-id", "7")
        .body(Empty::<Bytes>::new())
        .unwrap();

    let resp = answer(conn, req, &target).await;
    assert_eq!((resp.status(), resp.version()), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(resp.headers()["content-length"], "5");
    assert_eq!(resp.headers()["x-upstream"], "a");
    assert_eq!(read_whole(resp.into_body()).await, b"hello");
    assert_pooled_and_reusable(&target).await;
}

#[tokio::test(start_paused = true)]
async fn interim_1xx_answers_are_skipped_and_the_final_answer_is_returned() {
    let target = target();
    let conn = Script::new()
        .accepts(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n", &[])
        .answers(&[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Ea",
            b"rly Hints\r\nLink: </style.css>; rel=preload\r\n\r",
            b"\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .conn();

    let resp = answer(conn, get("/"), &target).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("link").is_none(), "the 103's headers are not the answer's");
    assert_eq!(read_whole(resp.into_body()).await, b"ok");
    assert!(target.take_idle().is_some());
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

#[tokio::test(start_paused = true)]
async fn a_101_to_an_upgrade_request_switches_and_the_bytes_read_past_its_head_come_first() {
    let target = target();
    let conn = Script::new()
        .accepts(UPGRADE_WIRE, &[after(UPGRADE_WIRE, b"upgrade\r")])
        .answers(&[
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r",
            b"\nConnection: upgrade\r\n\r\n\x81\x02hi",
            b"\x81\x04more",
        ])
        .accepts(b"\x88\x00", &[])
        .conn();

    let Ok(Exchanged::Switched(head, switched)) =
        within(exchange(conn, upgrade_request(), target.clone(), true)).await
    else {
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
    let target = target();
    let conn = Script::new()
        .accepts(UPGRADE_WIRE, &[])
        .answers(&[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"])
        .conn();

    let e = failure(conn, upgrade_request(), &target, false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::InvalidData);
    assert_not_pooled(&target);
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_refused_with_an_ordinary_answer_reads_like_one_and_its_connection_is_not_pooled() {
    let target = target();
    let conn = Script::new()
        .accepts(UPGRADE_WIRE, &[])
        .answers(&[b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\n", b"denied"])
        .conn();

    let Ok(Exchanged::Answered(resp)) = within(exchange(conn, upgrade_request(), target.clone(), true)).await
    else {
        panic!("no answer");
    };
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(read_whole(resp.into_body()).await, b"denied");
    assert_not_pooled(&target);
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
        let target = target();
        let conn = Script::new()
            .accepts(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n", &[])
            .answers(&[garbage])
            .conn();
        let e = failure(conn, get("/"), &target, false).await;
        assert_eq!(upstream_kind(&e), io::ErrorKind::InvalidData, "{}", String::from_utf8_lossy(garbage));
        assert_not_pooled(&target);
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_head_past_the_size_limit_is_an_error() {
    let target = target();
    let mut head = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
    head.resize(70 * 1024, b'a');
    let conn =
        Script::new().accepts(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n", &[]).answers(&[&head]).conn();

    let e = failure(conn, get("/"), &target, false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::InvalidData);
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
    let closed = Script::new().accepts(wire, &[]).reused_conn();
    let reset = Script::new().write_fails(io::ErrorKind::ConnectionReset).reused_conn();
    for conn in [closed, reset] {
        let target = target();
        match within(exchange(conn, request().unwrap(), target.clone(), false)).await {
            Ok(Exchanged::NotSent(back)) => {
                assert_eq!((back.method(), back.uri().path()), (&Method::GET, "/again"));
                assert_eq!(back.headers()["x-request-id"], "9");
            }
            Ok(_) => panic!("an answer or a switch from a closed connection"),
            Err(e) => panic!("not handed back: {e:?}"),
        }
        assert_not_pooled(&target);
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

    match within(exchange(conn, req.unwrap(), target.clone(), false)).await {
        Ok(Exchanged::NotSent(back)) => assert_eq!(back.headers()["content-length"], "0"),
        Ok(_) => panic!("an answer or a switch from a closed connection"),
        Err(e) => panic!("an empty body is no reason not to resend: {e:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_on_a_reused_connection_closed_before_any_answer_is_an_error() {
    let target = target();
    let conn = Script::new().accepts(b"POST /order HTTP/1.1\r\nhost: app.test\r\n\r\n", &[]).reused_conn();
    let post = Request::post("/order").header("host", "app.test").body(Empty::<Bytes>::new()).unwrap();

    let e = failure(conn, post, &target, false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::UnexpectedEof);
}

#[tokio::test(start_paused = true)]
async fn a_put_whose_body_went_out_on_a_reused_connection_closed_before_any_answer_is_an_error() {
    let target = target();
    let conn = Script::new()
        .accepts(b"PUT /doc HTTP/1.1\r\nhost: app.test\r\ncontent-length: 3\r\n\r\n", &[])
        .accepts(b"abc", &[])
        .reused_conn();
    let put = Request::put("/doc")
        .header("host", "app.test")
        .header("content-length", "3")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();

    let e = failure(conn, put, &target, false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::UnexpectedEof, "the body is gone: it cannot go again");
}

#[tokio::test(start_paused = true)]
async fn a_get_on_a_reused_connection_closed_after_part_of_an_answer_is_an_error() {
    let target = target();
    let conn = Script::new()
        .accepts(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n", &[])
        .answers(&[b"HTTP/1.1 200"])
        .reused_conn();

    let e = failure(conn, get("/"), &target, false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::UnexpectedEof, "the upstream saw the request: not resent");
}

#[tokio::test(start_paused = true)]
async fn a_get_on_a_fresh_connection_closed_before_any_answer_is_an_error() {
    let target = target();
    let conn = Script::new().accepts(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n", &[]).conn();

    let e = failure(conn, get("/"), &target, false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::UnexpectedEof, "a new connection is no stale one to retry");
}
