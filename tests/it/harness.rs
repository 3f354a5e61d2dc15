//! The harness every integration test shares: the real `lameduck` binary
//! ([`Lameduck`]), scriptable hyper backends ([`Backend`]) and clients — a raw
//! socket ([`RawConn`]) for exact wire bytes, a hyper HTTP/1.1 client on one
//! keep-alive connection ([`H1Client`]) and an h2c prior-knowledge client
//! ([`H2Client`], optionally behind a frame tap that reports GOAWAY) — and the demo
//! backend (`examples/legacy_backend.rs`) as a real process, with load to run against it
//! ([`BackendProcess`], [`Load`]).
//!
//! Rules the helpers keep so the tests can: every wait is bounded and panics
//! (with the daemon's log) when the bound passes; ports always come from
//! `127.0.0.1:0`; "the backend has the request" is an event
//! ([`Backend::arrived`]), never a sleep.

#![allow(dead_code)] // not every test module uses every helper

mod backend;
mod body;
mod client;
mod daemon;
mod demo;
mod raw;

// The harness's API: not every test module names every type.
#[allow(unused_imports)]
pub use backend::{Backend, Blackhole, DeadPort, Recorded, Req};
#[allow(unused_imports)]
pub use body::{
    dripping_body, dying_body, empty, full, gate, pattern_body, pattern_chunk, Body, BoxError, Gate, Opener,
    PatternCheck,
};
#[allow(unused_imports)]
pub use client::{fetch, joined, spawn_get, tapped_h2, Fetched, FrameTap, H1Client, H2Client};
#[allow(unused_imports)]
pub use daemon::{binary, field_f64, field_str, is_access_line, message, Finished, Lameduck, Logs, Starting};
#[allow(unused_imports)]
pub use daemon::{without_priority, Logging, StderrTo};
#[allow(unused_imports)]
pub use demo::{
    admin, backend_binary, num, poll, spawn_requests, upstream_where, Answer, BackendProcess, Exchange, Load,
    Progress, Tally, CLIENTS, REQUEST_BOUND,
};
#[allow(unused_imports)]
pub use raw::{raw_get, raw_request, RawConn, RawResponse};

use std::net::SocketAddr;
use std::time::Duration;

/// Bound for anything that should happen "promptly" (a local round trip, a log line).
pub const PROMPT: Duration = Duration::from_secs(5);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `[drain]` section used when a test does not care about draining.
pub const DRAIN_30S: &str = "[drain]\ndeadline = \"30s\"\n";

/// `["127.0.0.1:1", "127.0.0.1:2"]` as TOML.
pub fn toml_addrs(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// One listener on `127.0.0.1:0`, upstream `app` over `addrs` (plus
/// `upstream_extra` lines), one catch-all route to it, then `tail` verbatim
/// (`[drain]`, `[admin]`, `[limits]` …).
pub fn config(addrs: &[SocketAddr], upstream_extra: &str, tail: &str) -> String {
    format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\n\n\
         [upstream.app]\naddrs = {}\n{upstream_extra}\n\n\
         [[route]]\nupstream = \"app\"\n\n{tail}",
        toml_addrs(addrs)
    )
}

/// The plainest config: everything goes to `backend`, a 30 s deadline.
pub fn config_for(backend: SocketAddr) -> String {
    config(&[backend], "", DRAIN_30S)
}
