//! Prometheus metrics for `/metrics`, read from the drain's open counts and the event
//! [`Stats`] at scrape time (so the request path pays nothing for them).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::drain::{DrainWatch, Phase};
use crate::stats::Stats;
use crate::upstream::Upstreams;

/// The registry and the gauges it exposes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    drain: DrainWatch,
    stats: Arc<Stats>,
    open: Gauge,
    in_flight: Gauge,
    tunnels: Gauge,
    phase: Gauge,
    completed_after_signal: Gauge,
    rejected: Gauge,
    tunnels_closed: Gauge,
    upstreams: Arc<ArcSwap<Upstreams>>,
    /// `lameduck_upstream_held{upstream}`.
    held: Family<Vec<(&'static str, String)>, Gauge>,
    /// `lameduck_upstream_paused{upstream}`: 1 when every address is paused.
    paused: Family<Vec<(&'static str, String)>, Gauge>,
}

impl Metrics {
    /// Metrics that read their values from `drain`, `stats` and `upstreams`.
    pub fn new(drain: DrainWatch, stats: Arc<Stats>, upstreams: Arc<ArcSwap<Upstreams>>) -> Self {
        let mut registry = Registry::with_prefix("lameduck");
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let open = gauge("open_connections", "Open client connections, tunnels included");
        let in_flight = gauge("requests_in_flight", "Requests whose response has not finished");
        let tunnels = gauge("tunnels", "Upgraded connections being relayed");
        let phase = gauge("phase", "0 serving, 1 grace, 2 draining, 3 handed over to a successor");
        let completed_after_signal =
            gauge("drain_requests_completed", "Requests completed after the drain signal");
        let rejected = gauge("drain_requests_rejected", "Requests answered 503 while draining");
        let tunnels_closed = gauge("drain_tunnels_closed", "Tunnels closed with a close handshake on drain");
        let held = Family::default();
        registry.register(
            "upstream_held",
            "Requests held for a paused or unreachable upstream",
            held.clone(),
        );
        let paused = Family::default();
        registry.register(
            "upstream_paused",
            "1 while requests to the upstream are held by a pause",
            paused.clone(),
        );
        Metrics {
            registry,
            drain,
            stats,
            open,
            in_flight,
            tunnels,
            phase,
            completed_after_signal,
            rejected,
            tunnels_closed,
            upstreams,
            held,
            paused,
        }
    }

    /// The Prometheus text exposition of the current values.
    pub fn render(&self) -> String {
        let open = self.drain.snapshot();
        let counts = self.stats.counts();
        self.open.set(open.open as i64);
        self.in_flight.set(open.in_flight as i64);
        self.tunnels.set(open.tunnels as i64);
        self.phase.set(phase_value(self.drain.phase()));
        self.completed_after_signal.set(counts.completed_after_signal as i64);
        self.rejected.set(counts.requests_rejected as i64);
        self.tunnels_closed.set(counts.tunnels_closed as i64);
        for upstream in self.upstreams.load().iter() {
            let labels = vec![("upstream", upstream.name.to_string())];
            self.held.get_or_create(&labels).set(upstream.held() as i64);
            self.paused.get_or_create(&labels).set(i64::from(upstream.all_paused()));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The `lameduck_phase` gauge's value: its HELP text fixes the numbers, whatever order the
/// phases have in code.
fn phase_value(phase: Phase) -> i64 {
    match phase {
        Phase::Serving => 0,
        Phase::Grace => 1,
        Phase::Draining => 2,
        Phase::HandedOver => 3,
    }
}
