//! The edge's `bow_edge_*` series, written from its [`bow_edge::MetricsSnapshot`] (atomic
//! counters the edge keeps per route; see `metrics.rs` for the rest of `/metrics`).

use bow_edge::{LATENCY_BUCKETS_SECONDS, METHODS, MetricsSnapshot};
use prometheus_client::registry::Unit;

use crate::metrics::{Family, Histogram, Labels, labels};

pub(crate) fn encode(edge: &MetricsSnapshot, family: &mut Family<'_, '_>) -> std::fmt::Result {
    let routes = || edge.routes.iter();
    let route_labels =
        |r: &bow_edge::RouteMetrics| labels([("service", &r.service), ("route", &r.route)]);
    family.counter(
        "bow_edge_requests",
        "Requests the edge answered, by service, route, method and status class (2xx...).",
        None,
        routes().flat_map(|route| {
            METHODS
                .iter()
                .zip(route.by_method.iter())
                // A method no request used would add only zeros: left out (GET never is).
                .filter(|(method, counts)| **method == "GET" || counts.total() > 0)
                .flat_map(move |(method, counts)| {
                    counts.by_label().into_iter().map(move |(code, n)| {
                        (
                            labels([
                                ("service", &route.service),
                                ("route", &route.route),
                                ("method", method),
                                ("code", code),
                            ]),
                            n,
                        )
                    })
                })
        }),
    )?;
    let latencies: Vec<(Labels, Histogram)> = routes()
        .map(|route| {
            (
                route_labels(route),
                Histogram {
                    counts: route.latency.counts.clone(),
                    count: route.latency.count,
                    sum: route.latency.sum_seconds,
                },
            )
        })
        .collect();
    family.histogram(
        "bow_edge_request_duration",
        "From the request head to the end of the response body, by service and route.",
        &LATENCY_BUCKETS_SECONDS,
        latencies.iter().map(|(labels, h)| (labels.clone(), h)),
    )?;
    family.counter(
        "bow_edge_response",
        "Response body bytes sent to clients, by service and route.",
        Some(Unit::Bytes),
        routes().map(|route| (route_labels(route), route.response_bytes)),
    )?;
    family.gauge(
        "bow_edge_requests_in_flight",
        "Requests being answered now, by service and route.",
        None,
        routes().map(|route| (route_labels(route), route.in_flight)),
    )?;
    let single = |value: u64| [(Labels::new(), value)];
    family.counter(
        "bow_edge_unrouted_requests",
        "HTTPS requests that matched no route (answered 404).",
        None,
        single(edge.unrouted_requests),
    )?;
    family.counter(
        "bow_edge_http_port_requests",
        "Requests on the plain-HTTP port (redirects to HTTPS and ACME challenges).",
        None,
        single(edge.http_port_requests),
    )?;
    family.counter(
        "bow_edge_upstream_retries",
        "Requests sent again to another instance after a failed attempt.",
        None,
        single(edge.upstream_retries),
    )?;
    family.counter(
        "bow_edge_upstream_errors",
        "Times an instance refused or reset a connection (it is then skipped for 2 s).",
        None,
        single(edge.endpoints_marked_down),
    )?;
    family.gauge(
        "bow_edge_open_connections",
        "Client connections open now.",
        None,
        single(edge.open_connections),
    )?;
    family.counter(
        "bow_edge_rejected_connections",
        "Client connections closed at once because max_connections were open.",
        None,
        single(edge.rejected_connections),
    )?;
    family.counter(
        "bow_edge_tls_handshake_failures",
        "TLS handshakes that failed or timed out.",
        None,
        single(edge.failed_handshakes),
    )
}
