//! Draining an endpoint: no new requests reach it, and `drain` resolves once its in-flight
//! requests finished, or when the drain timeout passed.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bow_edge::DrainOutcome;
use support::{TestEdge, Upstream, table};

async fn wait_for_slow_request(upstream: &Upstream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.slow.started.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached {}",
            upstream.id
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn drain_waits_for_an_in_flight_slow_request() {
    let old = Upstream::start("web.1").await;
    let new = Upstream::start("web.2").await;
    let edge = Arc::new(TestEdge::start(|_| {}).await);
    edge.edge.set_routes(table("web", &[&old]));

    let slow = tokio::spawn({
        let edge = edge.clone();
        async move { edge.get("/slow?ms=1200").await }
    });
    wait_for_slow_request(&old).await;

    edge.edge.set_routes(table("web", &[&new]));
    let started = Instant::now();
    let drain = tokio::spawn(edge.edge.drain("web.1"));
    let during = edge.get("/").await;
    assert!(during.body.starts_with("web.2\n"), "{}", during.body);
    assert!(
        !drain.is_finished(),
        "drain ended while a request was in flight"
    );

    let outcome = drain.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(outcome, DrainOutcome::Drained);
    assert!(
        waited >= Duration::from_millis(700),
        "drain ended after {waited:?}"
    );
    let finished = slow.await.unwrap();
    assert_eq!(finished.status, 200);
    assert!(finished.body.starts_with("web.1\n"));
}

#[tokio::test]
async fn drain_gives_up_after_the_drain_timeout() {
    let stuck = Upstream::start("web.1").await;
    let edge =
        Arc::new(TestEdge::start(|config| config.drain_timeout = Duration::from_millis(400)).await);
    edge.edge.set_routes(table("web", &[&stuck]));
    let slow = tokio::spawn({
        let edge = edge.clone();
        async move { edge.get("/slow?ms=3000").await }
    });
    wait_for_slow_request(&stuck).await;
    let started = Instant::now();
    let outcome = edge.edge.drain("web.1").await;
    let waited = started.elapsed();
    assert_eq!(outcome, DrainOutcome::TimedOut { in_flight: 1 });
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // Drained while still routed: it gets no new request, so the route has none left.
    let reply = edge.get("/").await;
    assert_eq!(reply.status, 503);
    slow.abort();
}
