//! stderr as the log's destination, and the journal's priority prefixes when systemd
//! connected stderr to the journal.
//!
//! systemd sets `JOURNAL_STREAM=DEVICE:INODE` for a service whose stderr (or stdout) goes to
//! the journal; it is stderr only when stderr's own `fstat` device and inode match — a child
//! that inherited the variable but writes elsewhere must not prefix. Then each line starts with
//! its sd-daemon priority (`sd-daemon(3)`): `<3>` error, `<4>` warn, `<6>` info, `<7>` debug
//! and trace. journald strips the prefix and files the line at that priority, so
//! `journalctl -p warning` shows warnings and errors.
//!
//! Why prefixes and not the native journal protocol (`tracing-journald`): the prefix is a
//! few bytes in front of the line lameduck writes anyway, so `--log-format json` keeps
//! working under systemd (a log shipper reading the journal gets the same JSON object as one
//! reading a pipe), the stream stays the one `StandardError=` names, and there is no second
//! output path, socket or dependency. The native protocol would add journal fields per
//! tracing field, but would replace the chosen format rather than carry it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Whether `stderr` is the stream `journal_stream` (`JOURNAL_STREAM`'s value) names.
pub(super) fn is_journal(stderr: &impl AsFd, journal_stream: Option<OsString>) -> bool {
    let Some(named) = journal_stream.as_ref().and_then(|v| v.to_str()).and_then(parse_journal_stream) else {
        return false;
    };
    identity(stderr).is_some_and(|actual| actual == named)
}

/// `"DEVICE:INODE"` (both decimal, as systemd writes them) as numbers.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

/// The device and inode of the file behind `fd` (its `fstat`), through a duplicate of it.
fn identity(fd: &impl AsFd) -> Option<(u64, u64)> {
    let file = File::from(fd.as_fd().try_clone_to_owned().ok()?);
    let meta = file.metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The sd-daemon priority prefix for `level`.
fn priority(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"<3>",
        Level::WARN => b"<4>",
        Level::INFO => b"<6>",
        Level::DEBUG | Level::TRACE => b"<7>",
    }
}

/// Makes the writer for each log line: stderr, with priority prefixes when it is the journal.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stderr {
    journal: bool,
}

impl Stderr {
    pub(super) fn new(journal: bool) -> Self {
        Stderr { journal }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        // Without an event's level (the formatter always gives one): info.
        Line { prefix: self.journal.then_some(priority(&Level::INFO)), at_line_start: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line { prefix: self.journal.then(|| priority(meta.level())), at_line_start: true }
    }
}

/// One event's output. Each `write` goes to stderr whole, in one `write_all` under stderr's
/// lock (as the formatter's default writer does), with `prefix` put before every line in it.
pub(super) struct Line {
    prefix: Option<&'static [u8]>,
    /// Whether the next byte starts a line (the event's first, or one after a newline).
    at_line_start: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.prefix {
            None => io::stderr().write_all(buf)?,
            Some(prefix) => {
                let mut out = Vec::with_capacity(buf.len() + 2 * prefix.len());
                self.at_line_start = prefix_lines(prefix, buf, self.at_line_start, &mut out);
                io::stderr().write_all(&out)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Appends `buf` to `out` with `prefix` before each line that starts in it (the first only if
/// `at_line_start`); returns whether the byte after `buf` starts a line. An event's message
/// may span lines, and journald reads every line on its own.
fn prefix_lines(prefix: &[u8], buf: &[u8], mut at_line_start: bool, out: &mut Vec<u8>) -> bool {
    for line in buf.split_inclusive(|&b| b == b'\n') {
        if at_line_start {
            out.extend_from_slice(prefix);
        }
        out.extend_from_slice(line);
        at_line_start = line.ends_with(b"\n");
    }
    at_line_start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(prefix: &[u8], parts: &[&str]) -> String {
        let (mut out, mut at_line_start) = (Vec::new(), true);
        for part in parts {
            at_line_start = prefix_lines(prefix, part.as_bytes(), at_line_start, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_level_has_its_sd_daemon_priority() {
        assert_eq!(priority(&Level::ERROR), b"<3>");
        assert_eq!(priority(&Level::WARN), b"<4>");
        assert_eq!(priority(&Level::INFO), b"<6>");
        assert_eq!(priority(&Level::DEBUG), b"<7>");
        assert_eq!(priority(&Level::TRACE), b"<7>");
    }

    #[test]
    fn every_line_of_an_event_gets_the_prefix_once() {
        assert_eq!(prefixed(b"<4>", &["drain deadline passed\n"]), "<4>drain deadline passed\n");
        assert_eq!(prefixed(b"<3>", &["a\nb\n"]), "<3>a\n<3>b\n");
        // Split across writes at awkward places: mid-line, and right after a newline.
        assert_eq!(prefixed(b"<6>", &["rea", "dy\n", "next", "\n"]), "<6>ready\n<6>next\n");
        assert_eq!(prefixed(b"<6>", &["", "x\n"]), "<6>x\n");
    }

    #[test]
    fn journal_stream_names_stderr_only_when_device_and_inode_match() {
        let file = tempfile::tempfile().unwrap();
        let (device, inode) = identity(&file).unwrap();
        let value = |s: String| Some(OsString::from(s));
        assert!(is_journal(&file, value(format!("{device}:{inode}"))));
        assert!(!is_journal(&file, value(format!("{device}:{}", inode + 1))));
        assert!(!is_journal(&file, value(format!("{}:{inode}", device + 1))));
        assert!(!is_journal(&file, None));
        assert!(!is_journal(&file, value("garbage".to_owned())));
        assert!(!is_journal(&file, value(format!("{device}:"))));
        let other = tempfile::tempfile().unwrap();
        assert!(!is_journal(&other, value(format!("{device}:{inode}"))), "another file, another inode");
    }
}
