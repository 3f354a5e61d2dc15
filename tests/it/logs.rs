//! Logs under a supervisor (issue 16), with the real binary: no colour escapes unless stderr
//! is a terminal (and none with `NO_COLOR`), sd-daemon priority prefixes when
//! `JOURNAL_STREAM` names stderr, and `RUST_LOG` as the filter when `--log-level` is not
//! given.

use serde_json::Value;
use tokio::process::Command;
use tokio::time::timeout;

use crate::harness::*;

const ESC: char = '\x1b';

/// A text line of the `ready` event (the test cannot read JSON fields from text lines).
fn is_ready_text(line: &Value) -> bool {
    line.as_str().is_some_and(|text| text.contains(" ready "))
}

/// Runs the daemon with text logs on `stderr` until it is ready, drains it, and returns every
/// line it wrote.
async fn text_log(stderr: StderrTo, configure: impl FnOnce(&mut Command)) -> Vec<String> {
    let backend = Backend::named("ok").await;
    let logging = Logging { args: &["--log-format", "text", "--log-level", "debug"], stderr };
    let mut daemon = Lameduck::spawn_logging(&config_for(backend.addr), logging, configure);
    if daemon.logs.try_wait_for(is_ready_text, secs(15)).await.is_none() {
        panic!("no ready line within 15 s:\n{}", daemon.logs.raw_lines().join("\n"));
    }
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(PROMPT).await, 0);
    daemon.logs.wait_closed().await;
    let lines = daemon.logs.raw_lines();
    assert!(lines.iter().any(|l| l.contains("INFO") && l.contains("drain started")), "{lines:#?}");
    lines
}

#[tokio::test]
async fn text_log_to_a_pipe_has_no_escape_bytes() {
    let lines = text_log(StderrTo::Pipe, |c| {
        c.env_remove("NO_COLOR");
    })
    .await;
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains(ESC)).collect();
    assert!(coloured.is_empty(), "ANSI escapes on a pipe: {coloured:#?}");
}

#[tokio::test]
async fn text_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    let lines = text_log(StderrTo::Terminal, |c| {
        c.env_remove("NO_COLOR");
    })
    .await;
    assert!(lines.iter().any(|l| l.contains(ESC)), "no colour on a terminal: {lines:#?}");

    let lines = text_log(StderrTo::Terminal, |c| {
        c.env("NO_COLOR", "1");
    })
    .await;
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains(ESC)).collect();
    assert!(coloured.is_empty(), "ANSI escapes on a terminal with NO_COLOR=1: {coloured:#?}");
}

/// The sd-daemon priority for a JSON line's `level`.
fn priority_of(line: &Value) -> &'static str {
    match line.get("level").and_then(Value::as_str) {
        Some("ERROR") => "<3>",
        Some("WARN") => "<4>",
        Some("INFO") => "<6>",
        Some("DEBUG" | "TRACE") => "<7>",
        other => panic!("no level in {line} ({other:?})"),
    }
}

/// One listener, upstream `app` on a port that refuses connections, the admin listener.
fn refusing_upstream_config(dead: &DeadPort) -> String {
    config(&[dead.addr], "", &format!("{DRAIN_30S}\n[admin]\naddr = \"127.0.0.1:0\"\n"))
}

#[tokio::test]
async fn journal_stream_naming_stderr_puts_each_lines_priority_in_front_of_it() {
    let dead = DeadPort::new();
    let logging =
        Logging { args: &["--log-format", "json", "--log-level", "debug"], stderr: StderrTo::JournalPipe };
    let mut proxy = Lameduck::spawn_logging(&refusing_upstream_config(&dead), logging, |_| {}).ready().await;

    // A warning: the upstream refuses the connection (and the client gets a 502).
    assert_eq!(raw_get(proxy.addr, "/").await.status, 502);
    proxy.wait_for_message("upstream connect failed").await;
    // Debug lines: an admin request.
    assert_eq!(raw_get(proxy.admin_addr.expect("admin"), "/healthz").await.status, 200);
    // An error: a reload of a broken config.
    std::fs::write(proxy.config_dir().join("proxy.toml"), "[[listen]\n").expect("break the config");
    proxy.sighup();
    proxy.wait_for_message("reload failed").await;
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    proxy.logs.wait_closed().await;

    let (raw, parsed) = (proxy.logs.raw_lines(), proxy.logs.lines());
    assert_eq!(raw.len(), parsed.len());
    for (raw, line) in raw.iter().zip(&parsed) {
        let priority = priority_of(line);
        assert!(raw.starts_with(priority), "{raw:?} does not start with {priority}");
        assert_eq!(serde_json::from_str::<Value>(without_priority(raw)).ok().as_ref(), Some(line), "{raw}");
    }
    let with = |message: &str| -> String {
        let i = parsed.iter().position(|l| crate::harness::message(l) == message);
        raw[i.unwrap_or_else(|| panic!("no {message:?} line"))].clone()
    };
    assert!(with("upstream connect failed").starts_with("<4>{"), "the refused connect is a warning");
    assert!(with("reload failed").starts_with("<3>{"), "the failed reload is an error");
    assert!(with("ready").starts_with("<6>{"));
    assert!(raw.iter().any(|l| l.starts_with("<7>{")), "debug lines at <7>: {raw:#?}");
}

