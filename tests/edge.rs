//! The edge inside the agent: HTTPS with the local CA (`bow trust`), 308 from HTTP, HSTS,
//! only healthy instances get traffic, and SIGKILLs of instances under load fail no request.

mod support;

use std::process::Command;
use std::time::Duration;

use support::procs::free_port;
use support::stack::{Stack, WAIT};

fn stack(label: &str, host: &str) -> (Stack, u16, u16) {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 3\n    routes: [\"{host}\"]\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    deploy: {{ drain_timeout: 5s }}\n"
    );
    (Stack::new(label, &yaml), http, https)
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn https_with_the_local_ca_redirect_and_hsts() {
    let (stack, http, https) = stack("edge-tls", "tls.bow.localhost");
    stack.up_ok();
    let trust = stack.run(&["trust"], WAIT);
    assert_eq!(trust.code, 0, "{}", trust.describe());
    let ca = trust.stdout.trim().to_string();
    let resolve = format!("tls.bow.localhost:{https}:127.0.0.1");
    let url = format!("https://tls.bow.localhost:{https}/");
    let head = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=31536000; includeSubDomains"),
        "{head}"
    );
    let body = curl(&["--cacert", &ca, "--resolve", &resolve, &url]);
    assert!(body.contains("\"service\":\"web\""), "{body}");
    let redirect = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: tls.bow.localhost",
        &format!("http://127.0.0.1:{http}/a/b?c=1"),
    ]);
    assert_eq!(
        redirect,
        format!("308 https://tls.bow.localhost:{https}/a/b?c=1")
    );
    let status = stack.status_ok();
    let routes = status["edge"]["routes"].to_string();
    assert!(
        routes.contains("tls.bow.localhost/ → web (3 healthy)"),
        "{routes}"
    );
}

#[test]
fn killing_instances_under_load_fails_no_request() {
    let (stack, _http, https) = stack("edge-kill", "load.bow.localhost");
    stack.up_ok();
    let load = support::load::Load::start(&stack, "load.bow.localhost", https, 12.0);
    std::thread::sleep(Duration::from_millis(1500));
    // Kill one of the three instances, wait until it is healthy again, five times over.
    stack.kill_instances_in_turn("web", 3, 5);
    let result = load.finish();
    assert!(
        result["ok"].as_u64().unwrap() > 500,
        "too few requests: {result}"
    );
    assert_eq!(
        result["failed"], 0,
        "failed requests through the edge: {result}"
    );
}
