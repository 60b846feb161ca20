//! HTTPS answers carry `Strict-Transport-Security` (no preload) unless max-age is zero.

mod support;

use std::time::Duration;

use support::{TestEdge, Upstream, table};

#[tokio::test]
async fn hsts_is_sent_with_the_configured_max_age() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.hsts_max_age = Duration::from_secs(600)).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let proxied = edge.get("/").await;
    assert_eq!(
        proxied.headers["strict-transport-security"],
        "max-age=600; includeSubDomains"
    );
    let local = edge.get("/").await;
    assert!(local.headers.contains_key("strict-transport-security"));
    edge.edge.set_routes(table("web", &[]));
    let unavailable = edge.get("/").await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(
        unavailable.headers["strict-transport-security"],
        "max-age=600; includeSubDomains"
    );
}

#[tokio::test]
async fn zero_max_age_turns_hsts_off() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.hsts_max_age = Duration::ZERO).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let reply = edge.get("/").await;
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key("strict-transport-security"));
}
