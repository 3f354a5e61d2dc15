//! A property: however a whole exchange is cut into writes and reads, the client reads the same
//! body, and pools the connection exactly when the response was whole and keep-alive holds.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::cuts::cut;

/// How the generated response delimits its body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    /// Chunks cut at the given points, with a chunk extension and trailers if set.
    Chunked {
        extras: bool,
    },
    UntilClose,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Length),
        any::<bool>().prop_map(|extras| Framing::Chunked { extras }),
        Just(Framing::UntilClose)
    ]
}

/// The response's bytes on the wire, for `body` framed as `framing`.
fn response(body: &[u8], framing: Framing, chunk_cuts: &[Index], interim: bool, close: bool) -> Vec<u8> {
    let mut wire = Vec::new();
    if interim {
        wire.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nServer: scripted\r\n");
    if close {
        wire.extend_from_slice(b"Connection: close\r\n");
    }
    match framing {
        Framing::Length => {
            wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes())
        }
        Framing::UntilClose => wire.extend_from_slice(b"\r\n"),
        Framing::Chunked { extras } => {
            wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in cut(body, chunk_cuts) {
                let ext = if extras { ";ext=1" } else { "" };
                wire.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(if extras { b"0\r\nX-Trailer: 1\r\n\r\n" } else { b"0\r\n\r\n" });
        }
    }
    if !matches!(framing, Framing::Chunked { .. }) {
        wire.extend_from_slice(body);
    }
    wire
}

proptest! {
    #[test]
    fn an_exchange_cut_anywhere_into_writes_and_reads_gives_the_same_body_and_pools_only_when_whole(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        framing in framing(),
        chunk_cuts in proptest::collection::vec(any::<Index>(), 0..6),
        interim in any::<bool>(),
        close in any::<bool>(),
        write_cuts in proptest::collection::vec(any::<Index>(), 0..4),
        read_cuts in proptest::collection::vec(any::<Index>(), 0..12),
        truncate in proptest::option::of(any::<Index>()),
    ) {
        let request = b"GET /p HTTP/1.1\r\nhost: app.test\r\n\r\n";
        let whole = response(&body, framing, &chunk_cuts, interim, close);
        // Cut short anywhere, a response read until close just has a shorter body.
        let truncated = truncate.filter(|_| !matches!(framing, Framing::UntilClose)).map(|i| i.index(whole.len()));
        let wire = &whole[..truncated.unwrap_or(whole.len())];
        let writes: Vec<usize> = cut(request, &write_cuts).iter().scan(0, |at, w| { *at += w.len(); Some(*at) }).collect();

        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let target = target();
            let conn = Script::new().accepts(request, &writes[..writes.len() - 1]).answers(&cut(wire, &read_cuts)).conn();
            let resp = match within(exchange(conn, get("/p"), Lease::take(&target), false)).await {
                Ok(Exchanged::Answered(resp)) => resp,
                Ok(_) => panic!("a 200 is an answer"),
                Err(e) => {
                    // Only a head cut short fails the exchange.
                    prop_assert!(truncated.is_some(), "failed: {:?}", e);
                    prop_assert_eq!(upstream_kind(&e), io::ErrorKind::UnexpectedEof);
                    assert_not_pooled(&target);
                    return Ok(());
                }
            };
            prop_assert_eq!(resp.status(), 200);
            prop_assert_eq!(&resp.headers()["server"], "scripted");
            let (read, error) = read_body(resp.into_body()).await;
            match truncated {
                None => {
                    prop_assert!(error.is_none(), "{:?}", error);
                    prop_assert_eq!(&read, &body);
                    let pooled = target.take_idle().is_some();
                    prop_assert_eq!(pooled, !close && !matches!(framing, Framing::UntilClose));
                }
                Some(_) => {
                    prop_assert_eq!(error.map(|e| e.kind()), Some(io::ErrorKind::UnexpectedEof));
                    prop_assert!(body.starts_with(&read));
                    assert_not_pooled(&target);
                }
            }
            Ok(())
        })?;
    }
}
