//! A client that sends its request head byte by byte is cut off after the header timeout,
//! while normal clients keep being served.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{HOST, TestEdge, Upstream, table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_others_are_served() {
    let upstream = Upstream::start("web.1").await;
    let edge =
        Arc::new(TestEdge::start(|config| config.header_timeout = Duration::from_secs(1)).await);
    edge.edge.set_routes(table("web", &[&upstream]));

    let tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}\r\n",
            "a".repeat(200)
        );
        for byte in head.bytes() {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let normal = tokio::spawn({
        let edge = edge.clone();
        async move {
            let mut served = 0;
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                let reply = edge.get("/").await;
                assert_eq!(reply.status, 200);
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            served
        }
    });

    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut rest)).await;
    let after = started.elapsed();
    assert!(cut.is_ok(), "the slow client was not cut off within 6 s");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "cut off after {after:?}, expected about the 1 s header timeout"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "the slow request was served"
    );
    trickle.abort();
    let served = normal.await.unwrap();
    assert!(
        served >= 5,
        "normal clients were served only {served} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_head_on_a_kept_alive_connection_is_cut_off() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.header_timeout = Duration::from_secs(1)).await;
    edge.edge.set_routes(table("web", &[&upstream]));

    let tls = edge.tls(&[b"http/1.1"]).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let first = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    writer.write_all(first.as_bytes()).await.unwrap();
    writer.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("web.1") {
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut chunk))
            .await
            .expect("the first answer came")
            .unwrap();
        assert!(read > 0, "closed before the first answer");
        answer.extend_from_slice(&chunk[..read]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));

    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}\r\n",
            "a".repeat(200)
        );
        for byte in head.bytes() {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut rest)).await;
    let after = started.elapsed();
    assert!(
        cut.is_ok(),
        "the slow second head was not cut off within 6 s"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "cut off after {after:?}, expected about the 1 s header timeout"
    );
    assert!(rest.is_empty(), "the slow request was answered");
    trickle.abort();
}

#[tokio::test]
async fn a_kept_alive_connection_outlives_the_header_timeout_between_requests() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|config| config.header_timeout = Duration::from_millis(300)).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    let mut sender = edge.h1().await.unwrap();
    let body = bytes::Bytes::from(vec![b'x'; 100_000]);
    let reply = support::send(&mut sender, "POST", "/body", body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("length 100000"), "{}", reply.body);
    // Idle (no request in flight, nothing sent) for several header timeouts: only the idle
    // timeout closes such a connection.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!sender.is_closed(), "the idle connection was closed early");
    let reply = support::send(&mut sender, "GET", "/", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}
