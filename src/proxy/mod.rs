//! The hyper service: routing, header rewriting, forwarding, and the answers lameduck gives
//! itself (404, 400, 502, 503, 504).
//!
//! [`Proxy`] is built once from the config and shared by every connection; [`conn`] serves one
//! downstream connection with it. A request is answered 503 once the daemon drains; otherwise
//! it is routed, rewritten and sent upstream, and the upstream's response is streamed back. An
//! upgrade (a `101` from the upstream) hands both connections to [`crate::websocket`].
//! Upstream connections and the HTTP/1.1 exchange on them are [`crate::upstream`]'s.

mod body;
pub mod conn;
mod error;
mod framing;
mod headers;
mod host;
mod io;
mod route;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use body::ResponseBody;
pub use error::{ProxyError, Side};
pub use io::ConnActivity;
use io::InFlight;

use crate::config::{Forwarding, RouteConfig};
use crate::drain::{ConnGuard, DrainWatch, Phase};
use crate::stats::Stats;
use crate::traffic::{RequestLabels, UpstreamTraffic};
use crate::upstream::{HoldError, UpgradeAnswer, Upstream, Upstreams};
use crate::websocket::{Handoff, Tunnels};
use body::{AccessRecord, CountedBody, Meter};
use route::Routes;

/// The proxy as configured now: swapped whole by a reload (SIGHUP). Each request loads it
/// once when it starts and finishes on that one, so a reload never changes a request midway.
pub type LiveProxy = Arc<ArcSwap<Proxy>>;

/// Everything a request needs from the config: built at start and at each reload.
#[derive(Debug)]
pub struct Proxy {
    routes: Routes,
    upstreams: Arc<Upstreams>,
    /// `Retry-After` of 503 answers, in whole seconds (RFC 9110 §10.2.3).
    retry_after: HeaderValue,
    /// Starts a tunnel at each `101`.
    tunnels: Tunnels,
    /// Requests completed and refused, and answers no upstream gave, are counted here.
    counting: Counting,
    /// Whether access log lines are wanted at all (decided once, at start-up).
    access_log: bool,
}

impl Proxy {
    /// A proxy that routes by `routes` (indices into `upstreams`), tells draining clients to
    /// come back after `retry_after` (rounded up to whole seconds), and hands upgraded
    /// connections to `tunnels`.
    pub fn new(
        routes: Vec<RouteConfig>,
        upstreams: Arc<Upstreams>,
        retry_after: Duration,
        tunnels: Tunnels,
        counting: Counting,
    ) -> Self {
        let retry_secs = retry_after.as_secs_f64().ceil() as u64;
        Proxy {
            routes: Routes::new(routes),
            upstreams,
            retry_after: HeaderValue::from(retry_secs),
            tunnels,
            counting,
            access_log: tracing::enabled!(target: "lameduck::access", tracing::Level::INFO),
        }
    }
}

/// Where a proxy counts what happened besides each upstream's own figures.
#[derive(Debug, Clone)]
pub struct Counting {
    /// Requests completed and refused (the drain's figures).
    pub stats: Arc<Stats>,
    /// Answers no upstream gave: 404, 400, a drain's 503.
    pub none: &'static UpstreamTraffic,
}

/// What a request needs to know about the connection it came on.
#[derive(Debug)]
pub struct ConnCtx {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as an `X-Forwarded-For` entry.
    pub client_ip: HeaderValue,
    /// The connection arrived on a TLS listener.
    pub tls: bool,
    /// Requests in flight and idle time, shared with the connection's I/O.
    pub activity: Arc<ConnActivity>,
    /// Keeps the connection counted; shared with a tunnel at an upgrade.
    pub guard: Arc<ConnGuard>,
    /// The phase, and registration of requests and tunnels.
    pub drain: DrainWatch,
}

/// The per-connection hyper service.
#[derive(Debug, Clone)]
pub struct ProxyService {
    proxy: LiveProxy,
    conn: Arc<ConnCtx>,
}

impl ProxyService {
    /// A service for one connection, serving each request with the proxy live when it
    /// starts.
    pub fn new(proxy: LiveProxy, conn: Arc<ConnCtx>) -> Self {
        ProxyService { proxy, conn }
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.load_full();
        let conn = self.conn.clone();
        // Counted when hyper dispatches the request, not at the future's first poll: an
        // HTTP/2 stream's task may wait to run, and a draining connection must not look idle
        // meanwhile (see `ConnServer::finish_h2`).
        let in_flight = conn.activity.request_started();
        Box::pin(async move { Ok(handle(&proxy, &conn, req, in_flight).await) })
    }
}

