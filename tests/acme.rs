//! `edge.tls: acme` against Debian's Pebble: a routed host gets a certificate through a real
//! HTTP-01 and a real TLS-ALPN-01 validation and curl trusts it with Pebble's root; a
//! restarted agent orders nothing again; renewal under load fails no request; with Pebble
//! stopped the old certificate keeps serving and an event says why; `bow certs` lists them.

mod support;

use std::process::Command;
use std::time::Duration;

use support::load::Load;
use support::pebble::Pebble;
use support::procs::free_port;
use support::stack::{Stack, WAIT};

const LIMIT: Duration = Duration::from_secs(120);

/// A stack whose edge takes its certificates from `pebble`, one routed service on `host`.
fn stack(label: &str, host: &str, challenge: &str, extra: &str) -> (Stack, Pebble, u16) {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https);
    let yaml = format!(
        "edge:\n  http_port: {http}\n  https_port: {https}\n  tls: acme\n  acme: {{ email: ops@example.com, directory: \"{}\", directory_ca: \"{}\", challenge: {challenge}{extra} }}\nservices:\n  web:\n    command: {{testapp}}\n    routes: [\"{host}\"]\n    health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n",
        pebble.directory,
        pebble.server_ca.display()
    );
    (Stack::new(label, &yaml), pebble, https)
}

/// GET https://HOST/ verified with `ca` only; (status, stderr).
fn get(host: &str, https: u16, ca: &std::path::Path) -> (String, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{host}:{https}:127.0.0.1")])
        .arg(format!("https://{host}:{https}/"))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn issued(stack: &Stack, host: &str, what: &str) -> usize {
    stack
        .events()
        .iter()
        .filter(|e| e.kind == "certificate" && e.message.starts_with(&format!("{what} {host}")))
        .count()
}

fn wait_issued(stack: &Stack, pebble: &Pebble, host: &str) {
    let deadline = std::time::Instant::now() + LIMIT;
    while issued(stack, host, "issued") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate for {host}: {}\n{}",
            support::stack::show_events(&stack.events()),
            pebble.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn issue_and_trust(label: &str, host: &str, challenge: &str) {
    let (stack, pebble, https) = stack(label, host, challenge, "");
    stack.up_ok();
    wait_issued(&stack, &pebble, host);
    let root = pebble.issuing_root();
    assert_eq!(
        get(host, https, &root).0,
        "200",
        "{}",
        get(host, https, &root).1
    );
    // The local CA is not what serves it any more.
    let local = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    assert_ne!(get(host, https, std::path::Path::new(&local)).0, "200");
    let certs = stack.run(&["certs"], WAIT);
    assert!(
        certs.stdout.contains(host)
            && certs.stdout.contains("Pebble")
            && certs.stdout.contains("ok: issued"),
        "{}",
        certs.stdout
    );
    // A restarted agent orders nothing again: the certificate is kept in the state dir.
    let agent = stack.status_ok()["agent_pid"].as_i64().unwrap() as i32;
    support::procs::kill(agent, libc::SIGKILL);
    support::procs::wait_gone(agent, WAIT);
    stack.up_ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        issued(&stack, host, "issued"),
        1,
        "{}",
        support::stack::show_events(&stack.events())
    );
    assert_eq!(get(host, https, &root).0, "200");
    let files = stack.state_dir.join("acme");
    for entry in std::fs::read_dir(files.join("certs")).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o077, 0, "certificate files are private");
    }
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn a_host_gets_a_certificate_through_http_01() {
    issue_and_trust("acmehttp", "acme-http.example", "http-01");
}

#[test]
fn a_host_gets_a_certificate_through_tls_alpn_01() {
    issue_and_trust("acmealpn", "acme-alpn.example", "tls-alpn-01");
}

#[test]
fn renewal_under_load_fails_no_request_and_a_ca_outage_keeps_the_certificate() {
    let host = "acme-renew.example";
    // Pebble's certificates live 157766400 s: renewing when less than 4 s short of that is
    // due 4 s after each issuance.
    let (stack, mut pebble, https) =
        stack("acmerenew", host, "http-01", ", renew_before: 157766396s");
    stack.up_ok();
    wait_issued(&stack, &pebble, host);
    let root = pebble.issuing_root();
    let load = Load::start_trusting(&stack, host, https, 12.0, root.to_str().unwrap());
    stack.wait_event("a renewal", LIMIT, |e| {
        e.kind == "certificate" && e.message.starts_with(&format!("renewed {host}"))
    });
    let report = load.finish();
    assert_eq!(
        report["failed"], 0,
        "failed requests across renewals: {report}"
    );
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    let renewals = issued(&stack, host, "renewed");
    eprintln!("renewals during the load: {renewals}");

    // The CA goes away: the next renewal fails, says why, and the certificate keeps serving.
    pebble.stop_ca();
    stack.wait_event("a failed renewal", LIMIT, |e| {
        e.kind == "certificate"
            && e.message.contains("failed")
            && e.message.contains("the current certificate keeps serving")
    });
    assert_eq!(
        get(host, https, &root).0,
        "200",
        "{}",
        get(host, https, &root).1
    );
    let certs = stack.run(&["certs", "--output", "json"], WAIT);
    let rows: serde_json::Value = serde_json::from_str(&certs.stdout).unwrap();
    assert!(
        rows[0]["last_result"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{rows}"
    );
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
