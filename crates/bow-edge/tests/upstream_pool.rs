//! The connections the edge keeps to an instance: bounded in total (requests beyond the
//! bound wait for a connection, they do not open more), and idle ones closed on a timer
//! even when no request touches the pool again.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bow_edge::{Backend, Endpoint, Route, RouteTable};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{HOST, RecordingUpstream, TestEdge};
use tokio::net::TcpListener;

/// An upstream that counts the connections it accepted and answers each request after `delay`.
async fn counting_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(move |_request| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// At most this many connections to one instance in the test (the default is 256).
const BOUND: usize = 8;

#[tokio::test]
async fn http2_streams_open_no_more_connections_than_the_bound() {
    let (addr, accepted) = counting_upstream(Duration::from_millis(100)).await;
    let edge = Arc::new(TestEdge::start(|config| config.max_upstream_connections = BOUND).await);
    let backend = Backend::new("web", vec![Endpoint::new("web.1", addr)]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());
    // 120 requests at once over two HTTP/2 connections: they wait for one of the BOUND
    // connections rather than open more.
    let mut senders = Vec::new();
    for _ in 0..2 {
        let tls = edge.tls(&[b"h2"]).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..120 {
        let mut sender = senders[index % 2].clone();
        requests.spawn(async move {
            let request = Request::builder()
                .uri(format!("https://{HOST}/{index}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        });
    }
    let mut ok = 0;
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
        ok += 1;
    }
    assert_eq!(ok, 120);
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        opened <= BOUND,
        "{opened} connections to one instance, bound {BOUND}"
    );
    // The bound was used (the requests did not go one at a time).
    assert!(opened > 1, "only {opened} connection");
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_on_a_timer() {
    let upstream = RecordingUpstream::start().await;
    let edge = TestEdge::start(|config| {
        config.upstream_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let backend = Backend::new("raw", vec![upstream.endpoint()]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());
    let reply = edge.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    // Nothing touches the pool again: the timer alone closes the idle connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let recorded = upstream.recorded();
        assert_eq!(recorded.len(), 1);
        if recorded[0].closed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle connection is still open after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
