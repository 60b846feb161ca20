//! TLS passthrough by SNI (`tcp: {port, sni: [names]}`): two services share one port of the
//! host, each connection goes, still encrypted, to the service whose name the ClientHello
//! asks for (the client verifies the service's own certificate, from a CA the edge never
//! saw); an unknown name or no name gets the connection closed; and the names are checked by
//! validation.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::procs::free_port;
use support::stack::{Stack, WAIT};

/// An HTTPS server on $PORT with the certificate and key given, answering its name.
const TLS_APP: &str = r#"
import http.server, os, ssl, sys
name, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"served by {name}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn openssl(dir: &Path, args: &[&str]) {
    let made = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "openssl {args:?}");
}

/// A CA (`ca.pem`) and, for each name, `<name>.pem` and `<name>.key` it signed.
fn certificates(dir: &Path, names: &[&str]) {
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
            "/CN=passthrough test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for name in names {
        std::fs::write(
            dir.join("leaf.ext"),
            format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        let (cert, key, csr) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
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
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                &cert,
            ],
        );
    }
}

/// `curl https://<name>:<port>/` trusting only `ca`; (exit code, body).
fn fetch(name: &str, port: u16, ca: &Path) -> (i32, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg(format!("https://{name}:{port}/"))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[test]
fn one_port_passes_tls_to_the_service_its_server_name_asks_for() {
    let certs = tempfile::tempdir().unwrap();
    let names = ["a.bow.localhost", "b.bow.localhost", "b2.bow.localhost"];
    certificates(certs.path(), &names);
    let port = free_port();
    let service = |name: &str, cert: &str, sni: &str| {
        format!(
            "  {name}:\n    command: /usr/bin/python3 app.py {name} {cert}.pem {cert}.key\n    dir: ./app\n    health: {{ tcp: true, interval: 200ms }}\n    tcp: {{ port: {port}, sni: [{sni}] }}\n"
        )
    };
    let yaml = format!(
        "services:\n{}{}",
        service("alpha", "a.bow.localhost", "a.bow.localhost"),
        service(
            "beta",
            "b.bow.localhost",
            "B.bow.localhost, b2.bow.localhost"
        ),
    );
    let stack = Stack::new("passthrough", &yaml);
    stack.write("app/app.py", TLS_APP);
    // The services' own certificates, in their dir (the service users read them).
    for name in ["a.bow.localhost", "b.bow.localhost"] {
        for ext in ["pem", "key"] {
            let file = format!("{name}.{ext}");
            let text = std::fs::read_to_string(certs.path().join(&file)).unwrap();
            stack.write(&format!("app/{file}"), &text);
        }
    }
    stack.up_ok();
    let ca = certs.path().join("ca.pem");

    // Each name reaches its own service, whose certificate the client verifies end to end:
    // the edge did not terminate TLS (it holds no such certificate).
    for _ in 0..3 {
        assert_eq!(
            fetch("a.bow.localhost", port, &ca),
            (0, "served by alpha".into())
        );
        assert_eq!(
            fetch("b.bow.localhost", port, &ca),
            (0, "served by beta".into())
        );
    }
    // b2 goes to beta too; beta's certificate does not name it, and curl says so.
    let (code, _) = fetch("b2.bow.localhost", port, &ca);
    assert_eq!(
        code, 60,
        "a certificate not for b2 (curl 60) proves it reached beta"
    );
    // A name no service lists, and no name at all: closed, never passed on.
    let (code, body) = fetch("c.bow.localhost", port, &ca);
    assert!(code != 0 && body.is_empty(), "{code} {body}");
    let (code, body) = fetch("127.0.0.1", port, &ca);
    assert!(code != 0 && body.is_empty(), "{code} {body}");

    // Names are checked: one name for two services of one port, and a plain TCP route on a
    // passthrough port.
    let bad = format!(
        "project: {}\nservices:\n{}{}  plain:\n    command: /bin/true\n    tcp: {{ port: {port} }}\n",
        stack.project,
        service("alpha", "a.bow.localhost", "a.bow.localhost, 'x:1'"),
        service("beta", "b.bow.localhost", "a.bow.localhost"),
    );
    std::fs::write(&stack.file, bad).unwrap();
    let validate = stack.run(&["validate"], WAIT);
    assert_eq!(validate.code, 1, "{}", validate.describe());
    for expected in [
        "\"x:1\" is not a server name",
        "a.bow.localhost on port",
        "already passed to `alpha`",
        "is already used by the TLS passthrough",
    ] {
        assert!(
            validate.stderr.contains(expected),
            "{expected}: {}",
            validate.stderr
        );
    }
    assert_eq!(stack.down().code, 0);
}
