//! Log output: human-readable text or one JSON object per line, on stderr, shaped for
//! whoever reads stderr:
//!
//! - colour (ANSI escapes) only when stderr is a terminal, and never with `NO_COLOR` set
//!   (<https://no-color.org>): a pipe, a file, the journal or `docker logs` get plain text;
//! - under systemd, when `JOURNAL_STREAM` names stderr, every line starts with its sd-daemon
//!   priority prefix ([`journal`]), so `journalctl -p warning` finds warnings and errors;
//! - the filter is `--log-level` when given, else `RUST_LOG` when set, else `info`; an invalid
//!   one is an error, not a silent default.
//!
//! `main` calls [`init`] once, after the config loaded and before the daemon runs.

pub mod access;
mod journal;

use std::env;
use std::ffi::OsString;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::AccessLog;

use journal::Stderr;

/// The filter when neither `--log-level` nor `RUST_LOG` names one.
const DEFAULT_LEVEL: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people reading a terminal or the journal.
    Text,
    /// One JSON object per line, fields at the top level, for log shippers.
    Json,
}

/// Installs the global subscriber. `level` is `--log-level` as given: a level (`info`) or a
/// filter directive (`info,lameduck::access=off`); without it `RUST_LOG` is the filter.
/// `access` says where access lines go (`[log] access`).
///
/// # Errors
/// An invalid filter, or an access log file that cannot be opened.
pub fn init(format: LogFormat, level: Option<&str>, access: &AccessLog) -> Result<(), String> {
    let mut filter = filter(level)?;
    if *access == AccessLog::Off {
        let off = format!("{}=off", access::TARGET).parse().expect("a valid directive");
        filter = filter.add_directive(off);
    }
    let file = match access {
        AccessLog::File(path) => Some(
            access::AccessFile::open(path)
                .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))?,
        ),
        AccessLog::Stderr | AccessLog::Off => None,
    };
    let stderr = std::io::stderr();
    let colour = colour(stderr.is_terminal(), env::var_os("NO_COLOR")) && file.is_none();
    let stderr = Stderr::new(journal::is_journal(&stderr, env::var_os("JOURNAL_STREAM")));
    let writer = access::Route { stderr, access: file };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// The log filter: `level` (`--log-level`) when given, else `RUST_LOG` when set and not
/// empty, else `info`. An invalid one is an error naming where it came from.
pub fn filter(level: Option<&str>) -> Result<EnvFilter, String> {
    filter_from(level, env::var_os("RUST_LOG"))
}

fn filter_from(level: Option<&str>, rust_log: Option<OsString>) -> Result<EnvFilter, String> {
    let (source, directives) = match (level, rust_log) {
        (Some(level), _) => ("--log-level", level.to_owned()),
        (None, Some(var)) if !var.is_empty() => match var.into_string() {
            Ok(var) => ("RUST_LOG", var),
            Err(var) => return Err(format!("invalid RUST_LOG {var:?}: not UTF-8")),
        },
        (None, _) => ("--log-level", DEFAULT_LEVEL.to_owned()),
    };
    EnvFilter::try_new(&directives).map_err(|e| format!("invalid {source} {directives:?}: {e}"))
}

/// Whether lines get ANSI colour: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string.
fn colour(is_terminal: bool, no_color: Option<OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, os("")), "an empty NO_COLOR is unset, as no-color.org says");
        assert!(!colour(true, os("1")));
        assert!(!colour(false, None));
        assert!(!colour(false, os("1")));
    }

    #[test]
    fn log_level_wins_over_rust_log_which_wins_over_info() {
        let max = |filter: EnvFilter| filter.max_level_hint().map(|l| l.to_string());
        assert_eq!(max(filter_from(Some("warn"), os("debug")).unwrap()).as_deref(), Some("warn"));
        assert_eq!(max(filter_from(None, os("debug")).unwrap()).as_deref(), Some("debug"));
        assert_eq!(max(filter_from(None, os("")).unwrap()).as_deref(), Some("info"));
        assert_eq!(max(filter_from(None, None).unwrap()).as_deref(), Some("info"));
    }

    #[test]
    fn an_invalid_filter_is_an_error_naming_its_source() {
        let e = filter_from(None, os("lameduck=loud")).unwrap_err();
        assert!(e.starts_with("invalid RUST_LOG \"lameduck=loud\": "), "{e}");
        let e = filter_from(Some("lameduck=loud"), os("debug")).unwrap_err();
        assert!(e.starts_with("invalid --log-level \"lameduck=loud\": "), "{e}");
        // A valid --log-level does not even look at RUST_LOG.
        assert!(filter_from(Some("info"), os("lameduck=loud")).is_ok());
    }
}
