//! Swapping the route table under load fails no request and keeps connections.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{TestEdge, Upstream, load, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_under_load_fail_no_request() {
    let a = Upstream::start("web.1").await;
    let b = Upstream::start("web.2").await;
    let c = Upstream::start("web.3").await;
    let edge = Arc::new(TestEdge::start(|_| {}).await);
    edge.edge.set_routes(table("web", &[&a, &b]));

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let edge = edge.clone();
        let stop = stop.clone();
        async move { load(&edge, 4, stop).await }
    });
    let tables = [
        table("web", &[&b, &c]),
        table("web", &[&c]),
        table("web", &[&c, &a]),
        table("web", &[&a, &b, &c]),
        table("web", &[&a, &b]),
    ];
    for round in 0..30 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        edge.edge.set_routes(tables[round % tables.len()].clone());
    }
    edge.edge.set_routes(table("web", &[&c]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let report = traffic.await.unwrap();
    eprintln!(
        "{} requests served, {} failed",
        report.ok,
        report.failures.len()
    );

    assert!(
        report.failures.is_empty(),
        "failed requests: {:?}",
        report.failures
    );
    assert!(
        report.ok > 100,
        "too little traffic to prove anything: {}",
        report.ok
    );
    let reply = edge.get("/").await;
    assert!(reply.body.starts_with("web.3\n"), "{}", reply.body);
}
