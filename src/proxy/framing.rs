//! A light tracker of HTTP/1 request framing on the bytes a client sends.
//!
//! hyper parses requests itself, but it silently resolves a request that carries both
//! `Content-Length` and `Transfer-Encoding` (it drops the length), so the service never learns
//! the request was ambiguous — and such requests are how smuggling attacks start. This tracker
//! follows the byte stream just far enough to know where each request head begins and ends
//! (header lines, then a fixed or chunked body), notes which request had conflicting framing,
//! and tells the connection's I/O whether it is between requests, inside a head, or inside a
//! body, which is what the header-read and idle timers need.
//!
//! It has exactly these two jobs. It only looks at header *names* and the framing values;
//! everything else is hyper's job. It rejects nothing itself, but notes a request whose
//! framing it could not read (a `Content-Length` line too long to keep) so that it is refused
//! rather than followed out of step. HTTP/2 (its preface is recognised so the tracker can
//! stand aside), and a connection the proxy has upgraded, turn it off.
//!
//! Its verdicts reach requests by position: the tracker sees every byte before hyper does, so
//! when hyper hands the service its n-th request the tracker has completed at least n heads.
//! The connection's `ConnActivity` (in `io.rs`) checks that invariant for every request and refuses a request
//! the tracker has not seen whole, so a tracker that lost step fails closed.

use crate::http1::{hex_digit, parse_content_length};

/// How many bytes of a line are kept (blanks skipped); enough for the names and values we
/// look at. A framing header longer than this is refused, never guessed at.
const LINE_KEEP: usize = 64;

/// Where in the request stream the tracker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Between requests: nothing of the next request has arrived.
    Idle,
    /// Inside a request head.
    Head,
    /// Inside a request body.
    Body,
    /// Not following the stream any more (HTTP/2, or the connection was upgraded).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Head,
    Fixed(u64),
    ChunkSize { size: u64, ext: bool },
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Off,
}

/// What the current request head has said so far about its framing.
#[derive(Debug, Default, Clone, Copy)]
struct HeadSoFar {
    first_line_seen: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// A framing header was too long to read: the request is refused.
    unreadable: bool,
}

/// Follows one connection's request stream.
#[derive(Debug)]
pub struct RequestFraming {
    state: State,
    line: [u8; LINE_KEEP],
    line_len: usize,
    /// The current line had more than [`LINE_KEEP`] non-blank bytes.
    line_truncated: bool,
    /// The current line cannot matter (its first byte says so): only its end is looked for.
    line_skipped: bool,
    head: HeadSoFar,
    heads: u64,
    conflict_at: Option<u64>,
    h2: bool,
}

impl Default for RequestFraming {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestFraming {
    /// A tracker at the start of a connection.
    pub fn new() -> Self {
        RequestFraming {
            state: State::Idle,
            line: [0; LINE_KEEP],
            line_len: 0,
            line_truncated: false,
            line_skipped: false,
            head: HeadSoFar::default(),
            heads: 0,
            conflict_at: None,
            h2: false,
        }
    }

    /// Where the stream is now.
    pub fn position(&self) -> Position {
        match self.state {
            State::Idle if self.line_len == 0 => Position::Idle,
            State::Idle | State::Head => Position::Head,
            State::Off => Position::Off,
            _ => Position::Body,
        }
    }

    /// True if the client opened with the HTTP/2 connection preface.
    pub fn is_h2(&self) -> bool {
        self.h2
    }

    /// How many request heads have been completed.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// The 0-based index of the first request whose framing lameduck must not forward:
    /// conflicting or unreadable framing headers, or a body the tracker could not follow
    /// (then it is the request after it).
    pub fn conflict_at(&self) -> Option<u64> {
        self.conflict_at
    }

    /// Stops following the stream: the bytes from here on are not HTTP/1 requests.
    pub fn turn_off(&mut self) {
        self.state = State::Off;
    }

