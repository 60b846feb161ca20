//! Bodies that stall: a client that stops sending its request body gets 408 after the body
//! timeout, a client that stops taking its response is cut off after it, an upstream that
//! goes silent in the middle of its response body is cut off after the upstream timeout,
//! and a slow but steady upload outlasts the upstream timeout (only the upstream's own
//! waiting counts against it).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bow_edge::{Backend, Endpoint, Route, RouteTable};
use support::{HOST, TestEdge, Upstream, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a raw upstream saw of its connections.
#[derive(Default)]
struct RawStats {
    /// Connections whose response could not be written to the end (the edge dropped them).
    writes_failed: AtomicUsize,
}

/// An upstream that answers every request head with `response`, then sends nothing more
/// and keeps the connection open for a minute.
async fn raw_upstream(response: Arc<Vec<u8>>) -> (SocketAddr, Arc<RawStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(RawStats::default());
    let seen = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let response = response.clone();
            let stats = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                if stream.write_all(&response).await.is_err() {
                    stats.writes_failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    (addr, stats)
}

fn raw_table(addr: SocketAddr) -> RouteTable {
    let backend = Backend::new("raw", vec![Endpoint::new("raw.1", addr)]);
    RouteTable::new(vec![Route::new(HOST, "/", backend)]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_while_others_are_served() {
    let upstream = Upstream::start("web.1").await;
    let edge =
        Arc::new(TestEdge::start(|config| config.body_timeout = Duration::from_millis(500)).await);
    edge.edge.set_routes(table("web", &[&upstream]));

    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let head = format!("POST /body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&[b'x'; 10]).await.unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();

    let normal = tokio::spawn({
        let edge = edge.clone();
        async move {
            let mut served = 0;
            while started.elapsed() < Duration::from_millis(900) {
                assert_eq!(edge.get("/").await.status, 200);
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            served
        }
    });

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let after = started.elapsed();
    assert!(
        read.is_ok(),
        "the stalled request was not answered within 5 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "expected 408, got {answer:?}"
    );
    assert!(
        answer.contains("408 no byte of the request body came for 0.5s"),
        "{answer:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_secs(3),
        "answered after {after:?}, expected about the 0.5 s body timeout"
    );
    assert!(normal.await.unwrap() >= 5, "normal clients were not served");
    let entries = edge.log.wait_for(1).await;
    assert!(
        entries
            .iter()
            .any(|entry| entry.status == 408 && entry.method == "POST"),
        "no 408 in the access log: {entries:?}"
    );
}

#[tokio::test]
async fn a_slow_but_steady_upload_outlasts_the_upstream_timeout() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| {
        config.upstream_timeout = Duration::from_millis(300);
        config.body_timeout = Duration::from_secs(2);
    })
    .await;
    edge.edge.set_routes(table("web", &[&upstream]));

    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let head = format!(
        "POST /body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // Each pause is longer than the upstream timeout, shorter than the body timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tls.write_all(&[b'x'; 250]).await.unwrap();
        tls.flush().await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        started.elapsed() >= Duration::from_millis(1600),
        "the upload took less than 1.6 s"
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.contains("length 1000"), "{answer:?}");
}

#[tokio::test]
async fn an_upstream_silent_in_its_response_body_is_cut_off_after_the_upstream_timeout() {
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    response.extend_from_slice(&[b'y'; 10]);
    let (addr, _) = raw_upstream(Arc::new(response)).await;
    let edge = TestEdge::start(|config| config.upstream_timeout = Duration::from_millis(500)).await;
    edge.edge.set_routes(raw_table(addr));

    // HTTP/1.1: the client gets the head and the 10 bytes, then the connection closes.
    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let after = started.elapsed();
    assert!(read.is_ok(), "the connection was still open after 5 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nyyyyyyyyyy"), "{answer:?}");
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_secs(3),
        "cut off after {after:?}, expected about the 0.5 s upstream timeout"
    );

    // HTTP/2: the stream fails rather than hangs.
    let started = Instant::now();
    let output = edge
        .curl(
            &[
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code} %{size_download}",
            ],
            "/",
        )
        .await;
    let after = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "curl succeeded: {stdout}");
    assert_eq!(output.status.code(), Some(92), "curl: {output:?}");
    assert_eq!(stdout, "2 200 10");
    assert!(
        after < Duration::from_secs(3),
        "the HTTP/2 stream failed after {after:?}, expected about 0.5 s"
    );
}

#[tokio::test]
async fn a_client_that_takes_no_response_is_cut_off_after_the_body_timeout() {
    const SIZE: usize = 64 * 1024 * 1024;
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes();
    response.resize(response.len() + SIZE, b'z');
    let (addr, stats) = raw_upstream(Arc::new(response)).await;
    let edge = TestEdge::start(|config| config.body_timeout = Duration::from_millis(500)).await;
    edge.edge.set_routes(raw_table(addr));

    let mut tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Take nothing for a while: the edge gives up on this client and its upstream.
    let entries = edge.log.wait_for(1).await;
    assert_eq!(entries.len(), 1, "the request did not end within 5 s");
    assert!(
        entries[0].bytes < SIZE as u64,
        "all of the body went out: {:?}",
        entries[0]
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.writes_failed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stats.writes_failed.load(Ordering::SeqCst),
        1,
        "the upstream connection was not dropped"
    );
    // What was already on its way can still be read, then the connection ends.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was still open");
    assert!(answer.len() < SIZE, "read {} bytes", answer.len());
}
