//! Sign-in at the edge, per route: HTTP Basic against `htpasswd -B` lines in a bow secret
//! (right, wrong and missing credentials, over HTTP/1.1 and HTTP/2; bcrypt paid once per
//! user and password, not per request), forward auth asking a service of the stack (allow,
//! deny, a sign-in redirect passed back, identity headers put upstream), and identity
//! headers a client sends itself never reaching a service, on any route.

mod support;

use std::process::Command;
use std::time::Instant;

use support::procs::free_port;
use support::secrets::{init_and_set, use_key};
use support::stack::{Stack, WAIT};

/// Answers with the request's headers, one `name: value` a line, lower case.
const ECHO: &str = r#"
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The auth service: the cookie `session=good` is bob, `/admin` is for nobody, anyone else
/// is sent to sign in.
const AUTH: &str = r#"
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        cookie = self.headers.get("Cookie", "")
        uri = self.headers.get("X-Forwarded-Uri", "")
        method = self.headers.get("X-Forwarded-Method", "")
        if self.path == "/health":
            self.send_response(200)
        elif "session=good" in cookie and uri.startswith("/admin"):
            self.send_response(403)
        elif "session=good" in cookie:
            self.send_response(200)
            self.send_header("X-Auth-User", "bob")
            self.send_header("X-Auth-Method", method)
        else:
            self.send_response(302)
            self.send_header("Location", "https://login.example/?rd=" + uri)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// One answer: status, headers (lower case) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn curl(stack: &Stack, https: u16, host: &str, path: &str, args: &[&str]) -> Answer {
    let ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "/dev/stderr"])
        .args(["--cacert", &ca])
        .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://{host}:{https}{path}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        head: String::from_utf8_lossy(&output.stderr).to_lowercase(),
        body: body.to_string(),
    }
}