/// Answers one request, by forwarding it or by lameduck itself.
async fn handle(
    proxy: &Proxy,
    conn: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    mut in_flight: InFlight,
) -> Response<ResponseBody> {
    let request_guard = conn.drain.request_guard();
    let started = Instant::now();
    let ambiguous = in_flight.ambiguous;
    let labels = RequestLabels::of(req.method(), req.version());
    let h1 = req.version() < Version::HTTP_2;
    let mut record = proxy.access_log.then(|| {
        let winding_down = conn.drain.phase().is_winding_down();
        Box::new(AccessRecord::begin(&mut req, conn.peer, winding_down, started))
    });
    let bytes_in = record.as_ref().map(|r| r.bytes_in.clone());

    let outcome = if ambiguous {
        Err(ProxyError::AmbiguousFraming)
    } else if req.method() == Method::CONNECT {
        Err(ProxyError::Connect)
    } else if conn.drain.phase() == Phase::Draining {
        in_flight.refused_for_drain();
        proxy.counting.stats.request_rejected();
        Err(ProxyError::Draining)
    } else {
        forward(proxy, conn, req, started, bytes_in).await
    };

    let (mut resp, upstream, traffic) = match outcome {
        Ok((resp, upstream)) => (resp, Some(upstream.name.clone()), upstream.traffic),
        Err(e) => {
            log_error(&e, conn.peer);
            if matches!(e, ProxyError::Held { why: HoldError::Released, .. }) {
                proxy.counting.stats.held_refused();
            }
            let upstream = e.upstream().cloned();
            let by_name = upstream.as_deref().and_then(|name| proxy.upstreams.by_name(name));
            let traffic = by_name.map_or(proxy.counting.none, |u| u.traffic);
            (error_response(&e, &proxy.retry_after), upstream, traffic)
        }
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let winding_down = conn.drain.phase().is_winding_down() || conn.activity.is_retired();
    if h1 && !switching && (ambiguous || winding_down) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = resp.status();
    if let Some(record) = record.as_mut() {
        record.status = status;
        record.upstream_addr = resp.body().upstream_addr();
        record.upstream_took = record.upstream_addr.is_some().then(|| started.elapsed());
        record.upstream = upstream;
    }
    let meter = Meter { traffic, labels, status: status.as_u16(), started };
    resp.body_mut().finish_with(request_guard, in_flight, meter, record);
    resp
}

fn log_error(e: &ProxyError, client: SocketAddr) {
    match e.side() {
        Side::Upstream => match std::error::Error::source(e) {
            Some(cause) => {
                warn!(client.addr = %client, error = %e, cause = %cause, "request failed")
            }
            None => warn!(client.addr = %client, error = %e, "request failed"),
        },
        Side::Downstream | Side::Internal => {
            debug!(client.addr = %client, error = %e, "request refused")
        }
    }
}

/// A response lameduck writes itself for `e`.
fn error_response(e: &ProxyError, retry_after: &HeaderValue) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(e.body()));
    *resp.status_mut() = e.status();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, retry_after.clone());
    }
    resp
}

/// The response and the upstream that gave it.
type Forwarded<'p> = (Response<ResponseBody>, &'p Upstream);

/// Routes `req`, rewrites it for the upstream, sends it, and rewrites the answer; the time to
/// the upstream's response head (from `started`) is counted.
async fn forward<'p>(
    proxy: &'p Proxy,
    conn: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    started: Instant,
    bytes_in: Option<Arc<AtomicU64>>,
) -> Result<Forwarded<'p>, ProxyError> {
    let host = host::request_host(&req).map_err(ProxyError::BadHost)?;
    let route = proxy
        .routes
        .find(host.as_ref().and_then(|h| h.to_str().ok()), req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    let upstream = proxy.upstreams.get(route.upstream);

    if headers::wants_upgrade(&req) {
        // Only the protocols the route allows; with none left, an ordinary request.
        if let Some(asked) = headers::allowed_upgrade(req.headers(), &route.forwarding.upgrades) {
            let origins = route.forwarding.websocket_origins.as_deref();
            if !headers::origin_allowed(req.headers(), &asked, origins) {
                return Err(ProxyError::OriginRefused);
            }
            req.headers_mut().insert(header::UPGRADE, asked.clone());
            // Boxed: rare, and its future (a connection of its own) would enlarge every request's.
            return Box::pin(forward_upgrade(proxy, conn, req, host, upstream, route.forwarding, asked))
                .await;
        }
    }
    rewrite_request(&mut req, conn, host, false, route.forwarding);
    let sent = match bytes_in {
        // Only for the access log: the upstream counts its request bytes itself.
        Some(bytes_in) => upstream.send(req.map(|body| CountedBody::new(body, bytes_in))).await,
        None => upstream.send(req).await,
    };
    let mut resp = sent.map_err(|e| ProxyError::from_send(e, &upstream.name))?;
    upstream.traffic.response_headers.observe(started.elapsed());
    rewrite_response(&mut resp);
    Ok((resp.map(ResponseBody::upstream), upstream))
}

