//! One access-log entry per request, and per-route/per-service counters and histograms.

mod support;

use bow_edge::{Backend, Route, RouteTable};
use support::{HOST, TestEdge, Upstream};

#[tokio::test]
async fn requests_are_logged_and_counted_per_route() {
    let front = Upstream::start("front.1").await;
    let api = Upstream::start("api.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(
        RouteTable::new(vec![
            Route::new(HOST, "/", Backend::new("front", vec![front.endpoint()])),
            Route::new(HOST, "/api", Backend::new("api", vec![api.endpoint()])),
            Route::new(HOST, "/down", Backend::new("api", vec![])),
        ])
        .unwrap(),
    );
    assert!(
        edge.get("/api/users?token=secret")
            .await
            .body
            .starts_with("api.1")
    );
    assert!(edge.get("/apix").await.body.starts_with("front.1"));
    assert_eq!(edge.get("/down").await.status, 503);

    let entries = edge.log.wait_for(3).await;
    assert_eq!(entries.len(), 3);
    let first = &entries[0];
    assert_eq!(first.host, HOST);
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/api/users", "queries stay out of the log");
    assert_eq!(first.status, 200);
    assert!(first.bytes > 0);
    assert!(first.duration_ms >= 0.0);
    assert_eq!(first.service.as_deref(), Some("api"));
    assert_eq!(first.upstream.as_deref(), Some("api.1"));
    assert!(first.client.starts_with("127.0.0.1:"));
    assert!(first.time.ends_with('Z'));
    let json: serde_json::Value = serde_json::from_str(&first.to_json()).unwrap();
    assert_eq!(json["upstream"], "api.1");
    assert_eq!(entries[2].upstream, None);

    let metrics = edge.edge.metrics();
    let route = |label: &str| {
        metrics
            .routes
            .iter()
            .find(|route| route.route == label)
            .unwrap_or_else(|| panic!("no metrics for {label}: {metrics:?}"))
    };
    assert_eq!(route("app.localhost/api").requests.success, 1);
    assert_eq!(route("app.localhost/").requests.success, 1);
    assert_eq!(route("app.localhost/down").requests.server_error, 1);
    let api_service = metrics
        .services
        .iter()
        .find(|s| s.service == "api")
        .unwrap();
    assert_eq!(api_service.requests.total(), 2);
    assert_eq!(api_service.latency.count, 2);
    assert_eq!(api_service.latency.counts.iter().sum::<u64>(), 2);
}
