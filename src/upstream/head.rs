//! Message heads on the upstream wire: the request head written out, the response head
//! parsed in (httparse), and what the response head says about its body and the connection
//! (RFC 9112 §6.3, §9.3).

use std::io;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;

use super::framing::{invalid, BodyFraming};
use crate::http1;

/// Response headers beyond this many are refused (hyper's client default).
const MAX_HEADERS: usize = 100;
/// A response head larger than this many bytes is refused.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyFraming {
    /// No body (none announced, and the client sent nothing).
    None,
    /// `Content-Length`: the bytes as they come.
    Length,
    /// Length unknown: chunked encoding.
    Chunked,
}

/// The request head as bytes (origin-form target, HTTP/1.1), and how its body goes on the
/// wire. The headers go as they are: the proxy has already rewritten them.
pub fn encode_head<B: Body>(req: &Request<B>) -> (Bytes, RequestBodyFraming) {
    let headers = req.headers();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut size = req.method().as_str().len() + target.len() + 16;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut head = Vec::with_capacity(size + 32);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let body = if headers.contains_key(header::CONTENT_LENGTH) {
        RequestBodyFraming::Length
    } else if req.body().is_end_stream() {
        RequestBodyFraming::None
    } else {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestBodyFraming::Chunked
    };
    head.extend_from_slice(b"\r\n");
    (Bytes::from(head), body)
}

/// A parsed final response head and what it says about the body and the connection.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and headers; the body comes from the connection.
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// The upstream lets the connection carry another request after this response.
    pub keep_alive: bool,
}

/// What the request asked of the response, for reading its head.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// The request was `HEAD`: the response has no body whatever its headers say.
    pub head_method: bool,
    /// The request asked to switch protocols: a `101` is its answer, not an error.
    pub upgrade: bool,
}

/// Parses a response head at the front of `buf`, taking it out. `None`: incomplete. A 1xx
/// head other than `101` is skipped: the final answer follows it. A `101` ends the HTTP
/// exchange (no body; what follows is the new protocol) and is an error unless `asked.upgrade`.
pub fn parse_head(buf: &mut BytesMut, asked: Asked) -> io::Result<Option<ResponseHead>> {
    loop {
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
        };
        let code = parsed.code.expect("a complete head has a status");
        let http11 = parsed.version == Some(1);
        // Where each name and value sits in `buf`, so that values can share its bytes.
        let base = buf.as_ptr() as usize;
        if len > usize::from(u16::MAX) {
            return Err(invalid("response head too large"));
        }
        let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
        let count = parsed.headers.len();
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            // Within the head, which is shorter than 64 KiB (checked above).
            *span = (name as u16, h.name.len() as u16, value as u16, h.value.len() as u16);
        }
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| invalid("bad response status"))?;
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !asked.upgrade {
            return Err(invalid("101 to a request that asked for no upgrade"));
        }
        if status.is_informational() && !switching {
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        let mut facts = FramingHeaders::default();
        for &(name_at, name_len, value_at, value_len) in &spans[..count] {
            let (name_at, name_len) = (usize::from(name_at), usize::from(name_len));
            let (value_at, value_len) = (usize::from(value_at), usize::from(value_len));
            let name = &head[name_at..name_at + name_len];
            let name = HeaderName::from_bytes(name).map_err(|_| invalid("bad response header name"))?;
            let value = head.slice(value_at..value_at + value_len);
            let value =
                HeaderValue::from_maybe_shared(value).map_err(|_| invalid("bad response header value"))?;
            facts.note(&name, &value)?;
            headers.append(name, value);
        }
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary
        // removes the Content-Length before forwarding (the body is not that long). A message
        // with both may be a smuggling attempt: its connection is not used again.
        let ambiguous = facts.has_transfer_encoding() && facts.content_length.is_some();
        if ambiguous {
            headers.remove(header::CONTENT_LENGTH);
        }
        let framing = if switching { BodyFraming::Done } else { facts.framing(status, asked.head_method)? };
        let keep_alive = !switching
            && !ambiguous
            && framing != BodyFraming::UntilClose
            && if http11 { !facts.close } else { facts.keep_alive };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
        *response.headers_mut() = headers;
        return Ok(Some(ResponseHead { response, framing, keep_alive }));
    }
}

