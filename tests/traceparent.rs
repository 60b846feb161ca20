//! W3C trace context through the edge: a request's `traceparent` reaches the instance with the
//! client's trace id and the edge's own span id; a request without one gets a new trace; the
//! access log records each request's trace id. Over HTTP/2 and HTTP/1.1.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::procs::{free_port, wait_for};
use support::stack::Stack;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn get(https: u16, extra: &[&str]) -> Value {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-k", "--resolve"])
        .arg(format!("trace.bow.localhost:{https}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://trace.bow.localhost:{https}/"))
        .output()
        .expect("curl");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The fields of a `traceparent` value: version, trace id, parent id, flags.
fn fields(value: &Value) -> Vec<String> {
    let text = value["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the instance got no traceparent: {value}"));
    let parts: Vec<String> = text.split('-').map(str::to_string).collect();
    assert_eq!(parts.len(), 4, "{text}");
    assert_eq!(
        (
            parts[0].len(),
            parts[1].len(),
            parts[2].len(),
            parts[3].len()
        ),
        (2, 32, 16, 2),
        "{text}"
    );
    parts
}

#[test]
fn traceparent_reaches_the_instance_and_the_access_log() {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    routes: [\"trace.bow.localhost\"]\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("trace", &yaml);
    stack.up_ok();

    let header = format!("traceparent: {CLIENT}");
    let continued = fields(&get(https, &["--http2", "-H", &header]));
    assert_eq!(continued[0], "00");
    assert_eq!(continued[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        continued[2], "00f067aa0ba902b7",
        "the edge's span is its own"
    );
    assert_eq!(continued[3], "01");

    let fresh = fields(&get(https, &["--http1.1"]));
    assert_ne!(fresh[1], continued[1]);
    assert_ne!(fresh[1], "0".repeat(32));
    let invalid = fields(&get(
        https,
        &["--http1.1", "-H", "traceparent: 00-not-a-trace-01"],
    ));
    assert_ne!(invalid[1], fresh[1]);

    let log_file = stack.state_dir.join("edge/access.log");
    let mut lines = Vec::new();
    wait_for("the access log lines", Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["host"] == "trace.bow.localhost")
            .collect::<Vec<Value>>();
        lines.len() >= 3
    });
    let traces: Vec<&str> = lines
        .iter()
        .map(|entry| entry["trace_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        traces,
        [
            continued[1].as_str(),
            fresh[1].as_str(),
            invalid[1].as_str()
        ],
        "{lines:?}"
    );
    assert_eq!(lines[0]["protocol"], "HTTP/2.0");
    assert_eq!(lines[1]["protocol"], "HTTP/1.1");

    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

/// An OTLP/HTTP receiver on a free loopback port that keeps every JSON body POSTed to
/// `/v1/traces` (the collector's side of the protocol, JSON encoding).
fn collector() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let bodies = kept.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let right = line.starts_with("POST /v1/traces ");
            let (mut length, mut json) = (0, false);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
                let lower = header.to_ascii_lowercase();
                if let Some(n) = lower.strip_prefix("content-length:") {
                    length = n.trim().parse().unwrap_or(0);
                }
                json |= lower.starts_with("content-type: application/json");
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && right
                && json
                && let Ok(value) = serde_json::from_slice::<Value>(&body)
            {
                bodies.lock().unwrap().push(value);
            }
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        }
    });
    (port, kept)
}

#[test]
fn the_edge_exports_its_spans_over_otlp() {
    let (http, https) = (free_port(), free_port());
    let (port, bodies) = collector();
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https}, otlp: {{ endpoint: \"http://127.0.0.1:{port}\" }} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    routes: [\"trace.bow.localhost\"]\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("otlp", &yaml);
    stack.up_ok();
    let continued = get(https, &["-H", &format!("traceparent: {CLIENT}"), "--http2"]);
    let edge_span = fields(&continued)[2].clone();
    let fresh = get(https, &[]);
    let fresh_trace = fields(&fresh)[1].clone();
    let spans = || -> Vec<Value> {
        bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|body| {
                body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    };
    wait_for(
        "two spans at the collector",
        Duration::from_secs(20),
        || spans().len() >= 2,
    );
    let spans = spans();
    let span = spans
        .iter()
        .find(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .unwrap_or_else(|| panic!("{spans:?}"));
    // The client's span is the parent; the edge's span is what the instance saw as its parent.
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7", "{span}");
    assert_eq!(span["spanId"], edge_span.as_str(), "{span}");
    assert_eq!(span["kind"], 2);
    assert_eq!(span["name"], "GET trace.bow.localhost");
    let attributes = span["attributes"].to_string();
    for needle in [
        "\"bow.service\"",
        "\"web\"",
        "\"http.response.status_code\"",
        "\"200\"",
    ] {
        assert!(attributes.contains(needle), "{attributes}");
    }
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end > start, "{span}");
    // A trace that began at the edge has no parent.
    let root = spans
        .iter()
        .find(|s| s["traceId"] == fresh_trace.as_str())
        .unwrap_or_else(|| panic!("{spans:?}"));
    assert!(root.get("parentSpanId").is_none(), "{root}");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
