//! Upgraded connections: WebSocket tunnels (closed with close frames on drain) and other
//! `Upgrade:` protocols (relayed as raw bytes until they end or the deadline cuts them).
//!
//! At a `101` the proxy hands both sides to [`Tunnels::spawn`] with a [`TunnelGuard`] it took
//! from the drain: hyper's connection future ends at the upgrade, so the tunnel task keeps a
//! share of the connection's guard, and the connection stays counted as open until the
//! tunnel's sockets are closed. This room knows bytes, frames and the drain's phase; it knows
//! nothing of HTTP requests or of the proxy's connection bookkeeping.

mod close;
pub mod frame;
mod relay;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info};

pub use close::{CloseSettings, CloseSpread, SpreadMember};

use crate::drain::{DrainWatch, TunnelGuard};
use crate::stats::{ConnKind, Stats};

/// Starts tunnels; holds what every tunnel shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tunnels {
    /// Swapped by a reload; each tunnel keeps the settings it started with.
    settings: Arc<ArcSwap<CloseSettings>>,
    spread: Arc<CloseSpread>,
    stats: Arc<Stats>,
}

/// One tunnel to start: both sides and what the proxy knows of them.
#[derive(Debug)]
pub struct Handoff<U> {
    /// The client's side, available once hyper has sent the `101`.
    pub client: OnUpgrade,
    /// The upstream's side, already switched.
    pub upstream: U,
    /// What the upstream sent right after its `101` (read with the head): relayed first.
    pub upstream_first: Bytes,
    /// The `101` switched to WebSocket (else the bytes are relayed raw).
    pub websocket: bool,
    /// Keeps the client connection counted open while the tunnel runs.
    pub guard: TunnelGuard,
    /// The client's address, for log lines.
    pub peer: SocketAddr,
    /// The request's path, for the tunnel's access log line.
    pub path: Box<str>,
    /// The client connection is TLS (a label of the tunnel's count).
    pub tls: bool,
    /// Changes when the upstream is paused for a restart: the tunnel then closes with 1012
    /// Service Restart (RFC 6455 §7.4, IANA registry), so its client reconnects once the
    /// backend is back, rather than losing the connection when it dies.
    pub restarts: watch::Receiver<()>,
}

impl Tunnels {
    /// Tunnels that close with `settings`, counting their endings in `stats`.
    pub fn new(settings: CloseSettings, stats: Arc<Stats>) -> Self {
        let spread = Arc::new(CloseSpread::new(settings.spread));
        Tunnels { settings: Arc::new(ArcSwap::from_pointee(settings)), spread, stats }
    }

    /// New close settings for tunnels that start from now on (a reload).
    pub fn update(&self, settings: CloseSettings) {
        self.spread.set_window(settings.spread);
        self.settings.store(Arc::new(settings));
    }

    /// Fits the close schedule into `left` (the time until the deadline): the spread shrinks
    /// so that the last tunnel still has two `close_timeout`s (one per side) before the cut.
    pub fn fit_closes_within(&self, left: Duration) {
        self.spread.fit_within(left.saturating_sub(2 * self.settings.load().timeout));
    }

    /// Relays between both sides of `handoff` on a task of its own until the tunnel ends
    /// (or the drain closes it, see [`tunnel`]).
    pub fn spawn<U>(&self, handoff: Handoff<U>, drain: DrainWatch)
    where
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Handoff { client, upstream, upstream_first, websocket, guard, peer, path, tls, restarts } =
            handoff;
        let kind = if websocket { ConnKind::WebSocket } else { ConnKind::Tunnel };
        self.stats.conn_kind_open(kind, tls);
        let member = websocket.then(|| self.spread.join());
        let tunnels = self.clone();
        tokio::spawn(async move {
            let client = match client.await {
                Ok(client) => client,
                Err(e) => {
                    tunnels.stats.conn_kind_closed(kind, tls);
                    return debug!(client.addr = %peer, error = %e, "upgrade failed");
                }
            };
            let settings = tunnels.settings.load_full();
            let tunnel =
                tunnel::Tunnel::new(TokioIo::new(client), upstream, upstream_first, websocket, settings);
            let started = tokio::time::Instant::now();
            let ending = tunnel.run(drain, restarts, &tunnels.spread, &tunnels.stats).await;
            drop((member, guard));
            tunnels.stats.conn_kind_closed(kind, tls);
            // The second access line of an upgraded request: the first was its 101.
            info!(
                target: "lameduck::access",
                duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                http.path = &*path,
                client.addr = %peer,
                end = ending.how,
                close_code = ending.close_code,
                close_code.client = ending.client_close_code,
                close_code.upstream = ending.upstream_close_code,
                "bytes.in" = ending.bytes_in,
                "bytes.out" = ending.bytes_out,
                websocket,
                "tunnel ended"
            );
        });
    }
}
