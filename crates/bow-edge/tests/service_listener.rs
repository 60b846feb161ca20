//! A service listener in HTTP mode: plain HTTP for any host, balanced over its endpoints with
//! keep-alive, `X-Forwarded-Proto: http` and no HSTS; a killed endpoint costs no request;
//! draining waits for an in-flight request.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bow_edge::{DrainOutcome, ServiceListener, ServiceListenerConfig, ServiceProtocol};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::{Upstream, send};
use tokio::net::TcpStream;

async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn listener(upstreams: &[&Upstream]) -> ServiceListener {
    let mut config = ServiceListenerConfig::new(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        "api",
        ServiceProtocol::Http,
    );
    config.drain_timeout = Duration::from_secs(5);
    let listener = ServiceListener::start(config).await.unwrap();
    listener.set_endpoints(upstreams.iter().map(|u| u.endpoint()).collect());
    listener
}

#[tokio::test]
async fn any_host_is_balanced_over_the_endpoints_as_plain_http() {
    let (one, two) = (
        Upstream::start("api.1").await,
        Upstream::start("api.2").await,
    );
    let listener = listener(&[&one, &two]).await;
    let mut sender = connect(listener.local_addr()).await;
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let reply = send(&mut sender, "GET", "/x", Bytes::new()).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(!reply.headers.contains_key("strict-transport-security"));
        let body = reply.body.to_lowercase();
        assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
        seen.insert(body.lines().next().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both endpoints answered: {seen:?}");

    // A killed endpoint costs no request: refused connections are retried elsewhere.
    one.kill();
    for _ in 0..10 {
        let reply = send(&mut sender, "GET", "/", Bytes::new()).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.body.starts_with("api.2\n"), "{}", reply.body);
    }

    // No endpoint: 503 naming the service.
    listener.set_endpoints(Vec::new());
    let reply = send(&mut sender, "GET", "/", Bytes::new()).await.unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("service api"), "{}", reply.body);
    listener.shutdown().await;
}

#[tokio::test]
async fn draining_waits_for_the_in_flight_request() {
    let slow = Upstream::start("api.1").await;
    let listener = listener(&[&slow]).await;
    let addr = listener.local_addr();
    let request = tokio::spawn(async move {
        let mut sender = connect(addr).await;
        send(&mut sender, "GET", "/slow?ms=500", Bytes::new()).await
    });
    while slow.slow.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    listener.set_endpoints(Vec::new());
    assert_eq!(listener.drain("api.1").await, DrainOutcome::Drained);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let reply = request.await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}
