//! Request bodies on the wire: by `Content-Length` as they come, chunked when the length is
//! unknown; finished while the response body is read when the upstream answers early; and what
//! a failure on either side does.

use http::StatusCode;

use super::*;

const POST_LENGTH: &[u8] = b"POST /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: 11\r\n\r\n";
const POST_CHUNKED: &[u8] = b"POST /upload HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n";

fn post<B>(length: Option<usize>, body: B) -> Request<B> {
    let req = Request::post("/upload").header("host", "app.test");
    match length {
        Some(n) => req.header("content-length", n),
        None => req,
    }
    .body(body)
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_upload_with_content_length_goes_out_as_it_comes_through_partial_writes() {
    let body = frames(vec![data(b"hello"), data(b" world")]);
    let (resp, target) = Script::new()
        .accepts(POST_LENGTH, &[after(POST_LENGTH, b"content-length: 1"), POST_LENGTH.len() - 3])
        .accepts(b"hello world", &[2, 7])
        .answers(&[b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"])
        .then_next_request()
        .answer_to(post(Some(11), body))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    drop(resp);
    assert_pooled_and_reusable(&target).await;
}

#[tokio::test(start_paused = true)]
async fn an_upload_of_unknown_length_goes_out_chunked_through_partial_writes() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "1".parse().unwrap());
    let body = frames(vec![
        data(b"hello"),
        data(b""),
        data(b" world, and a longer piece"),
        Ok(Frame::trailers(trailers)),
    ]);
    let (resp, target) = Script::new()
        .accepts(POST_CHUNKED, &[after(POST_CHUNKED, b"chunked\r")])
        // Sizes in lower-case hex; empty pieces send nothing (a 0 would end the body);
        // trailers are not forwarded.
        .accepts(b"5\r\nhello\r\n1a\r\n world, and a longer piece\r\n0\r\n\r\n", &[1, 4, 11, 12, 15, 45])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
        .then_next_request()
        .answer_to(post(None, body))
        .await;
    assert_body_then_pooled(resp, b"ok", &target).await;
}

#[tokio::test(start_paused = true)]
async fn an_upload_answered_before_it_ends_is_finished_by_reading_the_body_and_then_pools() {
    // The upload is `hello world`, its ` world` sent only once the answer is in. The upstream
    // answers once it has `hello`, then reads no further until it has the rest of the upload
    // (a few bytes at a time), and only then sends the rest of its answer.
    // A case: its label; the upload's Content-Length, if it has one; `hello` on the wire; the
    // answer to it; the rest of the upload on the wire, and where the upstream cuts its write
    // short; the rest of the answer, in reads; the body the answer reads as.
    type Case = (
        &'static str,
        Option<usize>,
        &'static [u8],
        &'static [u8],
        (&'static [u8], usize),
        &'static [&'static [u8]],
        &'static [u8],
    );
    let cases: [Case; 2] = [
        (
            "chunked",
            None,
            b"5\r\nhello\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            (b"6\r\n world\r\n0\r\n\r\n", 4),
            &[b"6\r\n world\r\n0\r\n\r\n"],
            b"hello world",
        ),
        (
            "by length",
            Some(11),
            b"hello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",
            (b" world", 3),
            &[b"ec", b"ho"],
            b"echo",
        ),
    ];
    for (label, length, hello_wire, early_answer, (rest_wire, rest_cut), rest_of_answer, expected) in cases {
        let head = if length.is_some() { POST_LENGTH } else { POST_CHUNKED };
        let (tx, body) = channel();
        tx.send(Ok(Bytes::from_static(b"hello"))).unwrap();
        let (resp, target) = Script::new()
            .accepts(head, &[])
            .accepts(hello_wire, &[])
            .answers(&[early_answer])
            .accepts(rest_wire, &[rest_cut])
            .answers(rest_of_answer)
            .then_next_request()
            .answer_to(post(length, body))
            .await;

        // The answer came while the client is still sending.
        tx.send(Ok(Bytes::from_static(b" world"))).unwrap();
        drop(tx);
        assert_eq!(read_whole(resp.into_body()).await, expected, "{label}: the body read whole");
        assert_pooled_and_reusable(&target).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_ends_before_the_upload_does_leaves_the_connection_out_of_the_pool() {
    for (label, answer_wire) in [
        ("bodiless", &b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"[..]),
        ("with a body", b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 5\r\n\r\nlarge"),
    ] {
        let (tx, body) = channel();
        tx.send(Ok(Bytes::from_static(b"hello"))).unwrap();
        let (resp, target) = Script::new()
            .accepts(POST_LENGTH, &[])
            .accepts(b"hello", &[])
            .answers(&[answer_wire])
            .answer_to(post(Some(11), body))
            .await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{label}");
        read_whole(resp.into_body()).await;
        assert_not_pooled_in(&target, label);
        drop(tx);
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_stops_reading_mid_upload_still_gets_its_answer_through_but_not_pooled() {
    let (resp, target) = Script::new()
        .accepts(POST_LENGTH, &[])
        .write_fails(io::ErrorKind::BrokenPipe)
        .answers(&[b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\n", b"nope"])
        .answer_to(post(Some(11), frames(vec![data(b"hello world")])))
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_body_then_not_pooled(resp, b"nope", &target).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_the_error_when_no_answer_follows() {
    let conn = Script::new().accepts(POST_LENGTH, &[]).write_fails(io::ErrorKind::ConnectionReset).conn();
    let req = post(Some(11), frames(vec![data(b"hello world")]));
    assert_upstream_error_and_not_pooled(
        conn,
        req,
        io::ErrorKind::ConnectionReset,
        "not the EOF read after it",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_client_body_that_fails_before_the_answer_is_client_aborted_with_its_error() {
    let target = target();
    let conn = Script::new().accepts(POST_CHUNKED, &[]).accepts(b"3\r\nabc\r\n", &[]).conn();
    let body = frames(vec![data(b"abc"), Err(io::Error::other("client went away"))]);

    match failure(conn, post(None, body), &target, false).await {
        SendError::ClientAborted(e) => assert_eq!(e.to_string(), "client went away"),
        other => panic!("not the client's failure: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_body_that_fails_after_the_answer_fails_the_response_body_and_is_not_pooled() {
    let (tx, body) = channel();
    tx.send(Ok(Bytes::from_static(b"abc"))).unwrap();
    let (resp, target) = Script::new()
        .accepts(POST_CHUNKED, &[])
        .accepts(b"3\r\nabc\r\n", &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"])
        .answer_to(post(None, body))
        .await;

    tx.send(Err(io::Error::other("client went away"))).unwrap();
    let (bytes, error) = read_body(resp.into_body()).await;
    assert!(bytes.is_empty());
    assert_eq!(error.expect("the body fails").to_string(), "client went away");
    assert_not_pooled(&target);
}

/// Under TLS a flush can wait (records not yet in a full socket) after every byte is written.
/// The request is not done until that flush is: the response body goes on flushing it, and
/// only then does the connection go back to its pool.
#[tokio::test(start_paused = true)]
async fn a_request_whose_flush_waits_is_flushed_before_its_connection_is_pooled() {
    let flushed = Arc::new(AtomicUsize::new(0));
    let target = target();
    let conn = Script::new()
        .accepts(GET_ROOT, &[])
        .answers(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
        .then_next_request()
        .conn_with_slow_flushes(1, flushed.clone());
    let resp = answer(conn, get("/"), &target).await;
    assert_eq!(flushed.load(Ordering::Relaxed), 0, "the flush waited; the answer came first");
    let body = within(resp.into_body().collect()).await.expect("the body").to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!(flushed.load(Ordering::Relaxed), 1, "reading the body finished the flush");
    assert_pooled_and_reusable(&target).await;
}

/// What the client sent so far must not wait in TLS records while the upload waits for the
/// client's next piece: an upstream that answers only once it has read that much would wait
/// forever.
#[tokio::test(start_paused = true)]
async fn an_upload_waiting_for_the_client_flushes_what_it_wrote_first() {
    let flushed = Arc::new(AtomicUsize::new(0));
    let target = target();
    let (tx, body) = channel();
    tx.send(Ok(Bytes::from_static(b"hello"))).unwrap();
    let conn = Script::new()
        .accepts(POST_LENGTH, &[])
        .accepts(b"hello", &[])
        .answers(&[b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"])
        .conn_with_slow_flushes(0, flushed.clone());
    let resp = answer(conn, post(Some(11), body), &target).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(flushed.load(Ordering::Relaxed), 1, "flushed before waiting for the client's next piece");
    drop((resp, tx));
    assert_not_pooled(&target);
}
