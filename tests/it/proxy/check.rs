//! `lameduck --check` and start-up with a bad config: every error names
//! `file:line:col`, shows the source line with a caret, exits 1, and nothing
//! is bound.

use crate::harness::*;

/// A valid config whose line numbers the tests below rely on.
const BASE: [&str; 12] = [
    "[[listen]]",                // 1
    "addr = \"127.0.0.1:0\"",    // 2
    "",                          // 3
    "[upstream.legacy]",         // 4
    "addrs = [\"127.0.0.1:9\"]", // 5
    "",                          // 6
    "[[route]]",                 // 7
    "upstream = \"legacy\"",     // 8
    "",                          // 9
    "[drain]",                   // 10
    "deadline = \"30s\"",        // 11
    "",                          // 12
];

/// [`BASE`] with line `n` (1-based) replaced by `text`.
fn base_with(replacements: &[(usize, &str)]) -> String {
    let mut lines = BASE.to_vec();
    for (n, text) in replacements {
        lines[n - 1] = text;
    }
    lines.join("\n") + "\n"
}

/// Asserts `--check` fails with an error at `line` that quotes `source`.
async fn check_fails_at(config: &str, line: usize, source: &str) -> String {
    let out = Finished::check(config).await;
    assert_eq!(out.status, 1, "--check exit status; stderr:\n{}", out.stderr);
    assert_error_at(&out, line, source);
    out.stderr
}

fn assert_error_at(out: &Finished, line: usize, source: &str) {
    let location = format!("{}:{line}:", out.path.display());
    let Some(error) = out.stderr.lines().find(|l| l.contains(&location)) else {
        panic!("no error at {location}COL in stderr:\n{}", out.stderr);
    };
    let col = error.split(&location).nth(1).and_then(|rest| rest.split(':').next());
    assert!(
        col.and_then(|c| c.parse::<usize>().ok()).is_some_and(|c| c >= 1),
        "no column after {location}: {error}"
    );
    assert!(out.stderr.contains(source), "source line {source:?} not shown:\n{}", out.stderr);
    assert!(out.stderr.contains('^'), "no caret:\n{}", out.stderr);
}

#[tokio::test]
async fn check_accepts_a_config_using_every_key() {
    let config = "workers = 2\n\n\
        [[listen]]\naddr = \"127.0.0.1:0\"\n\n\
        [upstream.legacy]\naddrs = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\n\
        connect_timeout = \"2s\"\ntimeout = \"60s\"\n\n\
        [[route]]\nhost = \"api.example.com\"\npath_prefix = \"/api/\"\nupstream = \"legacy\"\n\
        underscores_in_headers = false\nupgrades = [\"websocket\"]\n\
        websocket_origins = [\"https://app.example.com\"]\n\n\
        [[route]]\nupstream = \"legacy\"\n\n\
        [drain]\ndeadline = \"30s\"\ngrace = \"0s\"\nretry_after = \"5s\"\nclose_code = 1001\n\
        close_reason = \"server shutting down\"\nidle_linger = \"1s\"\nclose_timeout = \"5s\"\n\
        close_spread = \"0s\"\n\n\
        [admin]\naddr = \"127.0.0.1:0\"\n\n\
        [limits]\nmax_connections = 10000\nheader_read_timeout = \"10s\"\nidle_timeout = \"60s\"\n\
        max_header_bytes = 65536\n";
    let out = Finished::check(config).await;
    assert_eq!((out.status, out.stdout.trim()), (0, "ok"), "stderr:\n{}", out.stderr);
    assert_eq!(Finished::check(&base_with(&[])).await.stdout.trim(), "ok");
}

#[tokio::test]
async fn check_reports_syntax_error_with_location() {
    check_fails_at(&base_with(&[(8, "upstream = legacy")]), 8, "upstream = legacy").await;
}

#[tokio::test]
async fn check_reports_unknown_key_with_location() {
    let stderr = check_fails_at(&base_with(&[(6, "retries = 3")]), 6, "retries = 3").await;
    assert!(stderr.contains("retries"), "{stderr}");
}

#[tokio::test]
async fn check_reports_route_naming_an_undefined_upstream() {
    let stderr = check_fails_at(&base_with(&[(8, "upstream = \"legcy\"")]), 8, "upstream = \"legcy\"").await;
    assert!(stderr.contains("legcy"), "{stderr}");
    assert!(stderr.contains("legacy"), "the defined upstreams are not named: {stderr}");
}

#[tokio::test]
async fn check_reports_upstream_with_empty_addrs() {
    let stderr = check_fails_at(&base_with(&[(5, "addrs = []")]), 5, "addrs = []").await;
    assert!(stderr.contains("addrs"), "{stderr}");
}

#[tokio::test]
async fn check_reports_duration_without_unit() {
    check_fails_at(&base_with(&[(11, "deadline = \"30\"")]), 11, "deadline = \"30\"").await;
    check_fails_at(&base_with(&[(11, "deadline = \"soon\"")]), 11, "deadline = \"soon\"").await;
}

#[tokio::test]
async fn check_reports_two_listeners_on_one_address() {
    let config = "[[listen]]\naddr = \"127.0.0.1:8080\"\n\n[[listen]]\naddr = \"127.0.0.1:8080\"\n\n\
                  [upstream.legacy]\naddrs = [\"127.0.0.1:9\"]\n\n[[route]]\nupstream = \"legacy\"\n\n\
                  [drain]\ndeadline = \"30s\"\n";
    check_fails_at(config, 5, "addr = \"127.0.0.1:8080\"").await;
}

