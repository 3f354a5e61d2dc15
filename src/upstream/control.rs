//! The admin side of upstreams: pause and resume (a whole upstream or one address), the
//! state `GET /upstreams` shows, and the drain deadline's release of held requests.
//!
//! Pause flags change only under the gate's lock, so a request deciding to wait ([`super::hold`])
//! and a resume waking the queue never miss each other.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::ClientConfig;
use serde::Serialize;
use tokio::time::Instant;
use tracing::info;

use super::pool::Target;
use super::Upstream;
use crate::config::UpstreamConfig;
use crate::traffic::TrafficBook;

/// Every upstream group, in config order (routes refer to them by index).
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
}

/// Why a pause or resume could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseError {
    /// The upstream has no such address; the ones it has.
    UnknownAddr(Vec<String>),
}

/// What `GET /upstreams` and the pause call show of one upstream.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub upstream: String,
    /// `serving`, or `paused` when every address is paused.
    pub state: &'static str,
    /// Requests and tunnels using it now.
    pub in_flight: usize,
    /// Requests waiting for it now (paused, or retrying to connect).
    pub held: usize,
    /// Its addresses, in config order.
    pub addrs: Vec<AddrStatus>,
}

/// One address of an [`UpstreamStatus`].
#[derive(Debug, Serialize)]
pub struct AddrStatus {
    /// `HOST:PORT` as configured.
    pub addr: String,
    /// `serving` or `paused`.
    pub state: &'static str,
    /// Requests and tunnels using it now.
    pub in_flight: usize,
    /// Idle keep-alive connections pooled.
    pub idle: usize,
    /// The last failed connect, if any: `{"error": "...", "at_unix_ms": ...}`.
    pub last_connect_error: Option<ConnectError>,
}

/// A failed connect, for [`AddrStatus`].
#[derive(Debug, Serialize)]
pub struct ConnectError {
    /// Why it failed.
    pub error: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl Upstreams {
    /// The groups, in config order.
    pub fn new(list: Vec<Upstream>) -> Self {
        Upstreams { list: list.into_iter().map(Arc::new).collect() }
    }

    /// The group at `index` (a route's upstream).
    pub fn get(&self, index: usize) -> &Upstream {
        &self.list[index]
    }

    /// The group called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.list.iter().find(|u| &*u.name == name)
    }

    /// Every group, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter()
    }

    /// The names, in config order (for a 404's list).
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|u| u.name.to_string()).collect()
    }

    /// The drain deadline: every held request is answered 503, and nothing is held from now.
    pub fn release_held(&self) {
        for upstream in &self.list {
            upstream.release();
        }
    }

    /// The groups of a reloaded config (`configs`, with `tls` client configs for https
    /// ones), and what changed. An upstream whose config is unchanged is kept as it is
    /// (pool, pause state, held requests); a changed one is built anew and takes the pause
    /// state over (its predecessor's held requests go out at its resume); a removed one has
    /// its idle connections closed and its held requests answered 503. The upstream of a
    /// supervised backend is always kept: its process table is applied by its supervisor, its
    /// other changes take a restart of lameduck.
    pub fn reloaded(
        &self,
        configs: &[UpstreamConfig],
        tls: &[Option<Arc<ClientConfig>>],
        book: &TrafficBook,
    ) -> (Upstreams, UpstreamChanges) {
        let mut changes = UpstreamChanges::default();
        let mut list = Vec::new();
        for (config, client) in configs.iter().zip(tls) {
            let old = self.by_name(&config.name);
            let upstream = match old {
                Some(old) if old.config.process.is_some() => {
                    // Its `process` table is the supervisor's to apply (a restart of the backend).
                    let without_process = |c: &UpstreamConfig| UpstreamConfig { process: None, ..c.clone() };
                    if without_process(&old.config) != without_process(config) {
                        changes.not_applied.push(format!("upstream \"{}\" (its backend is supervised; changes to it other than its process table take a restart of lameduck)", config.name));
                    }
                    old.clone()
                }
                Some(old) if old.config == *config && client.is_none() => old.clone(),
                Some(old) => {
                    changes.changed.push(config.name.clone());
                    let new = Arc::new(Upstream::new(config, client.clone(), book.upstream(&config.name)));
                    new.take_over(old);
                    new
                }
                None => {
                    changes.added.push(config.name.clone());
                    Arc::new(Upstream::new(config, client.clone(), book.upstream(&config.name)))
                }
            };
            list.push(upstream);
        }
        for old in &self.list {
            if list.iter().any(|u| u.name == old.name) {
                continue;
            }
            if old.config.process.is_some() {
                changes.not_applied.push(format!(
                    "removing upstream \"{}\" (its backend is supervised; it runs until lameduck restarts)",
                    old.name
                ));
                list.push(old.clone());
                continue;
            }
            changes.removed.push(old.name.to_string());
            old.release();
            old.targets.iter().for_each(|t| t.close_pool());
        }
        (Upstreams { list }, changes)
    }

    /// Requests held now, over every group.
    pub fn held(&self) -> usize {
        self.list.iter().map(|u| u.held()).sum()
    }

    /// `name[@addr]` for every paused upstream and address, comma-separated: what a
    /// successor needs to start paused alike (see [`Upstreams::pause_from_list`]).
    pub fn paused_list(&self) -> String {
        let mut paused = Vec::new();
        for upstream in &self.list {
            if upstream.gate.paused.load(Ordering::SeqCst) {
                paused.push(upstream.name.to_string());
            }
            for target in upstream.targets.iter().filter(|t| t.paused.load(Ordering::SeqCst)) {
                paused.push(format!("{}@{}", upstream.name, target.addr));
            }
        }
        paused.join(",")
    }

    /// Pauses what [`Upstreams::paused_list`] wrote; names this config no longer has are
    /// skipped (returned, for a log line).
    pub fn pause_from_list(&self, list: &str) -> Vec<String> {
        let mut unknown = Vec::new();
        for entry in list.split(',').filter(|e| !e.is_empty()) {
            let (name, addr) = match entry.split_once('@') {
                Some((name, addr)) => (name, Some(addr)),
                None => (entry, None),
            };
            match self.by_name(name).map(|u| u.pause(addr, None)) {
                Some(Ok(())) => {}
                _ => unknown.push(entry.to_owned()),
            }
        }
        unknown
    }
}

