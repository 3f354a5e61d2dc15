//! The admin endpoint: `/healthz` (the process runs), `/readyz` (it takes new traffic), and
//! `/metrics` (Prometheus text).
//!
//! Admin connections are not counted by the drain: a health checker must never hold the exit
//! back. The listener stays open until the process exits, so a load balancer can watch
//! `/readyz` turn 503 during the grace period and the drain — except after a reload's
//! handover, when the successor shares the socket and answers instead.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::debug;

use crate::drain::{DrainWatch, Phase};
use crate::metrics::Metrics;

/// Serves admin requests on `listener` until the process exits.
pub async fn serve(listener: TcpListener, drain: DrainWatch, metrics: Arc<Metrics>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut successor = drain.clone();
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let drain = drain.clone();
        let metrics = metrics.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answer = answer(&req, &drain, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                debug!(client.addr = %peer, error = %e, "admin connection ended");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, drain: &DrainWatch, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // After a handover the successor serves this address: still ready, until a drain
        // signal makes this process refuse new requests too.
        "/readyz" if matches!(drain.phase(), Phase::Serving | Phase::HandedOver) => {
            text(StatusCode::OK, "ready\n")
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
