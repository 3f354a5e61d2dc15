//! lameduck: a reverse proxy that gives backends without graceful shutdown a proper
//! lame-duck mode.
//!
//! It forwards HTTP/1.1, HTTP/2 and WebSocket upgrades to configured upstreams. On SIGTERM it
//! stops accepting, answers new requests with 503, closes WebSocket tunnels with close frames
//! to both sides, and exits the moment its last connection closes — or at the deadline.
//!
//! # Layout
//! - [`config`]: `proxy.toml`, validated, with errors that point at file:line:col.
//! - [`daemon`]: the lifecycle — listeners, signals, phases, the exit decision.
//! - [`drain`]: the phase watch channel and connection accounting (RAII guards).
//! - [`listener`]: binding and the accept loop.
//! - [`proxy`]: the hyper service — routing, header rewriting, upstream pools and lameduck's own
//!   HTTP/1.1 client for them, error answers.
//! - [`websocket`]: upgraded connections; the frame-boundary tracker and the tunnel relay.
//! - [`systemd`]: sd_notify, socket activation, the fd store, the watchdog.
//! - [`reexec`]: zero-downtime re-exec on SIGHUP.
//! - [`tls`]: rustls configs for TLS listeners (SNI) and https upstreams.
//! - [`admin`], [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`logging`]: text or JSON log lines.
//!
//! # Lifecycle
//! `main` loads the config (binding nothing), installs logging and calls [`daemon::run`].
//! The daemon installs its signal handlers, binds, and serves. Each accepted connection holds
//! a [`drain::ConnGuard`]; at a `101` the guard is shared with the tunnel. The first signal
//! moves the [`drain::Phase`] to `Grace` (if configured) and then `Draining`: accept loops
//! end and drop their listeners, connections wind down, and the daemon exits with status 0
//! the moment the last guard drops, or 2 when the deadline or a second signal cuts the rest.

pub mod admin;
pub mod check;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod http1;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reexec;
pub mod stats;
pub mod systemd;
pub mod tls;
pub mod upstream;
pub mod websocket;

pub use check::check;
pub use config::Config;
pub use daemon::{run, Outcome, StartupError};
