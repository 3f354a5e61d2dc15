//! Response bodies of every framing, read across awkward reads, and the one question that
//! matters for the next request: does the connection go back to its pool? Only when the body
//! was read whole, nothing follows it, and keep-alive holds.

use http::StatusCode;
use http_body::Body as _;

use super::*;

/// The body of the answer `reads` give to `GET /`, read whole, and its connection's target.
async fn body_of(reads: &[&[u8]]) -> (Vec<u8>, Arc<Target>) {
    let (resp, target) = Script::new().accepts(GET_ROOT, &[]).answers(reads).answer_to(get("/")).await;
    (read_whole(resp.into_body()).await, target)
}

/// The error the body of the answer `reads` give to `GET /` ends in, with the bytes before it.
async fn failed_body_of(reads: &[&[u8]]) -> (Vec<u8>, io::Error, Arc<Target>) {
    let (resp, target) = Script::new().accepts(GET_ROOT, &[]).answers(reads).answer_to(get("/")).await;
    let (bytes, error) = read_body(resp.into_body()).await;
    (bytes, error.expect("the body fails"), target)
}

/// The answer `reads` give to `GET /` has the body `expected`, read whole, yet its connection is
/// closed, not pooled; `label` names the case.
async fn assert_whole_body_but_not_pooled(label: &str, reads: &[&[u8]], expected: &[u8]) {
    let (body, target) = body_of(reads).await;
    assert_eq!(body, expected, "{label}: the body read whole");
    assert_not_pooled_in(&target, label);
}

