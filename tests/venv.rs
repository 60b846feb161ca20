//! `python: { requirements }` builds a virtualenv (cached in the state dir by a digest of the
//! requirements and the python version) and puts its `bin/` first on the service's PATH.

mod support;

use std::time::Duration;

use support::procs::http_get;
use support::stack::{Stack, instance};

const SERVER: &str = r#"
import os, sys
import six
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"six={six.__version__} prefix={sys.prefix} path={os.environ['PATH']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

print(f"six {six.__version__} from {six.__file__}", flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn venvs(stack: &Stack) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(stack.state_dir.join("venvs"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_service_gets_a_venv_with_its_requirements() {
    let stack = Stack::new(
        "venv",
        "
services:
  pyapp:
    command: python3 server.py
    dir: ./app
    python: { requirements: requirements.txt }
    health: { http: /, interval: 200ms, timeout: 2s, retries: 3 }
",
    );
    stack.write("app/requirements.txt", "six==1.16.0\n");
    stack.write("app/server.py", SERVER);

    // Building the venv downloads from PyPI: give it time.
    let ran = stack.up_within(Duration::from_secs(240));
    assert_eq!(
        ran.code,
        0,
        "bow up -d: {}\n{}",
        ran.describe(),
        stack.diagnose()
    );
    let status = stack.status_ok();
    let port = instance(&status, "pyapp.1").unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    let (code, body) = http_get(port, "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("six=1.16.0"), "{body}");
    let venv_root = stack.state_dir.join("venvs");
    let built = venvs(&stack);
    assert_eq!(
        built.len(),
        1,
        "one venv in {}: {built:?}",
        venv_root.display()
    );
    let prefix = venv_root.join(&built[0]);
    assert!(
        body.contains(&format!("prefix={}", prefix.display())),
        "python should run from the venv {}: {body}",
        prefix.display()
    );
    assert!(
        body.contains(&format!("path={}/bin:", prefix.display())),
        "the venv's bin/ should be first on PATH: {body}"
    );

    // The venv is cached: down and up again reuses it.
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    let again = stack.up_within(Duration::from_secs(120));
    assert_eq!(again.code, 0, "second bow up -d: {}", again.describe());
    assert_eq!(venvs(&stack), built, "the cached venv should be reused");
    let status = stack.status_ok();
    let port = instance(&status, "pyapp.1").unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    assert!(http_get(port, "/").1.contains("six=1.16.0"));
}
