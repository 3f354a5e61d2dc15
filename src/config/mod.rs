//! `proxy.toml`: the validated configuration the daemon runs from.
//!
//! Two layers: [`raw`] mirrors the file with serde (`deny_unknown_fields`, spans kept), and
//! [`validate`] turns it into a [`Config`] of real types — socket addresses, durations,
//! upstream indices — reporting *every* problem at once as a [`Diagnostic`] that points at
//! the offending value. Loading binds and opens nothing, so `--check` and a failed start-up
//! have no side effects.

mod diagnostic;
mod hints;
mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diagnostic::{line_col, ConfigError, Diagnostic};
pub use validate::parse_duration;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration was read from (relative paths inside it resolve against its directory).
    pub path: PathBuf,
    /// Runtime worker threads.
    pub workers: usize,
    /// Listeners, in file order.
    pub listeners: Vec<ListenConfig>,
    /// Upstream groups; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in file order; the first that matches wins.
    pub routes: Vec<RouteConfig>,
    /// How the process drains on a signal.
    pub drain: DrainConfig,
    /// The admin endpoint, off unless configured.
    pub admin: Option<AdminConfig>,
    /// Protection against clients that take too much.
    pub limits: Limits,
    /// Where log lines go.
    pub log: LogConfig,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Where access log lines go.
    pub access: AccessLog,
}

/// `[log] access`: where access log lines go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// With every other line, on stderr (the default).
    #[default]
    Stderr,
    /// Nowhere: no access lines are formatted at all.
    Off,
    /// A file of their own (appended to; reopened on every reload, for logrotate).
    File(PathBuf),
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Address to bind (or to find among inherited sockets).
    pub addr: SocketAddr,
    /// Certificates when the listener terminates TLS.
    pub tls: Option<TlsFiles>,
}

/// The certificate files of a TLS listener; read and checked by `tls`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chains with their keys; the first one is the default for unknown SNI names.
    pub certs: Vec<CertKeyFiles>,
    /// A handshake slower than this is abandoned.
    pub handshake_timeout: Duration,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct CertKeyFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A named group of upstream addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The name routes use, and the only thing clients ever learn about it.
    pub name: String,
    /// Tried round-robin; a connect failure moves on to the next.
    pub addrs: Vec<UpstreamAddr>,
    /// Speak HTTPS to the upstream.
    pub tls: bool,
    /// A private CA to verify the upstream's certificate against, instead of the webpki roots.
    pub ca: Option<PathBuf>,
    /// SNI and verified name; default: the host part of the address.
    pub server_name: Option<String>,
    /// How long a TCP (and TLS) connect may take.
    pub connect_timeout: Duration,
    /// How long the upstream may take to send response headers before the client gets 504.
    pub timeout: Duration,
    /// How requests wait while the upstream is paused or unreachable.
    pub hold: HoldConfig,
    /// The backend process lameduck runs for this upstream, if any.
    pub process: Option<ProcessConfig>,
}

/// `[upstream.NAME.process]`: a backend that lameduck starts before it is ready, stops only
/// after its own drain, and restarts without losing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// The program and its arguments, run as given (no shell).
    pub command: Vec<String>,
    /// Added to lameduck's own environment (which loses systemd's notify and listen variables).
    pub env: Vec<(String, String)>,
    /// Working directory; `None`: lameduck's.
    pub cwd: Option<PathBuf>,
    /// What the backend gets after lameduck's drain (default SIGTERM), as a signal number.
    pub stop_signal: i32,
    /// Then SIGKILL after this long (default 10 s).
    pub stop_timeout: Duration,
    /// The backend must accept a TCP connection on one of the upstream's addresses within
    /// this long (default 30 s).
    pub ready_timeout: Duration,
    /// What happens when it exits by itself.
    pub restart: RestartPolicy,
}

/// `restart =` of a supervised backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Started again, with capped exponential back-off; requests are held meanwhile.
    OnFailure,
    /// lameduck drains and exits with status 3, for the service manager to restart it all.
    Never,
}

/// How requests to an upstream wait instead of failing: while it is paused (admin API), and
/// while every address refuses connections (a backend restarting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldConfig {
    /// `hold`: the longest a request waits for a paused upstream to resume, then 503 with
    /// `Retry-After`. Default 30 s.
    pub hold: Duration,
    /// `connect_retry`: how long a request whose every address refused keeps retrying (capped,
    /// jittered back-off) before 502. Default zero: 502 at once.
    pub connect_retry: Duration,
    /// `max_held`: requests that may wait at once, paused or retrying; past it, 503 at once.
    /// Default 1024. Zero: nothing waits.
    pub max_held: usize,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig { hold: Duration::from_secs(30), connect_retry: Duration::ZERO, max_held: 1024 }
    }
}

/// An upstream address: an IP literal, or a host name resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `127.0.0.1:9000`, `[::1]:9000`.
    Ip(SocketAddr),
    /// `backend.internal:9000`.
    Name {
        /// The host name, resolved on every new connection.
        host: String,
        /// The TCP port.
        port: u16,
    },
}

