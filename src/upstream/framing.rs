//! How an upstream response body is delimited (RFC 9112 §6.3), and the chunked decoder
//! (RFC 9112 §7.1).
//!
//! The decoder is incremental: it takes what it can from the read buffer and keeps its place
//! in [`ChunkedState`], so a body split into reads at any byte decodes the same (property
//! tested below).

use std::io;

use bytes::{Buf, Bytes, BytesMut};

use crate::http1::hex_digit;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(ChunkedState),
    /// Until the upstream closes the connection.
    UntilClose,
    /// Read whole.
    Done,
}

impl BodyFraming {
    /// A chunked body, before its first byte.
    pub fn chunked() -> Self {
        BodyFraming::Chunked(ChunkedState::Size { size: 0, digits: 0 })
    }
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedState {
    /// Reading the hex size.
    Size {
        /// The size so far.
        size: u64,
        /// Hex digits read.
        digits: u8,
    },
    /// Blanks after the size: an extension or the line's end must follow.
    AfterSize {
        /// The chunk's size.
        size: u64,
    },
    /// Inside a chunk extension (`;name=value`), up to the line's end.
    Extension {
        /// The chunk's size.
        size: u64,
    },
    /// The CR of the size line was seen: only its LF may follow.
    SizeLf {
        /// The chunk's size.
        size: u64,
    },
    /// Inside chunk data; this many bytes are left.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd {
        /// The CR has been seen.
        cr_seen: bool,
    },
    /// Inside the trailer section.
    Trailers {
        /// The current line has nothing in it yet.
        empty: bool,
        /// The line's CR has been seen: only its LF may follow.
        cr_seen: bool,
    },
}

/// What one step of the chunked decoder found.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer is used up: read more.
    NeedMore,
    /// The last chunk and the trailers are through: the body has ended.
    End,
}

/// A chunk size of more than 15 hex digits (60 bits) is refused rather than overflowed.
const MAX_SIZE_DIGITS: u8 = 15;

/// Decodes what it can of `buf`, taking out what it used. Errors are framing the decoder
/// will not guess at (RFC 9112 §7.1: `chunk-size [ chunk-ext ] CRLF`, the size `1*HEXDIG`):
/// a size that is not hex digits only (`0x5`, `5 garbage`), one over 15 hex digits, a bare CR
/// or LF inside an extension, chunk data not followed by CRLF. A line may end in a bare LF
/// (RFC 9112 §2.2).
pub fn decode_chunked(state: &mut ChunkedState, buf: &mut BytesMut) -> io::Result<Decoded> {
    while !buf.is_empty() {
        match *state {
            ChunkedState::Size { size, digits } => {
                let b = buf[0];
                *state = match hex_digit(b) {
                    Some(d) if digits < MAX_SIZE_DIGITS => {
                        ChunkedState::Size { size: size * 16 + u64::from(d), digits: digits + 1 }
                    }
                    Some(_) => return Err(invalid("chunk size too large")),
                    None if digits == 0 => return Err(invalid("bad chunk size")),
                    None => after_size(size, b)?,
                };
                buf.advance(1);
            }
            ChunkedState::AfterSize { size } => {
                *state = after_size(size, buf[0])?;
                buf.advance(1);
            }
            ChunkedState::Extension { size } => {
                // Up to the CR: visible bytes, blanks and obs-text only (quoted strings too);
                // a bare LF or another control byte inside an extension is refused.
                let end = buf.iter().position(|&b| b < 0x20 && b != b'\t' || b == 0x7F).unwrap_or(buf.len());
                if end == buf.len() {
                    buf.clear();
                } else if buf[end] == b'\r' {
                    *state = ChunkedState::SizeLf { size };
                    buf.advance(end + 1);
                } else {
                    return Err(invalid("a control byte in a chunk extension"));
                }
            }
            ChunkedState::SizeLf { size } => {
                if buf[0] != b'\n' {
                    return Err(invalid("bare CR in a chunk size line"));
                }
                *state = after_size_line(size);
                buf.advance(1);
            }
            ChunkedState::Data(left) => {
                let take = left.min(buf.len() as u64) as usize;
                let data = buf.split_to(take).freeze();
                *state = if take as u64 == left {
                    ChunkedState::DataEnd { cr_seen: false }
                } else {
                    ChunkedState::Data(left - take as u64)
                };
                return Ok(Decoded::Data(data));
            }
            ChunkedState::DataEnd { cr_seen } => {
                match buf[0] {
                    b'\r' if !cr_seen => *state = ChunkedState::DataEnd { cr_seen: true },
                    b'\n' if cr_seen => *state = ChunkedState::Size { size: 0, digits: 0 },
                    _ => return Err(invalid("chunk data not followed by CRLF")),
                }
                buf.advance(1);
            }
            ChunkedState::Trailers { empty, cr_seen } => {
                let b = buf[0];
                buf.advance(1);
                match (b, cr_seen) {
                    (b'\n', true) if empty => return Ok(Decoded::End),
                    (b'\n', true) => *state = ChunkedState::Trailers { empty: true, cr_seen: false },
                    (b'\r', false) => *state = ChunkedState::Trailers { empty, cr_seen: true },
                    (b'\n' | b'\r', _) | (_, true) => {
                        return Err(invalid("a trailer line not ended by CRLF"))
                    }
                    _ => *state = ChunkedState::Trailers { empty: false, cr_seen: false },
                }
            }
        }
    }
    Ok(Decoded::NeedMore)
}

