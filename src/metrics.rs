//! Prometheus metrics for `/metrics`, in the OpenMetrics text format (prometheus-client),
//! read at scrape time from where the daemon already counts: the drain's open counts, the
//! event [`Stats`], the per-upstream [`TrafficBook`], the upstreams' pause state and pools,
//! and `/proc/self` for the `process_*` metrics. The request path pays for none of this
//! beyond its atomic adds.
//!
//! Names follow Prometheus conventions: counters end in `_total` (the encoder adds it to the
//! family name), durations are in seconds (`_seconds`), sizes in bytes (`_bytes`). Label
//! values are bounded: `code` is the exact status code (100–599), `method` one of the
//! standard methods or `other`, `upstream` a configured name or `none`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::drain::{DrainWatch, Phase};
use crate::stats::{ConnKind, Stats};
use crate::traffic::{ConnectFailure, DurationHistogram, TrafficBook, UpstreamTraffic};
use crate::upstream::{Upstream, Upstreams};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

/// What the metrics are read from.
#[derive(Debug)]
pub struct Sources {
    /// Open connections, requests and tunnels, and the phase.
    pub drain: DrainWatch,
    /// Drain and connection events.
    pub stats: Arc<Stats>,
    /// Per-upstream request figures.
    pub traffic: Arc<TrafficBook>,
    /// Pause state, held requests, pools (swapped by a reload).
    pub upstreams: Arc<ArcSwap<Upstreams>>,
}

impl Metrics {
    /// Metrics read from `sources` at each scrape.
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources));
        Metrics { registry }
    }

    /// The OpenMetrics text exposition of the current values (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// One metric family: its descriptor is written first, then its samples.
struct Family<'a> {
    encoder: MetricEncoder<'a>,
}

fn family<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<Family<'a>, std::fmt::Error> {
    Ok(Family { encoder: encoder.encode_descriptor(name, help, None, metric_type)? })
}

impl Family<'_> {
    fn counter(&mut self, labels: &impl EncodeLabelSet, value: u64) -> Result<(), std::fmt::Error> {
        self.encoder.encode_family(labels)?.encode_counter::<(), _, u64>(&value, None)
    }

    fn counter_f64(&mut self, labels: &impl EncodeLabelSet, value: f64) -> Result<(), std::fmt::Error> {
        self.encoder.encode_family(labels)?.encode_counter::<(), _, f64>(&value, None)
    }

    fn gauge(&mut self, labels: &impl EncodeLabelSet, value: f64) -> Result<(), std::fmt::Error> {
        self.encoder.encode_family(labels)?.encode_gauge(&value)
    }

    fn histogram(
        &mut self,
        labels: &impl EncodeLabelSet,
        histogram: &DurationHistogram,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = histogram.snapshot();
        self.encoder.encode_family(labels)?.encode_histogram::<()>(sum, count, &buckets, None)
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A metric's name, its help, and how to read its value from one source.
type Reading<S, V> = (&'static str, &'static str, fn(&S) -> V);

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_traffic(&mut encoder)?;
        self.encode_upstreams(&mut encoder)?;
        self.encode_connections(&mut encoder)?;
        self.encode_drain(&mut encoder)?;
        encode_process(&mut encoder)
    }
}

