//! Semantic checks: from [`RawConfig`] to [`Config`], collecting every problem with its span.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::hints;
use super::raw::{RawConfig, RawDrain, RawLimits, RawListen, RawProcess, RawRoute, RawTls, RawUpstream};
use super::{
    resolve_against, AccessLog, AdminConfig, CertKeyFiles, Config, Diagnostic, DrainConfig, FileKind,
    FileRef, Forwarding, HoldConfig, Limits, ListenConfig, LogConfig, ProcessConfig, RestartPolicy,
    RouteConfig, TlsFiles, UpstreamAddr, UpstreamConfig,
};

/// Parses and validates `text`; on failure returns every problem found, in file order.
pub(super) fn validate(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
    validate_with_files(path, text).0
}

/// [`validate`], and every file the configuration names, with where it names it, whether or
/// not the rest is valid (for `--check`, which reads them in the same pass).
pub(super) fn validate_with_files(
    path: &Path,
    text: &str,
) -> (Result<Config, Vec<Diagnostic>>, Vec<FileRef>) {
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return (Err(vec![syntax_error(&e, text)]), Vec::new()),
    };
    let credentials = std::env::var_os(CREDENTIALS_ENV).map(PathBuf::from);
    let mut v = Validator { path, credentials, diagnostics: Vec::new(), files: Vec::new() };
    let config = v.config(raw);
    let files = std::mem::take(&mut v.files);
    if v.diagnostics.is_empty() {
        (Ok(config), files)
    } else {
        v.diagnostics.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
        (Err(v.diagnostics), files)
    }
}

fn syntax_error(err: &toml::de::Error, text: &str) -> Diagnostic {
    let message = err.message().trim_end().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let message = hints::rewrite(&message, text, &span).unwrap_or(message);
            Diagnostic::at(span, message)
        }
        None => Diagnostic::whole(message),
    }
}

/// Close codes that RFC 6455 reserves for reporting, never for sending.
const UNSENDABLE_CLOSE_CODES: [u16; 4] = [1004, 1005, 1006, 1015];

/// hyper's smallest read buffer; a smaller header limit cannot be enforced.
const MIN_HEADER_BYTES: i64 = 8192;

/// A generous ceiling for request header blocks (HTTP/2 carries the limit as a u32).
const MAX_HEADER_BYTES: i64 = 16 << 20;

struct Validator<'a> {
    path: &'a Path,
    /// `$CREDENTIALS_DIRECTORY`: where systemd put the unit's `LoadCredential=` files.
    credentials: Option<PathBuf>,
    diagnostics: Vec<Diagnostic>,
    /// Every certificate, key, CA and token file named, resolved, with its span.
    files: Vec<FileRef>,
}

