//! Upgraded connections: WebSocket tunnels (closed with close frames on drain) and other
//! `Upgrade:` protocols (relayed as raw bytes until they end or the deadline cuts them).
//!
//! At a `101` the proxy hands both sides here. hyper's connection future ends at the upgrade,
//! so the tunnel task takes a share of the connection's guard: the connection stays counted
//! as open until the tunnel's sockets are closed.

pub mod frame;
mod relay;
pub mod tunnel;

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::config::DrainConfig;
use crate::proxy::ConnCtx;

/// True for an HTTP/1.1 request that asks to switch protocols.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// True if a `101` response switched to WebSocket.
fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Starts relaying between the client and the upstream once both upgrades complete.
pub fn spawn_tunnel(
    conn: &Arc<ConnCtx>,
    drain_config: Arc<DrainConfig>,
    response_headers: &HeaderMap,
    client: OnUpgrade,
    upstream: OnUpgrade,
) {
    let websocket = is_websocket(response_headers);
    // Before the 101 goes out: whatever the client sends after it is tunnel bytes.
    conn.activity.mark_upgraded();
    let guard = conn.drain.tunnel_guard(conn.guard.clone(), websocket);
    let drain = conn.drain.clone();
    let peer = conn.peer;
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                debug!(client.addr = %peer, error = %e, "upgrade failed");
                return;
            }
        };
        let tunnel =
            tunnel::Tunnel::new(TokioIo::new(client), TokioIo::new(upstream), websocket, drain_config);
        tunnel.run(drain, &guard).await;
        debug!(client.addr = %peer, "tunnel closed");
    });
}
