//! Clients that offer h2 get HTTP/2; clients that do not get HTTP/1.1.

mod support;

use support::{TestEdge, Upstream, table};

async fn curl_version(edge: &TestEdge, flag: &str) -> String {
    let output = edge
        .curl(
            &[
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ],
            "/",
        )
        .await;
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn curl_http2_reports_http_2() {
    let upstream = Upstream::start("web.1").await;
    let edge = TestEdge::start(|_| {}).await;
    edge.edge.set_routes(table("web", &[&upstream]));
    assert_eq!(curl_version(&edge, "--http2").await, "2 200");
    assert_eq!(curl_version(&edge, "--http1.1").await, "1.1 200");
    let entries = edge.log.wait_for(2).await;
    let protocols: Vec<&str> = entries
        .iter()
        .map(|entry| entry.protocol.as_str())
        .collect();
    assert_eq!(protocols, ["HTTP/2.0", "HTTP/1.1"]);
}
