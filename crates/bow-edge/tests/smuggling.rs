//! Request smuggling, at the root: the edge alone decides where a request ends and where it
//! goes. A header named in `Connection` never removes a framing or routing header, the
//! upstream gets one framing header written by the edge (so duplicate `Content-Length`s go
//! once, `Transfer-Encoding: gzip, chunked` keeps its gzip), only WebSocket upgrades are
//! passed on, and an upstream's `Connection` cannot take the length off a response either.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bow_edge::{Backend, Endpoint, Route, RouteTable};
use support::{HOST, RecordingUpstream, TestEdge, reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Writes `request` on a new TLS connection and reads until the edge closes it.
async fn exchange(edge: &TestEdge, request: &[u8]) -> String {
    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer));
    let _ = read.await.expect("the edge closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// An edge (closing idle connections fast) routing HOST to a recording upstream.
async fn recording_edge() -> (TestEdge, RecordingUpstream) {
    let upstream = RecordingUpstream::start().await;
    let edge = TestEdge::start(|config| {
        config.idle_timeout = Duration::from_millis(400);
        config.body_timeout = Duration::from_secs(2);
    })
    .await;
    let backend = Backend::new("raw", vec![upstream.endpoint()]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());
    (edge, upstream)
}

/// Every request the upstream read, over all its connections.
fn upstream_requests(upstream: &RecordingUpstream) -> Vec<reference::Request> {
    upstream
        .recorded()
        .into_iter()
        .flat_map(|recorded| {
            assert_eq!(
                recorded.invalid, None,
                "the upstream read an invalid request"
            );
            recorded.requests
        })
        .collect()
}

#[tokio::test]
async fn a_connection_header_naming_content_length_is_refused() {
    let (edge, upstream) = recording_edge().await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";
    for connection in [
        "content-length",
        "close, Content-Length",
        "keep-alive,content-length",
    ] {
        let request = format!(
            "POST /form HTTP/1.1\r\nHost: {HOST}\r\nConnection: {connection}\r\n\
             Content-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let answer = exchange(&edge, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{connection}: {answer}"
        );
        assert!(answer.contains("content-length"), "{answer}");
    }
    let requests = upstream_requests(&upstream);
    assert!(
        requests.iter().all(|request| request.target != "/admin"),
        "a smuggled request reached the upstream: {requests:?}"
    );
    assert!(requests.is_empty(), "{requests:?}");
}

#[tokio::test]
async fn a_connection_header_naming_routing_headers_is_refused() {
    let (edge, upstream) = recording_edge().await;
    for named in [
        "host",
        "transfer-encoding",
        "x-forwarded-for",
        "X-Forwarded-Host",
        "x-forwarded-proto",
        "forwarded",
    ] {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: {named}\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
        );
        let answer = exchange(&edge, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{named}: {answer}");
    }
    assert!(upstream_requests(&upstream).is_empty());
    // Other names are hop-by-hop as before, and TE (which a sender must name) is fine.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: x-private, TE\r\nTE: trailers\r\n\
         X-Private: 1\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(&edge, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let requests = upstream_requests(&upstream);
    assert_eq!(requests.len(), 1);
    assert!(requests[0].values("x-private").is_empty());
    assert!(requests[0].values("te").is_empty());
}

#[tokio::test]
async fn identical_content_lengths_go_upstream_once_and_different_ones_are_refused() {
    let (edge, upstream) = recording_edge().await;
    let request = format!(
        "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\ncontent-length: 5\r\n\
         Connection: close\r\n\r\nhello"
    );
    let answer = exchange(&edge, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let requests = upstream_requests(&upstream);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].values("content-length"), [b"5"]);
    assert_eq!(requests[0].body, b"hello");

    let request = format!(
        "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    let answer = exchange(&edge, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(upstream_requests(&upstream).len(), 1);
}

#[tokio::test]
async fn transfer_codings_before_chunked_are_kept() {
    let (edge, upstream) = recording_edge().await;
    let request = format!(
        "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip, chunked\r\n\
         Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let answer = exchange(&edge, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let requests = upstream_requests(&upstream);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].value("transfer-encoding").as_deref(),
        Some("gzip, chunked")
    );
    assert_eq!(requests[0].body, b"abc");
    // The same over two headers; chunked twice, or after HTTP/1.0, is refused.
    let request = format!(
        "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let answer = exchange(&edge, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        upstream_requests(&upstream)[1]
            .value("transfer-encoding")
            .as_deref(),
        Some("gzip, chunked")
    );
    for refused in [
        format!(
            "POST /a HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        format!(
            "POST /a HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
    ] {
        let answer = exchange(&edge, refused.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{refused}: {answer}");
    }
    assert_eq!(upstream_requests(&upstream).len(), 2);
}

#[tokio::test]
async fn only_websocket_upgrades_are_passed_on() {
    let (edge, upstream) = recording_edge().await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    let answer = exchange(&edge, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let requests = upstream_requests(&upstream);
    assert_eq!(requests.len(), 1);
    assert!(requests[0].values("upgrade").is_empty(), "{requests:?}");
    assert!(requests[0].values("http2-settings").is_empty());
}

#[tokio::test]
async fn absolute_form_targets_must_agree_with_host() {
    let (edge, upstream) = recording_edge().await;
    let port = edge.edge.https_addr().port();
    let agreeing = format!(
        "GET https://{HOST}:{port}/a?b HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(&edge, agreeing.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    for refused in [
        format!("GET https://other.example/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        format!("GET https://user@{HOST}/a HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        format!("GET * HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {HOST}/x\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: {HOST} other\r\n\r\n"),
    ] {
        let answer = exchange(&edge, refused.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{refused}: {answer}");
    }
    let requests = upstream_requests(&upstream);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, "/a?b");
}

/// An upstream answering every request with `response`, byte for byte.
async fn raw_upstream(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut unread = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    while let reference::Read::Request(request) = reference::read(&unread) {
                        unread.drain(..request.consumed);
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(count) => unread.extend_from_slice(&buffer[..count]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_connection_header_cannot_unframe_a_response() {
    let addr = raw_upstream(
        "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let edge = TestEdge::start(|config| config.idle_timeout = Duration::from_millis(400)).await;
    let backend = Backend::new("raw", vec![Endpoint::new("raw.1", addr)]);
    edge.edge
        .set_routes(RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap());
    let request =
        format!("GET /1 HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /2 HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let answer = exchange(&edge, request.as_bytes()).await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(responses.len(), 2, "{answer}");
    for response in responses {
        assert_eq!(
            response
                .to_ascii_lowercase()
                .matches("content-length: 2\r\n")
                .count(),
            1,
            "{answer}"
        );
        assert!(response.ends_with("\r\n\r\nok"), "{answer}");
    }
}