/// Forwards an upgrade request; a `101` hands both connections to a tunnel.
async fn forward_upgrade<'p>(
    proxy: &Proxy,
    conn: &Arc<ConnCtx>,
    mut req: Request<Incoming>,
    host: Option<HeaderValue>,
    upstream: &'p Upstream,
    forwarding: &Forwarding,
    asked: HeaderValue,
) -> Result<Forwarded<'p>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let path = req.uri().path().into();
    rewrite_request(&mut req, conn, host, true, forwarding);
    let answer = upstream.send_upgrade(req).await.map_err(|e| ProxyError::from_send(e, &upstream.name))?;
    let (mut resp, switched) = match answer {
        UpgradeAnswer::Switched(resp, switched) => (resp, switched),
        UpgradeAnswer::Refused(mut resp) => {
            rewrite_response(&mut resp);
            return Ok((resp.map(ResponseBody::upstream), upstream));
        }
    };
    if !headers::switched_as_asked(resp.headers(), &asked) {
        // The upstream connection goes with `switched`: closed, never tunnelled.
        let why = format!(
            "101 switched to {:?}, not to what was asked: {asked:?}",
            resp.headers().get(header::UPGRADE)
        );
        let source = std::io::Error::new(std::io::ErrorKind::InvalidData, why).into();
        return Err(ProxyError::Failed { upstream: upstream.name.clone(), source });
    }
    headers::remove_hop_by_hop(resp.headers_mut(), true);
    // Before the 101 goes out: whatever the client sends after it is tunnel bytes.
    conn.activity.mark_upgraded();
    let handoff = Handoff {
        client: client_upgrade,
        upstream: switched.io,
        upstream_first: switched.read_first,
        websocket: headers::is_websocket(resp.headers()),
        guard: conn.drain.tunnel_guard(conn.guard.clone()),
        peer: conn.peer,
        path,
        tls: conn.tls,
        restarts: switched.restarts,
    };
    proxy.tunnels.spawn(handoff, conn.drain.clone());
    Ok((resp.map(|()| ResponseBody::empty()), upstream))
}

/// Turns an upstream's (non-101) response into what the client gets.
fn rewrite_response<B>(resp: &mut Response<B>) {
    headers::remove_hop_by_hop(resp.headers_mut(), false);
    // The upstream's HTTP version is its hop's business; downstream speaks HTTP/1.1 or 2.
    *resp.version_mut() = Version::HTTP_11;
}

/// Turns a downstream request into what the upstream gets: origin-form target, HTTP/1.1,
/// `Host` set, hop-by-hop headers removed (and header names with `_`, unless the route keeps
/// them), `X-Forwarded-*` added, `Expect` answered by us.
fn rewrite_request(
    req: &mut Request<Incoming>,
    conn: &ConnCtx,
    host: Option<HeaderValue>,
    upgrade: bool,
    forwarding: &Forwarding,
) {
    // Absolute-form (or HTTP/2 `:authority`): the host moves into `Host`. Otherwise the host
    // came from `Host`, which stays as it is.
    let host_from_target = req.uri().scheme().is_some() || req.uri().authority().is_some();
    if host_from_target {
        let target = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(target);
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    // Room for the X-Forwarded-* headers: one growth instead of one per insert.
    headers.reserve(3);
    headers::strip_request_headers(headers, upgrade, forwarding.underscores_in_headers, |name| {
        debug!(client.addr = %conn.peer, header.name = %name, "request header with \"_\" in its name dropped");
    });
    // hyper already answered `100 Continue` downstream once we started reading the body.
    headers.remove(header::EXPECT);
    headers::add_forwarded(headers, &conn.client_ip, conn.tls, host.as_ref());
    if let Some(host) = host.filter(|_| host_from_target) {
        headers.insert(header::HOST, host);
    }
}