    /// Follows `bytes`, the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Off => return,
                State::Fixed(n) => self.skip_body(bytes, n, State::Fixed, State::Idle),
                State::ChunkData(n) => self.skip_body(bytes, n, State::ChunkData, State::ChunkDataEnd),
                State::Idle
                | State::Head
                | State::ChunkSize { .. }
                | State::ChunkDataEnd
                | State::Trailers => self.feed_line(bytes),
            };
            bytes = &bytes[used..];
        }
    }

    fn skip_body(&mut self, bytes: &[u8], left: u64, more: fn(u64) -> State, done: State) -> usize {
        let take = left.min(bytes.len() as u64);
        self.state = if take == left { done } else { more(left - take) };
        take as usize
    }

    /// Consumes bytes up to and including the next `\n` (or all of them), keeping the start of
    /// the line; returns how many bytes were used.
    fn feed_line(&mut self, bytes: &[u8]) -> usize {
        let end = memchr::memchr(b'\n', bytes);
        let part = &bytes[..end.unwrap_or(bytes.len())];
        if !self.line_skipped {
            self.keep(part);
        }
        if self.state == State::Idle && self.line_len > 0 && !(self.line_len == 1 && self.line[0] == b'\r') {
            self.state = State::Head;
        }
        match end {
            None => bytes.len(),
            Some(i) => {
                let mut len = self.line_len;
                if len > 0 && self.line[len - 1] == b'\r' {
                    len -= 1;
                }
                self.line_len = 0;
                self.line_skipped = false;
                let truncated = std::mem::take(&mut self.line_truncated);
                self.end_line(len, truncated);
                i + 1
            }
        }
    }

    /// Keeps the non-blank bytes of `part` of the current line, up to [`LINE_KEEP`].
    fn keep(&mut self, part: &[u8]) {
        for &b in part {
            // Header names and the values read here hold no blanks: skip them, so that padding
            // cannot push a value out of the kept bytes.
            if b == b' ' || b == b'\t' {
                continue;
            }
            if self.line_len == 0 && !self.may_matter(b) {
                // Keep the one byte: the line is not empty, and matches no name looked for.
                self.line[0] = b;
                self.line_len = 1;
                self.line_skipped = true;
                return;
            }
            if self.line_len < LINE_KEEP {
                self.line[self.line_len] = b;
                self.line_len += 1;
            } else {
                self.line_truncated = true;
            }
        }
    }

    /// Whether a line starting with `first` can say anything the tracker needs: a request line
    /// that may be the HTTP/2 preface, a framing header, the empty line ending a head, or any
    /// line of a chunked body.
    fn may_matter(&self, first: u8) -> bool {
        match self.state {
            State::Idle | State::Head if !self.head.first_line_seen => first == b'P' || first == b'\r',
            State::Head => matches!(first, b'c' | b'C' | b't' | b'T' | b'\r'),
            _ => true,
        }
    }

    fn end_line(&mut self, len: usize, truncated: bool) {
        let line = self.line;
        let line = &line[..len];
        match self.state {
            // Empty lines before a request are allowed and skipped.
            State::Idle => {}
            State::Head => self.head_line(line, truncated),
            State::ChunkSize { .. } => {
                if truncated {
                    // A chunk size we could not read: refuse the next request on this connection.
                    self.conflict_at.get_or_insert(self.heads);
                }
                self.chunk_size_line(line)
            }
            State::ChunkDataEnd => self.state = State::ChunkSize { size: 0, ext: false },
            State::Trailers if line.is_empty() => self.state = State::Idle,
            _ => {}
        }
    }

    fn head_line(&mut self, line: &[u8], truncated: bool) {
        if !self.head.first_line_seen {
            self.head.first_line_seen = true;
            // Blanks are skipped, so the preface line `PRI * HTTP/2.0` reads like this.
            if line == b"PRI*HTTP/2.0" {
                self.h2 = true;
                self.state = State::Off;
            }
            return;
        }
        if line.is_empty() {
            self.end_head();
        } else if let Some(value) = header_value(line, b"content-length") {
            self.head.content_length = Some(parse_content_length(value).unwrap_or(0));
            self.head.unreadable |= truncated;
        } else if header_value(line, b"transfer-encoding").is_some() {
            self.head.transfer_encoding = true;
            self.head.unreadable |= truncated;
        }
    }

    fn end_head(&mut self) {
        let head = std::mem::take(&mut self.head);
        let conflict = head.transfer_encoding && head.content_length.is_some();
        if (conflict || head.unreadable) && self.conflict_at.is_none() {
            self.conflict_at = Some(self.heads);
        }
        self.heads += 1;
        self.state = if head.transfer_encoding {
            State::ChunkSize { size: 0, ext: false }
        } else {
            match head.content_length {
                Some(n) if n > 0 => State::Fixed(n),
                _ => State::Idle,
            }
        };
    }

    fn chunk_size_line(&mut self, line: &[u8]) {
        let mut size: u64 = 0;
        for digit in line.iter().map_while(|&b| hex_digit(b)) {
            size = size.saturating_mul(16).saturating_add(u64::from(digit));
        }
        self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
    }
}

