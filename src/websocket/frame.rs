//! A pure, incremental tracker of WebSocket frame boundaries (RFC 6455 §5.2).
//!
//! lameduck relays WebSocket bytes without re-framing them, yet on drain it must insert a
//! Close frame *between* frames, never inside one. [`FrameTracker`] follows a byte stream
//! split at arbitrary points and always knows whether the stream is at a frame boundary and
//! at a message boundary (no fragmented message open). It reads only frame headers; payload
//! bytes are counted, not copied or unmasked.
//!
//! A stream that is not valid WebSocket — a reserved opcode, a control frame that is
//! fragmented or longer than 125 bytes, a continuation without a message, a new message
//! inside a fragmented one, a 64-bit length with its top bit set — makes the tracker give up
//! for good ([`FrameTracker::is_valid`] turns false); the tunnel then relays raw bytes.

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a Pong frame.
pub const OP_PONG: u8 = 0xA;

/// The largest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER: usize = 14;

/// A frame that just ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEnd {
    /// The frame's opcode.
    pub opcode: u8,
    /// The stream is now at a message boundary too.
    pub message_end: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a header; `have` bytes of it are in `header`.
    Header { have: u8 },
    /// Skipping `left` payload bytes of the current frame.
    Payload { left: u64 },
    /// The stream is not WebSocket.
    Invalid,
}

/// Follows the frames of one direction of a WebSocket connection.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    state: State,
    header: [u8; MAX_HEADER],
    /// Opcode and FIN of the frame being read.
    opcode: u8,
    fin: bool,
    /// A fragmented data message is open (its final frame has not come yet).
    in_message: bool,
    /// Payload length of the frame being read, and its masking key if masked.
    payload: u64,
    mask: Option<[u8; 4]>,
    /// The status code of the last Close frame (RFC 6455 §5.5.1: its first two payload
    /// bytes); 1005 "no status" for a Close without one.
    close_code: Option<u16>,
    /// The code's bytes as they come.
    code_bytes: [u8; 2],
}

impl Default for FrameTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameTracker {
    /// A tracker at the start of a stream.
    pub fn new() -> Self {
        FrameTracker {
            state: State::Header { have: 0 },
            header: [0; MAX_HEADER],
            opcode: 0,
            fin: false,
            in_message: false,
            payload: 0,
            mask: None,
            close_code: None,
            code_bytes: [0; 2],
        }
    }

    /// The status code of the last Close frame that went by, if one did (1005 when it
    /// carried none).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// False once the stream turned out not to be WebSocket.
    pub fn is_valid(&self) -> bool {
        self.state != State::Invalid
    }

    /// True between frames.
    pub fn at_frame_boundary(&self) -> bool {
        self.state == State::Header { have: 0 }
    }

    /// True between messages: between frames, and no fragmented message is open.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && !self.in_message
    }

    /// Follows `bytes` up to the end of the next frame: returns how many bytes it consumed
    /// and, if a frame ended exactly there, what frame. Consumes everything (and reports no
    /// frame end) once the stream is invalid.
    pub fn advance(&mut self, bytes: &[u8]) -> (usize, Option<FrameEnd>) {
        let mut used = 0;
        loop {
            match self.state {
                State::Invalid => return (bytes.len(), None),
                State::Payload { left } => {
                    let take = left.min((bytes.len() - used) as u64);
                    if self.opcode == OP_CLOSE {
                        self.note_close_code(self.payload - left, &bytes[used..used + take as usize]);
                    }
                    used += take as usize;
                    if take == left {
                        return (used, Some(self.end_frame()));
                    }
                    self.state = State::Payload { left: left - take };
                    return (used, None);
                }
                State::Header { have } => {
                    let Some(&byte) = bytes.get(used) else {
                        return (used, None);
                    };
                    used += 1;
                    self.header[have as usize] = byte;
                    let have = have as usize + 1;
                    match header_len(&self.header[..have]) {
                        Some(len) if len == have => {
                            if let Some(end) = self.start_payload(len) {
                                return (used, Some(end));
                            }
                        }
                        _ => self.state = State::Header { have: have as u8 },
                    }
                }
            }
        }
    }

    /// Follows all of `bytes`, calling `on_end` at each frame end.
    pub fn advance_all(&mut self, mut bytes: &[u8], mut on_end: impl FnMut(FrameEnd)) {
        while !bytes.is_empty() {
            let (used, end) = self.advance(bytes);
            if let Some(end) = end {
                on_end(end);
            }
            bytes = &bytes[used..];
        }
    }

    /// A complete header of `len` bytes is in `self.header`: check it and move to its payload.
    fn start_payload(&mut self, len: usize) -> Option<FrameEnd> {
        let h = &self.header[..len];
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0F;
        let payload = match h[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes(h[2..10].try_into().expect("eight length bytes")),
            n => u64::from(n),
        };
        let is_control = opcode >= OP_CLOSE;
        let valid = match opcode {
            OP_CONTINUATION => self.in_message,
            OP_TEXT | OP_BINARY => !self.in_message,
            OP_CLOSE | OP_PING | OP_PONG => fin && payload <= 125,
            _ => false,
        } && payload >> 63 == 0;
        if !valid {
            self.state = State::Invalid;
            return None;
        }
        self.opcode = opcode;
        self.fin = fin;
        self.payload = payload;
        self.mask = (h[1] & 0x80 != 0).then(|| h[len - 4..len].try_into().expect("four mask bytes"));
        if opcode == OP_CLOSE {
            self.close_code = Some(NO_STATUS);
        }
        if !is_control {
            // A data frame opens a message unless it is final; a final continuation closes it.
            self.in_message = !fin;
        }
        if payload == 0 {
            return Some(self.end_frame());
        }
        self.state = State::Payload { left: payload };
        None
    }

    /// Takes the code's bytes from `piece`, which starts at payload offset `at`.
    fn note_close_code(&mut self, at: u64, piece: &[u8]) {
        for (i, byte) in piece.iter().enumerate() {
            let offset = at + i as u64;
            if offset >= 2 {
                break;
            }
            let key = self.mask.map_or(0, |mask| mask[offset as usize % 4]);
            self.code_bytes[offset as usize] = byte ^ key;
            if offset == 1 {
                self.close_code = Some(u16::from_be_bytes(self.code_bytes));
            }
        }
    }

    fn end_frame(&mut self) -> FrameEnd {
        self.state = State::Header { have: 0 };
        FrameEnd { opcode: self.opcode, message_end: !self.in_message }
    }
}

