//! SIGHUP: the configuration, certificates and keys re-read and swapped in *inside the
//! running process*. Nothing that is open is touched: every connection and tunnel stays, and a
//! request in flight finishes on the config it started with (it holds the proxy it loaded).
//! New requests, handshakes and connections take the new one.
//!
//! What applies: routes, upstreams (an unchanged one keeps its pool, pause state and held
//! requests), `[drain]` and `[limits]` settings, certificates, added and removed listeners,
//! the admin token, a supervised backend's `process` table (the backend is restarted from it,
//! as `POST …/restart` does). What cannot change inside a running process is named in the
//! `reload ok` line with what it takes instead: `workers`, the admin address, socket-activated
//! listeners, `[log] access`, a supervised backend's other upstream settings, a process table
//! added or removed. A config that fails to load, a certificate
//! that does not, or a listener that cannot be bound changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{error, info};

use super::shutdown::{close_listeners, Running};
use super::{build_proxy, close_settings, status, Serving};
use crate::config::{AdminConfig, Config};
use crate::listener::{self, ListenerLive, Opened, Stop};
use crate::logging;
use crate::proxy::conn::ConnServer;
use crate::tls::TlsMaterial;

/// What a reload changed, for its log line.
#[derive(Debug, Default)]
struct Changes {
    upstreams_added: Vec<String>,
    upstreams_removed: Vec<String>,
    upstreams_changed: Vec<String>,
    listeners_added: Vec<SocketAddr>,
    listeners_removed: Vec<SocketAddr>,
    /// TLS listeners whose certificates were read afresh.
    certificates: usize,
    /// Supervised backends restarted because their process table changed.
    backends_restarted: Vec<String>,
    /// What did not apply, and what it takes instead.
    not_applied: Vec<String>,
}