/// What a reload did to the upstreams, by name.
#[derive(Debug, Default)]
pub struct UpstreamChanges {
    /// New names.
    pub added: Vec<String>,
    /// Gone names (held requests answered 503, idle connections closed).
    pub removed: Vec<String>,
    /// Names whose settings changed (built anew, pause state kept).
    pub changed: Vec<String>,
    /// Changes that take a restart, in words.
    pub not_applied: Vec<String>,
}

impl Upstream {
    /// Takes over `old`'s pause state (the whole upstream, and each address both have); if
    /// requests are held there, a resume here sends them on too.
    fn take_over(&self, old: &Arc<Upstream>) {
        let mut queue = self.gate.lock();
        let whole = old.gate.paused.load(Ordering::SeqCst);
        self.gate.paused.store(whole, Ordering::SeqCst);
        let mut any = whole;
        for target in &self.targets {
            let paused = old.targets.iter().any(|t| t.addr == target.addr && t.paused.load(Ordering::SeqCst));
            target.paused.store(paused, Ordering::SeqCst);
            any |= paused;
        }
        self.gate.attention.store(any, Ordering::SeqCst);
        queue.generation += 1;
        drop(queue);
        if old.held() > 0 || old.gate.attention.load(Ordering::SeqCst) {
            *self.predecessor.lock().expect("never held across a panic") = Some(old.clone());
        }
    }

    /// Answers its held requests (and its predecessor's) 503; holds nothing from now.
    fn release(&self) {
        self.gate.release();
        if let Some(predecessor) = self.predecessor() {
            predecessor.release();
        }
    }

    /// Pauses the whole upstream (`addr` `None`) or one of its addresses: new requests skip
    /// it (or, with nothing left, are held), its idle connections close, and its tunnels are
    /// told to close with 1012. Idempotent. With `expire`, it resumes by itself after that
    /// long unless paused or resumed again meanwhile.
    ///
    /// # Errors
    /// [`PauseError::UnknownAddr`] when `addr` is not one of the upstream's addresses.
    pub fn pause(self: &Arc<Self>, addr: Option<&str>, expire: Option<Duration>) -> Result<(), PauseError> {
        let targets = self.targets_for(addr)?;
        let generation = {
            let mut queue = self.gate.lock();
            // Flags first, counts later (see `Upstream::admit`).
            self.gate.attention.store(true, Ordering::SeqCst);
            match addr {
                None => self.gate.paused.store(true, Ordering::SeqCst),
                Some(_) => targets.iter().for_each(|t| t.paused.store(true, Ordering::SeqCst)),
            }
            queue.generation += 1;
            queue.generation
        };
        for target in &targets {
            target.close_pool();
            target.signal_restart();
        }
        info!(
            upstream.name = %self.name,
            upstream.addr = addr.unwrap_or("*"),
            expire_secs = expire.map(|e| e.as_secs_f64()),
            in_flight = self.in_flight_of(&targets),
            "upstream paused"
        );
        if let Some(expire) = expire {
            let upstream = self.clone();
            let addr = addr.map(str::to_owned);
            tokio::spawn(async move {
                tokio::time::sleep(expire).await;
                if upstream.gate.lock().generation == generation {
                    info!(upstream.name = %upstream.name, upstream.addr = addr.as_deref().unwrap_or("*"), "pause expired");
                    let _ = upstream.resume(addr.as_deref());
                }
            });
        }
        Ok(())
    }

