//! Outside APIs (`proxy: {to, inject_headers}`): a service calls `http://geo-api` by name
//! without holding the key; a real HTTPS upstream (its certificate from a CA the test
//! trusts through `SSL_CERT_FILE`) sees the injected key and not the caller's forged one;
//! the key is in no response, log, event, plan or state file; an upstream whose
//! certificate does not verify gets no request (502 and an event say why); a new key is an
//! edge-only change. Also: a new users secret of a basic-auth route restarts nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::procs::free_port;
use support::secrets::{files_containing, init_and_set, run_with_stdin, use_key};
use support::stack::{Stack, WAIT};

/// An HTTPS server: records each request's path and headers as a JSON line in `record`,
/// answers 200 with a body and, to test scrubbing, an `X-Echo` header carrying the key.
const UPSTREAM: &str = r#"
import http.server, json, ssl, sys
port, cert, key, record = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(record, "a") as out:
            out.write(json.dumps({"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}) + "\n")
        body = ("outside says hi " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo", "you sent " + self.headers.get("X-API-Key", ""))
        self.send_header("X-Plain", "yes")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// The calling service: `/call` calls the outside API by name, with a forged key, and
/// answers what came back (status, headers, body); `/health` is its check.
const CALLER: &str = r#"
import http.server, os, urllib.request, urllib.error
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/call":
            request = urllib.request.Request("http://geo-api:8080/things?q=1", headers={"X-API-Key": "forged"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    text = f"{response.status}\n{response.headers}\n{response.read().decode()}"
            except urllib.error.HTTPError as error:
                text = f"{error.code}\n{error.headers}\n{error.read().decode()}"
            except Exception as error:
                text = f"failed: {error!r}"
        else:
            text = "hi"
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let made = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "openssl {args:?}");
}

/// A CA (`<name>-ca.pem`) and a leaf for localhost it signed (`<name>.pem`, `<name>.key`).
fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (leaf, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let subject = format!("/CN={name} test CA");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-keyout", &ca_key, "-out", &ca,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            &leaf,
        ],
    );
    (dir.join(ca), dir.join(leaf), dir.join(key))
}

fn start_upstream(dir: &Path, port: u16, cert: &Path, key: &Path, record: &Path) -> Upstream {
    let script = dir.join("upstream.py");
    std::fs::write(&script, UPSTREAM).unwrap();
    let child = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(cert)
        .arg(key)
        .arg(record)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the upstream did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Upstream(child)
}

/// `curl` of `url`: status line, headers and body as one text.
fn curl(args: &[&str], url: &str) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-i"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The `address:port` the agent serves `service` at.
fn address_of(stack: &Stack, service: &str) -> String {
    let status = stack.status_ok();
    status["discovery"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["service"] == service))
        .and_then(|d| d["address"].as_str())
        .unwrap_or_else(|| panic!("no discovery entry for {service}: {status}"))
        .to_string()
}

fn htpasswd(user: &str, password: &str) -> String {
    let output = Command::new("htpasswd")
        .args(["-nbB", "-C", "5", user, password])
        .output()
        .expect("htpasswd (apache2-utils) is installed by scripts/test.sh");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn services_call_an_outside_api_by_name_and_never_hold_its_key() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_leaf(certs.path(), "trusted");
    let (_, rogue_cert, rogue_key) = ca_and_leaf(certs.path(), "rogue");
    let (good_port, rogue_port) = (free_port(), free_port());
    let (record, rogue_record) = (certs.path().join("seen"), certs.path().join("rogue-seen"));
    let _good = start_upstream(certs.path(), good_port, &cert, &key, &record);
    let _rogue = start_upstream(
        certs.path(),
        rogue_port,
        &rogue_cert,
        &rogue_key,
        &rogue_record,
    );

    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\nservices:\n  geo-api:\n    port: 8080\n    proxy: {{ to: \"https://localhost:{good_port}/v2\", inject_headers: {{ X-API-Key: \"${{secret:geo_key}}\", X-Client: bow }} }}\n  rogue-api:\n    port: 8081\n    proxy: {{ to: \"https://localhost:{rogue_port}\", inject_headers: {{ X-API-Key: \"${{secret:geo_key}}\" }} }}\n  caller:\n    command: /usr/bin/python3 caller.py\n    dir: ./caller\n    routes:\n      - {{ host: caller.bow.localhost, auth: {{ basic: {{ users_secret: users }} }} }}\n    health: {{ http: /health, interval: 200ms, timeout: 1s, retries: 2, start_period: 10s }}\n"
    );
    let stack = Stack::new("outside-api", &yaml);
    stack.write("caller/caller.py", CALLER);
    stack.set_env("SSL_CERT_FILE", ca.to_str().unwrap());
    use_key(&stack, "me");
    let secret = format!("k3y-{:x}", support::stack::now_ms() * 7919);
    init_and_set(
        &stack,
        &[
            ("geo_key", secret.as_str()),
            ("users", &htpasswd("alice", "first")),
        ],
    );
    stack.up_ok();
    let caller_pid = stack.pid("caller.1");
    let edge_ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let through_edge = |password: &str| {
        curl(
            &[
                "--cacert",
                &edge_ca,
                "--resolve",
                &format!("caller.bow.localhost:{https}:127.0.0.1"),
                "-u",
                &format!("alice:{password}"),
            ],
            &format!("https://caller.bow.localhost:{https}/call"),
        )
    };

    // The caller reaches http://geo-api by name; the outside API answers through the agent.
    let called = through_edge("first");
    assert!(called.contains("200\n"), "{called}");
    assert!(
        called.contains("outside says hi /v2/things?q=1"),
        "{called}"
    );
    assert!(called.to_lowercase().contains("x-plain: yes"), "{called}");
    assert!(!called.contains(&secret), "the key came back: {called}");
    let seen = std::fs::read_to_string(&record).unwrap();
    assert!(
        seen.contains(&format!("[\"x-api-key\", \"{secret}\"]")),
        "{seen}"
    );
    assert!(seen.contains("[\"x-client\", \"bow\"]"), "{seen}");
    assert!(
        seen.contains(&format!("[\"host\", \"localhost:{good_port}\"]")),
        "{seen}"
    );
    assert!(
        !seen.contains("forged"),
        "the caller's own key went on: {seen}"
    );

    // Called directly at its address: the same, and no header carries the key back.
    let geo = address_of(&stack, "geo-api");
    let direct = curl(&[], &format!("http://{geo}/direct"));
    assert!(direct.starts_with("HTTP/1.1 200"), "{direct}");
    assert!(
        !direct.contains(&secret) && !direct.to_lowercase().contains("x-echo"),
        "{direct}"
    );

    // A certificate that does not chain to a trusted root: no request reaches it.
    let rogue = address_of(&stack, "rogue-api");
    let refused = curl(&[], &format!("http://{rogue}/x"));
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    assert!(!rogue_record.exists(), "the rogue upstream got a request");
    stack.wait_event("a refused certificate", Duration::from_secs(10), |e| {
        e.kind == "edge-warning"
            && e.service.as_deref() == Some("rogue-api")
            && e.message.to_lowercase().contains("certificate")
    });

    // A new key: an edge-only change (nothing restarts), taken at once. A new users secret
    // of the basic-auth route: edge-only too.
    let new_secret = format!("{secret}-2");
    for (name, value) in [
        ("geo_key", new_secret.clone()),
        ("users", htpasswd("alice", "second")),
    ] {
        let set = run_with_stdin(&stack, &["secret", "set", name], value.as_bytes());
        assert_eq!(set.code, 0, "{}", set.describe());
    }
    let plan = stack.run(&["plan"], WAIT);
    assert_eq!(plan.code, 2, "{}", plan.describe());
    assert!(plan.stdout.contains("edge-only"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("replace"), "{}", plan.stdout);
    stack.up_ok();
    assert_eq!(stack.pid("caller.1"), caller_pid, "the caller restarted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let called = through_edge("second");
        if called.contains("outside says hi") {
            break;
        }
        assert!(Instant::now() < deadline, "{called}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        through_edge("first").contains("401"),
        "the old password still works"
    );
    let seen = std::fs::read_to_string(&record).unwrap();
    let last = seen.lines().last().unwrap();
    assert!(last.contains(&new_secret), "{last}");

    // The key is nowhere bow writes or prints.
    for needle in [&secret, &new_secret] {
        let found = files_containing(&stack.state_dir, needle.as_bytes());
        assert!(found.is_empty(), "the key is in {found:?}");
        for args in [
            &["events"][..],
            &["status", "--json"],
            &["config"],
            &["plan"],
            &["logs"],
        ] {
            let ran = stack.run(args, WAIT);
            assert!(
                !ran.stdout.contains(needle.as_str()) && !ran.stderr.contains(needle.as_str()),
                "bow {args:?} printed the key"
            );
        }
    }
    assert_eq!(stack.down().code, 0);
}
