//! lameduck: a reverse proxy that gives backends without graceful shutdown a proper
//! lame-duck mode.
//!
//! It forwards HTTP/1.1, HTTP/2 and WebSocket upgrades to configured upstreams. On SIGTERM it
//! stops accepting, answers new requests with 503, closes WebSocket tunnels with close frames
//! to both sides, and exits the moment its last connection closes — or at the deadline.
//!
//! # Layout
//! Arrows point one way only: a room never imports a room that imports it.
//! - [`config`]: `proxy.toml`, validated, with errors that point at file:line:col; it imports
//!   no other room.
//! - [`cli`]: the command line's clap definitions, `--help`'s reference (signals, exit
//!   statuses, files, admin endpoints), the man page and shell completions generated from them.
//! - [`check`]: `--check`, the config and every TLS file it names, binding nothing.
//! - [`daemon`]: the lifecycle — listeners, signals, phases, the in-place reload, the drain's
//!   named steps, the exit decision, and what systemd is told when.
//! - [`backend`]: supervised backend processes — start before ready, stop after the drain,
//!   restart, crash recovery — and the reaper that waits for every child (PID 1).
//! - [`drain`]: the leaf every connection watches — the phase and the open connections,
//!   requests and tunnels (RAII guards).
//! - [`stats`]: what has happened (requests completed and refused, tunnels closed and cut),
//!   read by metrics and the exit summary.
//! - [`traffic`]: what requests did per upstream (counts by code, durations, bytes, connect
//!   errors), written on the request path with one atomic add each, read by metrics.
//! - [`listener`]: binding or inheriting listening sockets, and the accept loop.
//! - [`proxy`]: the hyper service — routing, header rewriting, the request-framing tracker,
//!   answers of its own (400, 404, 502, 503, 504).
//! - [`upstream`]: upstream groups, their connection pools, lameduck's HTTP/1.1 client, and
//!   pause, hold and resume.
//! - [`websocket`]: upgraded connections; the frame-boundary tracker, the tunnel relay and the
//!   ordered close, with its own [`websocket::CloseSettings`].
//! - [`http1`]: HTTP/1.1 syntax more than one room reads (`Connection` tokens, lengths).
//! - [`systemd`]: sd_notify, socket activation, the fd store: sockets and strings only.
//! - [`reexec`]: the binary upgrade: zero-downtime re-exec on SIGUSR2.
//! - [`tls`]: rustls configs for TLS listeners (SNI) and https upstreams.
//! - [`admin`], [`metrics`]: `/healthz`, `/readyz`, `/metrics`, `/upstreams` with pause,
//!   resume and restart.
//! - [`logging`]: text or JSON log lines.
//! - [`probe`]: the `probe` and `wait-drained` commands for containers and Kubernetes hooks;
//!   clients of the admin address, no part of the daemon.
//!
//! # Lifecycle
//! `main` parses the command line, loads the config (binding nothing), installs logging and
//! calls [`daemon::run`]. The daemon installs its signal handlers, binds, and serves. Each
//! accepted connection holds a [`drain::ConnGuard`]; at a `101` a share of it moves into the
//! tunnel. The [`drain::Phase`] only moves forwards:
//! - `Serving` → `Grace` (if configured) → `Draining` on SIGTERM or SIGINT: accept loops end
//!   and drop their listeners, new requests get 503, connections wind down, tunnels close;
//! - `Serving` → `HandedOver` when a successor started by SIGUSR2 is ready: it owns the
//!   listeners now, so this process winds its connections down but still forwards what
//!   arrives on them; a drain signal after that moves on to `Draining`. That a successor
//!   serves is a fact of its own ([`drain::State::successor`]), which stays true after it.
//!
//! SIGHUP swaps the config in place and changes no phase. The daemon exits with status 0 the
//! moment the last guard drops, 2 when the deadline or a second signal cuts the rest, and 3
//! after a drain started because a supervised backend died with `restart = "never"`.

#![deny(unsafe_code)]

pub mod admin;
// Child processes: process groups, signals, waitpid.
#[allow(unsafe_code)]
pub mod backend;
pub mod check;
pub mod cli;
pub mod config;
#[cfg(test)]
mod cuts;
pub mod daemon;
pub mod drain;
pub mod http1;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod proxy;
// fds handed over by the parent process and the re-exec's fork: both need raw fd calls.
#[allow(unsafe_code)]
pub mod reexec;
pub mod stats;
#[allow(unsafe_code)]
pub mod systemd;
pub mod tls;
pub mod traffic;
pub mod upstream;
pub mod websocket;

pub use check::check;
pub use cli::{GIT_COMMIT, MAN_PAGE, VERSION_LONG};
pub use config::Config;
pub use daemon::{run, Outcome, StartupError};
