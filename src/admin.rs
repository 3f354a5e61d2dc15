//! The admin endpoint: `/healthz` (the process runs), `/readyz` (it takes new traffic),
//! `/metrics` (Prometheus text), and the upstreams' pause and resume for backend deploys.
//!
//! | request | answer |
//! |---|---|
//! | `GET /upstreams` | JSON: every upstream's state, in flight, held, and addresses |
//! | `POST /upstreams/{name}/pause[?timeout=30s&expire=10m&addr=IP:PORT]` | `200` once nothing is in flight to it, `504` at `timeout` (still paused) |
//! | `POST /upstreams/{name}/resume[?addr=IP:PORT]` | `200`; held requests go out, oldest first |
//!
//! `POST`s need `Authorization: Bearer <token>` when `[admin] token_file` is set (else 401),
//! and each is logged with its outcome. An unknown upstream gets 404 with the known names,
//! a wrong method 405 with `Allow`.
//!
//! Admin connections are not counted by the drain: a health checker must never hold the exit
//! back. The listener stays open until the process exits, so a load balancer can watch
//! `/readyz` turn 503 during the grace period and the drain — except after a reload's
//! handover, when the successor shares the socket and answers instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::backend::Backends;
use crate::config::parse_duration;
use crate::drain::{DrainWatch, Phase};
use crate::metrics::Metrics;
use crate::upstream::{PauseError, Upstream, Upstreams};

/// How long a pause call waits for in-flight requests when it names no `timeout`.
const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin endpoint reads and acts on.
#[derive(Debug)]
pub struct Admin {
    /// The phase, for `/readyz`.
    pub drain: DrainWatch,
    /// Rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Paused, resumed and shown at `/upstreams`; swapped by a reload.
    pub upstreams: Arc<ArcSwap<Upstreams>>,
    /// Supervised backends: restarted, and their process shown at `/upstreams`.
    pub backends: Arc<Backends>,
    /// The bearer token `POST`s must carry, if one is configured; swapped by a reload.
    pub token: Arc<ArcSwap<Option<String>>>,
}

type AdminResponse = Response<Full<Bytes>>;

/// Serves admin requests on `listener` until the process exits.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut successor = admin.drain.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // A successor shares this socket and answers probes from now on.
            _ = successor.successor_serves() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Pollers that only connect (`lameduck wait-drained`) leave this line and no other.
        debug!(client.addr = %peer, "admin connection");
        let admin = admin.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(answer(&admin, req, peer).await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                debug!(client.addr = %peer, error = %e, "admin connection ended");
            }
        });
    }
}

async fn answer(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/upstreams/") {
        let resp = upstream_action(admin, &req, rest).await;
        info!(client.addr = %peer, method = %req.method(), path = %req.uri(), status = resp.status().as_u16(), "admin request");
        return resp;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_allowed("GET, HEAD");
    }
    debug!(client.addr = %peer, path = %path, "admin request");
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // After a handover the successor serves this address: still ready, until a drain
        // signal makes this process refuse new requests too.
        "/readyz" if matches!(admin.drain.phase(), Phase::Serving | Phase::HandedOver) => {
            text(StatusCode::OK, "ready\n")
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(admin.metrics.render())));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
            resp
        }
        "/upstreams" => {
            let list: Vec<_> = admin.upstreams.load().iter().map(|u| upstream_json(admin, u)).collect();
            json_response(StatusCode::OK, &json!({ "upstreams": list }))
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz, /metrics or /upstreams\n"),
    }
}

/// An upstream's state, with its supervised `process` when it has one.
fn upstream_json(admin: &Admin, upstream: &Upstream) -> serde_json::Value {
    let mut value = json!(upstream.status());
    if let Some(process) = admin.backends.status_of(&upstream.name) {
        value["process"] = json!(process);
    }
    value
}

/// `POST /upstreams/{name}/{pause|resume|restart}`.
async fn upstream_action(admin: &Admin, req: &Request<Incoming>, rest: &str) -> AdminResponse {
    let Some((name, action)) =
        rest.split_once('/').filter(|(_, a)| matches!(*a, "pause" | "resume" | "restart"))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "not found: use POST /upstreams/{name}/pause, /resume or /restart\n",
        );
    };
    if req.method() != Method::POST {
        return not_allowed("POST");
    }
    if !authorized(admin.token.load().as_deref(), req) {
        let mut resp =
            json_response(StatusCode::UNAUTHORIZED, &json!({ "error": "missing or wrong bearer token" }));
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let upstreams = admin.upstreams.load_full();
    let Some(upstream) = upstreams.by_name(name) else {
        let body = json!({ "error": format!("unknown upstream {name:?}"), "upstreams": upstreams.names() });
        return json_response(StatusCode::NOT_FOUND, &body);
    };
    let query = match Query::parse(req.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(why) => return json_response(StatusCode::BAD_REQUEST, &json!({ "error": why })),
    };
    let done = match action {
        "restart" => return restart(admin, name).await,
        "pause" => pause(upstream, &query).await,
        _ => upstream
            .resume(query.addr.as_deref())
            .map(|()| answer_body(upstream, &query, StatusCode::OK, None)),
    };
    done.unwrap_or_else(|PauseError::UnknownAddr(addrs)| {
        let error = format!("upstream {name:?} has no address {:?}", query.addr.unwrap_or_default());
        json_response(StatusCode::NOT_FOUND, &json!({ "error": error, "addrs": addrs }))
    })
}

