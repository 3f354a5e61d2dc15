//! lameduck's integration tests: one binary (it links once), a module per
//! concern, all sharing [`harness`]. Every test starts the real daemon with a
//! config in a temp dir, real hyper backends and real clients.

mod backend;
mod bad_input;
mod cli;
mod deploy;
mod drain;
mod harness;
mod hold;
mod kubernetes;
mod logs;
mod metrics;
mod pause;
mod proxy;
mod readme;
mod reload;
mod systemd;
mod tls;
mod websocket;
