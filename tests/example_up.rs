//! The example a new user runs first: `bow up -d` on examples/hello returns once both services
//! are healthy, they answer HTTP (web calls the api by name), and `bow down` stops them.

mod support;

use support::procs::http_get;
use support::stack::{Stack, UP_TIMEOUT, all_healthy, instance, run_for};

#[test]
fn the_hello_example_comes_up_healthy_and_goes_down() {
    let stack = Stack::from_file(&support::root().join("examples/hello/bow.yaml"), "hello");
    let ran = run_for(
        support::bow()
            .args(["up", "-d", "-f", "examples/hello/bow.yaml", "--state-dir"])
            .arg(&stack.state_dir)
            .env(support::stack::MARK_VARIABLE, &stack.project),
        UP_TIMEOUT,
    );
    assert_eq!(
        ran.code,
        0,
        "bow up -d: {}\n{}",
        ran.describe(),
        stack.diagnose()
    );
    assert!(
        !ran.pipes_left_open,
        "bow up -d returned but the detached agent kept its stdout/stderr open"
    );

    // `up -d` returned: everything is healthy already.
    let status = stack.status_ok();
    assert!(all_healthy(&status), "{status:#}");

    let port = |id: &str| instance(&status, id).unwrap()["port"].as_u64().unwrap() as u16;
    let (code, body) = http_get(port("api.1"), "/index.json");
    assert_eq!(code, 200, "api: {body}");
    let (code, body) = http_get(port("web.1"), "/healthz");
    assert_eq!(code, 200, "web: {body}");
    // web calls the api by name through service discovery and shows its answer.
    let (code, body) = http_get(port("web.1"), "/");
    assert_eq!(code, 200, "web /: {body}");
    let page: serde_json::Value = serde_json::from_str(body.trim()).expect("web / is JSON");
    assert_eq!(page["api"]["message"], "hello from the api", "{page:#}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(page["via"], "http://api:5001", "{page:#}");
    }

    let down = run_for(
        support::bow()
            .args(["down", "-f", "examples/hello/bow.yaml", "--state-dir"])
            .arg(&stack.state_dir)
            .env(support::stack::MARK_VARIABLE, &stack.project),
        UP_TIMEOUT,
    );
    assert_eq!(down.code, 0, "bow down: {}", down.describe());
    stack.assert_nothing_runs();
}