#[tokio::test]
async fn check_rejects_close_codes_1005_and_5000() {
    for code in ["1005", "5000"] {
        let line = format!("close_code = {code}");
        check_fails_at(&base_with(&[(12, &line)]), 12, &line).await;
    }
}

#[tokio::test]
async fn check_reports_every_error_at_once() {
    let config = base_with(&[(5, "addrs = []"), (8, "upstream = \"legcy\"")]);
    let out = Finished::check(&config).await;
    assert_eq!(out.status, 1);
    assert_error_at(&out, 5, "addrs = []");
    assert_error_at(&out, 8, "upstream = \"legcy\"");
}

#[tokio::test]
async fn bad_config_at_startup_exits_1_and_binds_nothing() {
    // We hold the listener's port: had lameduck tried to bind before
    // validating, it would fail with "address in use" instead.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = format!("addr = \"{}\"", held.local_addr().unwrap());
    let config = base_with(&[(2, &listen), (8, "upstream = \"legcy\"")]);
    let out = Finished::start_expecting_exit(&config).await;
    assert_eq!(out.status, 1, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains(&format!("{}:8:", out.path.display())), "{}", out.stderr);
    assert!(!out.stderr.to_lowercase().contains("in use"), "it tried to bind:\n{}", out.stderr);
    assert!(!out.stderr.contains("\"listening\""), "{}", out.stderr);
}

#[tokio::test]
async fn check_rejects_a_close_spread_that_cannot_fit_the_deadline() {
    let config = base_with(&[(11, "deadline = \"3s\"\nclose_spread = \"6s\"\nclose_timeout = \"1s\"")]);
    let stderr = check_fails_at(&config, 12, "close_spread = \"6s\"").await;
    assert!(stderr.contains("must be below deadline"), "{stderr}");
    let unset = base_with(&[(11, "deadline = \"3s\"\nclose_timeout = \"5s\"")]);
    assert_eq!(Finished::check(&unset).await.stdout.trim(), "ok", "no close_spread, no rule");
}

#[tokio::test]
async fn check_suggests_the_nearest_key_for_a_misspelt_one() {
    let stderr = check_fails_at(&base_with(&[(11, "dedline = \"30s\"")]), 11, "dedline = \"30s\"").await;
    assert!(stderr.contains("unknown field `dedline`; did you mean `deadline`?"), "{stderr}");
    assert!(!stderr.contains("close_spread"), "lists every key instead of suggesting one:\n{stderr}");
    // A top-level table name too.
    let stderr = check_fails_at(&base_with(&[(10, "[drian]")]), 10, "[drian]").await;
    assert!(stderr.contains("did you mean `drain`?"), "{stderr}");
}

#[tokio::test]
async fn check_says_to_write_a_duration_with_its_unit() {
    let stderr = check_fails_at(&base_with(&[(11, "deadline = 30")]), 11, "deadline = 30").await;
    assert!(stderr.contains("write deadline = \"30s\""), "{stderr}");
    let stderr = check_fails_at(&base_with(&[(11, "deadline = 1.5")]), 11, "deadline = 1.5").await;
    assert!(stderr.contains("write deadline = \"1500ms\""), "{stderr}");
}

#[tokio::test]
async fn check_says_which_brackets_a_table_takes() {
    let stderr = check_fails_at(&base_with(&[(1, "[listen]")]), 1, "[listen]").await;
    assert!(stderr.contains("write [[listen]]"), "{stderr}");
    let stderr = check_fails_at(&base_with(&[(10, "[[drain]]")]), 10, "[[drain]]").await;
    assert!(stderr.contains("write [drain]"), "{stderr}");
}

#[tokio::test]
async fn check_prefixes_every_error_with_error() {
    let out = Finished::check(&base_with(&[(5, "addrs = []"), (8, "upstream = \"legcy\"")])).await;
    let located: Vec<&str> =
        out.stderr.lines().filter(|l| l.starts_with(&*out.path.to_string_lossy())).collect();
    assert_eq!(located.len(), 2, "{}", out.stderr);
    for line in located {
        let (_, rest) =
            line.split_once(": error: ").unwrap_or_else(|| panic!("no \": error: \" in {line:?}"));
        assert!(!rest.is_empty());
    }
}

#[tokio::test]
async fn check_reports_missing_tls_files_at_their_keys_with_the_resolved_path_in_the_same_pass() {
    let listen = "addr = \"127.0.0.1:0\"\ntls = { cert = \"site.pem\", key = \"site.key\" }";
    let config = base_with(&[(2, listen), (8, "upstream = \"legcy\"")]);
    let out = Finished::check(&config).await;
    assert_eq!(out.status, 1, "{}", out.stderr);
    let dir = out.path.parent().expect("the config's directory");
    let cert = dir.join("site.pem");
    // Line 3 of the written file: base line 2 became two lines.
    let location =
        format!("{}:3:16: error: certificate file \"{}\": no such file", out.path.display(), cert.display());
    assert!(out.stderr.contains(&location), "no {location:?} in:\n{}", out.stderr);
    assert_error_at(&out, 9, "upstream = \"legcy\"");
}
