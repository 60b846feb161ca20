//! Connections beyond `max_connections` are closed at once; slots free up when
//! connections end. Idle connections are closed after the idle timeout.

mod support;

use std::time::{Duration, Instant};

use support::{TestEdge, Upstream, send, table};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn excess_connections_are_closed() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.max_connections = 2).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let mut first = edge.h1().await.unwrap();
    let mut second = edge.h1().await.unwrap();

    let mut third = TcpStream::connect(edge.edge.https_addr()).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buffer))
        .await
        .expect("the excess connection is closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(edge.edge.metrics().rejected_connections, 1);

    for sender in [&mut first, &mut second] {
        let reply = send(sender, "GET", "/", bytes::Bytes::new()).await.unwrap();
        assert_eq!(reply.status, 200);
    }
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut sender) = edge.h1().await
            && send(&mut sender, "GET", "/", bytes::Bytes::new())
                .await
                .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.idle_timeout = Duration::from_millis(500)).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let mut sender = edge.h1().await.unwrap();
    let reply = send(&mut sender, "GET", "/", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    while !sender.is_closed() {
        assert!(Instant::now() < deadline, "the idle connection stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(edge.edge.metrics().open_connections, 0);
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.idle_timeout = Duration::from_millis(500)).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let tls = edge.tls(&[b"h2"]).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("https://{}/", support::HOST))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    drop(response);
    let closed = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(closed.is_ok(), "the idle http/2 connection stayed open");
}
