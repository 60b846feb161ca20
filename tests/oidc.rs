//! OpenID Connect sign-in at the edge (`auth: {oidc: …}`) against a real OpenID provider run
//! by the test: npm's `oidc-provider` (scripts/test.sh installs it) over HTTPS with a CA the
//! agent trusts through `SSL_CERT_FILE`, and a scripted browser (Python, a cookie jar) that
//! follows the redirects through the provider's login and consent pages. Checked: the
//! redirect carries PKCE (S256), state and nonce; an allowed user (by group, by email) gets
//! through with `X-Bow-User`/`X-Bow-Email` and a `Secure; HttpOnly; SameSite=Lax` session
//! cookie of bounded lifetime; a user who is not allowed gets 403; a forged identity header
//! never reaches the service; a tampered cookie is not a session; WebSocket upgrades pass the
//! same check; the client secret is in no file of the state dir.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::procs::free_port;
use support::secrets::{files_containing, init_and_set, use_key};
use support::stack::{Stack, WAIT};

/// Where scripts/test.sh installs `oidc-provider` (npm, pinned).
const MODULES: &str = "/var/cache/bow-tests/oidc-provider/node_modules";

/// The OpenID provider: one client, three accounts, dev login and consent pages.
const PROVIDER: &str = r#"
import Provider from 'oidc-provider';
import https from 'node:https';
import fs from 'node:fs';
const [port, cert, key, redirect] = process.argv.slice(2);
const accounts = {
  alice: { email: 'alice@example.com', groups: ['admins'] },
  bob: { email: 'bob@example.com', groups: ['guests'] },
  carol: { email: 'carol@example.com', groups: ['guests'] },
};
const provider = new Provider(`https://localhost:${port}`, {
  clients: [{
    client_id: 'wiki', client_secret: process.env.CLIENT_SECRET, redirect_uris: [redirect],
    grant_types: ['authorization_code'], response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true, methods: ['S256'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['preferred_username', 'groups'] },
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => accounts[id] && {
    accountId: id,
    claims: async () => ({ sub: id, preferred_username: id, email: accounts[id].email, email_verified: true, groups: accounts[id].groups }),
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['provider-cookie-key'] },
});
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log('READY'));
"#;

/// A browser: follows redirects with a cookie jar, fills the provider's login and consent
/// forms, and prints `STATUS <code>`, the final body, and `COOKIES <json>` (the edge's).
const BROWSER: &str = r#"
import http.cookiejar, json, re, socket, ssl, sys, time, urllib.error, urllib.parse, urllib.request
url, user, cas = sys.argv[1], sys.argv[2], sys.argv[3:]
resolve = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: resolve("127.0.0.1" if host.endswith(".localhost") else host, *a, **k)
context = ssl.create_default_context()
for ca in cas:
    context.load_verify_locations(ca)
jar = http.cookiejar.CookieJar()
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=context))
opener.addheaders = [("X-Bow-Email", "forged@example.com")]
def go(request):
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, response.geturl(), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.geturl(), error.read().decode()
status, at, body = go(url)
for prompt, fields in [("login", {"login": user, "password": "any"}), ("consent", {})]:
    form = re.search(r'action="([^"]+)"', body)
    if status != 200 or not form or f'value="{prompt}"' not in body:
        break
    data = urllib.parse.urlencode({"prompt": prompt, **fields}).encode()
    status, at, body = go(urllib.request.Request(urllib.parse.urljoin(at, form.group(1)), data=data))
print("STATUS", status)
print(body)
cookies = [{"name": c.name, "value": c.value, "secure": c.secure, "httponly": c.has_nonstandard_attr("HttpOnly"),
            "lifetime": (c.expires - time.time()) if c.expires else None, "domain": c.domain}
           for c in jar if c.name.startswith("__Host-bow")]
print("COOKIES", json.dumps(cookies))
"#;

/// Answers with the request's method and headers, one `name: value` a line, lower case.
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

struct Running(Child);

impl Drop for Running {
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

/// A CA and a localhost certificate it signed: (ca, cert, key).
fn provider_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=oidc test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
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
            "op.key",
            "-out",
            "op.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "op.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "op.pem",
        ],
    );
    (dir.join("ca.pem"), dir.join("op.pem"), dir.join("op.key"))
}

/// The scripted browser's run: (final status, body, the edge's cookies as JSON).
fn browse(script: &Path, url: &str, user: &str, cas: &[&Path]) -> (u16, String, serde_json::Value) {
    let output = Command::new("/usr/bin/python3")
        .arg(script)
        .args([url, user])
        .args(cas)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let status = text
        .lines()
        .find_map(|line| line.strip_prefix("STATUS "))
        .and_then(|code| code.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("{text}\n{}", String::from_utf8_lossy(&output.stderr));
        });
    let cookies = text
        .lines()
        .find_map(|line| line.strip_prefix("COOKIES "))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    (status, text, cookies)
}

/// `curl` of an edge URL: (status, headers and body).
fn curl(ca: &str, host: &str, https: u16, path: &str, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-i", "--cacert", ca])
        .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://{host}:{https}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (head, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), head.to_string())
}

