//! One of three instances is killed again and again under load: no request fails, because
//! the edge marks it down at once and retries elsewhere what is safe to retry.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{TestEdge, Upstream, load, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_repeatedly_fails_no_request() {
    let upstreams = [
        Upstream::start("web.1").await,
        Upstream::start("web.2").await,
        Upstream::start("web.3").await,
    ];
    let edge = Arc::new(TestEdge::start(|_| {}).await);
    edge.edge
        .set_routes(table("web", &[&upstreams[0], &upstreams[1], &upstreams[2]]));

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let edge = edge.clone();
        let stop = stop.clone();
        async move { load(&edge, 4, stop).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..6 {
        upstreams[0].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        upstreams[0].restart().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
    let metrics = edge.edge.metrics();
    assert!(metrics.endpoints_marked_down > 0, "{metrics:?}");
    assert_eq!(metrics.services[0].requests.server_error, 0);
}
