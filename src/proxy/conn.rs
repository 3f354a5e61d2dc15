//! Serving one downstream connection, and winding it down when the daemon drains.
//!
//! HTTP/2 connections get GOAWAY the moment draining starts; their open streams complete, and
//! one left idle by a client that no longer answers (the final GOAWAY waits for its PING
//! acknowledgement) is closed after `idle_linger`.
//! Idle HTTP/1.1 connections are not closed at that moment — a request may already be on the
//! wire, and closing would reset it (hyper issue #3792) — but only after `idle_linger`; a
//! request that arrives meanwhile is answered 503 with `Connection: close`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::io::{ConnActivity, ConnIo};
use super::{ConnCtx, LiveProxy, ProxyService};
use crate::config::Limits;
use crate::drain::{ConnGuard, DrainWatch};
use tokio::sync::watch;

/// How downstream connections are served; built once.
#[derive(Debug)]
pub struct ConnServer {
    builder: auto::Builder<TokioExecutor>,
    proxy: LiveProxy,
    limits: Limits,
    idle_linger: Duration,
}

impl ConnServer {
    /// A server for the live `proxy` (each request takes the one current when it starts)
    /// with the connection limits of the config.
    pub fn new(proxy: LiveProxy, limits: &Limits, idle_linger: Duration) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes)
            .writev(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(256);
        ConnServer { builder, proxy, limits: limits.clone(), idle_linger }
    }

    /// Serves `io` until the client or the drain closes it. `guard` counts the connection
    /// open; it is shared with a tunnel if the connection is upgraded. When `retired` turns
    /// true (a reload removed the listener), the connection winds down as in a drain, while
    /// its requests are still forwarded.
    pub async fn serve<I>(
        &self,
        io: I,
        ctx: ConnInfo,
        guard: Arc<ConnGuard>,
        mut drain: DrainWatch,
        mut retired: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(ConnActivity::new(ctx.h2, ctx.tls, self.proxy.load().counting.stats.clone()));
        let io = ConnIo::new(
            io,
            activity.clone(),
            self.limits.header_read_timeout,
            self.limits.idle_timeout,
            !ctx.tls,
        );
        let conn_ctx = Arc::new(ConnCtx {
            peer: ctx.peer,
            client_ip: super::headers::client_ip_value(ctx.peer.ip()),
            tls: ctx.tls,
            activity: activity.clone(),
            guard,
            drain: drain.clone(),
        });
        let service = ProxyService::new(self.proxy.clone(), conn_ctx);
        // On the heap: hyper's connection state is large, and a future holding it inline is
        // copied whole when the task is spawned.
        let mut conn = Box::pin(self.builder.serve_connection_with_upgrades(TokioIo::new(io), service));

        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = winding_down(&mut drain, &mut retired, &activity) => {
                // Keep polling after graceful_shutdown: in-flight work finishes only if polled.
                if activity.is_h2() {
                    conn.as_mut().graceful_shutdown();
                    return self.finish_h2(conn, &activity).await;
                }
                tokio::select! {
                    result = conn.as_mut() => return log_end(result),
                    _ = tokio::time::sleep(self.idle_linger) => {}
                }
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        log_end(result);
    }

    /// Drives an HTTP/2 connection after its first GOAWAY. hyper sends the final GOAWAY only
    /// once the client acknowledges a PING, so a client gone silent would hold the drain until
    /// its deadline: once the connection has had no stream open for `idle_linger`, it is
    /// closed (a closed idle connection, not a cut one).
    async fn finish_h2<C>(&self, mut conn: Pin<Box<C>>, activity: &ConnActivity)
    where
        C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    {
        // Not a busy loop while a stream runs, even with `idle_linger = "0s"`.
        let pause = self.idle_linger.max(Duration::from_millis(50));
        loop {
            tokio::select! {
                result = conn.as_mut() => return log_end(result),
                _ = tokio::time::sleep(pause) => {
                    // Idle for a whole pause: the last response's frames have had time to be
                    // flushed, and a stream dispatched meanwhile would be counted in flight.
                    if activity.idle_since().is_some_and(|since| since.elapsed() >= pause) {
                        debug!("http/2 connection idle after GOAWAY; closing it");
                        return;
                    }
                }
            }
        }
    }
}

/// What the listener knows about a new connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Arrived on a TLS listener.
    pub tls: bool,
    /// ALPN chose HTTP/2.
    pub h2: bool,
}

/// Resolves when the daemon winds down, or when the connection's listener is retired.
async fn winding_down(drain: &mut DrainWatch, retired: &mut watch::Receiver<bool>, activity: &ConnActivity) {
    tokio::select! {
        biased;
        _ = drain.winding_down() => {}
        () = crate::drain::wait_for_cheaply(retired, |retired| *retired) => activity.retire(),
    }
}

fn log_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}
