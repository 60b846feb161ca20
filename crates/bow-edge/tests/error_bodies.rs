//! Errors the edge answers itself are short plain text naming the service and the reason:
//! 404 (no route), 413 (body too large), 502 (instance failed), 503 (no healthy instance),
//! 504 (instance too slow).

mod support;

use std::time::Duration;

use bow_edge::{Backend, Endpoint, Route, RouteTable};
use bytes::Bytes;
use support::{HOST, TestEdge, Upstream, send, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn no_healthy_instance_is_503_naming_the_service() {
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[]));
    let reply = edge.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "503 no healthy instance of service web\n");
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn a_refusing_instance_is_502_naming_the_service() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let edge = TestEdge::start(|_| {}).await;
    let backend = Backend::new("api", vec![Endpoint::new("api.1", addr)]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());
    let reply = edge.get("/x").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.body,
        "502 instance api.1 of service api failed: connection refused\n"
    );
}

#[tokio::test]
async fn a_slow_instance_is_504_naming_the_service() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.upstream_timeout = Duration::from_millis(300)).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let reply = edge.get("/slow?ms=2000").await;
    assert_eq!(reply.status, 504);
    assert!(
        reply
            .body
            .starts_with("504 service web did not answer within 0.3s"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn unknown_hosts_get_404() {
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[]));
    let mut sender = edge.h1().await.unwrap();
    let request = http::Request::get("/")
        .header("host", "other.localhost")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(edge.edge.metrics().unrouted_requests, 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.max_body_size = 1000).await;
    edge.edge.set_routes(table("web", &[&upstream]));

    let mut sender = edge.h1().await.unwrap();
    let small = send(&mut sender, "POST", "/body", Bytes::from(vec![b'x'; 1000]))
        .await
        .unwrap();
    assert_eq!(small.body, "web.1\nlength 1000\n");
    let declared = send(&mut sender, "POST", "/body", Bytes::from(vec![b'x'; 1001]))
        .await
        .unwrap();
    assert_eq!(declared.status, 413);
    assert_eq!(declared.body, "413 request body larger than 1000 bytes\n");

    // Chunked, so the size is only known while streaming.
    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let mut request = format!(
        "POST /body HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        request.extend_from_slice(b"1f4\r\n");
        request.extend_from_slice(&[b'y'; 500]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.ends_with("413 request body larger than 1000 bytes\n"),
        "{answer}"
    );
}
