//! `bow restart SERVICE` replaces its instances one at a time: each new instance is healthy
//! before the next old one is stopped; other services are untouched.

mod support;

use support::stack::{Stack, WAIT, all_healthy, pid_in, show_events};

#[test]
fn restart_replaces_instances_one_at_a_time() {
    let stack = Stack::new(
        "restart",
        "
services:
  web:
    command: {testapp}
    replicas: 3
    health: { http: /healthz, interval: 100ms, timeout: 1s, retries: 3 }
  other:
    command: {testapp}
    health: { http: /healthz, interval: 100ms, timeout: 1s, retries: 3 }
",
    );
    let status = stack.up_ok();
    let ids = ["web.1", "web.2", "web.3"];
    let before: Vec<i32> = ids.iter().map(|id| pid_in(&status, id).unwrap()).collect();
    let other = pid_in(&status, "other.1").unwrap();
    let first_new_event = stack.events().len();

    let ran = stack.run(&["restart", "web"], WAIT);
    assert_eq!(ran.code, 0, "bow restart web: {}", ran.describe());
    let status = stack.wait_status("every instance healthy", WAIT, all_healthy);
    for (id, old) in ids.iter().zip(&before) {
        assert_ne!(pid_in(&status, id), Some(*old), "{id} was not replaced");
    }
    assert_eq!(
        pid_in(&status, "other.1"),
        Some(other),
        "other.1 was touched"
    );

    // Each instance's window, from its stop to its successor being healthy, is separate.
    let events = stack.events();
    let new = &events[first_new_event.min(events.len())..];
    let mut windows: Vec<(usize, usize, &str)> = ids
        .iter()
        .map(|id| {
            let stop = new
                .iter()
                .position(|e| e.instance.as_deref() == Some(*id) && e.kind == "stopping")
                .or_else(|| new.iter().position(|e| e.is("stopped", id)))
                .unwrap_or_else(|| panic!("{id} was not stopped:\n{}", show_events(new)));
            let healthy = new
                .iter()
                .enumerate()
                .skip(stop)
                .find(|(_, e)| e.is("healthy", id))
                .unwrap_or_else(|| panic!("{id} never healthy again:\n{}", show_events(new)))
                .0;
            (stop, healthy, *id)
        })
        .collect();
    windows.sort();
    for pair in windows.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "{} was stopped before {} was healthy again:\n{}",
            pair[1].2,
            pair[0].2,
            show_events(new)
        );
    }
}

#[test]
fn restart_of_an_unknown_service_fails() {
    let stack = Stack::new(
        "restart-unknown",
        "
services:
  web:
    command: {testapp}
",
    );
    stack.up_ok();
    let ran = stack.run(&["restart", "nosuch"], WAIT);
    assert_ne!(ran.code, 0, "{}", ran.describe());
    assert!(ran.stderr.contains("nosuch"), "{}", ran.describe());
}