/// Reloads in place; logs `reload ok` (with what changed) or `reload failed` (why, with
/// file:line:col), and tells systemd `RELOADING=1` then `READY=1` either way.
pub(super) async fn reload(running: &mut Running) {
    running.notifier.reloading("reloading the configuration");
    match apply(running).await {
        Ok(changes) => info!(
            upstreams.added = %changes.upstreams_added.join(","),
            upstreams.removed = %changes.upstreams_removed.join(","),
            upstreams.changed = %changes.upstreams_changed.join(","),
            listeners.added = %join(&changes.listeners_added),
            listeners.removed = %join(&changes.listeners_removed),
            certificates = changes.certificates,
            backends.restarted = %changes.backends_restarted.join(","),
            not_applied = %changes.not_applied.join("; "),
            "reload ok"
        ),
        Err(why) => error!(error = %why, changed = "nothing", "reload failed"),
    }
    running.notifier.ready(&status::serving_status(&running.drain.snapshot()));
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Everything that can fail first (config, certificates, token, new sockets), then the swaps,
/// which cannot.
async fn apply(running: &mut Running) -> Result<Changes, String> {
    let config = Config::load(&running.config.path).map_err(|e| e.to_string())?;
    let tls = TlsMaterial::load(&config).map_err(|problems| format!("tls: {}", problems.join("; ")))?;
    let token = config.admin.as_ref().map(AdminConfig::read_token).transpose()?.flatten();
    let mut changes = Changes { not_applied: not_applied(&running.config, &config), ..Changes::default() };
    let added = bind_added(running, &config)?;

    let (upstreams, upstream_changes) =
        running.upstreams.load().reloaded(&config.upstreams, &tls.upstreams, &running.traffic);
    let upstreams = Arc::new(upstreams);
    changes.upstreams_added = upstream_changes.added;
    changes.upstreams_removed = upstream_changes.removed;
    changes.upstreams_changed = upstream_changes.changed;
    changes.not_applied.extend(upstream_changes.not_applied);
    running.upstreams.store(upstreams.clone());
    for config in config.upstreams.iter() {
        let Some(process) = &config.process else { continue };
        if !running.backends.supervises(&config.name) {
            changes.not_applied.push(format!(
                "[upstream.{}.process] (a backend lameduck did not start with takes a restart of lameduck)",
                config.name
            ));
        } else if running.backends.reconfigure(&config.name, process) {
            changes.backends_restarted.push(config.name.clone());
        }
    }
    running.tunnels.update(close_settings(&config.drain));
    running.proxy.store(Arc::new(build_proxy(
        &config,
        upstreams,
        &running.tunnels,
        &running.stats,
        &running.traffic,
    )));
    let server = Arc::new(ConnServer::new(running.proxy.clone(), &config.limits, config.drain.idle_linger));

    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for serving in std::mem::take(&mut running.listeners) {
        let entry = config.listeners.iter().position(|l| l.addr == serving.configured);
        match entry {
            Some(index) => {
                let tls = tls.listeners[index].clone();
                changes.certificates += usize::from(tls.is_some());
                serving.live.store(Arc::new(ListenerLive { server: server.clone(), tls }));
                kept.push((index, serving));
            }
            None if serving.from_socket_unit => {
                changes.not_applied.push(format!(
                    "removing listener {} (its socket is systemd's: change the socket unit and restart)",
                    serving.configured
                ));
                serving.live.store(Arc::new(ListenerLive {
                    server: server.clone(),
                    tls: serving.live.load().tls.clone(),
                }));
                kept.push((usize::MAX, serving));
            }
            None => {
                changes.listeners_removed.push(serving.configured);
                running.notifier.unstore_listener(serving.configured);
                removed.push(serving);
            }
        }
    }
    // Connections already accepted on a removed listener wind down as in a drain: their
    // requests are still forwarded, with `Connection: close` or after GOAWAY.
    for serving in &removed {
        serving.retire.send_replace(true);
    }
    close_listeners(removed, Stop::Close).await;
    for (index, opened) in added {
        let entry = &config.listeners[index];
        let live = ListenerLive { server: server.clone(), tls: tls.listeners[index].clone() };
        let serving =
            Serving::start(entry.addr, opened, live, &running.drain, &running.slots, &running.stats)
                .map_err(|e| format!("listener {}: {e}", entry.addr))?;
        changes.listeners_added.push(entry.addr);
        kept.push((index, serving));
    }
    kept.sort_by_key(|(index, _)| *index);
    running.listeners = kept.into_iter().map(|(_, serving)| serving).collect();

    resize_slots(running, config.limits.max_connections);
    // logrotate's postrotate sends SIGHUP: lines go to the file now at the path.
    match logging::access::reopen() {
        Ok(Some(path)) => info!(path = %path.display(), "access log reopened"),
        Ok(None) => {}
        Err(why) => error!(error = %why, "access log not reopened; lines go to the old file"),
    }
    running.admin_token.store(Arc::new(token));
    running.config = config;
    Ok(changes)
}

/// Binds the listeners `config` adds (by index into its `[[listen]]`); none is kept if one
/// fails.
fn bind_added(running: &Running, config: &Config) -> Result<Vec<(usize, Opened)>, String> {
    let mut added = Vec::new();
    for (index, entry) in config.listeners.iter().enumerate() {
        if running.listeners.iter().any(|l| l.configured == entry.addr) {
            continue;
        }
        let opened = listener::open_new(entry.addr, running.notifier).map_err(|e| {
            format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default())
        })?;
        added.push((index, opened));
    }
    Ok(added)
}

/// `max_connections` changed: slots free now grow or shrink (those in use are given back
/// as their connections close; a shrink takes effect as far as slots are free).
fn resize_slots(running: &mut Running, max: usize) {
    let old = running.config.limits.max_connections;
    if max > old {
        running.slots.add_permits(max - old);
    } else if max < old {
        running.slots.forget_permits(old - max);
    }
}

/// What the new config changes that a running process cannot, and what it takes instead.
fn not_applied(old: &Config, new: &Config) -> Vec<String> {
    let mut not_applied = Vec::new();
    if old.workers != new.workers {
        not_applied.push(format!("workers {} -> {} (takes SIGUSR2 or a restart)", old.workers, new.workers));
    }
    if old.admin.as_ref().map(|a| a.addr) != new.admin.as_ref().map(|a| a.addr) {
        not_applied.push("[admin] addr (takes SIGUSR2 or a restart)".to_owned());
    }
    if old.log != new.log {
        not_applied.push("[log] access (takes SIGUSR2 or a restart)".to_owned());
    }
    not_applied
}
