//! One normaliser decides the path for routing and for forwarding: dot segments removed,
//! unreserved characters decoded, hex in upper case; targets that an upstream could read as
//! another path (an encoded slash or backslash next to a dot segment, a backslash, NUL, a
//! bad escape) are refused. With a route `app.localhost/files`, no spelling of `..` reaches
//! the files service outside `/files`, over HTTP/1.1 and HTTP/2 alike.

mod support;

use std::time::Duration;

use bow_edge::{Backend, Route, RouteTable};
use support::{HOST, RecordingUpstream, TestEdge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Services {
    edge: TestEdge,
    front: RecordingUpstream,
    files: RecordingUpstream,
    api: RecordingUpstream,
    x: RecordingUpstream,
}

impl Services {
    async fn start() -> Services {
        let edge = TestEdge::start(|config| config.idle_timeout = Duration::from_millis(400)).await;
        let front = RecordingUpstream::start().await;
        let files = RecordingUpstream::start().await;
        let api = RecordingUpstream::start().await;
        let x = RecordingUpstream::start().await;
        let route = |prefix: &str, name: &str, upstream: &RecordingUpstream| {
            let endpoint = bow_edge::Endpoint::new(format!("{name}.1"), upstream.addr);
            Route::new(HOST, prefix, Backend::new(name, vec![endpoint]))
        };
        edge.edge.set_routes(
            RouteTable::new(vec![
                route("/", "front", &front),
                route("/files", "files", &files),
                route("/api", "api", &api),
                route("/x", "x", &x),
            ])
            .unwrap(),
        );
        Services {
            edge,
            front,
            files,
            api,
            x,
        }
    }

    /// The targets each service received, in order, and forgets them.
    fn received(&self) -> [(String, Vec<String>); 4] {
        let take = |name: &str, upstream: &RecordingUpstream| {
            let targets = upstream
                .recorded()
                .into_iter()
                .flat_map(|recorded| recorded.requests)
                .map(|request| request.target)
                .collect();
            upstream.clear();
            (name.to_string(), targets)
        };
        [
            take("front", &self.front),
            take("files", &self.files),
            take("api", &self.api),
            take("x", &self.x),
        ]
    }

    /// Sends `target` over HTTP/1.1 and answers the status code and who got which target.
    async fn h1(&self, target: &str) -> (u16, Vec<(String, String)>) {
        let mut tls = self.edge.tls(&[b"http/1.1"]).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer));
        let _ = read.await.expect("the edge closes the connection");
        let answer = String::from_utf8_lossy(&answer);
        let status = answer
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, self.flatten())
    }

    /// Sends `target` over HTTP/2 (curl, path as is).
    async fn h2(&self, target: &str) -> (u16, Vec<(String, String)>) {
        let output = self
            .edge
            .curl(
                &[
                    "--http2",
                    "--path-as-is",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version} %{http_code}",
                ],
                target,
            )
            .await;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(text.starts_with("2 "), "not HTTP/2: {text}");
        (text[2..].parse().unwrap_or(0), self.flatten())
    }

    fn flatten(&self) -> Vec<(String, String)> {
        self.received()
            .into_iter()
            .flat_map(|(name, targets)| {
                targets
                    .into_iter()
                    .map(move |target| (name.clone(), target))
            })
            .collect()
    }
}

fn got(service: &str, target: &str) -> Vec<(String, String)> {
    vec![(service.to_string(), target.to_string())]
}

#[tokio::test]
async fn dot_segments_never_leave_a_prefix() {
    let services = Services::start().await;
    for send in ["h1", "h2"] {
        let ask = |target: &'static str| {
            let services = &services;
            async move {
                if send == "h1" {
                    services.h1(target).await
                } else {
                    services.h2(target).await
                }
            }
        };
        // Routed by the normalised path, which is also what the upstream gets.
        assert_eq!(
            ask("/files/../secret.txt").await,
            (200, got("front", "/secret.txt")),
            "{send}"
        );
        assert_eq!(
            ask("/files/%2e%2e/secret.txt").await,
            (200, got("front", "/secret.txt")),
            "{send}"
        );
        assert_eq!(
            ask("/files/%2E./secret.txt").await,
            (200, got("front", "/secret.txt")),
            "{send}"
        );
        assert_eq!(
            ask("/x/../api/y").await,
            (200, got("api", "/api/y")),
            "{send}"
        );
        assert_eq!(
            ask("/files/./a/../b?q=/../%2e").await,
            (200, got("files", "/files/b?q=/../%2e")),
            "{send}"
        );
        assert_eq!(
            ask("/fil%65s/%7euser/a%2fb").await,
            (200, got("files", "/files/~user/a%2Fb")),
            "{send}"
        );
        assert_eq!(ask("/files/..").await, (200, got("front", "/")), "{send}");
        // What an upstream could read as another path is refused.
        for refused in [
            "/files/..%2fsecret.txt",
            "/files/%2e%2e%2Fsecret.txt",
            "/files/..%5csecret.txt",
            "/files/%00",
            "/files/%zz",
            "/files/%4",
        ] {
            let (status, reached) = ask(refused).await;
            assert_eq!((status, reached), (400, vec![]), "{send} {refused}");
        }
    }
    // Raw backslashes and fragments only come over HTTP/1.1 (curl would encode them).
    for refused in ["/files\\..\\secret.txt", "/files/a#b"] {
        assert_eq!(services.h1(refused).await, (400, vec![]), "{refused}");
    }
}
