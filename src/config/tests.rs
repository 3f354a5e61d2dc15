//! Config validation: every kind of error names the right line and column.

use std::path::Path;

use std::time::Duration;

use super::{Config, ConfigError, HoldConfig, UpstreamAddr};

const GOOD: &str = r#"
workers = 2

[[listen]]
addr = "127.0.0.1:8080"

[upstream.legacy]
addrs = ["127.0.0.1:9000", "backend.internal:9001"]
timeout = "5s"

[[route]]
host = "API.example.com"
path_prefix = "/api/"
upstream = "legacy"

[[route]]
upstream = "legacy"

[drain]
deadline = "30s"
grace = "2s"
retry_after = "1500ms"
close_code = 4000

[admin]
addr = "127.0.0.1:9901"

[limits]
max_connections = 100
"#;

fn errors(text: &str) -> Vec<((usize, usize), String)> {
    let err: ConfigError =
        Config::parse(Path::new("proxy.toml"), text).expect_err("config should be invalid");
    err.diagnostics().iter().map(|d| (err.line_col(d).unwrap_or((0, 0)), d.message.clone())).collect()
}

fn single_error(text: &str) -> ((usize, usize), String) {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:?}");
    all.remove(0)
}

/// The location of the one error of `text`, which must mention `needle`.
fn single_error_mentioning(text: &str, needle: &str) -> (usize, usize) {
    let (at, message) = single_error(text);
    assert!(message.contains(needle), "{message}");
    at
}

