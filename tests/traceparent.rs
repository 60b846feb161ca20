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