#[test]
fn users_sign_in_through_a_real_openid_provider() {
    assert!(
        Path::new(MODULES).join("oidc-provider").is_dir(),
        "oidc-provider is not installed in {MODULES}: run scripts/test.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = provider_certificate(dir.path());
    let (op_port, http, https) = (free_port(), free_port(), free_port());
    let host = "wiki.bow.localhost";
    let redirect = format!("https://{host}:{https}/.bow/oidc/callback");
    let client_secret = format!("client-secret-{}", support::stack::now_ms());
    std::fs::write(dir.path().join("provider.mjs"), PROVIDER).unwrap();
    std::os::unix::fs::symlink(MODULES, dir.path().join("node_modules")).unwrap();
    let mut provider = Command::new("node")
        .current_dir(dir.path())
        .arg("provider.mjs")
        .args([
            &op_port.to_string(),
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            &redirect,
        ])
        .env("CLIENT_SECRET", &client_secret)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (scripts/test.sh installs nodejs)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", op_port)).is_err() {
        assert!(Instant::now() < deadline, "the provider did not listen");
        assert!(
            provider.try_wait().unwrap().is_none(),
            "the provider exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _provider = Running(provider);

    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\nservices:\n  wiki:\n    command: /usr/bin/python3 app.py\n    dir: ./app\n    routes:\n      - host: {host}\n        auth: {{ oidc: {{ issuer: \"https://localhost:{op_port}\", client_id: wiki, client_secret_secret: oidc_client, allowed: [admins, carol@example.com] }} }}\n    health: {{ http: /, interval: 200ms, timeout: 1s, retries: 2 }}\n"
    );
    let stack = Stack::new("oidc", &yaml);
    stack.write("app/app.py", ECHO);
    stack.write("browser.py", BROWSER);
    stack.set_env("SSL_CERT_FILE", ca.to_str().unwrap());
    use_key(&stack, "me");
    init_and_set(&stack, &[("oidc_client", &client_secret)]);
    stack.up_ok();
    let edge_ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let script = stack.dir.path().join("browser.py");
    let url = format!("https://{host}:{https}/wiki/page?x=1");
    let cas = [Path::new(&edge_ca), ca.as_path()];

    // Not signed in: a page is sent to the provider with PKCE, state and nonce; an API call
    // or a WebSocket upgrade is told to sign in.
    let (status, head) = curl(&edge_ca, host, https, "/wiki/page", &[]);
    assert_eq!(status, 302, "{head}");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_default()
        .to_string();
    assert!(
        location.starts_with(&format!("https://localhost:{op_port}/auth?")),
        "{head}"
    );
    for part in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "client_id=wiki",
        "scope=openid",
    ] {
        assert!(location.contains(part), "{part}: {location}");
    }
    let (status, _) = curl(&edge_ca, host, https, "/api", &["-X", "POST"]);
    assert_eq!(status, 401);
    let upgrade = [
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "--http1.1",
    ];
    let (status, _) = curl(&edge_ca, host, https, "/socket", &upgrade);
    assert_eq!(status, 401, "a WebSocket upgrade without a session");

    // alice (group admins) signs in through the provider's pages and lands where she went.
    let (status, text, cookies) = browse(&script, &url, "alice", &cas);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("x-bow-user: alice\n"), "{text}");
    assert!(text.contains("x-bow-email: alice@example.com\n"), "{text}");
    assert!(
        !text.contains("forged"),
        "a forged identity header reached the service: {text}"
    );
    let session = cookies
        .as_array()
        .and_then(|all| {
            all.iter().find(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("__Host-bow-session"))
            })
        })
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"))
        .clone();
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httponly"], true, "{session}");
    let lifetime = session["lifetime"].as_f64().unwrap();
    assert!(
        (8.0 * 3600.0 - 60.0..=8.0 * 3600.0).contains(&lifetime),
        "{session}"
    );
    assert!(
        !session["value"].as_str().unwrap().contains("alice"),
        "sealed, not readable"
    );

    // The session goes with the cookie: also for a WebSocket upgrade; a changed byte is no
    // session.
    let cookie = format!(
        "Cookie: {}={}",
        session["name"].as_str().unwrap(),
        session["value"].as_str().unwrap()
    );
    let (status, body) = curl(&edge_ca, host, https, "/again", &["-H", &cookie]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-bow-user: alice"), "{body}");
    let mut with_upgrade = upgrade.to_vec();
    with_upgrade.extend(["-H", cookie.as_str()]);
    let (status, body) = curl(&edge_ca, host, https, "/socket", &with_upgrade);
    assert_ne!(status, 401, "{body}");
    assert!(
        body.contains("x-bow-user: alice"),
        "the upgrade reached the service signed in: {body}"
    );
    let mut tampered = cookie.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = curl(&edge_ca, host, https, "/again", &["-H", &tampered]);
    assert_eq!(status, 302, "a tampered cookie must not be a session");

    // carol is allowed by her email; bob by nothing.
    let (status, text, _) = browse(&script, &url, "carol", &cas);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("x-bow-user: carol\n"), "{text}");
    let (status, text, _) = browse(&script, &url, "bob", &cas);
    assert_eq!(status, 403, "{text}");

    let found = files_containing(&stack.state_dir, client_secret.as_bytes());
    assert!(found.is_empty(), "the client secret is in {found:?}");
    assert_eq!(stack.down().code, 0);
}