#[tokio::test]
async fn journal_stream_naming_another_stream_leaves_lines_unprefixed() {
    let dead = DeadPort::new();
    let logging =
        Logging { args: &["--log-format", "json", "--log-level", "debug"], stderr: StderrTo::PipeNotJournal };
    let mut proxy = Lameduck::spawn_logging(&refusing_upstream_config(&dead), logging, |_| {}).ready().await;
    assert_eq!(raw_get(proxy.addr, "/").await.status, 502);
    proxy.wait_for_message("upstream connect failed").await;
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    proxy.logs.wait_closed().await;
    let raw = proxy.logs.raw_lines();
    assert!(raw.len() > 3, "{raw:#?}");
    let prefixed: Vec<&String> = raw.iter().filter(|l| !l.starts_with('{')).collect();
    assert!(prefixed.is_empty(), "JOURNAL_STREAM names another inode, yet: {prefixed:#?}");
}

fn is_debug(line: &Value) -> bool {
    line.get("level").and_then(Value::as_str) == Some("DEBUG")
}

/// Starts the daemon with `args` and `RUST_LOG=debug`, makes an admin request (which logs
/// at debug level), and returns the daemon.
async fn with_rust_log_debug(args: &'static [&'static str]) -> Lameduck {
    let dead = DeadPort::new();
    let logging = Logging { args, stderr: StderrTo::Pipe };
    let proxy = Lameduck::spawn_logging(&refusing_upstream_config(&dead), logging, |c| {
        c.env("RUST_LOG", "debug");
    })
    .ready()
    .await;
    assert_eq!(raw_get(proxy.admin_addr.expect("admin"), "/healthz").await.status, 200);
    proxy
}

#[tokio::test]
async fn rust_log_is_the_filter_when_log_level_is_not_given() {
    let mut proxy = with_rust_log_debug(&["--log-format", "json"]).await;
    proxy.wait_for_log(is_debug, PROMPT).await;
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn log_level_on_the_command_line_wins_over_rust_log() {
    let mut proxy = with_rust_log_debug(&["--log-format", "json", "--log-level", "info"]).await;
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    proxy.logs.wait_closed().await;
    let lines = proxy.logs.lines();
    assert!(lines.iter().any(|l| crate::harness::message(l) == "drain started"), "{}", proxy.logs.dump());
    let debug: Vec<&Value> = lines.iter().filter(|l| is_debug(l)).collect();
    assert!(debug.is_empty(), "--log-level info, yet: {debug:#?}");
}

#[tokio::test]
async fn an_invalid_rust_log_is_a_start_up_error() {
    let backend = Backend::named("ok").await;
    let logging = Logging { args: &["--log-format", "json"], stderr: StderrTo::Pipe };
    let mut daemon = Lameduck::spawn_logging(&config_for(backend.addr), logging, |c| {
        c.env("RUST_LOG", "lameduck=loud");
    });
    assert_eq!(daemon.exit_within(secs(15)).await, 1);
    daemon.logs.wait_closed().await;
    let raw = daemon.logs.raw_lines();
    assert!(raw.iter().any(|l| l.starts_with("lameduck: invalid RUST_LOG \"lameduck=loud\": ")), "{raw:#?}");
}

/// `[log] access = "FILE"`: access lines go to that file, not stderr; a reload (logrotate's
/// `postrotate`) reopens it, so lines after a rotation go to the new file.
#[tokio::test]
async fn the_access_log_goes_to_its_file_which_a_reload_reopens() {
    let backend = Backend::named("ok").await;
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", "[log]\naccess = \"access.log\"\n")).await;
    let path = proxy.config_dir().join("access.log");
    assert_eq!(raw_get(proxy.addr, "/before").await.status, 200);
    let lines_in = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let written = |path: std::path::PathBuf, needle: &'static str| async move {
        timeout(PROMPT, async {
            while !lines_in(&path).contains(needle) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle} not in {}", path.display()));
    };
    written(path.clone(), "\"/before\"").await;
    assert!(!proxy.logs.lines().iter().any(is_access_line), "access lines went to stderr too");

    let rotated = proxy.config_dir().join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    let mark = proxy.logs.mark();
    proxy.sighup();
    proxy.wait_for_log_after(mark, |l| message(l) == "access log reopened", PROMPT).await;
    assert_eq!(raw_get(proxy.addr, "/after").await.status, 200);
    written(path.clone(), "\"/after\"").await;
    assert!(!lines_in(&rotated).contains("/after"), "the rotated file got a line after the reopen");
    assert!(!lines_in(&path).contains("/before"), "{}", lines_in(&path));
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

/// `[log] access = "off"`: no access line is formatted, and no request id is made.
#[tokio::test]
async fn an_access_log_that_is_off_writes_nothing_and_sends_no_request_id() {
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&config(&[backend.addr], "", "[log]\naccess = \"off\"\n")).await;
    assert_eq!(raw_get(proxy.addr, "/quiet").await.status, 200);
    assert_eq!(backend.arrived().await.header("x-request-id"), None, "no request id without an access log");
    let mark = proxy.logs.mark();
    assert_eq!(raw_get(proxy.addr, "/quiet-again").await.status, 200);
    backend.arrived().await;
    assert!(!proxy.logs.lines()[mark..].iter().any(is_access_line), "an access line was written");
}