#[test]
fn good_config_validates() {
    let config = Config::parse(Path::new("/etc/lameduck/proxy.toml"), GOOD).expect("valid");
    assert_eq!(config.workers, 2);
    assert_eq!(config.listeners[0].addr.to_string(), "127.0.0.1:8080");
    let upstream = &config.upstreams[0];
    assert_eq!(upstream.addrs[1], UpstreamAddr::Name { host: "backend.internal".into(), port: 9001 });
    assert_eq!(upstream.timeout.as_secs(), 5);
    assert_eq!(upstream.connect_timeout.as_secs(), 2);
    assert_eq!(config.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(config.drain.close_code, 4000);
    assert_eq!(config.drain.idle_linger.as_secs(), 1);
    assert_eq!(config.limits.max_connections, 100);
    assert_eq!(config.limits.header_read_timeout.as_secs(), 10);
    assert!(config.admin.is_some());
}

#[test]
fn syntax_error_has_a_location() {
    let ((line, col), message) = single_error("[[listen]]\naddr = \"127.0.0.1:80\nx");
    assert_eq!(line, 2, "{message}");
    assert!(col > 1, "{message}");
}

#[test]
fn unknown_key_is_an_error_that_lists_the_known_ones() {
    let text = "[[listen]]\naddr = \"127.0.0.1:80\"\nadress = \"x\"\n";
    let ((line, col), message) = single_error(text);
    assert_eq!((line, col), (3, 1), "{message}");
    assert!(message.contains("unknown field `adress`") && message.contains("`addr`"), "{message}");
}

#[test]
fn route_naming_an_undefined_upstream_points_at_the_name() {
    let text = GOOD.replace("upstream = \"legacy\"\n\n[drain]", "upstream = \"legcy\"\n\n[drain]");
    let ((line, col), message) = single_error(&text);
    assert_eq!((line, col), (17, 12), "{message}");
    assert_eq!(message, "route names upstream \"legcy\", which is not defined (defined: \"legacy\")");
}

#[test]
fn upstream_without_addrs_is_an_error() {
    let text = GOOD.replace("addrs = [\"127.0.0.1:9000\", \"backend.internal:9001\"]", "addrs = []");
    let ((line, col), message) = single_error(&text);
    assert_eq!((line, col), (8, 9), "{message}");
    assert!(message.contains("has no addrs"), "{message}");
}

#[test]
fn bad_duration_names_the_key_and_a_fix() {
    let text = GOOD.replace("deadline = \"30s\"", "deadline = \"30\"");
    let ((line, col), message) = single_error(&text);
    assert_eq!((line, col), (20, 12), "{message}");
    assert!(message.contains("for deadline") && message.contains("\"30s\""), "{message}");
}

#[test]
fn two_listeners_on_one_address_are_an_error() {
    let text = GOOD.replace(
        "[[listen]]\naddr = \"127.0.0.1:8080\"\n",
        "[[listen]]\naddr = \"127.0.0.1:8080\"\n[[listen]]\naddr = \"127.0.0.1:8080\"\n",
    );
    let ((line, col), message) = single_error(&text);
    assert_eq!((line, col), (7, 8), "{message}");
    assert!(message.contains("two listeners"), "{message}");
}

#[test]
fn unsendable_close_codes_are_errors() {
    for code in ["999", "1005", "1006", "1015", "5000", "1004"] {
        let text = GOOD.replace("close_code = 4000", &format!("close_code = {code}"));
        let ((line, col), message) = single_error(&text);
        assert_eq!((line, col), (23, 14), "{code}: {message}");
        assert!(message.contains("may not be sent"), "{message}");
    }
    for code in ["1000", "1001", "1003", "1007", "3000", "4999"] {
        let text = GOOD.replace("close_code = 4000", &format!("close_code = {code}"));
        Config::parse(Path::new("p.toml"), &text).unwrap_or_else(|e| panic!("{code}: {e}"));
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let text = GOOD
        .replace("deadline = \"30s\"", "deadline = \"soon\"")
        .replace("upstream = \"legacy\"\n\n[drain]", "upstream = \"nope\"\n\n[drain]")
        .replace("addr = \"127.0.0.1:9901\"", "addr = \"localhost\"");
    let lines: Vec<usize> = errors(&text).iter().map(|((line, _), _)| *line).collect();
    assert_eq!(lines, vec![17, 20, 26]);
}

#[test]
fn missing_listener_and_route_are_errors() {
    let all = errors("[upstream.a]\naddrs = [\"127.0.0.1:1\"]\n");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().any(|(_, m)| m.contains("no [[listen]]")));
    assert!(all.iter().any(|(_, m)| m.contains("no [[route]]")));
}

/// Values that are each wrong on their own: a grace as long as the deadline, a header limit
/// past its ceiling.
#[test]
fn out_of_range_values_are_errors_that_say_the_range() {
    let cases = [
        ("grace = \"2s\"", "grace = \"30s\"", "grace must be shorter"),
        ("max_connections = 100", "max_connections = 100\nmax_header_bytes = 4294967296", "between 8192 and"),
    ];
    for (good, bad, needle) in cases {
        single_error_mentioning(&GOOD.replace(good, bad), needle);
    }
}

#[test]
fn tls_needs_cert_and_key() {
    let text = GOOD
        .replace("addr = \"127.0.0.1:8080\"\n", "addr = \"127.0.0.1:8080\"\ntls = { cert = \"a.pem\" }\n");
    let (line, _) = single_error_mentioning(&text, "cert and key");
    assert_eq!(line, 6);
}

#[test]
fn relative_tls_paths_resolve_against_the_config_directory() {
    let text = GOOD.replace(
        "addr = \"127.0.0.1:8080\"\n",
        "addr = \"127.0.0.1:8080\"\ntls = { cert = \"site.pem\", key = \"/abs/site.key\" }\n",
    );
    let config = Config::parse(Path::new("/etc/lameduck/proxy.toml"), &text).expect("valid");
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.certs[0].cert, Path::new("/etc/lameduck/site.pem"));
    assert_eq!(tls.certs[0].key, Path::new("/abs/site.key"));
}

#[test]
fn zero_upstream_timeouts_are_errors() {
    let text = GOOD.replace("timeout = \"5s\"", "timeout = \"0s\"\nconnect_timeout = \"0ms\"");
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|(_, m)| m.contains("must be longer than zero")), "{all:?}");
}

#[test]
fn admin_may_not_share_a_listener_address() {
    let text = GOOD.replace("addr = \"127.0.0.1:9901\"", "addr = \"127.0.0.1:8080\"");
    let (line, _) = single_error_mentioning(&text, "also a [[listen]] address");
    assert_eq!(line, 26);
}

