//! In-memory counters and latency histograms per route and per service, read through
//! [`crate::Edge::metrics`] as a [`MetricsSnapshot`] (the agent exports them as `bow_edge_*`).
//!
//! The hot path never looks a label up: each route's [`RouteStats`] is resolved when the route
//! table is built, and a request adds to its atomics (relaxed `fetch_add`, no lock).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The methods requests are counted by; any other method counts as `other`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// The index of `method` in [`METHODS`].
fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Requests counted by the first digit of their status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusClassCounts {
    /// 1xx, such as 101 for WebSocket upgrades.
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
}

impl StatusClassCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.informational + self.success + self.redirection + self.client_error + self.server_error
    }

    /// `(label, count)` pairs with the label metrics use: `1xx` … `5xx`.
    pub fn by_label(&self) -> [(&'static str, u64); 5] {
        [
            ("1xx", self.informational),
            ("2xx", self.success),
            ("3xx", self.redirection),
            ("4xx", self.client_error),
            ("5xx", self.server_error),
        ]
    }

    fn add(&mut self, other: &StatusClassCounts) {
        self.informational += other.informational;
        self.success += other.success;
        self.redirection += other.redirection;
        self.client_error += other.client_error;
        self.server_error += other.server_error;
    }
}

/// A latency histogram: per-bucket (not cumulative) counts over [`LATENCY_BUCKETS_SECONDS`],
/// with one more count for +Inf.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistogramSnapshot {
    /// Count per bucket; `counts.len() == LATENCY_BUCKETS_SECONDS.len() + 1`.
    pub counts: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            counts: vec![0; LATENCY_BUCKETS_SECONDS.len() + 1],
            count: 0,
            sum_seconds: 0.0,
        }
    }
}

impl HistogramSnapshot {
    fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

/// Counters of one route.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouteMetrics {
    /// The service the route sends to.
    pub service: String,
    /// The route label, `host/prefix`.
    pub route: String,
    /// Requests by status class.
    pub requests: StatusClassCounts,
    /// Requests by method ([`METHODS`], in that order) and status class.
    pub by_method: [StatusClassCounts; METHODS.len()],
    /// Time from the request head to the end of the response body.
    pub latency: HistogramSnapshot,
    /// Bytes of response bodies sent to clients.
    pub response_bytes: u64,
    /// Requests being answered now.
    pub in_flight: u64,
}

/// Counters of one service, summed over its routes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceMetrics {
    /// The service.
    pub service: String,
    /// Requests by status class.
    pub requests: StatusClassCounts,
    /// Time from the request head to the end of the response body.
    pub latency: HistogramSnapshot,
}

/// A point-in-time copy of every edge counter.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// Per route, sorted by service then route.
    pub routes: Vec<RouteMetrics>,
    /// Per service, sorted by name.
    pub services: Vec<ServiceMetrics>,
    /// HTTPS requests that matched no route (answered 404).
    pub unrouted_requests: u64,
    /// Requests answered on the plain-HTTP port (redirects and ACME challenges).
    pub http_port_requests: u64,
    /// Requests sent again to another endpoint after a failed attempt.
    pub upstream_retries: u64,
    /// Times an endpoint was marked down after refusing or resetting a connection.
    pub endpoints_marked_down: u64,
    /// Connections being served now.
    pub open_connections: u64,
    /// Connections closed at once because `max_connections` were open.
    pub rejected_connections: u64,
    /// TLS handshakes that failed or timed out.
    pub failed_handshakes: u64,
}

/// Atomic counters of one route; cheap to update on every request.
#[derive(Debug)]
pub(crate) struct RouteStats {
    /// By method, then status class.
    classes: [[AtomicU64; 5]; METHODS.len()],
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
    response_bytes: AtomicU64,
    in_flight: AtomicU64,
}

