//! Prometheus metrics for `/metrics`, read from the drain's counters at scrape time (so the
//! request path pays nothing for them).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::drain::DrainWatch;

/// The registry and the gauges it exposes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    drain: DrainWatch,
    open: Gauge,
    in_flight: Gauge,
    tunnels: Gauge,
    phase: Gauge,
    completed_after_signal: Gauge,
    rejected: Gauge,
    tunnels_closed: Gauge,
}

impl Metrics {
    /// Metrics that read their values from `drain`.
    pub fn new(drain: DrainWatch) -> Self {
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
        Metrics {
            registry,
            drain,
            open,
            in_flight,
            tunnels,
            phase,
            completed_after_signal,
            rejected,
            tunnels_closed,
        }
    }

    /// The Prometheus text exposition of the current values.
    pub fn render(&self) -> String {
        let s = self.drain.snapshot();
        self.open.set(s.open as i64);
        self.in_flight.set(s.in_flight as i64);
        self.tunnels.set(s.tunnels as i64);
        self.phase.set(self.drain.phase() as i64);
        self.completed_after_signal.set(s.completed_after_signal as i64);
        self.rejected.set(s.rejected as i64);
        self.tunnels_closed.set(s.tunnels_closed as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