/// The code a Close without a status code stands for (RFC 6455 §7.4.1; never sent).
const NO_STATUS: u16 = 1005;

/// The total header length once enough of `start` is known to tell it.
fn header_len(start: &[u8]) -> Option<usize> {
    let second = *start.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let ext = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + mask)
}

/// Encodes a Close frame with `code` and `reason` (at most 123 bytes), masked with `mask`
/// when it goes to a server (client-to-server frames must be masked).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | OP_CLOSE);
    match mask {
        None => {
            frame.push(payload.len() as u8);
            frame.extend_from_slice(&payload);
        }
        Some(key) => {
            frame.push(0x80 | payload.len() as u8);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes one frame (test helper; lameduck itself never builds data frames).
    fn encode(fin: bool, opcode: u8, payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(mask_bit | payload_len as u8),
            126..=0xFFFF => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAB, payload_len));
        f
    }

    /// Something seen at a stream offset.
    type Located<T> = (usize, T);

    /// Feeds `pieces` in turn, one `advance` at a time: each frame end with the stream offset
    /// it came at, and after each piece, whether the tracker stood at a frame boundary.
    fn follow(tracker: &mut FrameTracker, pieces: &[&[u8]]) -> (Vec<Located<FrameEnd>>, Vec<Located<bool>>) {
        let (mut ends, mut boundaries, mut offset) = (Vec::new(), Vec::new(), 0);
        for piece in pieces {
            let mut at = 0;
            while at < piece.len() {
                let (used, end) = tracker.advance(&piece[at..]);
                assert!(used > 0 && at + used <= piece.len(), "advance used {used} of {}", piece.len() - at);
                at += used;
                if let Some(end) = end {
                    ends.push((offset + at, end));
                }
            }
            offset += piece.len();
            boundaries.push((offset, tracker.at_frame_boundary()));
        }
        (ends, boundaries)
    }

    fn ends(tracker: &mut FrameTracker, bytes: &[u8]) -> Vec<FrameEnd> {
        let mut out = Vec::new();
        tracker.advance_all(bytes, |e| out.push(e));
        out
    }

    #[test]
    fn single_text_frame_is_a_message() {
        let mut t = FrameTracker::new();
        let got = ends(&mut t, &encode(true, OP_TEXT, 5, true));
        assert_eq!(got, vec![FrameEnd { opcode: OP_TEXT, message_end: true }]);
        assert!(t.at_message_boundary());
    }

    #[test]
    fn ping_between_fragments_is_a_frame_boundary_but_not_a_message_boundary() {
        let mut t = FrameTracker::new();
        let mut stream = encode(false, OP_BINARY, 3, false);
        stream.extend(encode(true, OP_PING, 2, false));
        stream.extend(encode(true, OP_CONTINUATION, 200, false));
        let got = ends(&mut t, &stream);
        assert_eq!(
            got,
            vec![
                FrameEnd { opcode: OP_BINARY, message_end: false },
                FrameEnd { opcode: OP_PING, message_end: false },
                FrameEnd { opcode: OP_CONTINUATION, message_end: true },
            ]
        );
    }

    #[test]
    fn long_lengths_are_followed() {
        let mut t = FrameTracker::new();
        let frame = encode(true, OP_BINARY, 70_000, true);
        let (used, end) = t.advance(&frame[..100]);
        assert_eq!((used, end), (100, None));
        assert!(!t.at_frame_boundary());
        let (used, end) = t.advance(&frame[100..]);
        assert_eq!(used, frame.len() - 100);
        assert_eq!(end, Some(FrameEnd { opcode: OP_BINARY, message_end: true }));
    }

    #[test]
    fn invalid_streams_make_the_tracker_give_up() {
        for bad in [
            encode(true, 0x3, 1, false),                      // reserved opcode
            encode(false, OP_PING, 1, false),                 // fragmented control frame
            encode(true, OP_CLOSE, 126, false),               // control frame over 125 bytes
            encode(true, OP_CONTINUATION, 1, false),          // continuation without a message
            b"GET / HTTP/1.1\r\n".to_vec(),                   // not WebSocket at all
            [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1].to_vec(), // 64-bit length, top bit set
        ] {
            let mut t = FrameTracker::new();
            assert!(ends(&mut t, &bad).is_empty() || !t.is_valid(), "{bad:?}");
            assert!(!t.is_valid(), "{bad:?}");
        }
        let mut t = FrameTracker::new();
        let mut two_messages = encode(false, OP_TEXT, 1, false);
        two_messages.extend(encode(true, OP_TEXT, 1, false));
        ends(&mut t, &two_messages);
        assert!(!t.is_valid(), "a new message inside a fragmented one");
    }

    #[test]
    fn close_frames_encode_code_and_reason() {
        assert_eq!(close_frame(1001, "bye", None), vec![0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        let masked = close_frame(1001, "bye", Some([1, 2, 3, 4]));
        assert_eq!(&masked[..6], &[0x88, 0x85, 1, 2, 3, 4]);
        assert_eq!(masked[6] ^ 1, 0x03);
        let mut t = FrameTracker::new();
        assert_eq!(ends(&mut t, &masked), vec![FrameEnd { opcode: OP_CLOSE, message_end: true }]);
    }

    /// One generated frame: final?, opcode, payload length, masked?
    fn frame_strategy() -> impl Strategy<Value = Vec<(bool, u8, usize, bool)>> {
        // A message: 1-4 data frames with control frames in between.
        let message = (
            prop::bool::ANY,
            1usize..4,
            prop::collection::vec((0usize..3, 0usize..126), 0..3),
            prop::sample::select(vec![0usize, 1, 125, 126, 300, 65_535, 65_536, 70_000]),
        )
            .prop_map(|(text, fragments, controls, len)| {
                let mut frames = Vec::new();
                for i in 0..fragments {
                    let opcode = if i == 0 {
                        if text {
                            OP_TEXT
                        } else {
                            OP_BINARY
                        }
                    } else {
                        OP_CONTINUATION
                    };
                    frames.push((i + 1 == fragments, opcode, len / fragments, i % 2 == 0));
                    if let Some(&(kind, clen)) = controls.get(i) {
                        let op = [OP_PING, OP_PONG, OP_CLOSE][kind];
                        frames.push((true, op, clen, false));
                    }
                }
                frames
            });
        prop::collection::vec(message, 1..5).prop_map(|m| m.into_iter().flatten().collect())
    }

    proptest! {
        /// Fuzz: any bytes, cut anywhere, give the same frame ends and the same verdict as
        /// the whole (nothing panics, no byte is read twice or skipped).
        #[test]
        fn fuzz_frame_tracker_reads_any_bytes_the_same_however_cut(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut whole = FrameTracker::new();
            let (whole_ends, _) = follow(&mut whole, &[&bytes]);
            let mut cut = FrameTracker::new();
            let (cut_ends, _) = follow(&mut cut, &crate::cuts::cut(&bytes, &cuts));
            prop_assert_eq!(cut_ends, whole_ends);
            prop_assert_eq!(cut.is_valid(), whole.is_valid());
            prop_assert_eq!(cut.at_frame_boundary(), whole.at_frame_boundary());
        }

        /// Random frame sequences split at random points give exactly the generated boundaries.
        #[test]
        fn boundaries_survive_any_split(
            frames in frame_strategy(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            let mut open = false;
            for &(fin, opcode, len, masked) in &frames {
                stream.extend(encode(fin, opcode, len, masked));
                if opcode < OP_CLOSE {
                    open = !fin;
                }
                expected.push((stream.len(), FrameEnd { opcode, message_end: !open }));
            }
            let mut tracker = FrameTracker::new();
            let (seen, boundaries) = follow(&mut tracker, &crate::cuts::cut(&stream, &cuts));
            for (offset, at_boundary) in boundaries {
                prop_assert_eq!(at_boundary, expected.iter().any(|(pos, _)| *pos == offset), "at {}", offset);
            }
            prop_assert!(tracker.is_valid());
            prop_assert_eq!(seen, expected);
        }
    }

    #[test]
    fn the_close_code_is_read_from_masked_and_unmasked_frames_cut_anywhere() {
        for mask in [None, Some([0x12, 0x34, 0x56, 0x78])] {
            let frame = close_frame(4001, "bye", mask);
            for cut in 0..frame.len() {
                let mut t = FrameTracker::new();
                t.advance_all(&frame[..cut], |_| {});
                t.advance_all(&frame[cut..], |_| {});
                assert_eq!(t.close_code(), Some(4001), "mask {mask:?}, cut at {cut}");
            }
        }
        let mut t = FrameTracker::new();
        t.advance_all(&[0x88, 0x00], |_| {});
        assert_eq!(t.close_code(), Some(1005), "a Close without a code");
        assert_eq!(FrameTracker::new().close_code(), None);
    }
}