impl Sources {
    fn encode_traffic(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.traffic.all();
        let mut f = family(
            encoder,
            "lameduck_http_requests",
            "Requests answered, by upstream (none: answered by lameduck), status code, method and protocol",
            MetricType::Counter,
        )?;
        for t in &all {
            for (method, protocol, code, count) in t.request_counts() {
                let code = code.to_string();
                let labels: Labels =
                    vec![("upstream", &t.name), ("code", &code), ("method", method), ("protocol", protocol)];
                f.counter(&labels, count)?;
            }
        }
        let mut f = family(
            encoder,
            "lameduck_http_request_duration_seconds",
            "From the request reaching lameduck to the end of its response",
            MetricType::Histogram,
        )?;
        for t in &all {
            f.histogram(&vec![("upstream", &*t.name)], &t.duration)?;
        }
        let mut f = family(
            encoder,
            "lameduck_upstream_response_headers_seconds",
            "From the request reaching lameduck to the upstream's response head",
            MetricType::Histogram,
        )?;
        for t in all.iter().filter(|t| &*t.name != "none") {
            f.histogram(&vec![("upstream", &*t.name)], &t.response_headers)?;
        }
        let bytes: [Reading<UpstreamTraffic, u64>; 2] = [
            ("lameduck_http_request_bytes", "Request body bytes sent upstream", |t| load(&t.request_bytes)),
            ("lameduck_http_response_bytes", "Response body bytes sent to clients", |t| {
                load(&t.response_bytes)
            }),
        ];
        for (name, help, read) in bytes {
            let mut f = family(encoder, name, help, MetricType::Counter)?;
            for t in &all {
                f.counter(&vec![("upstream", &*t.name)], read(t))?;
            }
        }
        Ok(())
    }

    fn encode_upstreams(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let traffic: Vec<_> = self.traffic.all().into_iter().filter(|t| &*t.name != "none").collect();
        let mut f = family(
            encoder,
            "lameduck_upstream_connect_errors",
            "Failed connects to an upstream, by reason (refused, timeout, tls, other)",
            MetricType::Counter,
        )?;
        for t in &traffic {
            for why in ConnectFailure::ALL {
                f.counter(&vec![("upstream", &*t.name), ("reason", why.label())], t.connect_errors(why))?;
            }
        }
        let mut f = family(
            encoder,
            "lameduck_upstream_timeouts",
            "Requests that got no response head within the upstream's timeout (504)",
            MetricType::Counter,
        )?;
        for t in &traffic {
            f.counter(&vec![("upstream", &*t.name)], load(&t.timeouts))?;
        }
        let upstreams = self.upstreams.load();
        let gauges: [Reading<Upstream, f64>; 4] = [
            ("lameduck_upstream_requests_in_flight", "Requests and tunnels using the upstream now", |u| {
                u.in_flight(None).unwrap_or(0) as f64
            }),
            ("lameduck_upstream_pool_idle_connections", "Idle keep-alive connections pooled", |u| {
                u.idle() as f64
            }),
            ("lameduck_upstream_held", "Requests held for a paused or unreachable upstream", |u| {
                u.held() as f64
            }),
            ("lameduck_upstream_paused", "1 while requests to the upstream are held by a pause", |u| {
                f64::from(u8::from(u.all_paused()))
            }),
        ];
        for (name, help, read) in gauges {
            let mut f = family(encoder, name, help, MetricType::Gauge)?;
            for upstream in upstreams.iter() {
                f.gauge(&vec![("upstream", &*upstream.name)], read(upstream))?;
            }
        }
        Ok(())
    }

    fn encode_connections(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = self.drain.snapshot();
        let counts = self.stats.counts();
        let none: Labels = Vec::new();
        family(
            encoder,
            "lameduck_open_connections",
            "Open client connections, tunnels included",
            MetricType::Gauge,
        )?
        .gauge(&none, open.open as f64)?;
        family(
            encoder,
            "lameduck_requests_in_flight",
            "Requests whose response has not finished",
            MetricType::Gauge,
        )?
        .gauge(&none, open.in_flight as f64)?;
        family(encoder, "lameduck_tunnels", "Upgraded connections being relayed", MetricType::Gauge)?
            .gauge(&none, open.tunnels as f64)?;
        let mut f = family(
            encoder,
            "lameduck_connections",
            "Open client connections by kind (http1, http2, websocket, tunnel) and TLS",
            MetricType::Gauge,
        )?;
        for kind in ConnKind::ALL {
            for tls in [false, true] {
                let tls_label = if tls { "true" } else { "false" };
                f.gauge(
                    &vec![("kind", kind.label()), ("tls", tls_label)],
                    self.stats.open_of_kind(kind, tls) as f64,
                )?;
            }
        }
        family(encoder, "lameduck_connections_accepted", "Client connections accepted", MetricType::Counter)?
            .counter(&none, counts.connections_accepted)?;
        family(
            encoder,
            "lameduck_tls_handshake_errors",
            "TLS handshakes that failed or timed out",
            MetricType::Counter,
        )?
        .counter(&none, counts.tls_handshake_errors)?;
        Ok(())
    }

