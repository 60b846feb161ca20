//! The upstream sees the real client address and the original host and scheme, and no
//! hop-by-hop headers.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::{HOST, TestEdge, Upstream, table};

#[tokio::test]
async fn backend_sees_the_client_in_x_forwarded_for() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let mut sender = edge.h1().await.unwrap();
    let request = Request::get("/who")
        .header("host", HOST)
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen = String::from_utf8_lossy(&body).to_lowercase();
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {HOST}\n")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!(
            "forwarded: for=127.0.0.1;proto=https;host={HOST}\n"
        )),
        "{seen}"
    );
    assert!(seen.contains(&format!("host: {HOST}\n")), "{seen}");
    for hop in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te:",
        "connection",
    ] {
        assert!(!seen.contains(hop), "{hop} reached the upstream:\n{seen}");
    }
}
