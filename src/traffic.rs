//! What requests did, per upstream: how many, by method, protocol and status code; how long
//! they took; how many bytes went each way; how connecting to the upstream failed.
//!
//! The proxy and the upstream client write here on the request path, so every write is one
//! relaxed atomic add (a histogram observation is one bucket increment and one sum add, no
//! lock); `/metrics` reads it at scrape time. An upstream's figures live in the
//! [`TrafficBook`] under its name for the life of the process, so a reload that rebuilds the
//! upstream keeps counting on (Prometheus counters must never go back); being never freed,
//! they are handed out as `&'static`, which spares every request a reference count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Version};

/// The `method` label values: the methods of RFC 9110 §9 and PATCH (RFC 5789), then `other`,
/// so that a client cannot grow the label set.
pub const METHODS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other"];

/// The `protocol` label values: the client's HTTP version.
pub const PROTOCOLS: [&str; 2] = ["http/1.1", "http/2"];

/// Status codes counted one by one: 100 to 599 (RFC 9110 §15).
const CODES: std::ops::RangeInclusive<u16> = 100..=599;

/// Upper bounds of the duration buckets, in seconds: from 0.5 ms (a pooled local upstream) to
/// 60 s (the default upstream `timeout`).
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Why connecting to an upstream failed, as the `reason` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The address refused the connection (nothing listens).
    Refused,
    /// `connect_timeout` passed.
    Timeout,
    /// The TLS handshake with an https upstream failed.
    Tls,
    /// Anything else (unreachable, name resolution).
    Other,
}

impl ConnectFailure {
    /// Every reason, in label order.
    pub const ALL: [ConnectFailure; 4] =
        [ConnectFailure::Refused, ConnectFailure::Timeout, ConnectFailure::Tls, ConnectFailure::Other];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Tls => "tls",
            ConnectFailure::Other => "other",
        }
    }
}

/// A histogram of durations: one atomic bucket count per bound (and +Inf), and the sum in
/// microseconds.
#[derive(Debug)]
pub struct DurationHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl DurationHistogram {
    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = DURATION_BUCKETS.partition_point(|bound| *bound < secs);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's own count with its upper bound (the
    /// last one `f64::MAX`, for +Inf), as prometheus-client's encoder wants them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let bounds = DURATION_BUCKETS.iter().copied().chain(std::iter::once(f64::MAX));
        let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, counts.iter().sum(), buckets)
    }
}

/// The figures of one upstream (or of the requests lameduck answered itself).
#[derive(Debug)]
pub struct UpstreamTraffic {
    /// The upstream's name; `none` for answers no upstream gave (404, 400, a drain's 503).
    pub name: Arc<str>,
    /// Requests by method × protocol × status code.
    requests: Box<[AtomicU64]>,
    /// From the request reaching the proxy to the end of its response.
    pub duration: DurationHistogram,
    /// From the request reaching the proxy to the upstream's response head.
    pub response_headers: DurationHistogram,
    /// Request body bytes sent upstream.
    pub request_bytes: AtomicU64,
    /// Response body bytes sent to clients.
    pub response_bytes: AtomicU64,
    /// Failed connects, by [`ConnectFailure`].
    connect_errors: [AtomicU64; 4],
    /// Requests that got no response head within `timeout` (504).
    pub timeouts: AtomicU64,
}

