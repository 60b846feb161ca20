//! Per-route limits at the edge: a request rate per client address (429 with Retry-After at
//! the set rate and not before), a body size (413), allowed and denied networks (403); and
//! changing a route's limits is an edge-only change that restarts nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::procs::free_port;
use support::stack::{Stack, WAIT};

const APP: &str = r#"
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The status of each request to `path` of `host` (one curl, one connection, in order),
/// and the response headers of the last one.
fn statuses(
    stack: &Stack,
    https: u16,
    host: &str,
    count: usize,
    args: &[&str],
) -> (Vec<u16>, String) {
    let ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let url = format!("https://{host}:{https}/");
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &ca,
            "-D",
            "/dev/stderr",
        ])
        .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
        .args(args);
    for _ in 0..count {
        command.args(["-o", "/dev/null", "-w", "%{http_code}\n", &url]);
    }
    let output = command.output().unwrap();
    let codes = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().parse().unwrap_or(0))
        .collect();
    let head = String::from_utf8_lossy(&output.stderr).to_lowercase();
    let last = head.rsplit("http/").next().unwrap_or_default().to_string();
    (codes, last)
}

fn yaml(http: u16, https: u16, rate: &str) -> String {
    format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\nservices:\n  web:\n    command: /usr/bin/python3 app.py\n    dir: ./app\n    routes:\n      - host: rate.bow.localhost\n        limits: {{ rate: {rate}, burst: 5 }}\n      - {{ host: body.bow.localhost, limits: {{ body: 1K }} }}\n      - {{ host: inside.bow.localhost, limits: {{ allow: [10.0.0.0/8] }} }}\n      - {{ host: denied.bow.localhost, limits: {{ allow: [127.0.0.0/8], deny: [127.0.0.1] }} }}\n      - {{ host: local.bow.localhost, limits: {{ allow: ['127.0.0.1', '::1'] }} }}\n      - free.bow.localhost\n    health: {{ http: /, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    )
}

#[test]
fn limits_refuse_what_goes_over_them_and_nothing_else() {
    let (http, https) = (free_port(), free_port());
    let stack = Stack::new("edgelimits", &yaml(http, https, "5/s"));
    stack.write("app/app.py", APP);
    stack.up_ok();

    // A burst of 5 at once, then the 6th is refused with how long to wait.
    let (codes, head) = statuses(&stack, https, "rate.bow.localhost", 7, &[]);
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429], "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    // Under the rate (4/s for 2.5 s, the bucket refilled first): never refused.
    std::thread::sleep(Duration::from_millis(1200));
    let started = Instant::now();
    let mut steady = Vec::new();
    for n in 0..10u32 {
        let due = started + Duration::from_millis(250) * n;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        steady.extend(statuses(&stack, https, "rate.bow.localhost", 1, &[]).0);
    }
    assert!(steady.iter().all(|&code| code == 200), "{steady:?}");
    // Another route has no rate: 30 at once all go through.
    let (free, _) = statuses(&stack, https, "free.bow.localhost", 30, &[]);
    assert!(free.iter().all(|&code| code == 200), "{free:?}");

    let small = "x".repeat(1000);
    let large = "x".repeat(1100);
    let (codes, _) = statuses(&stack, https, "body.bow.localhost", 1, &["--data", &small]);
    assert_eq!(codes, [200]);
    // A declared length over the limit is refused before the body is read: with
    // `Expect: 100-continue` curl waits for the answer instead of sending (else the close
    // after the 413 may reset the connection under it).
    let (codes, _) = statuses(
        &stack,
        https,
        "body.bow.localhost",
        1,
        &["--http1.1", "-H", "Expect: 100-continue", "--data", &large],
    );
    assert_eq!(codes, [413]);
    // Chunked (no length told): refused as it goes over (413, or the connection closed
    // under curl while it was still sending), never passed on.
    let (codes, _) = statuses(
        &stack,
        https,
        "body.bow.localhost",
        1,
        &[
            "--data",
            &large,
            "-H",
            "Transfer-Encoding: chunked",
            "--http1.1",
        ],
    );
    assert!(codes == [413] || codes == [0], "{codes:?}");
    // The edge-wide limit (16 MiB) still holds elsewhere.
    let (codes, _) = statuses(&stack, https, "free.bow.localhost", 1, &["--data", &large]);
    assert_eq!(codes, [200]);

    for (host, expected) in [
        ("inside.bow.localhost", 403),
        ("denied.bow.localhost", 403),
        ("local.bow.localhost", 200),
    ] {
        let (codes, _) = statuses(&stack, https, host, 1, &[]);
        assert_eq!(codes, [expected], "{host}");
    }

    // A new rate is an edge-only change: planned as such, and the instance keeps running.
    let pid = stack.pid("web.1");
    let changed = format!("project: {}\n{}", stack.project, yaml(http, https, "100/s"));
    std::fs::write(&stack.file, changed).unwrap();
    let plan = stack.run(&["plan"], WAIT);
    assert!(plan.stdout.contains("(edge-only)"), "{}", plan.describe());
    assert!(!plan.stdout.contains("(replace)"), "{}", plan.describe());
    stack.up_ok();
    assert_eq!(
        stack.pid("web.1"),
        pid,
        "an edge-only change restarted the service"
    );
    // Emptied, then 150 ms later 3 requests pass: at 5/s, 1 at most would.
    statuses(&stack, https, "rate.bow.localhost", 8, &[]);
    std::thread::sleep(Duration::from_millis(150));
    let (codes, _) = statuses(&stack, https, "rate.bow.localhost", 3, &[]);
    assert_eq!(codes, [200, 200, 200], "the new rate applies");
    assert_eq!(stack.down().code, 0);
}

/// A client that writes its whole request before it reads (as Python's `requests` does, and
/// no `Expect: 100-continue`): a POST of `size` bytes (declared, or chunked) to `host`.
/// Prints the status line it then reads and the error its writing met (empty: none).
const KEEPS_SENDING: &str = r#"
import socket, ssl, sys
host, port, ca, size, chunked = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "chunked"
context = ssl.create_default_context(cafile=ca)
connection = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=host)
piece = b"x" * 65536
if chunked:
    head = f"POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    piece = b"10000\r\n" + piece + b"\r\n"
else:
    head = f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode()
sent_error = ""
try:
    connection.sendall(head)
    for _ in range(size // 65536):
        connection.sendall(piece)
    if chunked:
        connection.sendall(b"0\r\n\r\n")
except OSError as error:
    sent_error = repr(error)
try:
    answer = connection.recv(65536)
    print("STATUS", answer.split(b"\r\n")[0].decode(), "|", sent_error)
except OSError as error:
    print("FAILED", repr(error), "|", sent_error)
"#;

#[test]
fn an_early_413_reaches_a_client_that_keeps_sending() {
    let (http, https) = (free_port(), free_port());
    let stack = Stack::new("lingering", &yaml(http, https, "5/s"));
    stack.write("app/app.py", APP);
    stack.up_ok();
    let ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let script = stack.write("keeps_sending.py", KEEPS_SENDING);
    // 8 MiB against a 1 KiB limit: the edge answers 413 after the head. Without a lingering
    // close, the body still arriving makes the close a reset: the client's writing fails
    // ("Connection reset by peer") before it ever reads the answer.
    for attempt in 0..5 {
        let output = Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["body.bow.localhost", &https.to_string(), &ca])
            .args([&(8 << 20).to_string(), "length"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string();
        assert_eq!(
            said.trim(),
            "STATUS HTTP/1.1 413 Payload Too Large |",
            "#{attempt}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(stack.down().code, 0);
}
