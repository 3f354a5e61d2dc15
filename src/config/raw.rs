//! The file layer of the configuration: serde structs that mirror `proxy.toml` exactly.
//!
//! Every struct denies unknown fields, so a typo is an error rather than a silently ignored
//! key. Values that a later semantic check must point at are wrapped in [`Spanned`] so the
//! error can name their line and column. Nothing here is validated beyond its TOML type; that
//! is `validate.rs`'s job.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub workers: Option<Spanned<i64>>,
    #[serde(default)]
    pub listen: Vec<Spanned<RawListen>>,
    #[serde(default)]
    pub upstream: BTreeMap<Spanned<String>, Spanned<RawUpstream>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    pub drain: Option<RawDrain>,
    pub admin: Option<RawAdmin>,
    pub limits: Option<RawLimits>,
    pub log: Option<RawLog>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<Spanned<String>>,
}

/// One `[[listen]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: Spanned<String>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `tls = { cert, key }` or `tls = { certs = [...] }`; which form is used is checked later.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub certs: Option<Vec<Spanned<RawCertKey>>>,
    pub handshake_timeout: Option<Spanned<String>>,
}

/// One certificate of an SNI list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertKey {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// One `[upstream.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub addrs: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub tls: bool,
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub hold: Option<Spanned<String>>,
    pub connect_retry: Option<Spanned<String>>,
    pub max_held: Option<Spanned<i64>>,
    pub process: Option<Spanned<RawProcess>>,
}

/// `[upstream.NAME.process]`: the backend lameduck runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    pub command: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<Spanned<String>>,
    pub stop_signal: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    pub ready_timeout: Option<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
}

/// One `[[route]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub underscores_in_headers: bool,
    pub upgrades: Option<Vec<Spanned<String>>>,
    pub websocket_origins: Option<Vec<Spanned<String>>>,
}

/// `[drain]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrain {
    pub deadline: Option<Spanned<String>>,
    pub grace: Option<Spanned<String>>,
    pub retry_after: Option<Spanned<String>>,
    pub close_code: Option<Spanned<i64>>,
    pub close_reason: Option<Spanned<String>>,
    pub idle_linger: Option<Spanned<String>>,
    pub close_timeout: Option<Spanned<String>>,
    pub close_spread: Option<Spanned<String>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub addr: Spanned<String>,
    pub token_file: Option<Spanned<String>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
}