    /// Resumes the whole upstream (`addr` `None`: every address too) or one address; held
    /// requests go out, oldest first, once any address serves.
    ///
    /// # Errors
    /// [`PauseError::UnknownAddr`] when `addr` is not one of the upstream's addresses.
    pub fn resume(&self, addr: Option<&str>) -> Result<(), PauseError> {
        let held = self.held();
        self.resume_here(addr)?;
        info!(upstream.name = %self.name, upstream.addr = addr.unwrap_or("*"), held, "upstream resumed");
        Ok(())
    }

    /// [`Upstream::resume`] without its log line, and then the same for the upstream this
    /// one replaced at a reload, whose held requests go on to where they were held for.
    fn resume_here(&self, addr: Option<&str>) -> Result<(), PauseError> {
        let targets = self.targets_for(addr)?;
        let mut queue = self.gate.lock();
        if addr.is_none() {
            self.gate.paused.store(false, Ordering::SeqCst);
        }
        for target in &targets {
            target.paused.store(false, Ordering::SeqCst);
            target.reopen_pool();
        }
        let still_paused = self.gate.paused.load(Ordering::SeqCst)
            || self.targets.iter().any(|t| t.paused.load(Ordering::SeqCst));
        self.gate.attention.store(still_paused, Ordering::SeqCst);
        queue.generation += 1;
        if !self.all_paused() {
            self.gate.wake(&mut queue);
        }
        drop(queue);
        if let Some(predecessor) = self.predecessor() {
            let _ = predecessor.resume_here(addr);
        }
        Ok(())
    }

    fn predecessor(&self) -> Option<Arc<Upstream>> {
        self.predecessor.lock().expect("never held across a panic").clone()
    }

    /// Waits until nothing is in flight to the upstream (or to `addr`), polling every few
    /// milliseconds, for at most `timeout`. Returns whether it got there.
    ///
    /// # Errors
    /// [`PauseError::UnknownAddr`] when `addr` is not one of the upstream's addresses.
    pub async fn wait_quiet(&self, addr: Option<&str>, timeout: Duration) -> Result<bool, PauseError> {
        const POLL: Duration = Duration::from_millis(5);
        let targets = self.targets_for(addr)?;
        let give_up = Instant::now() + timeout;
        loop {
            if self.in_flight_of(&targets) == 0 {
                return Ok(true);
            }
            if Instant::now() >= give_up {
                return Ok(false);
            }
            tokio::time::sleep_until((Instant::now() + POLL).min(give_up)).await;
        }
    }

    /// Requests and tunnels in flight to the upstream, or to `addr`.
    ///
    /// # Errors
    /// [`PauseError::UnknownAddr`] when `addr` is not one of the upstream's addresses.
    pub fn in_flight(&self, addr: Option<&str>) -> Result<usize, PauseError> {
        Ok(self.in_flight_of(&self.targets_for(addr)?))
    }

    /// Idle keep-alive connections pooled now, over every address.
    pub fn idle(&self) -> usize {
        self.targets.iter().map(|t| t.idle_count()).sum()
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.gate.held() + self.predecessor().map_or(0, |p| p.held())
    }

    /// Whether requests to it are held: the upstream, or every address of it, is paused.
    pub fn all_paused(&self) -> bool {
        self.gate.paused.load(Ordering::SeqCst)
            || self.targets.iter().all(|t| t.paused.load(Ordering::SeqCst))
    }

    /// What `GET /upstreams` shows of it.
    pub fn status(&self) -> UpstreamStatus {
        let whole = self.gate.paused.load(Ordering::SeqCst);
        let addrs = self
            .targets
            .iter()
            .map(|t| AddrStatus {
                addr: t.addr.to_string(),
                state: state(whole || t.paused.load(Ordering::SeqCst)),
                in_flight: t.in_flight(),
                idle: t.idle_count(),
                last_connect_error: t.last_connect_error().map(|(error, at)| ConnectError {
                    error,
                    at_unix_ms: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                }),
            })
            .collect();
        UpstreamStatus {
            upstream: self.name.to_string(),
            state: state(self.all_paused()),
            in_flight: self.in_flight_of(&self.targets),
            held: self.held(),
            addrs,
        }
    }

    /// The targets `addr` names (`None`: all of them).
    fn targets_for(&self, addr: Option<&str>) -> Result<Vec<Arc<Target>>, PauseError> {
        let Some(addr) = addr else { return Ok(self.targets.clone()) };
        let found: Vec<_> = self.targets.iter().filter(|t| t.addr.to_string() == addr).cloned().collect();
        if found.is_empty() {
            return Err(PauseError::UnknownAddr(self.targets.iter().map(|t| t.addr.to_string()).collect()));
        }
        Ok(found)
    }

    fn in_flight_of(&self, targets: &[Arc<Target>]) -> usize {
        targets.iter().map(|t| t.in_flight()).sum()
    }
}

fn state(paused: bool) -> &'static str {
    if paused {
        "paused"
    } else {
        "serving"
    }
}