/// Restarts the upstream's supervised backend: 200 with the report once it serves again,
/// 502 if the new process did not come up, 409 if the upstream has no `process`.
async fn restart(admin: &Admin, name: &str) -> AdminResponse {
    match admin.backends.restart(name).await {
        Some(Ok(report)) => json_response(StatusCode::OK, &json!(report)),
        Some(Err(why)) => json_response(StatusCode::BAD_GATEWAY, &json!({ "upstream": name, "error": why })),
        None => json_response(
            StatusCode::CONFLICT,
            &json!({ "upstream": name, "error": "no [upstream.NAME.process]: lameduck does not run this backend" }),
        ),
    }
}

/// Pauses, then waits until nothing is in flight: 200, or 504 at the timeout.
async fn pause(upstream: &Arc<Upstream>, query: &Query) -> Result<AdminResponse, PauseError> {
    let started = Instant::now();
    upstream.pause(query.addr.as_deref(), query.expire)?;
    let quiet =
        upstream.wait_quiet(query.addr.as_deref(), query.timeout.unwrap_or(DEFAULT_PAUSE_TIMEOUT)).await?;
    let status = if quiet { StatusCode::OK } else { StatusCode::GATEWAY_TIMEOUT };
    Ok(answer_body(upstream, query, status, Some(started.elapsed())))
}

/// `{"upstream":…,"paused":…,"in_flight":…,"held":…,"waited_ms":…}` (and `addr` when the
/// call named one).
fn answer_body(
    upstream: &Upstream,
    query: &Query,
    status: StatusCode,
    waited: Option<Duration>,
) -> AdminResponse {
    let addr = query.addr.as_deref();
    let paused = match addr {
        None => upstream.all_paused(),
        Some(addr) => upstream.status().addrs.iter().any(|a| a.addr == addr && a.state == "paused"),
    };
    let mut body = json!({
        "upstream": &*upstream.name,
        "paused": paused,
        "in_flight": upstream.in_flight(addr).unwrap_or(0),
        "held": upstream.held(),
    });
    if let Some(waited) = waited {
        body["waited_ms"] = json!(waited.as_millis() as u64);
    }
    if let Some(addr) = addr {
        body["addr"] = json!(addr);
    }
    json_response(status, &body)
}

/// Whether `req` may act: no token configured, or `Authorization: Bearer <token>` (compared
/// in constant time, RFC 6750 §2.1).
fn authorized(token: Option<&str>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

/// The query of a pause or resume call.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// `timeout`: how long a pause waits for in-flight requests.
    timeout: Option<Duration>,
    /// `expire`: resume by itself after this long.
    expire: Option<Duration>,
    /// `addr`: one address of the upstream rather than all of it.
    addr: Option<String>,
}

impl Query {
    /// Reads `timeout`, `expire` and `addr` (percent-decoded); anything else is an error.
    fn parse(query: &str) -> Result<Query, String> {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let duration = || {
                parse_duration(&value).map_err(|why| {
                    format!("{key}={value:?} is not a duration ({why}); write one like 30s, 500ms or 10m")
                })
            };
            match &*key {
                "timeout" => parsed.timeout = Some(duration()?),
                "expire" => parsed.expire = Some(duration()?),
                "addr" => parsed.addr = Some(value.into_owned()),
                other => return Err(format!("unknown parameter {other:?}: use timeout, expire or addr")),
            }
        }
        Ok(parsed)
    }
}

fn not_allowed(allow: &'static str) -> AdminResponse {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_queries_are_read_and_unknown_keys_refused() {
        let q = Query::parse("timeout=5s&expire=10m&addr=127.0.0.1%3A9001").expect("valid");
        assert_eq!(q.timeout, Some(Duration::from_secs(5)));
        assert_eq!(q.expire, Some(Duration::from_secs(600)));
        assert_eq!(q.addr.as_deref(), Some("127.0.0.1:9001"));
        assert_eq!(Query::parse("").expect("empty is fine"), Query::default());
        assert!(Query::parse("timeout=soon").unwrap_err().contains("not a duration"));
        assert!(Query::parse("wait=1s").unwrap_err().contains("unknown parameter"));
    }
}