/// What a response's headers say about its framing and its connection.
#[derive(Debug, Default)]
struct FramingHeaders {
    content_length: Option<u64>,
    /// Transfer codings named, over every `Transfer-Encoding` line (saturating).
    transfer_codings: u8,
    /// The last of them is `chunked`.
    last_coding_chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingHeaders {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> io::Result<()> {
        if *name == header::CONTENT_LENGTH {
            let n =
                http1::parse_content_length(value.as_bytes()).ok_or_else(|| invalid("bad content-length"))?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(invalid("conflicting content-length"));
            }
            self.content_length = Some(n);
        } else if *name == header::TRANSFER_ENCODING {
            // A list, like `Connection` (RFC 9110 §10.1.4); an empty value still names one.
            self.transfer_codings = self.transfer_codings.saturating_add(1);
            for (i, coding) in http1::connection_tokens(value.as_bytes()).enumerate() {
                if i > 0 {
                    self.transfer_codings = self.transfer_codings.saturating_add(1);
                }
                self.last_coding_chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if *name == header::CONNECTION {
            for token in http1::connection_tokens(value.as_bytes()) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    fn has_transfer_encoding(&self) -> bool {
        self.transfer_codings > 0
    }

    /// RFC 9112 §6.3, for a response. A `Transfer-Encoding` other than exactly `chunked`
    /// (`gzip`, `gzip, chunked`, `chunked, identity`, ...) is an error: lameduck decodes no
    /// other coding, and must not pass still-encoded bytes off as the body.
    fn framing(&self, status: StatusCode, head_method: bool) -> io::Result<BodyFraming> {
        if head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(BodyFraming::Length(0));
        }
        if self.has_transfer_encoding() {
            if self.transfer_codings == 1 && self.last_coding_chunked {
                return Ok(BodyFraming::chunked());
            }
            return Err(invalid("a transfer coding other than chunked alone"));
        }
        Ok(self.content_length.map_or(BodyFraming::UntilClose, BodyFraming::Length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GET: Asked = Asked { head_method: false, upgrade: false };

    #[test]
    fn heads_give_framing_and_keep_alive() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"[..],
        );
        let head = parse_head(&mut buf, GET).unwrap().unwrap();
        assert_eq!(head.response.status(), 200);
        assert_eq!(head.response.headers()["x-a"], "b");
        assert_eq!((head.framing, head.keep_alive), (BodyFraming::Length(3), true));
        assert_eq!(&buf[..], b"abc");

        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let head = parse_head(&mut buf, GET).unwrap().unwrap();
        assert_eq!((head.framing, head.keep_alive), (BodyFraming::UntilClose, false));

        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf, GET).unwrap().unwrap();
        assert!(matches!(head.framing, BodyFraming::Chunked(_)) && !head.keep_alive);

        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..]);
        let head_method = Asked { head_method: true, upgrade: false };
        assert_eq!(parse_head(&mut buf, head_method).unwrap().unwrap().framing, BodyFraming::Length(0));

        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, GET).is_err());

        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut buf, GET).unwrap().is_none());
    }

    #[test]
    fn a_101_answers_only_an_upgrade_and_leaves_what_follows() {
        let wire =
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x00"
                [..];
        assert!(parse_head(&mut BytesMut::from(wire), GET).is_err());
        let mut buf = BytesMut::from(wire);
        let head = parse_head(&mut buf, Asked { head_method: false, upgrade: true }).unwrap().unwrap();
        assert_eq!(head.response.status(), 101);
        assert_eq!((head.framing, head.keep_alive), (BodyFraming::Done, false));
        assert_eq!(&buf[..], b"\x81\x00", "the new protocol's first bytes stay in the buffer");
    }

    /// The head written back out the way lameduck forwards it: status line, then each header.
    fn reserialised(head: &ResponseHead) -> BytesMut {
        let mut out = format!("HTTP/1.1 {} X\r\n", head.response.status().as_u16()).into_bytes();
        for (name, value) in head.response.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        BytesMut::from(&out[..])
    }

    /// A header line from the names and values that decide framing, or any bytes at all.
    fn header_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec![
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "X-A",
            "content-length ",
            "Transfer_Encoding",
        ]);
        let value = prop::sample::select(vec![
            "5",
            "05",
            " 7 ",
            "-1",
            "18446744073709551616",
            "chunked",
            "gzip, chunked",
            "chunked, identity",
            "close",
            "keep-alive",
            "",
            "a\tb",
        ]);
        prop_oneof![
            (name, value).prop_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..24),
        ]
    }

    proptest! {
        /// Fuzz: any head — well-formed lines, odd ones, raw bytes — either is refused or parses
        /// to a head that, written back out as lameduck forwards it, reads the same: same status,
        /// same headers, same body framing. Nothing panics.
        #[test]
        fn fuzz_response_heads_parse_or_fail_and_reparse_the_same(
            status in prop::sample::select(vec![&b"HTTP/1.1 200 OK"[..], b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No", b"HTTP/1.1 100 Go", b"HTTP/1.1 999 X", b"HTTX/1.1 200"]),
            lines in prop::collection::vec(header_line(), 0..6),
            head_method in any::<bool>(),
        ) {
            let mut wire = status.to_vec();
            wire.extend_from_slice(b"\r\n");
            for line in &lines {
                wire.extend_from_slice(line);
            }
            wire.extend_from_slice(b"\r\n");
            let asked = Asked { head_method, upgrade: false };
            if let Ok(Some(head)) = parse_head(&mut BytesMut::from(&wire[..]), asked) {
                let again = parse_head(&mut reserialised(&head), asked)
                    .expect("a head lameduck forwards parses again")
                    .expect("whole");
                prop_assert_eq!(again.response.status(), head.response.status());
                prop_assert_eq!(again.response.headers(), head.response.headers());
                prop_assert_eq!(again.framing, head.framing);
            }
        }
    }
}
