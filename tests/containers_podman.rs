//! The same container model on Podman's Docker-compatible API (scripts/podman.sh): bow needs
//! nothing but DOCKER_HOST pointing at it. A container behind the edge, names both ways with a
//! process, secrets as files, a rolling deploy under load with no failed request, and `bow
//! down` leaving no container.

mod support;

use std::time::Duration;

use support::containers::{containers_of_on, docker_ok_on, podman_host, testapp_image_on};
use support::procs::{free_port, http_get, is_root};
use support::stack::{Stack, WAIT, instance, show_events};

fn on_podman(label: &str, yaml: &str) -> (Stack, String) {
    let host = podman_host();
    let stack = Stack::new(label, yaml);
    stack.set_env("DOCKER_HOST", &host);
    (stack, host)
}

#[test]
fn podman_runs_containers_that_call_a_process_by_name_and_are_called_by_it() {
    assert!(is_root(), "this test needs root");
    let image = testapp_image_on(&podman_host());
    let testapp = support::stack::testapp();
    let (api_port, front_port) = (free_port(), free_port());
    let (stack, host) = on_podman(
        "pod-names",
        &format!(
            "services:\n  front:\n    image: {image}\n    container_port: 80\n    port: {front_port}\n    replicas: 2\n    \
             secrets: [token]\n    \
             health: {{ exec: \"bow-testapp fetch http://api:{api_port}/healthz\", interval: 300ms, timeout: 3s, retries: 10 }}\n  \
             api:\n    command: {testapp}\n    port: {api_port}\n    health: {{ http: /healthz, interval: 200ms }}\n  \
             caller:\n    command: \"sh -c 'while true; do {testapp} fetch http://front:{front_port}/ && echo; sleep 0.3; done'\"\n    \
             depends_on: [front]\n",
            testapp = testapp.display()
        ),
    );
    support::secrets::use_key(&stack, "podman");
    support::secrets::init_and_set(&stack, &[("token", "p0dman-secret")]);
    let status = stack.up_ok();
    for id in ["front.1", "front.2", "api.1", "caller.1"] {
        assert_eq!(
            instance(&status, id).unwrap()["health"],
            "healthy",
            "{status}"
        );
    }
    stack.wait_log("caller.1", "\"service\":\"front\"", 1, WAIT);
    let front = instance(&status, "front.1").unwrap();
    let (code, _) = http_get(front["port"].as_u64().unwrap() as u16, "/healthz");
    assert_eq!(code, 200, "published on 127.0.0.1");
    let id = docker_ok_on(
        &host,
        &[
            "ps",
            "-q",
            "--filter",
            "label=dev.bow.instance=front.1",
            "--filter",
            &format!("label=dev.bow.scope={}-development", stack.project),
        ],
    );
    let secret = docker_ok_on(&host, &["exec", id.trim(), "cat", "/run/secrets/token"]);
    assert_eq!(secret.trim(), "p0dman-secret");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(containers_of_on(&host, &stack.project).is_empty());
}

#[test]
fn podman_rolling_deploy_under_load_fails_no_request() {
    assert!(is_root(), "this test needs root");
    let image = testapp_image_on(&podman_host());
    let (http, https) = (free_port(), free_port());
    let host_name = "pod-roll.bow.localhost";
    let (stack, host) = on_podman(
        "pod-roll",
        &format!(
            "edge: {{ http_port: {http}, https_port: {https} }}\n\
             services:\n  web:\n    image: {image}\n    replicas: 3\n    routes: [\"{host_name}\"]\n    \
             env: {{ APP_VERSION: v1 }}\n    \
             health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    \
             deploy: {{ drain_timeout: 5s }}\n"
        ),
    );
    stack.up_ok();
    let load = support::load::Load::start(&stack, host_name, https, 12.0);
    std::thread::sleep(Duration::from_secs(2));
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replace("APP_VERSION: v1", "APP_VERSION: v2"),
    )
    .unwrap();
    let ran = stack.run(&["apply", "--yes"], Duration::from_secs(120));
    assert_eq!(ran.code, 0, "{}", ran.describe());
    load.mark();
    let report = load.finish();
    assert_eq!(
        report["failed"],
        0,
        "failed requests: {report}\n{}",
        show_events(&stack.events())
    );
    let after = report["after_mark"].as_object().unwrap();
    assert!(after.len() == 1 && after.contains_key("v2"), "{report}");
    assert_eq!(containers_of_on(&host, &stack.project).len(), 3);
    stack.down();
}
