//! TLS listeners and https upstreams, with certificates made by rcgen at test time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{config, secs, Backend, Finished, Lameduck, PROMPT};
use crate::websocket::peers::{read_until_close, Behaviour, WsBackend};

/// A private CA that signs leaf certificates into a temp dir.
struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A leaf certificate written to disk.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "lameduck test ca");
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Pki { dir, issuer: Issuer::new(params, key), ca_pem }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(file, names, |_| {})
    }

    fn leaf_with(&self, file: &str, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{file}.pem")), self.dir.path().join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::pem::PemObject::from_pem_slice(self.ca_pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        TlsConnector::from(self.client_config(alpn)).connect(name, tcp).await
    }
}

fn tls_listener_config(backend: SocketAddr, tls: &str) -> String {
    config(&[backend], "", "[drain]\ndeadline = \"10s\"\n").replacen(
        "addr = \"127.0.0.1:0\"\n",
        &format!("addr = \"127.0.0.1:0\"\ntls = {tls}\n"),
        1,
    )
}

fn single(leaf: &Leaf) -> String {
    format!("{{ cert = \"{}\", key = \"{}\" }}", leaf.cert.display(), leaf.key.display())
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, Bytes) {
    let resp = timeout(PROMPT, sender.send_request(req)).await.unwrap().unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn request(method: &str, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn https_get_and_post_over_http1_and_http2_chosen_by_alpn() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::echo().await;
    let proxy = Lameduck::start(&tls_listener_config(backend.addr, &single(&leaf))).await;

    let tls = pki.connect(proxy.addr, "localhost", &[b"http/1.1"]).await.expect("tls handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let (status, _) = send(&mut h1, request("GET", "/get", "")).await;
    assert_eq!(status, 200);
    assert_eq!(backend.arrived().await.header("x-forwarded-proto").as_deref(), Some("https"));
    let (status, body) = send(&mut h1, request("POST", "/post", "posted over h1")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"posted over h1"[..]));
    backend.arrived().await;

    let tls = pki.connect(proxy.addr, "localhost", &[b"h2", b"http/1.1"]).await.expect("tls handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    for (method, body) in [("GET", ""), ("POST", "posted over h2")] {
        let req = Request::builder()
            .method(method)
            .uri("https://localhost/h2")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let resp = timeout(PROMPT, h2.send_request(req)).await.unwrap().unwrap();
        assert_eq!((resp.status(), resp.version()), (StatusCode::OK, Version::HTTP_2));
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), body.as_bytes());
        let seen = backend.arrived().await;
        assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    }
}

#[tokio::test]
async fn wss_echoes_and_gets_close_frames_on_drain() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let mut backend = WsBackend::start(Behaviour::Echo).await;
    let mut proxy = Lameduck::start(&tls_listener_config(backend.addr, &single(&leaf))).await;
    let tls = pki.connect(proxy.addr, "localhost", &[b"http/1.1"]).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://localhost/ws", tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("over tls".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("over tls".into()));

    proxy.sigterm();
    let (_, close) = read_until_close(&mut ws, PROMPT).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    tokio::spawn(async move { while ws.next().await.is_some() {} });
    assert_eq!(backend.next_close(PROMPT).await.frame.map(|c| c.0), Some(1001));
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
}

#[tokio::test]
async fn sni_picks_the_certificate_for_the_name_and_the_first_by_default() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test", "*.wild.test"]);
    let tls = format!(
        "{{ certs = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display()
    );
    let backend = Backend::named("ok").await;
    let proxy = Lameduck::start(&tls_listener_config(backend.addr, &tls)).await;
    for (sni, expected) in [("a.test", &a.der), ("b.test", &b.der), ("x.wild.test", &b.der)] {
        let stream = pki.connect(proxy.addr, sni, &[]).await.unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(&stream.get_ref().1.peer_certificates().unwrap()[0], expected, "{sni}");
    }
    let unknown = pki.connect(proxy.addr, "other.test", &[]).await;
    assert!(unknown.is_err(), "the default (a.test) certificate is not valid for other.test");
}