    fn encode_drain(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.stats.counts();
        let none: Labels = Vec::new();
        let counters = [
            (
                "lameduck_drain_requests_completed",
                "Requests completed after the drain signal",
                counts.completed_after_signal,
            ),
            (
                "lameduck_drain_requests_rejected",
                "Requests answered 503 while draining",
                counts.requests_rejected,
            ),
            (
                "lameduck_drain_tunnels_closed",
                "Tunnels closed with a close handshake on drain",
                counts.tunnels_closed,
            ),
            ("lameduck_drain_tunnels_cut", "Tunnels cut during the drain", counts.tunnels_cut),
            (
                "lameduck_drain_connections_cut",
                "Connections cut by the deadline or a second signal",
                counts.connections_cut,
            ),
        ];
        for (name, help, value) in counters {
            family(encoder, name, help, MetricType::Counter)?.counter(&none, value)?;
        }
        family(
            encoder,
            "lameduck_drain_deadline_timestamp_seconds",
            "When the drain's deadline cuts, in seconds since the epoch; 0 while serving",
            MetricType::Gauge,
        )?
        .gauge(&none, counts.deadline_unix_ms as f64 / 1000.0)?;
        let now = self.drain.phase();
        let mut f = family(
            encoder,
            "lameduck_phase",
            "1 for the phase the daemon is in (a state set): serving, grace, draining, handed_over",
            MetricType::Gauge,
        )?;
        for (phase, name) in [
            (Phase::Serving, "serving"),
            (Phase::Grace, "grace"),
            (Phase::Draining, "draining"),
            (Phase::HandedOver, "handed_over"),
        ] {
            f.gauge(&vec![("phase", name)], f64::from(u8::from(phase == now)))?;
        }
        let build: Labels = vec![("version", env!("CARGO_PKG_VERSION")), ("commit", crate::cli::GIT_COMMIT)];
        family(encoder, "lameduck_build", "The running build", MetricType::Info)?.encoder.encode_info(&build)
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// `process_*`, as the Prometheus client libraries name them, from `/proc/self` (Linux).
fn encode_process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Some(process) = ProcessFigures::read() else { return Ok(()) };
    let none: Labels = Vec::new();
    family(
        encoder,
        "process_cpu_seconds",
        "User and system CPU time spent, in seconds",
        MetricType::Counter,
    )?
    .counter_f64(&none, process.cpu_seconds)?;
    family(
        encoder,
        "process_start_time_seconds",
        "Start time of the process since the epoch, in seconds",
        MetricType::Gauge,
    )?
    .gauge(&none, process.start_time)?;
    family(encoder, "process_resident_memory_bytes", "Resident memory size in bytes", MetricType::Gauge)?
        .gauge(&none, process.resident_bytes)?;
    family(encoder, "process_open_fds", "Open file descriptors", MetricType::Gauge)?
        .gauge(&none, process.open_fds)?;
    family(encoder, "process_max_fds", "The limit of open file descriptors", MetricType::Gauge)?
        .gauge(&none, process.max_fds)?;
    Ok(())
}

/// What `/proc/self` says about this process.
struct ProcessFigures {
    cpu_seconds: f64,
    start_time: f64,
    resident_bytes: f64,
    open_fds: f64,
    max_fds: f64,
}

impl ProcessFigures {
    fn read() -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after "pid (comm)": state is field 3; utime 14, stime 15, starttime 22 (proc(5)).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        // Linux reports times in USER_HZ, 100 per second on every architecture since 2.6.
        let ticks = 100.0;
        let boot = boot_time()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss_kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?;
        let limit = std::fs::read_to_string("/proc/self/limits").ok()?;
        let max_fds = limit
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Some(ProcessFigures {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            start_time: boot + field(22)? / ticks,
            resident_bytes: rss_kib.parse::<f64>().ok()? * 1024.0,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
            max_fds,
        })
    }
}

/// The boot time, in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<f64>().ok()
}
