//! HTTP/1.1 as clients speak it to the edge, byte for byte: pipelining, chunked and
//! announced (`Expect: 100-continue`) request bodies, HTTP/1.0, HEAD, chunked and
//! close-delimited upstream bodies, and heads the edge refuses.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bow_edge::{Backend, Endpoint, Route, RouteTable};
use support::{HOST, TestEdge, Upstream, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Writes `request` on a new TLS connection and reads until the edge closes it.
async fn exchange(edge: &TestEdge, request: &str) -> String {
    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut tls).await
}

async fn read_to_close<S: AsyncReadExt + Unpin>(stream: &mut S) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let _ = read.await.expect("the edge closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upstream answering every request with `response` as it is, then closing when
/// `close` (for bodies delimited by the end of the connection).
async fn raw_upstream(response: &'static str, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    head.clear();
                    if stream.write_all(response.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn raw_table(addr: SocketAddr) -> RouteTable {
    let backend = Backend::new("raw", vec![Endpoint::new("raw.1", addr)]);
    RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let request = format!(
        "GET /first HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         POST /body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc\
         GET /last HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(&edge, &request).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    assert!(answer.contains("length 3\n"), "{answer}");
    assert!(
        answer.contains("strict-transport-security: max-age="),
        "{answer}"
    );
    assert!(answer.contains("\r\ndate: "), "{answer}");
    assert_eq!(
        answer.matches("connection: close\r\n").count(),
        1,
        "{answer}"
    );
    let last = answer.rsplit("HTTP/1.1 200 OK").next().unwrap();
    assert!(
        last.contains(
            "\nforwarded: for=127.0.0.1;proto=https;host=app.localhost\ntraceparent: 00-"
        ),
        "{answer}"
    );
}

#[tokio::test]
async fn chunked_and_announced_request_bodies_reach_the_upstream_whole() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let chunked = format!(
        "POST /body HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    );
    let answer = exchange(&edge, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("length 11\n"), "{answer}");

    // The client waits for the go-ahead before its body.
    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let head = format!(
        "PUT /body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut interim = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut interim))
        .await
        .expect("100 Continue before the body")
        .unwrap();
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tls.write_all(b"abcd").await.unwrap();
    let answer = read_to_close(&mut tls).await;
    assert!(answer.contains("length 4\n"), "{answer}");
}

#[tokio::test]
async fn http_1_0_clients_and_head_requests() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let answer = exchange(&edge, &format!("GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.contains("web.1\n"), "{answer}");

    let answer = exchange(
        &edge,
        &format!("HEAD / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.to_lowercase().contains("content-length: "),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {answer}"
    );
}

#[tokio::test]
async fn upstream_bodies_of_unknown_length_go_chunked_to_the_client() {
    let chunked = raw_upstream(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(raw_table(chunked));
    let request = format!(
        "GET /a HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /b HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(&edge, &request).await;
    assert_eq!(
        answer.matches("transfer-encoding: chunked\r\n").count(),
        2,
        "{answer}"
    );
    assert_eq!(
        answer.matches("5\r\nhello\r\n0\r\n\r\n").count(),
        2,
        "{answer}"
    );
    assert!(
        !answer.contains("keep-alive"),
        "hop-by-hop headers stay: {answer}"
    );

    let until_close = raw_upstream("HTTP/1.1 200 OK\r\n\r\nall of it", true).await;
    edge.edge.set_routes(raw_table(until_close));
    let answer = exchange(
        &edge,
        &format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        answer.contains("transfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("9\r\nall of it\r\n0\r\n\r\n"), "{answer}");
    let answer = exchange(&edge, &format!("GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n")).await;
    assert!(answer.ends_with("\r\n\r\nall of it"), "{answer}");
}

#[tokio::test]
async fn heads_the_edge_cannot_serve_are_refused() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.max_header_size = 4096).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let answer = exchange(&edge, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("no host header"), "{answer}");
    let answer = exchange(
        &edge,
        &format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let answer = exchange(
        &edge,
        &format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let plus = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: +3\r\n\r\nabc");
    let answer = exchange(&edge, &plus).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("invalid content-length"), "{answer}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let answer = exchange(&edge, &big).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    let answer = exchange(&edge, "NOT HTTP AT ALL\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
}