impl RouteStats {
    fn new() -> Self {
        RouteStats {
            classes: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// A request of this route began; [`RouteStats::observe`] ends it.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request this route began was sent to another route's table instead.
    pub(crate) fn abandon(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn observe(
        &self,
        method: &http::Method,
        status: u16,
        bytes: u64,
        elapsed: Duration,
    ) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[method_index(method)][class].fetch_add(1, Ordering::Relaxed);
        if bytes > 0 {
            self.response_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RouteMetrics {
        let by_method: [StatusClassCounts; METHODS.len()] = std::array::from_fn(|method| {
            let class = |index: usize| self.classes[method][index].load(Ordering::Relaxed);
            StatusClassCounts {
                informational: class(0),
                success: class(1),
                redirection: class(2),
                client_error: class(3),
                server_error: class(4),
            }
        });
        let mut requests = StatusClassCounts::default();
        for counts in &by_method {
            requests.add(counts);
        }
        let latency = HistogramSnapshot {
            counts: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        };
        RouteMetrics {
            service: String::new(),
            route: String::new(),
            requests,
            by_method,
            latency,
            response_bytes: self.response_bytes.load(Ordering::Relaxed),
            // A reader may see an end before its begin: never below zero.
            in_flight: (self.in_flight.load(Ordering::Relaxed) as i64).max(0) as u64,
        }
    }
}

/// The edge's counters. Route stats survive table swaps, so counters only grow.
#[derive(Debug, Default)]
pub(crate) struct MetricsRegistry {
    /// Per-route counters off ([`crate::EdgeConfig::route_metrics`]): routes get none.
    pub(crate) routes_off: bool,
    routes: Mutex<HashMap<(String, String), Arc<RouteStats>>>,
    pub(crate) unrouted_requests: AtomicU64,
    pub(crate) http_port_requests: AtomicU64,
    pub(crate) upstream_retries: AtomicU64,
    pub(crate) endpoints_marked_down: AtomicU64,
    pub(crate) open_connections: AtomicU64,
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) failed_handshakes: AtomicU64,
}

impl MetricsRegistry {
    /// A registry; `route_metrics` false gives routes no counters.
    pub(crate) fn new(route_metrics: bool) -> Self {
        MetricsRegistry {
            routes_off: !route_metrics,
            ..MetricsRegistry::default()
        }
    }

    /// The stats of a (service, route) pair, made on first use; none when they are off.
    pub(crate) fn route_stats(&self, service: &str, route: &str) -> Option<Arc<RouteStats>> {
        if self.routes_off {
            return None;
        }
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        routes
            .entry((service.to_string(), route.to_string()))
            .or_insert_with(|| Arc::new(RouteStats::new()))
            .clone()
            .into()
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let routes: Vec<RouteMetrics> = {
            let map = self
                .routes
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let mut routes: Vec<RouteMetrics> = map
                .iter()
                .map(|((service, route), stats)| RouteMetrics {
                    service: service.clone(),
                    route: route.clone(),
                    ..stats.snapshot()
                })
                .collect();
            routes.sort_by(|a, b| (&a.service, &a.route).cmp(&(&b.service, &b.route)));
            routes
        };
        let mut services: BTreeMap<String, ServiceMetrics> = BTreeMap::new();
        for route in &routes {
            let service = services
                .entry(route.service.clone())
                .or_insert_with(|| ServiceMetrics {
                    service: route.service.clone(),
                    requests: StatusClassCounts::default(),
                    latency: HistogramSnapshot::default(),
                });
            service.requests.add(&route.requests);
            service.latency.add(&route.latency);
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            routes,
            services: services.into_values().collect(),
            unrouted_requests: load(&self.unrouted_requests),
            http_port_requests: load(&self.http_port_requests),
            upstream_retries: load(&self.upstream_retries),
            endpoints_marked_down: load(&self.endpoints_marked_down),
            open_connections: load(&self.open_connections),
            rejected_connections: load(&self.rejected_connections),
            failed_handshakes: load(&self.failed_handshakes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_sum_into_services() {
        let registry = MetricsRegistry::default();
        let observe = |route: &str, method: http::Method, status: u16, elapsed: Duration| {
            let stats = registry.route_stats("web", route).expect("counters on");
            stats.begin();
            stats.observe(&method, status, 10, elapsed);
        };
        observe("a.com/", http::Method::GET, 200, Duration::from_millis(3));
        observe(
            "a.com/api",
            http::Method::POST,
            503,
            Duration::from_secs(20),
        );
        observe(
            "a.com/",
            http::Method::from_bytes(b"PROPFIND").unwrap(),
            101,
            Duration::from_millis(1),
        );
        registry.route_stats("web", "a.com/").unwrap().begin();
        assert!(
            MetricsRegistry::new(false)
                .route_stats("web", "a.com/")
                .is_none()
        );
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.routes.len(), 2);
        let root = &snapshot.routes[0];
        assert_eq!(root.by_method[0].success, 1);
        assert_eq!(root.by_method[METHODS.len() - 1].informational, 1);
        assert_eq!(root.response_bytes, 20);
        assert_eq!(root.in_flight, 1);
        assert_eq!(snapshot.routes[1].by_method[2].server_error, 1);
        let web = &snapshot.services[0];
        assert_eq!(web.requests.total(), 3);
        assert_eq!(web.requests.server_error, 1);
        assert_eq!(web.requests.informational, 1);
        assert_eq!(web.latency.counts[1], 1);
        assert_eq!(web.latency.counts[LATENCY_BUCKETS_SECONDS.len()], 1);
        assert_eq!(web.latency.count, 3);
    }
}
