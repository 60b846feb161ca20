//! The security headers the edge adds to HTTPS answers that lack them: the defaults (nosniff,
//! SAMEORIGIN framing, a strict referrer policy) over HTTP/1.1 and HTTP/2, changed or dropped
//! by `edge.security_headers`, and never over what the service sent itself.

mod support;

use std::process::Command;

use support::procs::free_port;
use support::stack::{Stack, WAIT};

const APP: &str = r#"
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        if self.path == "/framed":
            self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn head(stack: &Stack, https: u16, path: &str, http2: bool) -> String {
    let ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["--cacert", &ca])
        .args(["--resolve", &format!("hdr.bow.localhost:{https}:127.0.0.1")])
        .arg(format!("https://hdr.bow.localhost:{https}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).to_lowercase()
}

fn stack(label: &str, headers: &str) -> (Stack, u16) {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https}{headers} }}\nservices:\n  web:\n    command: /usr/bin/python3 app.py\n    dir: ./app\n    routes: [hdr.bow.localhost]\n    health: {{ http: /, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new(label, &yaml);
    stack.write("app/app.py", APP);
    stack.up_ok();
    (stack, https)
}

#[test]
fn default_security_headers_are_added_unless_the_service_sent_its_own() {
    let (stack, https) = stack("hdrdefault", "");
    for http2 in [false, true] {
        let answer = head(&stack, https, "/", http2);
        for line in [
            "x-content-type-options: nosniff",
            "x-frame-options: sameorigin",
            "referrer-policy: strict-origin-when-cross-origin",
            "strict-transport-security: max-age=31536000",
        ] {
            assert!(answer.contains(line), "http2 {http2}: {line} in {answer}");
        }
        let framed = head(&stack, https, "/framed", http2);
        assert!(framed.contains("x-frame-options: deny"), "{framed}");
        assert!(!framed.contains("x-frame-options: sameorigin"), "{framed}");
    }
    // An answer of the edge's own (no route) carries them too.
    let ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let output = Command::new("curl")
        .args([
            "-sSk",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
        ])
        .args([
            "--resolve",
            &format!("other.bow.localhost:{https}:127.0.0.1"),
        ])
        .arg(format!("https://other.bow.localhost:{https}/"))
        .output()
        .unwrap();
    let own = String::from_utf8_lossy(&output.stdout).to_lowercase();
    assert!(own.contains("x-content-type-options: nosniff"), "{own}");
    assert_eq!(stack.down().code, 0);
}

#[test]
fn security_headers_are_changed_and_dropped_by_the_file() {
    let (stack, https) = stack(
        "hdrchanged",
        ", security_headers: { X-Frame-Options: DENY, referrer-policy: '', content-security-policy: \"frame-ancestors 'none'\" }",
    );
    let head = head(&stack, https, "/", false);
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(!head.contains("referrer-policy"), "{head}");
    assert!(
        head.contains("content-security-policy: frame-ancestors 'none'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(stack.down().code, 0);
}