impl Validator<'_> {
    fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::at(spanned.span(), message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let workers = self.workers(raw.workers.as_ref());
        let listeners = self.listeners(&raw.listen);
        let names: Vec<&str> = raw.upstream.keys().map(|k| k.get_ref().as_str()).collect();
        let routes = self.routes(&raw.route, &names);
        let upstreams =
            raw.upstream.iter().map(|(name, upstream)| self.upstream(name.get_ref(), upstream)).collect();
        let drain = self.drain(&raw.drain.unwrap_or_default());
        let admin = raw.admin.and_then(|a| {
            let addr = self.socket_addr(&a.addr, "admin address")?;
            if addr.port() != 0 && listeners.iter().any(|l: &ListenConfig| l.addr == addr) {
                self.error(
                    &a.addr,
                    format!("admin address \"{addr}\" is also a [[listen]] address: give it its own port"),
                );
            }
            let token_file = a.token_file.as_ref().map(|f| self.file(f, FileKind::Token));
            Some(AdminConfig { addr, token_file })
        });
        let limits = self.limits(&raw.limits.unwrap_or_default());
        let log = LogConfig { access: self.access_log(raw.log.unwrap_or_default().access.as_ref()) };
        Config {
            path: self.path.to_owned(),
            workers,
            listeners,
            upstreams,
            routes,
            drain,
            admin,
            limits,
            log,
        }
    }

    fn access_log(&mut self, raw: Option<&Spanned<String>>) -> AccessLog {
        match raw.map(|r| (r, r.get_ref().as_str())) {
            None | Some((_, "stderr")) => AccessLog::Stderr,
            Some((_, "off")) => AccessLog::Off,
            Some((raw, "")) => {
                self.error(raw, "[log] access is empty: write \"stderr\", \"off\" or a file path");
                AccessLog::Stderr
            }
            Some((raw, _)) => AccessLog::File(self.resolve(raw)),
        }
    }

    fn workers(&mut self, raw: Option<&Spanned<i64>>) -> usize {
        let default = std::thread::available_parallelism().map_or(1, |n| n.get());
        match raw {
            None => default,
            Some(n) if (1..=1024).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.error(n, format!("workers = {} is out of range: use 1 to 1024", n.get_ref()));
                default
            }
        }
    }

    fn listeners(&mut self, raw: &[Spanned<RawListen>]) -> Vec<ListenConfig> {
        if raw.is_empty() {
            self.diagnostics.push(Diagnostic::whole(
                "no [[listen]] entry: add one, like [[listen]] addr = \"0.0.0.0:8080\"",
            ));
        }
        let mut listeners: Vec<ListenConfig> = Vec::new();
        for entry in raw {
            let entry = entry.get_ref();
            let Some(addr) = self.socket_addr(&entry.addr, "listen address") else {
                continue;
            };
            if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
                self.error(
                    &entry.addr,
                    format!("two listeners on \"{addr}\": each [[listen]] needs its own address"),
                );
                continue;
            }
            let tls = entry.tls.as_ref().and_then(|tls| self.tls(tls));
            listeners.push(ListenConfig { addr, tls });
        }
        listeners
    }

    fn socket_addr(&mut self, raw: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        self.parsed(
            raw,
            |text| text.parse::<SocketAddr>(),
            |text, _| {
                format!("invalid {what} {text:?}: expected IP:PORT, like \"0.0.0.0:8080\" or \"[::1]:8080\"")
            },
        )
    }

    /// `parse` applied to `raw`; on failure, the error `message` gives (from the text and the
    /// parser's reason) is reported at `raw`.
    fn parsed<T, E>(
        &mut self,
        raw: &Spanned<String>,
        parse: impl FnOnce(&str) -> Result<T, E>,
        message: impl FnOnce(&str, E) -> String,
    ) -> Option<T> {
        match parse(raw.get_ref()) {
            Ok(value) => Some(value),
            Err(why) => {
                let message = message(raw.get_ref(), why);
                self.error(raw, message);
                None
            }
        }
    }

    fn tls(&mut self, raw: &Spanned<RawTls>) -> Option<TlsFiles> {
        let tls = raw.get_ref();
        let handshake_timeout = self.duration(tls.handshake_timeout.as_ref(), "handshake_timeout", secs(10));
        let certs = match (&tls.cert, &tls.key, &tls.certs) {
            (Some(cert), Some(key), None) => vec![self.cert_key(cert, key)],
            (None, None, Some(list)) if !list.is_empty() => {
                list.iter().map(|ck| self.cert_key(&ck.get_ref().cert, &ck.get_ref().key)).collect()
            }
            _ => {
                self.error(
                    raw,
                    "tls needs either cert and key, like tls = { cert = \"site.pem\", key = \"site.key\" }, \
                     or a non-empty certs list, like tls = { certs = [{ cert = \"a.pem\", key = \"a.key\" }] }",
                );
                return None;
            }
        };
        Some(TlsFiles { certs, handshake_timeout })
    }

    fn cert_key(&mut self, cert: &Spanned<String>, key: &Spanned<String>) -> CertKeyFiles {
        let files = CertKeyFiles { cert: self.resolve(cert), key: self.resolve(key) };
        self.files.push(FileRef {
            span: cert.span(),
            kind: FileKind::CertKey { key_span: key.span(), files: files.clone() },
            path: files.cert.clone(),
        });
        files
    }

    /// The path `raw` names: `cred:NAME` is the systemd credential NAME
    /// (`$CREDENTIALS_DIRECTORY/NAME`, what `LoadCredential=` provides, readable by a
    /// `DynamicUser=`); anything else resolves against the config file's directory.
    fn resolve(&mut self, raw: &Spanned<String>) -> PathBuf {
        match credential_path(raw.get_ref(), self.credentials.as_deref()) {
            Some(Ok(path)) => path,
            Some(Err(why)) => {
                self.error(raw, why);
                PathBuf::from(raw.get_ref())
            }
            None => resolve_against(self.path, Path::new(raw.get_ref())),
        }
    }

    /// The path `raw` names, resolved; remembered for `--check` as a `kind` file.
    fn file(&mut self, raw: &Spanned<String>, kind: FileKind) -> PathBuf {
        let path = self.resolve(raw);
        self.files.push(FileRef { span: raw.span(), kind, path: path.clone() });
        path
    }

    fn upstream(&mut self, name: &str, raw: &Spanned<RawUpstream>) -> UpstreamConfig {
        let upstream = raw.get_ref();
        if upstream.addrs.get_ref().is_empty() {
            self.error(
                &upstream.addrs,
                format!(
                    "upstream \"{name}\" has no addrs: list at least one, like addrs = [\"127.0.0.1:9000\"]"
                ),
            );
        }
        let addrs = upstream.addrs.get_ref().iter().filter_map(|a| self.upstream_addr(a)).collect();
        if !upstream.tls {
            if let Some(ca) = &upstream.ca {
                self.error(ca, format!("upstream \"{name}\": ca is only used with tls = true"));
            }
        }
        UpstreamConfig {
            name: name.to_owned(),
            addrs,
            tls: upstream.tls,
            ca: upstream.ca.as_ref().filter(|_| upstream.tls).map(|ca| self.file(ca, FileKind::Ca)),
            server_name: upstream.server_name.as_ref().map(|s| s.get_ref().clone()),
            connect_timeout: self.positive_duration(
                upstream.connect_timeout.as_ref(),
                "connect_timeout",
                secs(2),
            ),
            timeout: self.positive_duration(upstream.timeout.as_ref(), "timeout", secs(60)),
            hold: self.hold(upstream),
            process: upstream.process.as_ref().and_then(|p| self.process(name, p)),
        }
    }

    fn process(&mut self, name: &str, raw: &Spanned<RawProcess>) -> Option<ProcessConfig> {
        let process = raw.get_ref();
        let command: Vec<String> = process.command.get_ref().iter().map(|a| a.get_ref().clone()).collect();
        if command.first().is_none_or(|program| program.is_empty()) {
            self.error(
                &process.command,
                format!("upstream \"{name}\": process command is empty: give the program and its arguments, like command = [\"/usr/bin/legacy-app\", \"--port\", \"9000\"]"),
            );
        }
        let stop_signal = match &process.stop_signal {
            None => libc::SIGTERM,
            Some(raw) => self.parsed(raw, signal_number, |text, known| {
                format!("unknown stop_signal {text:?}: use one of {known}")
            })?,
        };
        let restart = match &process.restart {
            None => RestartPolicy::OnFailure,
            Some(raw) => match raw.get_ref().as_str() {
                "on-failure" => RestartPolicy::OnFailure,
                "never" => RestartPolicy::Never,
                other => {
                    self.error(raw, format!("unknown restart {other:?}: use \"on-failure\" or \"never\""));
                    RestartPolicy::OnFailure
                }
            },
        };
        Some(ProcessConfig {
            command,
            env: process.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: process.cwd.as_ref().map(|cwd| resolve_against(self.path, Path::new(cwd.get_ref()))),
            stop_signal,
            stop_timeout: self.positive_duration(process.stop_timeout.as_ref(), "stop_timeout", secs(10)),
            ready_timeout: self.positive_duration(process.ready_timeout.as_ref(), "ready_timeout", secs(30)),
            restart,
        })
    }

    fn hold(&mut self, upstream: &RawUpstream) -> HoldConfig {
        let default = HoldConfig::default();
        let max_held = match &upstream.max_held {
            None => default.max_held,
            Some(n) if (0..=1_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.error(n, format!("max_held = {} is out of range: use 0 to 1000000", n.get_ref()));
                default.max_held
            }
        };
        HoldConfig {
            hold: self.positive_duration(upstream.hold.as_ref(), "hold", default.hold),
            connect_retry: self.duration(
                upstream.connect_retry.as_ref(),
                "connect_retry",
                default.connect_retry,
            ),
            max_held,
        }
    }

    fn upstream_addr(&mut self, raw: &Spanned<String>) -> Option<UpstreamAddr> {
        let text = raw.get_ref();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(UpstreamAddr::Ip(addr));
        }
        let parsed = text.rsplit_once(':').and_then(|(host, port)| {
            let valid_host =
                !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            Some((host, port.parse::<u16>().ok()?)).filter(|_| valid_host)
        });
        match parsed {
            Some((host, port)) => Some(UpstreamAddr::Name { host: host.to_ascii_lowercase(), port }),
            None => {
                let message = format!(
                    "invalid upstream address {text:?}: expected HOST:PORT, like \"127.0.0.1:9000\" or \"backend.internal:9000\""
                );
                self.error(raw, message);
                None
            }
        }
    }

    fn routes(&mut self, raw: &[Spanned<RawRoute>], names: &[&str]) -> Vec<RouteConfig> {
        if raw.is_empty() {
            self.diagnostics.push(Diagnostic::whole(
                "no [[route]] entry: every request would get 404; add one, like [[route]] upstream = \"legacy\"",
            ));
        }
        raw.iter().filter_map(|route| self.route(route.get_ref(), names)).collect()
    }

    fn route(&mut self, route: &RawRoute, names: &[&str]) -> Option<RouteConfig> {
        let upstream = names.iter().position(|n| n == route.upstream.get_ref());
        if upstream.is_none() {
            let defined = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
            let defined = if defined.is_empty() { "none".to_owned() } else { defined };
            let message = format!(
                "route names upstream \"{}\", which is not defined (defined: {defined})",
                route.upstream.get_ref()
            );
            self.error(&route.upstream, message);
        }
        if let Some(host) = &route.host {
            if host.get_ref().is_empty() || host.get_ref().contains([':', '/', ' ']) {
                self.error(
                    host,
                    format!(
                        "invalid route host {:?}: write a bare host name without port or scheme, like \"api.example.com\"",
                        host.get_ref()
                    ),
                );
            }
        }
        if let Some(prefix) = &route.path_prefix {
            if !prefix.get_ref().starts_with('/') {
                self.error(
                    prefix,
                    format!(
                        "invalid path_prefix {:?}: it must start with \"/\", like \"/api/\"",
                        prefix.get_ref()
                    ),
                );
            }
        }
        Some(RouteConfig {
            host: route.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase()),
            path_prefix: route.path_prefix.as_ref().map(|p| p.get_ref().clone()),
            upstream: upstream?,
            forwarding: Forwarding {
                underscores_in_headers: route.underscores_in_headers,
                upgrades: self.upgrades(route.upgrades.as_deref()),
                websocket_origins: route.websocket_origins.as_deref().map(|o| self.origins(o)),
            },
        })
    }

    /// `[[route]] websocket_origins`: each a serialised origin (RFC 6454 §6.1,
    /// `scheme://host[:port]`, nothing after), lowercased for comparison.
    fn origins(&mut self, raw: &[Spanned<String>]) -> Vec<String> {
        let mut origins = Vec::new();
        for origin in raw {
            let text = origin.get_ref();
            let parsed = text.parse::<http::Uri>().ok().filter(|uri| {
                uri.scheme().is_some()
                    && uri.authority().is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
                    // `http` reads no path as "/"; the text itself must end at the host or port.
                    && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
                    && !text.ends_with('/')
            });
            if parsed.is_some() {
                origins.push(text.to_ascii_lowercase());
            } else {
                let message = format!(
                    "invalid WebSocket origin {text:?}: write scheme, host and optional port, nothing after, like \"https://app.example.com\""
                );
                self.error(origin, message);
            }
        }
        origins
    }

    /// `[[route]] upgrades`: protocol tokens (RFC 9110 §7.8: `name[/version]`), lowercased.
    fn upgrades(&mut self, raw: Option<&[Spanned<String>]>) -> Vec<String> {
        let Some(raw) = raw else { return Forwarding::default().upgrades };
        let mut protocols = Vec::new();
        for protocol in raw {
            let text = protocol.get_ref();
            let (name, version) = text.split_once('/').map_or((text.as_str(), None), |(n, v)| (n, Some(v)));
            if !is_token(name) || version.is_some_and(|v| !is_token(v)) {
                let message = format!(
                    "invalid upgrade protocol {text:?}: write a protocol token as the Upgrade header names it, like \"websocket\""
                );
                self.error(protocol, message);
            } else if name.eq_ignore_ascii_case("h2c") {
                let message = "\"h2c\" cannot be allowed: the h2c upgrade is obsolete (RFC 9113 §3.1) and would tunnel past the routes; remove it";
                self.error(protocol, message);
            } else {
                protocols.push(text.to_ascii_lowercase());
            }
        }
        protocols
    }

    fn drain(&mut self, raw: &RawDrain) -> DrainConfig {
        let deadline = self.positive_duration(raw.deadline.as_ref(), "deadline", secs(30));
        let grace = self.duration(raw.grace.as_ref(), "grace", Duration::ZERO);
        if let Some(g) = &raw.grace {
            if grace >= deadline {
                self.error(g, "grace must be shorter than the drain deadline, which counts from the signal");
            }
        }
        let close_reason = raw.close_reason.as_ref().map_or_else(
            || "server shutting down".to_owned(),
            |r| {
                if r.get_ref().len() > 123 {
                    self.error(
                        r,
                        "close_reason is too long: a Close frame carries at most 123 bytes of reason",
                    );
                }
                r.get_ref().clone()
            },
        );
        let close_timeout = self.positive_duration(raw.close_timeout.as_ref(), "close_timeout", secs(5));
        let close_spread = self.duration(raw.close_spread.as_ref(), "close_spread", Duration::ZERO);
        if let Some(spread) = raw.close_spread.as_ref().filter(|_| !close_spread.is_zero()) {
            // The last tunnel's close starts at the end of the spread and may take a
            // close_timeout for each side: all of it must end before the deadline cuts.
            let needed = grace + close_spread + 2 * close_timeout;
            if needed >= deadline {
                let room = deadline.saturating_sub(grace + 2 * close_timeout);
                let message = format!(
                    "close_spread does not fit the deadline: grace ({}) + close_spread ({}) + 2 × close_timeout ({}) must be below deadline ({}); make close_spread shorter than {} or the deadline longer",
                    humantime::format_duration(grace),
                    humantime::format_duration(close_spread),
                    humantime::format_duration(close_timeout),
                    humantime::format_duration(deadline),
                    humantime::format_duration(room),
                );
                self.error(spread, message);
            }
        }
        DrainConfig {
            deadline,
            grace,
            retry_after: self.duration(raw.retry_after.as_ref(), "retry_after", secs(5)),
            close_code: self.close_code(raw.close_code.as_ref()),
            close_reason,
            idle_linger: self.duration(raw.idle_linger.as_ref(), "idle_linger", secs(1)),
            close_timeout,
            close_spread,
        }
    }

    fn close_code(&mut self, raw: Option<&Spanned<i64>>) -> u16 {
        let Some(code) = raw else { return 1001 };
        let value = *code.get_ref();
        match u16::try_from(value) {
            Ok(c) if (1000..=4999).contains(&c) && !UNSENDABLE_CLOSE_CODES.contains(&c) => c,
            _ => {
                self.error(
                    code,
                    format!(
                        "close_code {value} may not be sent: use 1000-4999 except 1004, 1005, 1006 and 1015 (1001 means going away)"
                    ),
                );
                1001
            }
        }
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        let max_connections = match &raw.max_connections {
            None => 10_000,
            Some(n) if *n.get_ref() >= 1 => *n.get_ref() as usize,
            Some(n) => {
                self.error(n, "max_connections must be at least 1");
                10_000
            }
        };
        let max_header_bytes = match &raw.max_header_bytes {
            None => 65_536,
            Some(n) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.error(
                    n,
                    format!("max_header_bytes must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
                );
                65_536
            }
        };
        Limits {
            max_connections,
            header_read_timeout: self.positive_duration(
                raw.header_read_timeout.as_ref(),
                "header_read_timeout",
                secs(10),
            ),
            idle_timeout: self.positive_duration(raw.idle_timeout.as_ref(), "idle_timeout", secs(60)),
            max_header_bytes,
        }
    }

    fn duration(&mut self, raw: Option<&Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        let parsed = self.parsed(raw, parse_duration, |text, why| {
            format!("invalid duration {text:?} for {key}: {why}; write a number with a unit, like \"30s\", \"500ms\" or \"2m\"")
        });
        parsed.unwrap_or(default)
    }

    fn positive_duration(&mut self, raw: Option<&Spanned<String>>, key: &str, default: Duration) -> Duration {
        let d = self.duration(raw, key, default);
        if d.is_zero() {
            if let Some(raw) = raw {
                self.error(raw, format!("{key} must be longer than zero"));
            }
            return default;
        }
        d
    }
}

