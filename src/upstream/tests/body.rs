//! Response bodies of every framing, read across awkward reads, and the one question that
//! matters for the next request: does the connection go back to its pool? Only when the body
//! was read whole, nothing follows it, and keep-alive holds.

use http::StatusCode;
use http_body::Body as _;

use super::*;

const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n";

/// The body of the answer `reads` give to `GET /`, read whole, and its connection's target.
async fn body_of(reads: &[&[u8]]) -> (Vec<u8>, Arc<Target>) {
    let target = target();
    let conn = Script::new().accepts(GET_ROOT, &[]).answers(reads).conn();
    let body = read_whole(answer(conn, get("/"), &target).await.into_body()).await;
    (body, target)
}

/// The error the body of the answer `reads` give to `GET /` ends in, with the bytes before it.
async fn failed_body_of(reads: &[&[u8]]) -> (Vec<u8>, io::Error, Arc<Target>) {
    let target = target();
    let conn = Script::new().accepts(GET_ROOT, &[]).answers(reads).conn();
    let (bytes, error) = read_body(answer(conn, get("/"), &target).await.into_body()).await;
    (bytes, error.expect("the body fails"), target)
}

#[tokio::test(start_paused = true)]
async fn a_content_length_body_split_across_reads_is_read_whole_and_pools_the_connection() {
    let target = target();
    let conn = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nh", b"ello w", b"orl", b"d"])
        .then_next_request()
        .conn();

    let resp = answer(conn, get("/"), &target).await;
    assert_eq!(resp.body().size_hint().exact(), Some(11));
    assert_eq!(read_whole(resp.into_body()).await, b"hello world");
    assert_pooled_and_reusable(&target).await;
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_split_at_every_awkward_point_is_read_whole_and_pools_the_connection() {
    let target = target();
    let conn = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5",
            // The size apart from its CRLF, then mid-CRLF.
            b"\r",
            b"\nhel",
            // Data apart from its CRLF, mid-CRLF.
            b"lo\r",
            b"\n6;name=\"a b\"",
            b";x\r\n world\r\n1",
            // A two-digit size split between its digits.
            b"0\r\n0123456789abcdef\r\n0",
            b"\r\nX-Trailer: 1\r",
            b"\nX-Other: 2\r\n\r",
            b"\n",
        ])
        .then_next_request()
        .conn();

    let resp = answer(conn, get("/"), &target).await;
    assert_eq!(read_whole(resp.into_body()).await, b"hello world0123456789abcdef");
    assert_pooled_and_reusable(&target).await;
}

#[tokio::test(start_paused = true)]
async fn a_body_read_until_close_ends_at_eof_and_does_not_pool_the_connection() {
    for head in [
        &b"HTTP/1.1 200 OK\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let (body, target) = body_of(&[head, b"a", b"bc"]).await;
        assert_eq!(body, b"abc", "{}", String::from_utf8_lossy(head));
        assert_not_pooled(&target);
    }
}

#[tokio::test(start_paused = true)]
async fn connection_close_keeps_a_whole_body_out_of_the_pool() {
    let (body, target) =
        body_of(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"]).await;
    assert_eq!(body, b"ok");
    assert_not_pooled(&target);

    let chunked = b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (body, target) = body_of(&[chunked]).await;
    assert_eq!(body, b"ok");
    assert_not_pooled(&target);
}

#[tokio::test(start_paused = true)]
async fn transfer_encoding_overrides_content_length_whose_header_is_dropped() {
    let target = target();
    let conn = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
        .conn();

    let resp = answer(conn, get("/"), &target).await;
    assert!(resp.headers().get("content-length").is_none(), "the proxy would forward 3 for a body of 5");
    assert_eq!(read_whole(resp.into_body()).await, b"hello");
}

#[tokio::test(start_paused = true)]
async fn an_http_1_0_answer_pools_its_connection_only_with_keep_alive() {
    let (body, target) = body_of(&[b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
    assert_eq!(body, b"ok");
    assert_not_pooled(&target);

    let (body, target) =
        body_of(&[b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]).await;
    assert_eq!(body, b"ok");
    assert!(target.take_idle().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_body_cut_short_is_an_error_and_does_not_pool_the_connection() {
    let cut_short: [&[&[u8]]; 4] = [
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"d"],
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"],
        &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\nabcd"],
        &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n", b"0\r\n"],
    ];
    for reads in cut_short {
        let (bytes, error, target) = failed_body_of(reads).await;
        assert!(b"abcd".starts_with(&bytes), "{bytes:?}");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_not_pooled(&target);
    }
}

#[tokio::test(start_paused = true)]
async fn bad_chunked_framing_is_an_error_and_does_not_pool_the_connection() {
    for chunks in [&b"zz\r\n"[..], b"2\r\nabX\r\n0\r\n\r\n", b"1ffffffffffffffff\r\n"] {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_, error, target) = failed_body_of(&[head, chunks]).await;
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{}", String::from_utf8_lossy(chunks));
        assert_not_pooled(&target);
    }
}

#[tokio::test(start_paused = true)]
async fn bytes_after_the_response_keep_the_connection_out_of_the_pool() {
    let (body, target) =
        body_of(&[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n"]).await;
    assert_eq!(body, b"abc");
    assert_not_pooled(&target);

    let (body, target) =
        body_of(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nX"]).await;
    assert_eq!(body, b"abc");
    assert_not_pooled(&target);

    let (body, target) = body_of(&[b"HTTP/1.1 204 No Content\r\n\r\nstray"]).await;
    assert!(body.is_empty());
    assert_not_pooled(&target);
}

#[tokio::test(start_paused = true)]
async fn head_204_and_304_answers_have_no_body_whatever_their_headers_say_and_pool_the_connection() {
    const HEAD_ROOT: &[u8] = b"HEAD / HTTP/1.1\r\nhost: app.test\r\n\r\n";
    let head = || Request::head("/").header("host", "app.test").body(Empty::new()).unwrap();
    type Case = (&'static [u8], fn() -> Request<Empty<Bytes>>, &'static [u8]);
    let cases: [Case; 4] = [
        (HEAD_ROOT, head, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (HEAD_ROOT, head, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (GET_ROOT, || get("/"), b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        (GET_ROOT, || get("/"), b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ];
    for (request_wire, request, answer_wire) in cases {
        // Polled to its end, as a test reads it.
        let polled = target();
        let conn =
            Script::new().accepts(request_wire, &[]).answers(&[answer_wire]).then_next_request().conn();
        let resp = answer(conn, request(), &polled).await;
        assert!(resp.body().is_end_stream() && resp.body().size_hint().exact() == Some(0));
        assert!(read_whole(resp.into_body()).await.is_empty());
        assert_pooled_and_reusable(&polled).await;

        // Never polled, as hyper treats a body that is empty from the start.
        let dropped = target();
        let conn =
            Script::new().accepts(request_wire, &[]).answers(&[answer_wire]).then_next_request().conn();
        let resp = answer(conn, request(), &dropped).await;
        assert!(matches!(resp.status(), StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED));
        drop(resp);
        assert_pooled_and_reusable(&dropped).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_does_not_pool_the_connection() {
    let target = target();
    let conn = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", b"abcd"])
        .conn();

    let mut body = answer(conn, get("/"), &target).await.into_body();
    let first = within(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"abcd");
    drop(body);
    assert_not_pooled(&target);
}
