//! An instance killed by SIGKILL is restarted at once under the same name, healthy again, and
//! the events say what happened; its siblings are left alone.

mod support;

use support::procs::{http_get, is_alive, kill, wait_gone};
use support::stack::{Stack, WAIT, instance, pid_in, show_events};

const STACK: &str = "
services:
  web:
    command: {testapp}
    replicas: 2
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
";

#[test]
fn a_killed_instance_is_restarted_and_healthy_again() {
    let stack = Stack::new("crash", STACK);
    let status = stack.up_ok();
    let old = pid_in(&status, "web.1").expect("web.1 has a pid");
    let sibling = pid_in(&status, "web.2").expect("web.2 has a pid");
    assert_eq!(instance(&status, "web.1").unwrap()["restarts"], 0);

    kill(old, libc::SIGKILL);
    wait_gone(old, WAIT);
    let status = stack.wait_status("web.1 restarted and healthy", WAIT, |s| {
        let Some(web1) = instance(s, "web.1") else {
            return false;
        };
        web1["pid"].as_i64().is_some_and(|p| p as i32 != old) && web1["health"] == "healthy"
    });
    let web1 = instance(&status, "web.1").unwrap();
    assert_eq!(web1["restarts"], 1, "{web1}");
    let new = web1["pid"].as_i64().unwrap() as i32;
    assert!(is_alive(new));

    // The new process serves on the port the status shows.
    let port = web1["port"].as_u64().expect("web.1 has a port") as u16;
    let (code, body) = http_get(port, "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("\"pid\":{new}")), "{body}");
    assert!(body.contains("\"instance\":\"web.1\""), "{body}");

    // The sibling was not touched.
    assert_eq!(pid_in(&status, "web.2"), Some(sibling));
    assert_eq!(instance(&status, "web.2").unwrap()["restarts"], 0);

    let events = stack.wait_event("web.1 restarted", WAIT, |e| e.is("restarted", "web.1"));
    let exited = events
        .iter()
        .position(|e| e.is("exited", "web.1"))
        .unwrap_or_else(|| panic!("no `exited` event for web.1:\n{}", show_events(&events)));
    let message = events[exited].message.to_lowercase();
    assert!(
        message.contains("signal 9") || message.contains("sigkill"),
        "the exit event should say it was killed by signal 9: {}",
        events[exited]
    );
    let restarted = events
        .iter()
        .position(|e| e.is("restarted", "web.1"))
        .unwrap();
    assert!(
        exited < restarted,
        "`exited` should come before `restarted`:\n{}",
        show_events(&events)
    );
    assert!(
        !events
            .iter()
            .any(|e| e.instance.as_deref() == Some("web.2") && e.kind == "exited"),
        "web.2 should not have exited:\n{}",
        show_events(&events)
    );
}

#[test]
fn a_crash_with_an_exit_code_is_reported_with_it() {
    let stack = Stack::new(
        "crash-code",
        "
services:
  worker:
    command: {testapp}
    env: { TESTAPP_CRASH_AFTER: 2s, TESTAPP_EXIT_CODE: \"7\" }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
",
    );
    stack.up_ok();
    let events = stack.wait_event("worker.1 exited", WAIT, |e| e.is("exited", "worker.1"));
    let exited = events.iter().find(|e| e.is("exited", "worker.1")).unwrap();
    assert!(
        exited.message.contains('7'),
        "the exit event should name exit code 7: {exited}"
    );
    stack.wait_event("worker.1 restarted", WAIT, |e| {
        e.is("restarted", "worker.1")
    });
}