#[tokio::test]
async fn plain_http_gets_400_and_stalled_handshakes_are_closed_without_disturbing_a_good_client() {
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"]);
    let backend = Backend::named("fine").await;
    let tls = format!(
        "{{ cert = \"{}\", key = \"{}\", handshake_timeout = \"1s\" }}",
        leaf.cert.display(),
        leaf.key.display()
    );
    let proxy = Lameduck::start(&tls_listener_config(backend.addr, &tls)).await;

    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    let stalled_since = Instant::now();
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();

    let good = pki.connect(proxy.addr, "localhost", &[b"http/1.1"]).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(good)).await.unwrap();
    tokio::spawn(conn);
    let (status, body) = send(&mut h1, request("GET", "/", "")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"fine"[..]));

    let mut buf = Vec::new();
    let _ = timeout(PROMPT, plain.read_to_end(&mut buf)).await.expect("plain text client is closed");
    let answer = String::from_utf8_lossy(&buf).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "plain HTTP on a TLS port: {answer:?}");
    assert!(answer.ends_with("\r\n\r\nthis port expects TLS\n"), "{answer:?}");
    assert!(answer.to_lowercase().contains("connection: close\r\n"), "{answer:?}");
    buf.clear();
    let _ = timeout(PROMPT, stalled.read_to_end(&mut buf)).await.expect("stalled handshake is closed");
    let waited = stalled_since.elapsed();
    assert!(waited >= std::time::Duration::from_millis(900) && waited < secs(4), "{waited:?}");

    let (status, _) = send(&mut h1, request("GET", "/", "")).await;
    assert_eq!(status, 200, "the good client is still served");
}

/// An https backend with a certificate for `backend.test` from `pki`.
async fn https_backend(pki: &Pki) -> SocketAddr {
    let leaf = pki.leaf("backend", &["backend.test"]);
    let certs = vec![leaf.der.clone()];
    let key = rustls::pki_types::pem::PemObject::from_pem_file(&leaf.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"secure hello",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_is_verified_against_a_private_ca() {
    let pki = Pki::new();
    let backend = https_backend(&pki).await;
    let upstream =
        format!("tls = true\nserver_name = \"backend.test\"\nca = \"{}\"", pki.ca_path().display());
    let proxy = Lameduck::start(&config(&[backend], &upstream, "[drain]\ndeadline = \"5s\"\n")).await;
    let mut client = crate::harness::H1Client::connect(proxy.addr).await;
    let got = client.get("/").await;
    assert_eq!((got.status, got.text()), (StatusCode::OK, "secure hello".to_owned()));

    // The same backend without the private CA: verification fails, the client gets a 502.
    let untrusted = Lameduck::start(&config(
        &[backend],
        "tls = true\nserver_name = \"backend.test\"",
        "[drain]\ndeadline = \"5s\"\n",
    ))
    .await;
    let mut client = crate::harness::H1Client::connect(untrusted.addr).await;
    assert_eq!(client.get("/").await.status, StatusCode::BAD_GATEWAY);
}

/// `--check` on a TLS listener with these cert and key paths.
async fn check_listener(cert: &Path, key: &Path) -> Finished {
    let tls = format!("{{ cert = \"{}\", key = \"{}\" }}", cert.display(), key.display());
    Finished::check(&tls_listener_config("127.0.0.1:9".parse().unwrap(), &tls)).await
}

#[tokio::test]
async fn tls_config_errors_name_the_file_and_the_reason() {
    let pki = Pki::new();
    let good = pki.leaf("good", &["localhost"]);
    let other = pki.leaf("other", &["localhost"]);
    let missing = pki.dir.path().join("missing.pem");
    let cases: [(&Path, &Path, &str); 4] = [
        (&missing, &good.key, "no such file"),
        (pki.dir.path(), &good.key, "cannot read"),
        (&good.cert, &good.cert, "no private key in it"),
        (&good.cert, &other.key, "does not match certificate"),
    ];
    for (cert, key, expected) in cases {
        let done = check_listener(cert, key).await;
        assert_eq!(done.status, 1, "{expected}: {}", done.stderr);
        assert!(done.stderr.contains(expected), "want {expected:?} in {}", done.stderr);
        let named = if expected == "no private key in it" || expected == "does not match certificate" {
            key
        } else {
            cert
        };
        assert!(done.stderr.contains(&named.display().to_string()), "names the file: {}", done.stderr);
    }
    let started = Finished::start_expecting_exit(&tls_listener_config(
        "127.0.0.1:9".parse().unwrap(),
        &format!("{{ cert = \"{}\", key = \"{}\" }}", missing.display(), good.key.display()),
    ))
    .await;
    assert_eq!(started.status, 1, "a bad certificate stops the start: {}", started.stderr);
    assert!(started.stderr.contains("no such file"), "{}", started.stderr);
}

#[tokio::test]
async fn an_expired_certificate_is_a_warning_not_an_error() {
    let pki = Pki::new();
    let expired = pki.leaf_with("expired", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let done = check_listener(&expired.cert, &expired.key).await;
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert_eq!(done.stdout.trim(), "ok");
    assert!(done.stderr.contains("warning") && done.stderr.contains("expired"), "{}", done.stderr);
}