impl UpstreamAddr {
    /// The host part, as used for SNI when no `server_name` is set.
    pub fn host(&self) -> String {
        match self {
            UpstreamAddr::Ip(addr) => addr.ip().to_string(),
            UpstreamAddr::Name { host, .. } => host.clone(),
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Ip(addr) => write!(f, "{addr}"),
            UpstreamAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One `[[route]]`: all given conditions must hold.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lowercase host name without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix; `None` matches any path.
    pub path_prefix: Option<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// How the route's requests are rewritten for the upstream.
    pub forwarding: Forwarding,
}

/// What the proxy needs of a route besides where it goes: how its requests are rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// Keep request header names that contain `_`. Off by default: CGI-style backends (PHP,
    /// WSGI, Rack) read `X_Forwarded_For` and `X-Forwarded-For` as one variable, so a client
    /// could spoof the headers lameduck sets.
    pub underscores_in_headers: bool,
    /// Protocols a client may switch to with `Upgrade` (lowercase; a name without `/`
    /// matches every version of it). Default `["websocket"]`; `h2c` never (RFC 9113 §3.1).
    pub upgrades: Vec<String>,
    /// When set, a WebSocket upgrade must carry one of these `Origin`s (lowercase
    /// `scheme://host[:port]`, RFC 6454 §6.1), or it is answered 403: cross-site WebSocket
    /// hijacking stopped for backends that check nothing. `None`: no check.
    pub websocket_origins: Option<Vec<String>>,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            underscores_in_headers: false,
            upgrades: vec!["websocket".to_owned()],
            websocket_origins: None,
        }
    }
}

/// `[drain]`: what happens between the signal and the exit.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// From the signal to exit; what is still open then is cut.
    pub deadline: Duration,
    /// Keep serving normally (with /readyz at 503) this long before draining.
    pub grace: Duration,
    /// Sent as whole seconds in `Retry-After` of 503 answers.
    pub retry_after: Duration,
    /// WebSocket close code sent to both sides.
    pub close_code: u16,
    /// WebSocket close reason sent to both sides (at most 123 bytes).
    pub close_reason: String,
    /// Idle HTTP/1.1 keep-alive connections are closed this long after draining starts.
    pub idle_linger: Duration,
    /// How long to wait for each side's Close frame before cutting TCP.
    pub close_timeout: Duration,
    /// Spread the tunnels' close frames over this window.
    pub close_spread: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where /healthz, /readyz, /metrics and /upstreams are served.
    pub addr: SocketAddr,
    /// A file holding the bearer token that `POST` requests must carry; `None`: no token
    /// (then only a loopback `addr` is safe, and `--check` warns otherwise).
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The token in `token_file` (surrounding whitespace trimmed), or `None` if no file is
    /// configured.
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or holds no token.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        self.token_file.as_deref().map(read_token_file).transpose()
    }
}

/// The bearer token in the file at `path`, trimmed.
///
/// # Errors
/// A message naming the file when it cannot be read or is empty.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read [admin] token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("[admin] token_file {} is empty: put the bearer token in it", path.display()));
    }
    Ok(token.to_owned())
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Past this many open connections, stop accepting until one closes.
    pub max_connections: usize,
    /// A client slower than this to send a request's headers is cut.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// Larger request header blocks get 431.
    pub max_header_bytes: usize,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if it were the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate::validate(path, text).map_err(|d| ConfigError::new(path, text, d))
    }

    /// What is valid but probably a mistake, one sentence each: an admin endpoint that
    /// changes behaviour (pause, resume) reachable from other hosts without a token.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(admin) = self.admin.as_ref().filter(|a| a.token_file.is_none()) {
            if !admin.addr.ip().is_loopback() {
                warnings.push(format!(
                    "[admin] addr {} is not a loopback address and no token_file is set: anyone who reaches it can pause upstreams; set [admin] token_file or bind to 127.0.0.1",
                    admin.addr
                ));
            }
        }
        warnings
    }
}

/// A file the configuration names (certificate, key, CA, token), resolved, with the span of
/// the value that names it: `--check` reads each and points its errors there.
#[derive(Debug, Clone)]
pub struct FileRef {
    /// Where the file is named (for a certificate and its key: the certificate).
    pub span: Range<usize>,
    /// What the file must hold.
    pub kind: FileKind,
    /// The path as resolved, which is what is tried.
    pub path: PathBuf,
}

/// What a [`FileRef`] must hold.
#[derive(Debug, Clone)]
pub enum FileKind {
    /// A listener's certificate chain, with its key (named at `key_span`).
    CertKey {
        /// Where the key file is named.
        key_span: Range<usize>,
        /// Both paths, resolved.
        files: CertKeyFiles,
    },
    /// An upstream's CA certificates.
    Ca,
    /// The admin bearer token.
    Token,
}

/// `--check`'s view of a configuration file: the text, the validated config or every
/// problem, and every file it names (found even when other parts are invalid).
#[derive(Debug)]
pub struct Checked {
    /// The file's text, for diagnostics.
    pub text: String,
    /// The configuration, or every problem of its syntax and meaning.
    pub config: Result<Config, Vec<Diagnostic>>,
    /// The files it names.
    pub files: Vec<FileRef>,
}

impl Checked {
    /// Reads and validates the file at `path`, keeping what `--check` needs to go on.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
        let (config, files) = validate::validate_with_files(path, &text);
        Ok(Checked { text, config, files })
    }
}

/// Resolves `written` against the directory of the config file at `config_path`.
fn resolve_against(config_path: &Path, written: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if written.is_relative() => dir.join(written),
        _ => written.to_owned(),
    }
}

#[cfg(test)]
mod tests;