#[tokio::test(start_paused = true)]
async fn a_content_length_body_split_across_reads_is_read_whole_and_pools_the_connection() {
    let (resp, target) = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nh", b"ello w", b"orl", b"d"])
        .then_next_request()
        .answer_to(get("/"))
        .await;
    assert_eq!(resp.body().size_hint().exact(), Some(11));
    assert_body_then_pooled(resp, b"hello world", &target).await;
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_split_at_every_awkward_point_is_read_whole_and_pools_the_connection() {
    let answer_wire: &[&[u8]] = &[
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
    ];
    let (resp, target) = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(answer_wire)
        .then_next_request()
        .answer_to(get("/"))
        .await;
    assert_body_then_pooled(resp, b"hello world0123456789abcdef", &target).await;
}

#[tokio::test(start_paused = true)]
async fn a_body_read_until_close_ends_at_eof_and_does_not_pool_the_connection() {
    for head in [&b"HTTP/1.1 200 OK\r\n\r\n"[..], b"HTTP/1.0 200 OK\r\n\r\n"] {
        assert_whole_body_but_not_pooled(&String::from_utf8_lossy(head), &[head, b"a", b"bc"], b"abc").await;
    }
}

#[tokio::test(start_paused = true)]
async fn connection_close_keeps_a_whole_body_out_of_the_pool() {
    let cases: [(&str, &[u8]); 2] = [
        ("by length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        (
            "chunked, close among other options in capitals",
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
    ];
    for (label, answer_wire) in cases {
        assert_whole_body_but_not_pooled(label, &[answer_wire], b"ok").await;
    }
}

#[tokio::test(start_paused = true)]
async fn transfer_encoding_overrides_content_length_whose_header_is_dropped() {
    let (resp, target) = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
        .answer_to(get("/"))
        .await;
    assert!(resp.headers().get("content-length").is_none(), "the proxy would forward 3 for a body of 5");
    assert_body_then_not_pooled(resp, b"hello", &target).await;
}

/// RFC 9112 §6.1: lameduck decodes `chunked` and nothing else, so a response whose body is
/// still in another coding (or chunked twice, or chunked then something) cannot be forwarded.
#[tokio::test(start_paused = true)]
async fn a_transfer_coding_other_than_chunked_alone_is_an_error_and_not_pooled() {
    for te in [
        &b"gzip"[..],
        b"identity",
        b"chunked, identity",
        b"gzip, chunked",
        b"chunked, chunked",
        b"x-unknown",
        b"",
    ] {
        let label = String::from_utf8_lossy(te).into_owned();
        let mut head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ".to_vec();
        head.extend_from_slice(te);
        head.extend_from_slice(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let head: &'static [u8] = Box::leak(head.into_boxed_slice());
        let conn = Script::new().accepts(GET_ROOT, &[]).answers(&[head]).conn();
        let target = target();
        let e = failure(conn, get("/"), &target, false).await;
        assert_eq!(upstream_kind(&e), io::ErrorKind::InvalidData, "{label:?}");
        assert_not_pooled_in(&target, &label);
    }
    // Two lines of one coding each are two codings.
    let conn = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"])
        .conn();
    let e = failure(conn, get("/"), &target(), false).await;
    assert_eq!(upstream_kind(&e), io::ErrorKind::InvalidData, "chunked twice, on two lines");
}

#[tokio::test(start_paused = true)]
async fn an_http_1_0_answer_pools_its_connection_only_with_keep_alive() {
    let without = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_whole_body_but_not_pooled("HTTP/1.0 without keep-alive", &[without], b"ok").await;

    let (body, target) =
        body_of(&[b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]).await;
    assert_eq!(body, b"ok");
    assert!(target.take_idle().is_some(), "HTTP/1.0 with keep-alive: the connection goes back to the pool");
}

#[tokio::test(start_paused = true)]
async fn a_body_cut_short_is_an_error_and_does_not_pool_the_connection() {
    let cut_short: [(&str, &[&[u8]]); 4] = [
        ("by length, mid-body", &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"d"]),
        ("by length, right after the head", &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"]),
        ("chunked, mid-chunk", &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\nabcd"]),
        (
            "chunked, before the trailers end",
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n", b"0\r\n"],
        ),
    ];
    for (label, reads) in cut_short {
        let (bytes, error, target) = failed_body_of(reads).await;
        assert!(b"abcd".starts_with(&bytes), "{label}: {bytes:?}");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{label}");
        assert_not_pooled_in(&target, label);
    }
}

#[tokio::test(start_paused = true)]
async fn bad_chunked_framing_is_an_error_and_does_not_pool_the_connection() {
    for chunks in [&b"zz\r\n"[..], b"2\r\nabX\r\n0\r\n\r\n", b"1ffffffffffffffff\r\n"] {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_, error, target) = failed_body_of(&[head, chunks]).await;
        let label = String::from_utf8_lossy(chunks);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{label}");
        assert_not_pooled_in(&target, &label);
    }
}

#[tokio::test(start_paused = true)]
async fn bytes_after_the_response_keep_the_connection_out_of_the_pool() {
    let cases: [(&str, &[u8], &[u8]); 3] = [
        (
            "after a body by length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n",
            b"abc",
        ),
        (
            "after a chunked body",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nX",
            b"abc",
        ),
        ("after a bodiless 204", b"HTTP/1.1 204 No Content\r\n\r\nstray", b""),
    ];
    for (label, answer_wire, body) in cases {
        assert_whole_body_but_not_pooled(label, &[answer_wire], body).await;
    }
}

#[tokio::test(start_paused = true)]
async fn head_204_and_304_answers_have_no_body_whatever_their_headers_say_and_pool_the_connection() {
    const HEAD_ROOT: &[u8] = b"HEAD / HTTP/1.1\r\nhost: app.test\r\n\r\n";
    let head = || Request::head("/").header("host", "app.test").body(Empty::new()).unwrap();
    type Case = (&'static str, &'static [u8], fn() -> Request<Empty<Bytes>>, &'static [u8]);
    let cases: [Case; 4] = [
        ("HEAD, by length", HEAD_ROOT, head, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        ("HEAD, chunked", HEAD_ROOT, head, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("204, by length", GET_ROOT, || get("/"), b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        (
            "304, chunked",
            GET_ROOT,
            || get("/"),
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
    ];
    for (label, request_wire, request, answer_wire) in cases {
        let answered = || async move {
            Script::new()
                .accepts(request_wire, &[])
                .answers(&[answer_wire])
                .then_next_request()
                .answer_to(request())
                .await
        };

        // Polled to its end, as a test reads it.
        let (resp, polled) = answered().await;
        let empty = resp.body().is_end_stream() && resp.body().size_hint().exact() == Some(0);
        assert!(empty, "{label}: the body is at its end from the start");
        assert_body_then_pooled(resp, b"", &polled).await;

        // Never polled, as hyper treats a body that is empty from the start.
        let (resp, dropped) = answered().await;
        assert!(
            matches!(resp.status(), StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED),
            "{label}"
        );
        drop(resp);
        assert_pooled_and_reusable(&dropped).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_does_not_pool_the_connection() {
    let (resp, target) = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", b"abcd"])
        .answer_to(get("/"))
        .await;

    let mut body = resp.into_body();
    let first = within(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"abcd");
    drop(body);
    assert_not_pooled(&target);
}
