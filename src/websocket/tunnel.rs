//! Relaying an upgraded connection.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::DrainConfig;
use crate::drain::{DrainWatch, TunnelGuard};

/// Both sides of an upgraded connection.
pub struct Tunnel<C, U> {
    client: C,
    upstream: U,
    websocket: bool,
    config: Arc<DrainConfig>,
}

impl<C, U> Tunnel<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// A tunnel between `client` and `upstream`.
    pub fn new(client: C, upstream: U, websocket: bool, config: Arc<DrainConfig>) -> Self {
        Tunnel {
            client,
            upstream,
            websocket,
            config,
        }
    }

    /// Relays until both sides are done.
    pub async fn run(mut self, _drain: DrainWatch, _guard: &TunnelGuard) {
        let _ = (self.websocket, &self.config);
        let _ = tokio::io::copy_bidirectional(&mut self.client, &mut self.upstream).await;
    }
}
