//! `Edge::shutdown` closes the listeners and lets in-flight requests finish.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{TestEdge, Upstream, table};
use tokio::net::TcpStream;

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_closes_listeners() {
    let upstream = Upstream::start("web.1").await;
    let edge = Arc::new(TestEdge::start(|_| {}).await);
    edge.edge.set_routes(table("web", &[&upstream]));
    let slow = tokio::spawn({
        let edge = edge.clone();
        async move { edge.get("/slow?ms=600").await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.slow.started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), edge.edge.shutdown())
        .await
        .expect("shutdown ends within the drain timeout");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(TcpStream::connect(edge.edge.https_addr()).await.is_err());
    assert!(TcpStream::connect(edge.edge.http_addr()).await.is_err());
}
