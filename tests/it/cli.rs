//! The command line as an operator meets it: `--version` with the commit, `--help` naming the
//! signals, exit statuses and admin endpoints, `--check` refusing a bad `--log-level` (the
//! unit's `ExecStartPre=` and `ExecStart=` share the command line), and `generate`'s man page
//! and completions.

use std::process::{Command, Stdio};

use crate::harness::binary;

/// Runs the binary with `args`: (status, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env_remove("LAMEDUCK_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run lameduck");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (output.status.code().expect("exit code"), text(output.stdout), text(output.stderr))
}

/// The short commit of the checkout the test runs in, if it is one.
fn head_commit() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[test]
fn version_names_the_package_version_and_the_commit() {
    let (status, out, _) = run(&["--version"]);
    assert_eq!(status, 0);
    let expected = match head_commit() {
        Some(commit) => format!("lameduck {} ({commit})\n", env!("CARGO_PKG_VERSION")),
        None => format!("lameduck {}\n", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(out, expected);
    assert_eq!(lameduck::VERSION_LONG, expected.trim_end().trim_start_matches("lameduck "));
}

#[test]
fn help_says_what_the_signals_do_and_names_exit_statuses_and_admin_endpoints() {
    let (status, out, _) = run(&["--help"]);
    assert_eq!(status, 0);
    for needle in [
        "SIGTERM",
        "SIGHUP",
        "SIGUSR2",
        "SIGUSR1",
        "second SIGTERM",
        "Exit status:",
        "  3\n",
        "/readyz",
        "/upstreams/NAME/pause",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}:\n{out}");
    }
    let (_, short, _) = run(&["-h"]);
    assert!(short.contains("lameduck --help"), "-h does not point at --help:\n{short}");
}

#[test]
fn check_with_a_bad_log_level_exits_1_naming_it() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let config = config.to_str().expect("utf-8 path");
    let (status, out, _) = run(&["--check", "--config", config]);
    assert_eq!((status, out.as_str()), (0, "ok\n"), "the shipped config checks");
    let (status, out, err) = run(&["--check", "--log-level", "loud=[", "--config", config]);
    assert_eq!(status, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.starts_with("error: invalid --log-level \"loud=[\""), "{err}");
    assert!(!out.contains("ok"), "{out}");
}

#[test]
fn generate_writes_the_man_page_and_completions() {
    let (status, page, err) = run(&["generate", "man"]);
    assert_eq!(status, 0, "{err}");
    assert!(page.contains("\n.TH lameduck 8 "), "{}", &page[..page.len().min(200)]);
    assert!(page.contains("SIGNALS") && page.contains("EXIT STATUS") && page.contains("ADMIN ENDPOINTS"));
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef lameduck"), ("fish", "complete -c lameduck")]
    {
        let (status, script, err) = run(&["generate", "completions", shell]);
        assert_eq!(status, 0, "{shell}: {err}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
    }
    let (status, _, err) = run(&["generate", "completions", "tcsh"]);
    assert_eq!(status, 1, "an unknown shell is a usage error: {err}");
}
