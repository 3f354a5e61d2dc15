//! A tunnel between a client and an upstream after a `101`, and how it ends on drain.
//!
//! Until the drain, a tunnel relays bytes both ways ([`Pipe`]), following WebSocket frames
//! without touching them. When the daemon drains (after this tunnel's share of
//! `close_spread`), a WebSocket tunnel closes as if the backend itself had closed it:
//!
//! 1. at the next frame boundary of the client→upstream stream (a message boundary if one
//!    comes within [`MESSAGE_BOUNDARY_WAIT`]) lameduck sends the upstream a masked Close with
//!    `close_code` and `close_reason`; client data frames are dropped from then on;
//! 2. it relays the upstream's frames to the client until the upstream answers with its own
//!    Close, which it keeps;
//! 3. it sends the client a Close with `close_code` and `close_reason` — at a frame boundary,
//!    since the upstream's Close started at one — waits for the client's Close, and closes
//!    both connections.
//!
//! A pause of the tunnel's upstream (a backend about to restart) closes it the same way, at
//! once and with 1012 Service Restart, whatever the drain's close code.
//!
//! Each wait is bounded by `close_timeout`; the daemon's deadline bounds everything. A tunnel
//! whose peers already exchange Close frames, a raw (non-WebSocket) tunnel, and a stream that
//! turned out not to be WebSocket are simply relayed until they end or the deadline cuts them.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use super::close::{CloseSettings, CloseSpread};
use super::frame::close_frame;
use super::relay::{Event, Mode, Pipe};
use crate::drain::DrainWatch;
use crate::stats::Stats;

/// How long a drain waits for a message boundary before settling for a frame boundary.
pub const MESSAGE_BOUNDARY_WAIT: Duration = Duration::from_millis(500);

/// The close code of a tunnel closed because its upstream is paused for a restart: 1012
/// Service Restart (IANA WebSocket Close Code Number registry).
pub const SERVICE_RESTART: u16 = 1012;

/// The close reason sent with [`SERVICE_RESTART`].
const SERVICE_RESTART_REASON: &str = "service restart";

/// Which direction an event came from.
#[derive(Debug)]
enum Dir {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Both sides finished (on their own, or through the close handshake).
    Closed,
    /// The drain closed it: by the close handshake, or after its finished session went quiet
    /// for `close_timeout` (counted as closed, not cut).
    Handshake,
    /// A side failed or did not answer in time.
    Cut(&'static str),
}

/// How a tunnel ended, for its access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// `client_close`, `upstream_close` (a side closed it), `drain_handshake`,
    /// `restart_handshake` (lameduck closed it with its close handshake), or `cut`.
    pub how: &'static str,
    /// The close code lameduck sent both sides, if it closed the tunnel.
    pub close_code: Option<u16>,
    /// The code of the client's Close frame, if it sent one (1005: without a code).
    pub client_close_code: Option<u16>,
    /// The code of the upstream's Close frame, if it sent one.
    pub upstream_close_code: Option<u16>,
    /// Bytes relayed from the client to the upstream.
    pub bytes_in: u64,
    /// Bytes relayed from the upstream to the client.
    pub bytes_out: u64,
}

/// Both sides of an upgraded connection and the two pipes between them.
pub struct Tunnel<C, U> {
    client: C,
    upstream: U,
    up: Pipe,
    down: Pipe,
    websocket: bool,
    settings: Arc<CloseSettings>,
    /// The close code and reason this tunnel's close handshake sends: the drain's, or
    /// [`SERVICE_RESTART`]'s when its upstream is paused.
    closing: (u16, Arc<str>),
}