impl UpstreamTraffic {
    /// Figures of their own, never freed (one per upstream name a process ever has).
    pub fn leaked(name: &str) -> &'static UpstreamTraffic {
        Box::leak(Box::new(UpstreamTraffic::new(name.into())))
    }

    fn new(name: Arc<str>) -> Self {
        let cells = METHODS.len() * PROTOCOLS.len() * CODES.len();
        UpstreamTraffic {
            name,
            requests: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            duration: DurationHistogram::default(),
            response_headers: DurationHistogram::default(),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            connect_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Counts a finished request with `labels`; a status outside 100–599 is not counted.
    pub fn count_request(&self, labels: RequestLabels, status: u16) {
        if let Some(cell) = cell_index(usize::from(labels.method), usize::from(labels.protocol), status) {
            self.requests[cell].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failed connect.
    pub fn count_connect_error(&self, why: ConnectFailure) {
        self.connect_errors[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed connects for `why`.
    pub fn connect_errors(&self, why: ConnectFailure) -> u64 {
        self.connect_errors[why as usize].load(Ordering::Relaxed)
    }

    /// Every non-zero request count: (method, protocol, status code, count).
    pub fn request_counts(&self) -> Vec<(&'static str, &'static str, u16, u64)> {
        let per_method = PROTOCOLS.len() * CODES.len();
        self.requests
            .iter()
            .enumerate()
            .filter_map(|(cell, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| {
                    let (method, rest) = (cell / per_method, cell % per_method);
                    let (protocol, code) = (rest / CODES.len(), rest % CODES.len());
                    (METHODS[method], PROTOCOLS[protocol], *CODES.start() + code as u16, count)
                })
            })
            .collect()
    }
}

/// A request's `method` and `protocol` labels, as indexes into [`METHODS`] and
/// [`PROTOCOLS`]: two bytes to carry until the response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLabels {
    method: u8,
    protocol: u8,
}

impl RequestLabels {
    /// The labels of a request with `method` over `version`.
    pub fn of(method: &Method, version: Version) -> Self {
        RequestLabels { method: method_index(method) as u8, protocol: protocol_index(version) as u8 }
    }
}

fn cell_index(method: usize, protocol: usize, status: u16) -> Option<usize> {
    CODES
        .contains(&status)
        .then(|| (method * PROTOCOLS.len() + protocol) * CODES.len() + usize::from(status - CODES.start()))
}

/// The `method` label's index for `method` (comparing the standard methods is comparing an
/// enum tag, not a string).
fn method_index(method: &Method) -> usize {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    STANDARD.iter().position(|m| m == method).unwrap_or(METHODS.len() - 1)
}

fn protocol_index(version: Version) -> usize {
    usize::from(version >= Version::HTTP_2)
}

/// Every upstream's figures by name, kept for the life of the process.
#[derive(Debug)]
pub struct TrafficBook {
    upstreams: Mutex<Vec<&'static UpstreamTraffic>>,
    none: &'static UpstreamTraffic,
}

impl Default for TrafficBook {
    fn default() -> Self {
        TrafficBook { upstreams: Mutex::default(), none: UpstreamTraffic::leaked("none") }
    }
}

impl TrafficBook {
    /// The figures of the upstream called `name`, created at its first use.
    pub fn upstream(&self, name: &str) -> &'static UpstreamTraffic {
        let mut upstreams = self.upstreams.lock().expect("never held across a panic");
        if let Some(found) = upstreams.iter().find(|t| &*t.name == name) {
            return found;
        }
        let traffic = UpstreamTraffic::leaked(name);
        upstreams.push(traffic);
        traffic
    }

    /// The figures of answers lameduck gave itself.
    pub fn none(&self) -> &'static UpstreamTraffic {
        self.none
    }

    /// Every upstream's figures, then `none`'s.
    pub fn all(&self) -> Vec<&'static UpstreamTraffic> {
        let mut all = self.upstreams.lock().expect("never held across a panic").clone();
        all.push(self.none);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_protocol_and_code() {
        let traffic = UpstreamTraffic::new("app".into());
        let count = |method: &Method, version, status| {
            traffic.count_request(RequestLabels::of(method, version), status)
        };
        count(&Method::GET, Version::HTTP_11, 200);
        count(&Method::GET, Version::HTTP_11, 200);
        count(&Method::from_bytes(b"BREW").unwrap(), Version::HTTP_2, 502);
        count(&Method::POST, Version::HTTP_2, 599);
        count(&Method::POST, Version::HTTP_2, 600);
        let mut counts = traffic.request_counts();
        counts.sort();
        assert_eq!(
            counts,
            [("GET", "http/1.1", 200, 2), ("POST", "http/2", 599, 1), ("other", "http/2", 502, 1)]
        );
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_not_below_it() {
        let histogram = DurationHistogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(120));
        let (sum, count, buckets) = histogram.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 120.0035).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1), "a bound is inclusive (le)");
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets[DURATION_BUCKETS.len()], (f64::MAX, 1), "past the last bound: +Inf");
    }

    #[test]
    fn the_book_keeps_an_upstreams_figures_under_its_name() {
        let book = TrafficBook::default();
        book.upstream("app").timeouts.fetch_add(1, Ordering::Relaxed);
        assert_eq!(book.upstream("app").timeouts.load(Ordering::Relaxed), 1, "the same figures again");
        let names: Vec<String> = book.all().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["app", "none"]);
    }
}