/// The signals a backend may be stopped with, by name.
const STOP_SIGNALS: [(&str, i32); 6] = [
    ("SIGTERM", libc::SIGTERM),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
];

/// `"SIGTERM"` (or `"TERM"`) → its number; otherwise the names that are known.
fn signal_number(text: &str) -> Result<i32, String> {
    let name = text.strip_prefix("SIG").unwrap_or(text);
    STOP_SIGNALS
        .iter()
        .find(|(known, _)| known[3..].eq_ignore_ascii_case(name))
        .map(|(_, number)| *number)
        .ok_or_else(|| STOP_SIGNALS.map(|(known, _)| known).join(", "))
}

/// The environment variable systemd sets to the directory of a unit's credentials.
const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// For `cred:NAME`: the credential's path in `credentials`, or why there is none; `None` for
/// an ordinary path.
pub(super) fn credential_path(written: &str, credentials: Option<&Path>) -> Option<Result<PathBuf, String>> {
    let name = written.strip_prefix("cred:")?;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Some(Err(format!(
            "{written:?} is not a credential name: write cred:NAME, as in LoadCredential=NAME:/path"
        )));
    }
    Some(match credentials {
        Some(dir) => Ok(dir.join(name)),
        None => Err(format!(
            "{written:?} names a systemd credential, but ${CREDENTIALS_ENV} is not set: add LoadCredential={name}:/path/to/file to the unit (or write the file's path)"
        )),
    })
}

/// A duration with a unit: `"500ms"`, `"30s"`, `"2m"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An RFC 9110 §5.6.2 token: one or more tchars.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
