//! An instance whose health check fails `retries` times in a row is marked unhealthy and
//! restarted; http, tcp and exec checks all drive it.

mod support;

use support::stack::{Stack, WAIT, instance, show_events};

#[test]
fn failing_http_health_marks_unhealthy_then_restarts() {
    let stack = Stack::new(
        "health-http",
        "
services:
  sickly:
    command: {testapp}
    env: { TESTAPP_FAIL_HEALTH_AFTER: 2s }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
",
    );
    let status = stack.up_ok();
    let old = instance(&status, "sickly.1").unwrap()["pid"]
        .as_i64()
        .unwrap();

    let events = stack.wait_event("sickly.1 restarted", WAIT, |e| {
        e.is("restarted", "sickly.1")
    });
    let started = events
        .iter()
        .find(|e| e.is("started", "sickly.1"))
        .unwrap_or_else(|| panic!("no `started` event:\n{}", show_events(&events)));
    let (unhealthy_index, unhealthy) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e.is("unhealthy", "sickly.1"))
        .unwrap_or_else(|| panic!("no `unhealthy` event:\n{}", show_events(&events)));
    let restarted_index = events
        .iter()
        .position(|e| e.is("restarted", "sickly.1"))
        .unwrap();
    assert!(
        unhealthy_index < restarted_index,
        "`unhealthy` should come before `restarted`:\n{}",
        show_events(&events)
    );
    // /healthz fails from 2 s on; three failures in a row take at least two more intervals.
    let after = unhealthy.at_ms - started.at_ms;
    assert!(
        (2300..8000).contains(&after),
        "unhealthy {after} ms after start; expected after 2 s + 3 failed checks 200 ms apart:\n{}",
        show_events(&events)
    );
    assert!(
        !events[..unhealthy_index]
            .iter()
            .any(|e| e.is("exited", "sickly.1")),
        "the process did not crash; it was restarted for its health:\n{}",
        show_events(&events)
    );

    let status = stack.wait_status("sickly.1 replaced and healthy", WAIT, |s| {
        instance(s, "sickly.1").is_some_and(|i| {
            i["pid"].as_i64().is_some_and(|p| p != old) && i["health"] == "healthy"
        })
    });
    let restarts = instance(&status, "sickly.1").unwrap()["restarts"]
        .as_u64()
        .unwrap_or(0);
    assert!(restarts >= 1, "{status}");
}

#[test]
fn tcp_and_exec_checks_decide_health() {
    let stack = Stack::new(
        "health-kinds",
        "
services:
  socket:
    command: {testapp}
    health: { tcp: true, interval: 200ms, timeout: 1s, retries: 3 }
  probe:
    command: {testapp}
    health: { exec: \"test ! -e {dir}/sick\", interval: 200ms, timeout: 1s, retries: 2 }
",
    );
    // `{dir}` is the stack's directory: the exec check fails once the file exists.
    let text = std::fs::read_to_string(&stack.file)
        .unwrap()
        .replace("{dir}", stack.dir.path().to_str().unwrap());
    std::fs::write(&stack.file, text).unwrap();

    let status = stack.up_ok();
    let old = instance(&status, "probe.1").unwrap()["pid"]
        .as_i64()
        .unwrap();
    stack.write("sick", "");
    let events = stack.wait_event("probe.1 unhealthy", WAIT, |e| e.is("unhealthy", "probe.1"));
    std::fs::remove_file(stack.dir.path().join("sick")).unwrap();
    stack.wait_event("probe.1 restarted", WAIT, |e| e.is("restarted", "probe.1"));
    stack.wait_status("probe.1 replaced and healthy", WAIT, |s| {
        instance(s, "probe.1").is_some_and(|i| {
            i["pid"].as_i64().is_some_and(|p| p != old) && i["health"] == "healthy"
        })
    });
    assert!(
        !events
            .iter()
            .any(|e| e.instance.as_deref() == Some("socket.1")
                && ["unhealthy", "restarted"].contains(&e.kind.as_str())),
        "socket.1 was healthy throughout:\n{}",
        show_events(&events)
    );
}

#[test]
fn failures_during_the_start_period_do_not_count() {
    // Listens after 2 s; three failed checks take 300 ms, but the first 3 s do not count.
    let stack = Stack::new(
        "health-grace",
        "
services:
  slow:
    command: {testapp}
    env: { TESTAPP_START_DELAY: 2s }
    health: { http: /healthz, interval: 100ms, timeout: 1s, retries: 3, start_period: 3s }
",
    );
    let status = stack.up_ok();
    assert_eq!(instance(&status, "slow.1").unwrap()["restarts"], 0);
    let events = stack.events();
    assert!(
        !events
            .iter()
            .any(|e| e.instance.as_deref() == Some("slow.1")
                && ["unhealthy", "restarted", "exited"].contains(&e.kind.as_str())),
        "{}",
        show_events(&events)
    );
}