/// Where a size line goes after its digits, at byte `b`: blanks, an extension, or its end.
fn after_size(size: u64, b: u8) -> io::Result<ChunkedState> {
    match b {
        b' ' | b'\t' => Ok(ChunkedState::AfterSize { size }),
        b';' => Ok(ChunkedState::Extension { size }),
        b'\r' => Ok(ChunkedState::SizeLf { size }),
        _ => Err(invalid("bad chunk size")),
    }
}

fn after_size_line(size: u64) -> ChunkedState {
    if size == 0 {
        ChunkedState::Trailers { empty: true, cr_seen: false }
    } else {
        ChunkedState::Data(size)
    }
}

/// An `InvalidData` error: the upstream spoke something that is not HTTP/1.1 as we read it.
pub(super) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> io::Result<(Vec<u8>, bool)> {
        let mut state = ChunkedState::Size { size: 0, digits: 0 };
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_decode() {
        let wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(decode_all(&[wire]).unwrap(), (b"hello world".to_vec(), true));
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"2\r\nabX\r\n"]).is_err());
        assert!(decode_all(&[b"ffffffffffffffffff\r\n"]).is_err());
    }

    /// RFC 9112 §7.1: `chunk-size [ chunk-ext ] CRLF`, nothing else on the size line.
    #[test]
    fn size_lines_are_read_strictly() {
        for bad in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..], // once read as a last chunk of size 0
            b"5 garbage\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\rc\r\nhello\r\n0\r\n\r\n", // bare CR inside an extension
            b"5\rhello\r\n0\r\n\r\n",          // bare CR ending the line
            b"5;a=b\nhello\r\n0\r\n\r\n",      // bare LF inside an extension
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",  // a control byte inside an extension
            b"5\nhello\r\n0\r\n\r\n",          // bare LF ending the size line
            b"5\r\nhello\n0\r\n\r\n",          // bare LF after the data
            b"0\r\nfoo\rbar\r\n\r\n",          // bare CR in a trailer
            b"5\nhello\n0\n\n",                // bare LF line ends throughout
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n", // past 64 bits
        ] {
            assert!(decode_all(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [
            &b"5\r\nhello\r\n0\r\n\r\n"[..],
            b"5 \t;name=\"a b\";x\r\nhello\r\n0;last\r\n\r\n",
            b"05\r\nhello\r\n00\r\n\r\n",
        ] {
            let decoded =
                decode_all(&[good]).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(good)));
            assert_eq!(decoded, (b"hello".to_vec(), true), "{:?}", String::from_utf8_lossy(good));
        }
    }

    proptest! {
        /// Fuzz: any bytes, cut anywhere, decode as the whole does; and a body accepted is
        /// the same body when re-encoded as one chunk (nothing is ambiguous about it).
        #[test]
        fn fuzz_chunked_decoder_reads_any_bytes_the_same_however_cut(
            (bytes, cuts) in crate::cuts::input_and_cuts(b"\r\n; \t=0123456789abcdefXZ", 400, 10),
        ) {
            let whole = decode_all(&[&bytes]);
            let cut = decode_all(&crate::cuts::cut(&bytes, &cuts));
            match (&whole, &cut) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "whole {:?} but cut {:?}", whole, cut),
            }
            if let Ok((body, true)) = whole {
                let mut again = format!("{:x}\r\n", body.len()).into_bytes();
                again.extend_from_slice(&body);
                again.extend_from_slice(b"\r\n0\r\n\r\n");
                let reencoded = if body.is_empty() { b"0\r\n\r\n".to_vec() } else { again };
                prop_assert_eq!(decode_all(&[&reencoded]).unwrap(), (body, true));
            }
        }

        /// Whatever follows the size on its line, the decoder either refuses the chunk or
        /// gives exactly the bytes the size declared.
        #[test]
        fn a_mutated_size_line_is_refused_or_read_to_its_declared_length(
            data in proptest::collection::vec(any::<u8>(), 0..40),
            // No LF: one would end the line early (allowed, RFC 9112 §2.2) and move the data.
            suffix in proptest::collection::vec(
                proptest::sample::select(b" \t;=\rxX0aF-\"".to_vec()), 0..6),
        ) {
            let mut wire = format!("{:x}", data.len()).into_bytes();
            wire.extend_from_slice(&suffix);
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&data);
            wire.extend_from_slice(b"\r\n0\r\n\r\n");
            if let Ok((body, true)) = decode_all(&[&wire]) {
                prop_assert_eq!(body, data);
            }
        }

        /// However the wire is split into reads, the decoder yields the same body.
        #[test]
        fn chunked_decoding_ignores_read_boundaries(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut wire = Vec::new();
            for part in &parts {
                wire.extend_from_slice(format!("{:X}\r\n", part.len()).as_bytes());
                wire.extend_from_slice(part);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (body, ended) = decode_all(&crate::cuts::cut(&wire, &cuts)).unwrap();
            prop_assert!(ended);
            prop_assert_eq!(body, parts.concat());
        }
    }
}