impl<C, U> Tunnel<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// A tunnel between `client` and `upstream`, which sent `upstream_first` before the
    /// tunnel began (bytes read past its `101`); `websocket` makes it follow frames.
    pub fn new(
        client: C,
        upstream: U,
        upstream_first: Bytes,
        websocket: bool,
        settings: Arc<CloseSettings>,
    ) -> Self {
        let mut down = Pipe::new(websocket);
        down.read_first(upstream_first);
        let closing = (settings.code, settings.reason.as_str().into());
        Tunnel { client, upstream, up: Pipe::new(websocket), down, websocket, settings, closing }
    }

    /// Relays until the tunnel ends; on drain (or a handover), closes it as the module doc
    /// describes, starting at its slot of `spread`; when `restarts` changes (its upstream is
    /// paused), closes it at once with 1012. How a drain ended it is counted in `stats`;
    /// how it ended at all is returned, for its access log line.
    pub async fn run(
        mut self,
        mut drain: DrainWatch,
        mut restarts: watch::Receiver<()>,
        spread: &CloseSpread,
        stats: &Stats,
    ) -> Ending {
        let end = tokio::select! {
            end = self.relay_until_closed() => end,
            // Boxed: an idle tunnel's task should not reserve room for the close sequence.
            _ = drain.winding_down() => Box::pin(self.close_on_drain(spread.close_delay())).await,
            Ok(()) = restarts.changed() => {
                debug!("tunnel close: upstream paused for a restart");
                self.closing = (SERVICE_RESTART, SERVICE_RESTART_REASON.into());
                Box::pin(self.close_on_drain(Duration::ZERO)).await
            }
        };
        let for_drain = drain.phase().is_winding_down();
        let ending = Ending {
            how: match end {
                End::Closed if self.down.close_seen && !self.up.close_seen => "upstream_close",
                End::Closed => "client_close",
                End::Handshake if self.closing.0 == SERVICE_RESTART => "restart_handshake",
                End::Handshake => "drain_handshake",
                End::Cut(_) => "cut",
            },
            close_code: matches!(end, End::Handshake).then_some(self.closing.0),
            client_close_code: self.up.close_code(),
            upstream_close_code: self.down.close_code(),
            bytes_in: self.up.relayed,
            bytes_out: self.down.relayed,
        };
        match end {
            End::Handshake if for_drain => stats.tunnel_closed(),
            End::Handshake => {}
            End::Closed => {}
            End::Cut(why) => {
                debug!(why, "tunnel cut");
                if for_drain {
                    stats.tunnel_cut();
                }
            }
        }
        // Best effort: a FIN rather than a reset where the peer still listens.
        let _ = tokio::time::timeout(Duration::from_millis(100), self.client.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), self.upstream.shutdown()).await;
        ending
    }

    /// The next event from either direction.
    async fn next_event(&mut self) -> (Dir, Event) {
        poll_fn(|cx| {
            if let Poll::Ready(e) = self.up.poll(cx, &mut self.client, &mut self.upstream) {
                return Poll::Ready((Dir::Up, e));
            }
            if let Poll::Ready(e) = self.down.poll(cx, &mut self.upstream, &mut self.client) {
                return Poll::Ready((Dir::Down, e));
            }
            Poll::Pending
        })
        .await
    }

    /// Plain relaying until both directions have ended.
    async fn relay_until_closed(&mut self) -> End {
        loop {
            match self.next_event().await {
                (_, Event::Failed(e)) => return io_failed(&e),
                (_, Event::Eof) if self.up.is_eof() && self.down.is_eof() => return End::Closed,
                _ => {}
            }
        }
    }

    /// During a drain, relays a tunnel that closes by itself (raw, not WebSocket after all, or
    /// already closing) until it ends; but once a side has sent its FIN, or both Close frames
    /// went by (or one side's Close is left unanswered), the tunnel is closed, not cut, after
    /// `close_timeout` in which no byte moved:
    /// its work is done, only a peer that keeps its socket open holds it (RFC 6455 §7.1.1 wants
    /// the server to close TCP after the close handshake). A half-closed tunnel still
    /// streaming the other way keeps going.
    async fn relay_while_winding_down(&mut self) -> End {
        // Set together once the tunnel is finishing: when to close, and the bytes moved by then.
        let (mut give_up, mut moved) = (None, 0);
        loop {
            if give_up.is_none() && self.is_finishing() {
                debug!("tunnel close: finishing; closing after close_timeout without traffic");
                give_up = Some(Instant::now() + self.settings.timeout);
                moved = self.relayed();
            }
            let bound = give_up.unwrap_or_else(|| Instant::now() + self.settings.timeout);
            tokio::select! {
                event = self.next_event() => match event {
                    (_, Event::Failed(e)) => return io_failed(&e),
                    (_, Event::Eof) if self.up.is_eof() && self.down.is_eof() => return End::Closed,
                    _ => {}
                },
                _ = sleep_until(bound), if give_up.is_some() => {
                    if self.relayed() != moved {
                        moved = self.relayed();
                        give_up = Some(Instant::now() + self.settings.timeout);
                        continue;
                    }
                    return End::Handshake;
                }
            }
        }
    }

    /// Bytes relayed so far, both ways.
    fn relayed(&self) -> u64 {
        self.up.relayed + self.down.relayed
    }

    /// A side has ended its stream or sent its Close.
    fn is_finishing(&self) -> bool {
        self.up.is_eof() || self.down.is_eof() || self.up.close_seen || self.down.close_seen
    }

    /// Relays until `at`; returns the end if the tunnel ended first.
    async fn relay_until(&mut self, at: Instant) -> Option<End> {
        tokio::select! {
            end = self.relay_until_closed() => Some(end),
            _ = sleep_until(at) => None,
        }
    }

    /// The close handshake, after `delay` (this tunnel's slot of the close spread).
    async fn close_on_drain(&mut self, delay: Duration) -> End {
        let frames_ok = self.websocket && self.up.follows_frames() && self.down.follows_frames();
        if !frames_ok || self.up.close_seen || self.down.close_seen {
            // Raw, not WebSocket after all, or already closing by itself: relay to the end.
            debug!(frames_ok, "tunnel close: relaying to the end");
            return self.relay_while_winding_down().await;
        }
        let start = Instant::now() + delay;
        if let Some(end) = self.relay_until(start).await {
            return end;
        }
        debug!("tunnel close: waiting for a boundary of the client's stream");
        if let Err(end) = self.close_upstream().await {
            return end;
        }
        debug!("tunnel close: close sent upstream; relaying until its answer");
        if let Err(end) = self.await_upstream_close().await {
            return end;
        }
        debug!("tunnel close: upstream answered; closing the client");
        self.close_client().await
    }

    /// Step 1: the masked Close to the upstream, at a boundary of the client's stream.
    async fn close_upstream(&mut self) -> Result<(), End> {
        let started = Instant::now();
        let prefer_until = started + MESSAGE_BOUNDARY_WAIT.min(self.settings.timeout);
        let give_up = started + self.settings.timeout;
        self.up.mode = Mode::StopAtBoundary { message: true };
        loop {
            tokio::select! {
                event = self.next_event() => match event {
                    (Dir::Up, Event::AtBoundary) => break,
                    (_, Event::Failed(e)) => return Err(io_failed(&e)),
                    (Dir::Up, Event::Eof) => return Err(End::Cut("client left mid-frame")),
                    _ => {}
                },
                _ = sleep_until(prefer_until), if self.up.mode == (Mode::StopAtBoundary { message: true }) => {
                    self.up.mode = Mode::StopAtBoundary { message: false };
                }
                _ = sleep_until(give_up) => return Err(End::Cut("client stream never reached a frame boundary")),
            }
        }
        if self.down.close_seen {
            // The backend closed on its own meanwhile; let that handshake finish.
            self.up.mode = Mode::Forward;
            return Err(self.relay_while_winding_down().await);
        }
        let mask = fastrand::u32(..).to_ne_bytes();
        self.up.inject(close_frame(self.closing.0, &self.closing.1, Some(mask)));
        self.up.mode = Mode::DiscardUntilClose;
        self.down.mode = Mode::HoldBeforeClose;
        self.wait_for(Dir::Up, give_up, |e| matches!(e, Event::Injected), "upstream not writable").await
    }

    /// Step 2: relay the upstream's frames to the client until the upstream's Close.
    async fn await_upstream_close(&mut self) -> Result<(), End> {
        let give_up = Instant::now() + self.settings.timeout;
        let answered = self
            .wait_for(Dir::Down, give_up, |e| matches!(e, Event::CloseNext), "no close from upstream")
            .await;
        if answered.is_ok() {
            self.down.mode = Mode::DiscardUntilClose;
            return self
                .wait_for(
                    Dir::Down,
                    give_up,
                    |e| matches!(e, Event::CloseDropped),
                    "upstream close cut short",
                )
                .await;
        }
        // The upstream did not answer: still close the client properly if we can.
        if self.down.at_frame_boundary() {
            self.down.mode = Mode::Discard;
            return Ok(());
        }
        answered
    }

    /// Step 3: the Close to the client, then its answer.
    async fn close_client(&mut self) -> End {
        let give_up = Instant::now() + self.settings.timeout;
        self.down.inject(close_frame(self.closing.0, &self.closing.1, None));
        if let Err(end) =
            self.wait_for(Dir::Down, give_up, |e| matches!(e, Event::Injected), "client not writable").await
        {
            return end;
        }
        if self.up.mode == Mode::Discard {
            // The client's Close already arrived (it closed while we were closing the upstream).
            return End::Handshake;
        }
        match self
            .wait_for(Dir::Up, give_up, |e| matches!(e, Event::CloseDropped), "no close from client")
            .await
        {
            Ok(()) => End::Handshake,
            Err(end) => end,
        }
    }

    /// Relays until `dir` reports an event `wanted` accepts, failing at `give_up`. End of
    /// stream and errors end the wait; other events (a client Close during step 2) are noted
    /// by the pipes' modes and otherwise ignored.
    async fn wait_for(
        &mut self,
        dir: Dir,
        give_up: Instant,
        wanted: impl Fn(&Event) -> bool,
        why: &'static str,
    ) -> Result<(), End> {
        loop {
            tokio::select! {
                (from, event) = self.next_event() => {
                    if matches!((&from, &dir), (Dir::Up, Dir::Up) | (Dir::Down, Dir::Down)) && wanted(&event) {
                        return Ok(());
                    }
                    match event {
                        Event::Failed(e) => return Err(io_failed(&e)),
                        Event::Eof if matches!(from, Dir::Down) && self.down.mode != Mode::Discard => {
                            return Err(End::Cut("upstream closed without a close frame"));
                        }
                        Event::Eof if matches!(from, Dir::Up) => return Err(End::Cut("client left")),
                        _ => {}
                    }
                }
                _ = sleep_until(give_up) => return Err(End::Cut(why)),
            }
        }
    }
}

fn io_failed(e: &std::io::Error) -> End {
    debug!(error = %e, "tunnel i/o failed");
    End::Cut("i/o error")
}
