//! The response body handed to hyper, and the bookkeeping that runs when a response ends.
//!
//! A response "ends" when hyper drops its body: after the last byte was written, or early when
//! the client went away or the upstream failed mid-body. [`ResponseBody`] carries everything
//! that must happen then — the request's drain guard, the connection's idle clock, the
//! upstream connection going back to its pool (only if its body was read to the end), and the
//! access log line — so each of those happens exactly once, whatever the ending.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::io::InFlight;
use crate::drain::RequestGuard;
use crate::traffic::{RequestLabels, UpstreamTraffic};
use crate::upstream::UpstreamBody;

/// What a response body is made of.
#[derive(Debug)]
enum Inner {
    /// Streamed from an upstream connection.
    Upstream(UpstreamBody),
    /// A short body lameduck wrote itself (errors, admin); `None` once sent.
    Full(Option<Bytes>),
}

/// Facts about a request for its access log line (only gathered when the access log is on).
#[derive(Debug)]
pub struct AccessRecord {
    /// Request method.
    pub method: Method,
    /// Request target: its path (and query) are logged.
    pub uri: Uri,
    /// The client's HTTP version.
    pub version: Version,
    /// `Host` (or `:authority`), as the client sent it.
    pub host: Option<HeaderValue>,
    /// `User-Agent`, as the client sent it.
    pub user_agent: Option<HeaderValue>,
    /// The client's `X-Request-Id`, or one lameduck made (and sent upstream).
    pub request_id: HeaderValue,
    /// The request came while the daemon wound down (grace, drain or handover).
    pub drain: bool,
    /// Request body bytes sent upstream so far.
    pub bytes_in: Arc<AtomicU64>,
    /// Response status.
    pub status: StatusCode,
    /// The upstream that answered, if any.
    pub upstream: Option<Arc<str>>,
    /// The address that answered, if an upstream did.
    pub upstream_addr: Option<String>,
    /// Time to the upstream's response head.
    pub upstream_took: Option<std::time::Duration>,
    /// The client.
    pub client: SocketAddr,
    /// When the request reached the service.
    pub started: Instant,
}

impl AccessRecord {
    /// The record of `req`, taken before it is forwarded: a request without `X-Request-Id`
    /// gets one here, which goes upstream with it.
    pub fn begin<B>(req: &mut http::Request<B>, client: SocketAddr, drain: bool, started: Instant) -> Self {
        let headers = req.headers_mut();
        let request_id = match headers.get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = HeaderValue::from_str(&format!("{:016x}", fastrand::u64(..)))
                    .expect("hex digits are a valid header value");
                headers.insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let host = headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        AccessRecord {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host,
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            request_id,
            drain,
            bytes_in: Arc::default(),
            status: StatusCode::OK,
            upstream: None,
            upstream_addr: None,
            upstream_took: None,
            client,
            started,
        }
    }

    /// Logs the line for a response that ended with `bytes_out` body bytes sent.
    fn log(&self, bytes_out: u64, complete: bool) {
        let text =
            |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let millis = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: "lameduck::access",
            duration_ms = millis(self.started.elapsed()),
            http.method = %self.method,
            http.version = ?self.version,
            http.host = %text(&self.host),
            http.path = self.uri.path(),
            http.query = self.uri.query().unwrap_or(""),
            http.status = self.status.as_u16(),
            user_agent = %text(&self.user_agent),
            request_id = self.request_id.to_str().unwrap_or("-"),
            upstream.name = self.upstream.as_deref().unwrap_or("-"),
            upstream.addr = self.upstream_addr.as_deref().unwrap_or("-"),
            upstream.duration_ms = self.upstream_took.map(millis),
            client.addr = %self.client,
            "bytes.in" = self.bytes_in.load(Ordering::Relaxed),
            bytes.out = bytes_out,
            drain = self.drain,
            complete,
            "request"
        );
    }
}

/// The request id header (a de-facto standard: Heroku, nginx `$request_id`, Envoy).
const X_REQUEST_ID: &str = "x-request-id";

/// What a finished request adds to its upstream's figures (or to `none`'s).
#[derive(Debug)]
pub struct Meter {
    /// Where it is counted.
    pub traffic: &'static UpstreamTraffic,
    /// The request's method and HTTP version, as labels.
    pub labels: RequestLabels,
    /// The status the client got.
    pub status: u16,
    /// When the request reached the service.
    pub started: Instant,
}

/// Everything that happens once when the response ends.
#[derive(Debug)]
struct Finish {
    _request: RequestGuard,
    /// Keeps the request counted on its connection (for the idle timer) until now.
    _in_flight: InFlight,
    meter: Meter,
    /// Boxed: only there when access logs are on, and every response carries the field.
    record: Option<Box<AccessRecord>>,
}

/// The body of every response lameduck sends downstream.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    /// Data bytes passed on so far.
    bytes: u64,
    /// The body was read to its end (so an upstream connection may be reused).
    complete: bool,
    finish: Option<Finish>,
}

impl ResponseBody {
    /// The upstream address the body is read from, if it comes from one.
    pub fn upstream_addr(&self) -> Option<String> {
        match &self.inner {
            Inner::Upstream(body) => Some(body.addr().to_string()),
            Inner::Full(_) => None,
        }
    }

    /// A body streamed from an upstream connection.
    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody { inner: Inner::Upstream(body), bytes: 0, complete: false, finish: None }
    }

    /// A body lameduck writes itself.
    pub fn full(text: impl Into<Bytes>) -> Self {
        let text = text.into();
        let inner = Inner::Full((!text.is_empty()).then_some(text));
        ResponseBody { inner, bytes: 0, complete: false, finish: None }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::full(Bytes::new())
    }

    /// Attaches the bookkeeping that runs when this response ends: the guards drop (which
    /// counts the request as completed), `meter` is counted and `record` is logged.
    pub fn finish_with(
        &mut self,
        request: RequestGuard,
        in_flight: InFlight,
        meter: Meter,
        record: Option<Box<AccessRecord>>,
    ) {
        self.finish = Some(Finish { _request: request, _in_flight: in_flight, meter, record });
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.complete = true;
                }
            }
            Poll::Ready(None) => this.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A request body on its way upstream, its bytes counted for the request's access log line.
#[derive(Debug)]
pub struct CountedBody {
    inner: Incoming,
    logged: Arc<AtomicU64>,
}

impl CountedBody {
    /// `inner`, counted into `logged`.
    pub fn new(inner: Incoming, logged: Arc<AtomicU64>) -> Self {
        CountedBody { inner, logged }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.logged.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        let complete = self.complete || self.is_end_stream();
        let meter = &finish.meter;
        meter.traffic.count_request(meter.labels, meter.status);
        meter.traffic.duration.observe(meter.started.elapsed());
        meter.traffic.response_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        if let Some(record) = finish.record {
            record.log(self.bytes, complete);
        }
    }
}