/// The value of `line` if it is the header `name` (case-insensitive), with spaces trimmed.
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if line.len() <= name.len() || line[name.len()] != b':' || !starts_with_ignore_case(line, name) {
        return None;
    }
    Some(&line[name.len() + 1..])
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_all(chunks: &[&[u8]]) -> RequestFraming {
        let mut f = RequestFraming::new();
        for c in chunks {
            f.feed(c);
        }
        f
    }

    #[test]
    fn follows_keepalive_requests_with_bodies() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let f = feed_all(&[stream]);
        assert_eq!(f.heads(), 2);
        assert_eq!(f.position(), Position::Idle);
        assert_eq!(f.conflict_at(), None);
    }

    #[test]
    fn follows_chunked_bodies_with_trailers() {
        let stream =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        let f = feed_all(&[stream]);
        assert_eq!(f.heads(), 1);
        assert_eq!(f.position(), Position::Idle);
    }

    #[test]
    fn notes_conflicting_framing_of_the_second_request() {
        let stream = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(feed_all(&[stream]).conflict_at(), Some(1));
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_headers() {
        let body = b"\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let f = feed_all(&[head.as_bytes(), body]);
        assert_eq!(f.conflict_at(), None);
        assert_eq!(f.position(), Position::Idle);
    }

    #[test]
    fn positions_through_a_request() {
        let mut f = RequestFraming::new();
        assert_eq!(f.position(), Position::Idle);
        f.feed(b"GE");
        assert_eq!(f.position(), Position::Head);
        f.feed(b"T / HTTP/1.1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(f.position(), Position::Body);
        f.feed(b"ok");
        assert_eq!(f.position(), Position::Idle);
    }

    #[test]
    fn h2_preface_turns_tracking_off() {
        let f = feed_all(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert!(f.is_h2());
        assert_eq!(f.position(), Position::Off);
    }

    #[test]
    fn an_upgrade_request_is_followed_like_any_other() {
        // Whether it is upgraded is up to the upstream's answer; the connection's I/O turns
        // tracking off once a 101 goes out.
        let f = feed_all(&[b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"]);
        assert_eq!((f.heads(), f.position()), (1, Position::Idle));
    }

    #[test]
    fn framing_headers_among_others_are_found_however_the_stream_is_split() {
        let stream = b"POST / HTTP/1.1\r\nHost: x\r\nX-Content-Length: 9\r\nAccept: */*\r\n\
            content-length: 2\r\nUser-Agent: t\r\n\r\nokPRI /x HTTP/1.1\r\nTE: x\r\n\
            Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n0\r\n\r\n";
        for cut in 0..stream.len() {
            let f = feed_all(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                (f.heads(), f.position(), f.conflict_at(), f.is_h2()),
                (2, Position::Idle, Some(1), false)
            );
        }
    }

    #[test]
    fn padding_cannot_push_a_content_length_out_of_sight() {
        let pad = " ".repeat(200);
        let stream = format!("POST / HTTP/1.1\r\nContent-Length:{pad}5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n");
        let f = feed_all(&[stream.as_bytes()]);
        assert_eq!((f.heads(), f.position(), f.conflict_at()), (2, Position::Idle, None));
    }

    #[test]
    fn an_unreadably_long_content_length_is_refused() {
        let digits = format!("{}5", "0".repeat(80));
        let stream = format!("POST / HTTP/1.1\r\nContent-Length: {digits}\r\n\r\n");
        assert_eq!(feed_all(&[stream.as_bytes()]).conflict_at(), Some(0));
    }

    proptest! {
        /// Fuzz: any bytes, cut anywhere, leave the tracker where the whole does (nothing
        /// panics; the verdict does not depend on how the client's writes were split).
        #[test]
        fn fuzz_request_tracker_reads_any_bytes_the_same_however_cut(
            (bytes, cuts) in crate::cuts::input_and_cuts(b"\r\n:; 0123456789aAfFcCtTpP", 600, 12),
        ) {
            let whole = feed_all(&[&bytes]);
            let cut = feed_all(&crate::cuts::cut(&bytes, &cuts));
            prop_assert_eq!(
                (cut.heads(), cut.position(), cut.conflict_at(), cut.is_h2()),
                (whole.heads(), whole.position(), whole.conflict_at(), whole.is_h2())
            );
        }

        /// However a stream of requests is split into reads, the tracker sees the same heads.
        #[test]
        fn splitting_does_not_matter(
            bodies in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for (chunked, body) in &bodies {
                if *chunked {
                    stream.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for part in body.chunks(7) {
                        stream.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        stream.extend_from_slice(part);
                        stream.extend_from_slice(b"\r\n");
                    }
                    stream.extend_from_slice(b"0\r\n\r\n");
                } else {
                    stream.extend_from_slice(format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
                    stream.extend_from_slice(body);
                }
            }
            let f = feed_all(&crate::cuts::cut(&stream, &cuts));
            prop_assert_eq!(f.heads() as usize, bodies.len());
            prop_assert_eq!(f.position(), Position::Idle);
            prop_assert_eq!(f.conflict_at(), None);
        }
    }
}
