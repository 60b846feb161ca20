//! The HTTP port answers 308 to HTTPS keeping host, path and query, and hands ACME
//! challenges to the pluggable handler.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bow_edge::{
    AcmeChallengeHandler, Backend, DiscardAccessLog, Edge, EdgeConfig, EdgeHooks, Route,
    RouteTable, TlsSource,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct OneChallenge;

impl AcmeChallengeHandler for OneChallenge {
    fn key_authorization(&self, host: &str, token: &str) -> Option<String> {
        (host == "app.localhost" && token == "tok123").then(|| "tok123.thumbprint".to_string())
    }
}

/// A table routing each of `hosts` (to no endpoint: only the host matters here).
fn routed(hosts: &[&str]) -> RouteTable {
    let routes = hosts
        .iter()
        .map(|host| Route::new(*host, "/", Backend::new("web", vec![])))
        .collect();
    RouteTable::new(routes).unwrap()
}

async fn start_edge() -> (Edge, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = EdgeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        TlsSource::SelfSigned {
            ca_dir: dir.path().join("ca"),
        },
    );
    let hooks = EdgeHooks {
        access_log: Arc::new(DiscardAccessLog),
        acme_challenges: Arc::new(OneChallenge),
    };
    (Edge::start_with(config, hooks).await.unwrap(), dir)
}

async fn plain_request(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the edge answers and closes")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn http_is_redirected_permanently_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let config = EdgeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        TlsSource::SelfSigned {
            ca_dir: dir.path().join("ca"),
        },
    );
    let hooks = EdgeHooks {
        access_log: Arc::new(DiscardAccessLog),
        acme_challenges: Arc::new(OneChallenge),
    };
    let edge = Edge::start_with(config, hooks).await.unwrap();
    edge.set_routes(routed(&["app.localhost"]));
    let https_port = edge.https_addr().port();

    let answer = plain_request(
        edge.http_addr(),
        "GET /a/b?x=1&y=two HTTP/1.1\r\nHost: app.localhost:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let expected = format!("location: https://app.localhost:{https_port}/a/b?x=1&y=two\r\n");
    assert!(answer.to_lowercase().contains(&expected), "{answer}");

    let challenge = plain_request(
        edge.http_addr(),
        "GET /.well-known/acme-challenge/tok123 HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(challenge.starts_with("HTTP/1.1 200"), "{challenge}");
    assert!(challenge.ends_with("tok123.thumbprint\n"), "{challenge}");

    let unknown = plain_request(
        edge.http_addr(),
        "GET /.well-known/acme-challenge/other HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    assert_eq!(edge.metrics().http_port_requests, 3);
}

#[tokio::test]
async fn only_routed_hosts_are_redirected() {
    let (edge, _dir) = start_edge().await;
    edge.set_routes(routed(&["app.localhost"]));
    let https_port = edge.https_addr().port();
    for (host, expected) in [
        ("APP.localhost.:8080", Some("app.localhost")),
        ("evil.example", None),
        ("evil.example:80", None),
        ("app.localhost@evil.example", None),
        ("app.localhost/evil", None),
        ("", None),
    ] {
        let head = format!("GET /p?q HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = plain_request(edge.http_addr(), &head).await;
        match expected {
            Some(host) => {
                assert!(answer.starts_with("HTTP/1.1 308"), "{host}: {answer}");
                let location = format!("location: https://{host}:{https_port}/p?q\r\n");
                assert!(answer.to_lowercase().contains(&location), "{answer}");
            }
            None => {
                assert!(answer.starts_with("HTTP/1.1 4"), "{host}: {answer}");
                assert!(!answer.to_lowercase().contains("location:"), "{answer}");
            }
        }
    }
    // A catch-all route takes any well-formed host.
    edge.set_routes(routed(&[bow_edge::ANY_HOST]));
    let answer = plain_request(
        edge.http_addr(),
        "GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let answer = plain_request(
        edge.http_addr(),
        "GET / HTTP/1.1\r\nHost: a\"b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}