fn htpasswd(user: &str, password: &str, cost: u32) -> String {
    let output = Command::new("htpasswd")
        .args(["-nbB", "-C", &cost.to_string(), user, password])
        .output()
        .expect("htpasswd (apache2-utils) is installed by scripts/test.sh");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn basic_auth_lets_right_credentials_in_and_nobody_else() {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\nservices:\n  web:\n    command: /usr/bin/python3 app.py\n    dir: ./app\n    routes:\n      - {{ host: auth.bow.localhost, auth: {{ basic: {{ users_secret: users }} }} }}\n      - open.bow.localhost\n    health: {{ http: /, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("basicauth", &yaml);
    stack.write("app/app.py", ECHO);
    use_key(&stack, "me");
    // Cost 10: about 60 ms a verification in a release build, several times that in debug.
    let users = format!(
        "{}\n{}\n",
        htpasswd("alice", "open sesame", 10),
        htpasswd("carol", "other", 5)
    );
    init_and_set(&stack, &[("users", &users)]);
    stack.up_ok();
    let host = "auth.bow.localhost";

    let missing = curl(&stack, https, host, "/", &[]);
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(
        missing
            .head
            .contains("www-authenticate: basic realm=\"auth.bow.localhost\""),
        "{}",
        missing.head
    );
    let wrong = curl(&stack, https, host, "/", &["-u", "alice:open sesamE"]);
    assert_eq!(wrong.status, 401);
    let unknown = curl(&stack, https, host, "/", &["-u", "mallory:open sesame"]);
    assert_eq!(unknown.status, 401);
    let other = curl(&stack, https, host, "/", &["-u", "carol:open sesame"]);
    assert_eq!(other.status, 401, "a password of another user");
    for http2 in ["--http1.1", "--http2"] {
        let right = curl(
            &stack,
            https,
            host,
            "/x",
            &["-u", "alice:open sesame", http2, "-H", "X-Bow-User: root"],
        );
        assert_eq!(right.status, 200, "{http2}: {}", right.body);
        assert!(right.body.contains("x-bow-user: alice\n"), "{}", right.body);
        assert!(
            !right.body.contains("root"),
            "forged identity: {}",
            right.body
        );
    }
    // A route without auth: a client's X-Bow-User never reaches the service.
    let open = curl(
        &stack,
        https,
        "open.bow.localhost",
        "/",
        &["-H", "X-Bow-User: alice", "-H", "x-bow-email: a@b.c"],
    );
    assert_eq!(open.status, 200);
    assert!(!open.body.contains("x-bow-"), "{}", open.body);

    // bcrypt is paid once per user and password: 30 requests in far less than 30 bcrypts
    // (hashing costs what verifying does).
    let verify = {
        let started = Instant::now();
        htpasswd("x", "y", 10);
        started.elapsed()
    };
    let started = Instant::now();
    let url = format!("https://{host}:{https}/");
    let mut args = vec!["-u", "alice:open sesame", "-o", "/dev/null"];
    args.extend(std::iter::repeat_n(url.as_str(), 29));
    let many = curl(&stack, https, host, "/", &args);
    assert_eq!(many.status, 200);
    let took = started.elapsed();
    eprintln!("30 signed-in requests: {took:?}; one cost-10 bcrypt: {verify:?}");
    assert!(
        took < verify * 10,
        "30 requests took {took:?}; one cost-10 verification takes {verify:?}"
    );
    let log = std::fs::read_to_string(stack.state_dir.join("edge/access.log")).unwrap();
    assert!(log.contains("\"status\":401"), "{log}");
    assert!(!log.contains("sesame") && !log.contains("b3Blb"), "{log}");
    assert_eq!(stack.down().code, 0);
}

#[test]
fn forward_auth_asks_a_service_of_the_stack() {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\nservices:\n  auth:\n    command: /usr/bin/python3 auth.py\n    dir: ./auth\n    port: {auth_port}\n    health: {{ http: /health, interval: 200ms, timeout: 1s, retries: 2 }}\n  web:\n    command: /usr/bin/python3 app.py\n    dir: ./app\n    routes:\n      - host: fwd.bow.localhost\n        auth: {{ forward: {{ service: auth, path: /verify, headers: [X-Auth-User, X-Auth-Method] }} }}\n    health: {{ http: /, interval: 200ms, timeout: 1s, retries: 2 }}\n",
        auth_port = free_port()
    );
    let stack = Stack::new("fwdauth", &yaml);
    stack.write("app/app.py", ECHO);
    stack.write("auth/auth.py", AUTH);
    stack.up_ok();
    let host = "fwd.bow.localhost";

    let anonymous = curl(
        &stack,
        https,
        host,
        "/page?q=1",
        &["-H", "X-Auth-User: root"],
    );
    assert_eq!(anonymous.status, 302, "{}", anonymous.body);
    assert!(
        anonymous
            .head
            .contains("location: https://login.example/?rd=/page?q=1"),
        "{}",
        anonymous.head
    );
    let signed_in = curl(
        &stack,
        https,
        host,
        "/page",
        &[
            "-b",
            "session=good",
            "-H",
            "X-Auth-User: root",
            "-X",
            "POST",
        ],
    );
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    assert!(
        signed_in.body.contains("x-auth-user: bob\n"),
        "{}",
        signed_in.body
    );
    assert!(
        signed_in.body.contains("x-auth-method: POST\n"),
        "{}",
        signed_in.body
    );
    assert!(!signed_in.body.contains("root"), "{}", signed_in.body);
    let denied = curl(&stack, https, host, "/admin/x", &["-b", "session=good"]);
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(!denied.body.contains("x-auth-user"), "{}", denied.body);
    assert_eq!(stack.down().code, 0);
}

#[test]
fn a_route_that_cannot_check_is_closed_not_open() {
    // The users secret holds no valid line: the route answers 503, never the service.
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\nservices:\n  web:\n    command: /usr/bin/python3 app.py\n    dir: ./app\n    routes:\n      - {{ host: closed.bow.localhost, auth: {{ basic: {{ users_secret: users }} }} }}\n    health: {{ http: /, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("authclosed", &yaml);
    stack.write("app/app.py", ECHO);
    use_key(&stack, "me");
    init_and_set(&stack, &[("users", "alice:plain-text-password\n")]);
    stack.up_ok();
    let answer = curl(
        &stack,
        https,
        "closed.bow.localhost",
        "/",
        &["-u", "alice:plain-text-password"],
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(!answer.body.contains("plain-text"), "{}", answer.body);
    let events = stack.events();
    let warning = events
        .iter()
        .find(|e| e.kind == "edge-warning" && e.message.contains("closed.bow.localhost"));
    let warning = warning.unwrap_or_else(|| panic!("{}", support::stack::show_events(&events)));
    assert!(warning.message.contains("line 1"), "{}", warning.message);
    assert!(
        !warning.message.contains("plain-text"),
        "{}",
        warning.message
    );
    assert_eq!(stack.down().code, 0);
}