#[test]
fn underscores_in_headers_is_off_by_default_and_set_per_route() {
    let config = Config::parse(Path::new("proxy.toml"), GOOD).expect("valid");
    assert!(config.routes.iter().all(|r| !r.forwarding.underscores_in_headers));
    let text = api_route_with("underscores_in_headers = true");
    let config = Config::parse(Path::new("proxy.toml"), &text).expect("valid");
    let kept: Vec<bool> = config.routes.iter().map(|r| r.forwarding.underscores_in_headers).collect();
    assert_eq!(kept, [true, false]);
}

#[test]
fn underscores_in_headers_of_the_wrong_type_is_an_error_with_a_location() {
    let text = api_route_with("underscores_in_headers = \"yes\"");
    assert_eq!(single_error_mentioning(&text, "expected a boolean"), (15, 26));
    let err = Config::parse(Path::new("proxy.toml"), &text).expect_err("a string is not a boolean");
    assert!(err.to_string().starts_with("proxy.toml:15:26: "), "{err}");
}

/// [`GOOD`] with `line` added to its first (`/api/`) route.
fn api_route_with(line: &str) -> String {
    GOOD.replace(
        "path_prefix = \"/api/\"\nupstream = \"legacy\"\n",
        &format!("path_prefix = \"/api/\"\nupstream = \"legacy\"\n{line}\n"),
    )
}

/// The upgrades a route allows: websocket by default, tokens lowercased; a bad token or h2c is
/// an error at the entry.
#[test]
fn route_upgrades_default_to_websocket_and_are_checked() {
    let config = Config::parse(Path::new("proxy.toml"), GOOD).expect("valid");
    assert!(config.routes.iter().all(|r| r.forwarding.upgrades == ["websocket"]));
    let with = |list: &str| api_route_with(&format!("upgrades = {list}"));
    let config =
        Config::parse(Path::new("proxy.toml"), &with("[\"WebSocket\", \"x-custom/2\"]")).expect("valid");
    assert_eq!(config.routes[0].forwarding.upgrades, ["websocket", "x-custom/2"]);
    for (list, needle) in
        [("[\"web socket\"]", "invalid upgrade protocol"), ("[\"H2C\"]", "h2c upgrade is obsolete")]
    {
        let (line, _) = single_error_mentioning(&with(list), needle);
        assert_eq!(line, 15, "{list}: the entry's line");
    }
}

/// `websocket_origins`: absent means no check; each entry must be a bare origin.
#[test]
fn websocket_origins_are_checked_as_origins() {
    let config = Config::parse(Path::new("proxy.toml"), GOOD).expect("valid");
    assert!(config.routes.iter().all(|r| r.forwarding.websocket_origins.is_none()));
    let with = |list: &str| api_route_with(&format!("websocket_origins = {list}"));
    let good = with("[\"https://App.example.com\", \"http://localhost:3000\"]");
    let config = Config::parse(Path::new("proxy.toml"), &good).expect("valid");
    let origins = config.routes[0].forwarding.websocket_origins.clone().expect("set");
    assert_eq!(origins, ["https://app.example.com", "http://localhost:3000"]);
    for bad in [
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://",
        "https://u@h",
    ] {
        let (line, _) = single_error_mentioning(&with(&format!("[\"{bad}\"]")), "invalid WebSocket origin");
        assert_eq!(line, 15, "{bad}");
    }
}

