//! The shipped unit files agree with the shipped `proxy.toml` and with the binary: the socket
//! unit listens exactly where the config does (socket activation fails otherwise), every
//! `ExecStartPre=`, `ExecStart=` and `ExecReload=` names the same config, the config is
//! checked before a start and before a reload, the drain fits `TimeoutStopSec=`, and
//! `Documentation=` points at the man page `lameduck generate man` writes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use lameduck::Config;

/// The repository's copy of a shipped file.
fn shipped(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every value of `key=` in the unit file at `path` (comments skipped), in file order.
fn unit_values(path: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(shipped(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let prefix = format!("{key}=");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// The `--config` argument of a command line.
fn config_arg(command: &str) -> &str {
    let mut words = command.split_whitespace();
    words.by_ref().find(|w| *w == "--config");
    words.next().unwrap_or_else(|| panic!("no --config in {command:?}"))
}

/// A systemd time span as written in the units here (`45s`, `1min`).
fn seconds(span: &str) -> u64 {
    let span = span.trim();
    if let Some(s) = span.strip_suffix("min") {
        return s.parse::<u64>().expect("minutes") * 60;
    }
    span.strip_suffix('s').unwrap_or(span).parse().unwrap_or_else(|_| panic!("time span {span:?}"))
}

#[test]
fn socket_unit_listens_exactly_where_the_shipped_config_does() {
    let config = Config::load(&shipped("proxy.toml")).expect("the shipped proxy.toml is valid");
    let in_config: BTreeSet<SocketAddr> = config.listeners.iter().map(|l| l.addr).collect();
    let in_socket: BTreeSet<SocketAddr> = unit_values("systemd/lameduck.socket", "ListenStream")
        .iter()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("ListenStream={v} is not IP:PORT")))
        .collect();
    assert_eq!(
        in_socket, in_config,
        "systemd/lameduck.socket ListenStream= and proxy.toml [[listen]] addr differ: socket \
         activation of the shipped files would fail at start-up"
    );
}

#[test]
fn service_checks_the_config_it_runs_before_a_start_and_before_a_reload() {
    let unit = "systemd/lameduck.service";
    let start = unit_values(unit, "ExecStart");
    let [start] = start.as_slice() else { panic!("{unit}: one ExecStart= expected, got {start:?}") };
    let config = config_arg(start);
    assert_eq!(config, "/etc/lameduck/proxy.toml", "the README installs the config there");
    let pre = unit_values(unit, "ExecStartPre");
    let reload = unit_values(unit, "ExecReload");
    let check = |lines: &[String], what: &str| {
        let first = lines.first().unwrap_or_else(|| panic!("{unit}: no {what}="));
        assert!(first.contains(" --check "), "{unit}: the first {what}= must be --check: {first}");
        assert_eq!(config_arg(first), config, "{unit}: {what}= checks another config than ExecStart= runs");
        let binary = start.split_whitespace().next();
        assert_eq!(first.split_whitespace().next(), binary, "{unit}: {what}= runs another binary");
    };
    check(&pre, "ExecStartPre");
    check(&reload, "ExecReload");
    assert_eq!(reload.get(1).map(String::as_str), Some("/bin/kill -HUP $MAINPID"), "{unit}: then SIGHUP");
}

#[test]
fn service_documentation_is_the_generated_man_page() {
    let docs = unit_values("systemd/lameduck.service", "Documentation").join(" ");
    let page = format!("man:{}({})", lameduck::MAN_PAGE.0, lameduck::MAN_PAGE.1);
    assert!(docs.split_whitespace().any(|d| d == page), "Documentation={docs} does not name {page}");
}

#[test]
fn service_stop_timeout_exceeds_the_shipped_drain() {
    let config = Config::load(&shipped("proxy.toml")).expect("the shipped proxy.toml is valid");
    let stop = unit_values("systemd/lameduck.service", "TimeoutStopSec");
    let stop = seconds(stop.first().expect("TimeoutStopSec="));
    let drain = (config.drain.grace + config.drain.deadline).as_secs();
    assert!(stop > drain, "TimeoutStopSec={stop}s must exceed grace + deadline = {drain}s");
}
