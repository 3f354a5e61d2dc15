//! TLS with rustls (ring provider): server configs for TLS listeners, with certificates chosen
//! by SNI, and client configs for https upstreams.
//!
//! Everything is read and checked once, before anything is bound — by `--check` and at
//! start-up alike — so a missing file, a file without a key, or a key that does not match its
//! certificate is reported with the file and the reason, and an expired certificate with a
//! warning. Renewed certificates are picked up by a SIGHUP reload (for new handshakes).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{CertKeyFiles, Config, TlsFiles, UpstreamAddr, UpstreamConfig};

/// The TLS side of a listener.
#[derive(Clone)]
pub struct ListenerTls {
    /// Performs handshakes with the listener's certificates.
    pub acceptor: TlsAcceptor,
    /// A handshake slower than this is abandoned.
    pub handshake_timeout: Duration,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls").field("handshake_timeout", &self.handshake_timeout).finish()
    }
}

/// How to reach one upstream address over TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Performs client handshakes, verifying against the configured roots.
    pub connector: TlsConnector,
    /// SNI and the name the certificate must carry.
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish()
    }
}

/// All TLS material of a configuration, loaded and checked.
#[derive(Debug, Default)]
pub struct TlsMaterial {
    /// Per listener, in config order; `None` for cleartext listeners.
    pub listeners: Vec<Option<ListenerTls>>,
    /// Per upstream client config, in config order; `None` for cleartext upstreams.
    pub upstreams: Vec<Option<Arc<ClientConfig>>>,
    /// Problems worth a warning that do not stop the start (an expired certificate).
    pub warnings: Vec<String>,
}

impl TlsMaterial {
    /// Reads every certificate, key and CA file the configuration names; returns every
    /// problem at once.
    pub fn load(config: &Config) -> Result<TlsMaterial, Vec<String>> {
        let mut material = TlsMaterial::default();
        let mut problems = Vec::new();
        for listener in &config.listeners {
            let loaded = listener.tls.as_ref().map(|files| listener_tls(files, &mut material.warnings));
            let whose = || format!("listener \"{}\"", listener.addr);
            material.listeners.push(keep_or_note(loaded, whose, &mut problems));
        }
        for upstream in &config.upstreams {
            let loaded = upstream.tls.then(|| client_config(upstream.ca.as_deref()));
            let whose = || format!("upstream \"{}\"", upstream.name);
            material.upstreams.push(keep_or_note(loaded, whose, &mut problems));
        }
        problems.extend(check_server_names(config));
        if problems.is_empty() {
            Ok(material)
        } else {
            Err(problems)
        }
    }
}

/// The rustls provider lameduck uses everywhere (ring: no C toolchain beyond cc needed).
/// What was loaded, if anything was to be; a failure joins `problems`, prefixed by `whose`.
fn keep_or_note<T>(
    loaded: Option<Result<T, String>>,
    whose: impl FnOnce() -> String,
    problems: &mut Vec<String>,
) -> Option<T> {
    match loaded? {
        Ok(value) => Some(value),
        Err(e) => {
            problems.push(format!("{}: {e}", whose()));
            None
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn listener_tls(files: &TlsFiles, warnings: &mut Vec<String>) -> Result<ListenerTls, String> {
    let provider = provider();
    let mut certs = Vec::new();
    for pair in &files.certs {
        certs.push(load_certified_key(pair, &provider, warnings)?);
    }
    let resolver = SniResolver { certs };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ListenerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        handshake_timeout: files.handshake_timeout,
    })
}

/// Which file of a certificate and key pair a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// The certificate chain.
    Cert,
    /// The private key (unreadable, unusable, or not the certificate's).
    Key,
}

/// `--check` of one certificate and key pair, as start-up loads it: the warnings (an expired
/// certificate), or what is wrong and with which file.
pub fn check_cert_key(files: &CertKeyFiles) -> Result<Vec<String>, (Culprit, String)> {
    let mut warnings = Vec::new();
    match load_certified_key(files, &provider(), &mut warnings) {
        Ok(_) => Ok(warnings),
        // The messages name their file first ("key file …", "certificate file …").
        Err(e) if e.starts_with("key file") => Err((Culprit::Key, e)),
        Err(e) => Err((Culprit::Cert, e)),
    }
}

/// Server-name problems of https upstreams (a `server_name` or host that is no valid name).
pub fn check_server_names(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for upstream in config.upstreams.iter().filter(|u| u.tls) {
        for addr in &upstream.addrs {
            if let Err(e) = server_name(upstream, addr) {
                problems.push(format!("upstream \"{}\": {e}", upstream.name));
            }
        }
    }
    problems
}

/// Reads a chain and its key, checks that they belong together, and notes their names.
fn load_certified_key(
    files: &CertKeyFiles,
    provider: &CryptoProvider,
    warnings: &mut Vec<String>,
) -> Result<NamedKey, String> {
    let chain = read_certs(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, "private key", e))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key file \"{}\": unusable private key: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| {
        format!(
            "key file \"{}\" does not match certificate \"{}\": use the key the certificate was issued for",
            files.key.display(),
            files.cert.display()
        )
    })?;
    let leaf = x509_parser::parse_x509_certificate(&certified.cert[0])
        .map_err(|e| {
            format!("certificate file \"{}\": cannot parse the certificate: {e}", files.cert.display())
        })?
        .1;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if leaf.validity().not_after.timestamp() < now {
        warnings.push(format!(
            "certificate \"{}\" expired on {}: clients will refuse it until it is renewed",
            files.cert.display(),
            leaf.validity().not_after
        ));
    }
    Ok(NamedKey { names: names_of(&leaf), key: Arc::new(certified) })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(format!("certificate file \"{}\": no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> String {
    let kind = if what == "certificate" { "certificate file" } else { "key file" };
    match e {
        pem::Error::Io(io) if io.kind() == io::ErrorKind::NotFound => {
            format!("{kind} \"{}\": no such file", path.display())
        }
        pem::Error::Io(io) => format!("{kind} \"{}\": cannot read it: {io}", path.display()),
        pem::Error::NoItemsFound => format!(
            "{kind} \"{}\": no {what} in it (expected PEM: PKCS#8, PKCS#1 or SEC1 for keys)",
            path.display()
        ),
        other => format!("{kind} \"{}\": not valid PEM: {other}", path.display()),
    }
}

/// DNS names a certificate is valid for: its subjectAltNames, else its common name.
fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase),
        );
    }
    names
}

/// A certificate with the names it serves.
#[derive(Debug)]
struct NamedKey {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks the certificate whose names match the SNI name; the first one otherwise.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<NamedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.certs.iter().find(|c| c.names.iter().any(|n| name_matches(n, &sni)))
        });
        chosen.or(self.certs.first()).map(|c| c.key.clone())
    }
}

/// `pattern` is a certificate name, possibly a wildcard (`*.example.com`) for one label.
fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// A client config verifying against `ca` (PEM bundle) or else the webpki roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("ca file \"{}\": unusable certificate: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to send as SNI and to verify for `addr` of `upstream`.
pub fn server_name(upstream: &UpstreamConfig, addr: &UpstreamAddr) -> Result<ServerName<'static>, String> {
    let name = upstream.server_name.clone().unwrap_or_else(|| addr.host());
    ServerName::try_from(name.clone()).map_err(|_| {
        format!("{name:?} is not a valid TLS server name: set server_name to the name in its certificate")
    })
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("example.com", "example.com"));
    }
}