/// With `close_spread`, grace + close_spread + 2 × close_timeout must end before the deadline,
/// or the last tunnels would be cut instead of closed; without it, the rule does not apply.
#[test]
fn a_close_spread_that_cannot_fit_the_deadline_is_an_error_at_it() {
    let drain = |lines: &str| GOOD.replace("deadline = \"30s\"\ngrace = \"2s\"\n", lines);
    let tight = drain("deadline = \"3s\"\nclose_spread = \"6s\"\nclose_timeout = \"1s\"\n");
    let (line, _) = single_error_mentioning(&tight, "close_spread does not fit the deadline");
    assert_eq!(line, 21, "at close_spread");
    let (_, message) = single_error(&tight);
    assert!(message.contains("shorter than 1s"), "{message}");
    let with_grace =
        drain("deadline = \"10s\"\ngrace = \"5s\"\nclose_spread = \"2s\"\nclose_timeout = \"2s\"\n");
    single_error_mentioning(&with_grace, "close_spread does not fit the deadline");
    let fits = drain("deadline = \"10s\"\ngrace = \"1s\"\nclose_spread = \"4s\"\nclose_timeout = \"2s\"\n");
    Config::parse(Path::new("proxy.toml"), &fits).expect("1 + 4 + 2 × 2 < 10");
    let unset = drain("deadline = \"3s\"\nclose_timeout = \"5s\"\n");
    Config::parse(Path::new("proxy.toml"), &unset).expect("no close_spread, no rule");
}

#[test]
fn hold_settings_default_and_are_read_per_upstream() {
    let config = Config::parse(Path::new("proxy.toml"), GOOD).expect("valid");
    assert_eq!(config.upstreams[0].hold, HoldConfig::default());
    let text = GOOD.replace("timeout = \"5s\"", "hold = \"10s\"\nconnect_retry = \"3s\"\nmax_held = 0");
    let config = Config::parse(Path::new("proxy.toml"), &text).expect("valid");
    let expected =
        HoldConfig { hold: Duration::from_secs(10), connect_retry: Duration::from_secs(3), max_held: 0 };
    assert_eq!(config.upstreams[0].hold, expected);
}

#[test]
fn bad_hold_settings_are_errors_at_their_values() {
    let text = GOOD.replace("timeout = \"5s\"", "hold = \"0s\"\nconnect_retry = \"soon\"\nmax_held = -1");
    let all = errors(&text);
    let at: Vec<(usize, usize)> = all.iter().map(|(at, _)| *at).collect();
    assert_eq!(at, [(9, 8), (10, 17), (11, 12)], "{all:?}");
    assert!(all[0].1.contains("hold must be longer than zero"), "{all:?}");
    assert!(all[1].1.contains("connect_retry"), "{all:?}");
    assert!(all[2].1.contains("max_held = -1 is out of range"), "{all:?}");
}

#[test]
fn an_admin_address_beyond_loopback_without_a_token_is_warned_about() {
    let config = Config::parse(Path::new("/etc/lameduck/proxy.toml"), GOOD).expect("valid");
    assert!(config.warnings().is_empty(), "loopback needs no token");
    let open = GOOD.replace("addr = \"127.0.0.1:9901\"", "addr = \"0.0.0.0:9901\"");
    let config = Config::parse(Path::new("/etc/lameduck/proxy.toml"), &open).expect("valid");
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not a loopback address") && warnings[0].contains("token_file"));
    let with_token =
        open.replace("addr = \"0.0.0.0:9901\"", "addr = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"");
    let config = Config::parse(Path::new("/etc/lameduck/proxy.toml"), &with_token).expect("valid");
    assert!(config.warnings().is_empty());
    let token_file = config.admin.and_then(|a| a.token_file).expect("set");
    assert_eq!(token_file, Path::new("/etc/lameduck/admin.token"), "relative to the config file");
}

#[test]
fn a_cred_path_is_a_systemd_credential() {
    use super::validate::credential_path;
    let dir = Path::new("/run/credentials/lameduck.service");
    assert_eq!(credential_path("cred:site.key", Some(dir)), Some(Ok(dir.join("site.key"))));
    assert_eq!(credential_path("site.key", Some(dir)), None, "an ordinary path");
    let unset = credential_path("cred:site.key", None).expect("a credential").unwrap_err();
    assert!(unset.contains("CREDENTIALS_DIRECTORY") && unset.contains("LoadCredential=site.key:"), "{unset}");
    for bad in ["cred:", "cred:../x", "cred:a/b"] {
        assert!(credential_path(bad, Some(dir)).expect("a credential").is_err(), "{bad}");
    }
}
