//! `resources.memory` is a cgroup limit: an instance that grows past it is killed by the OOM
//! killer, reported as `oom-killed`, and restarted.

mod support;

use support::procs::is_root;
use support::stack::{Stack, WAIT, instance, show_events};

#[test]
fn growing_past_the_memory_limit_is_oom_killed_and_restarted() {
    assert!(is_root(), "this test needs root: bow creates cgroups");
    // 2 MiB every 100 ms: healthy at once, past 64 MiB after about 3 s.
    let stack = Stack::new(
        "oom",
        "
services:
  hungry:
    command: {testapp}
    env: { TESTAPP_GROW_MEMORY: 2M }
    resources: { memory: 64M }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  calm:
    command: {testapp}
    resources: { memory: 64M }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
",
    );
    let status = stack.up_ok();
    let calm = instance(&status, "calm.1").unwrap()["pid"].clone();
    let events = stack.wait_event("hungry.1 oom-killed", WAIT, |e| {
        e.is("oom-killed", "hungry.1")
    });
    let events = if events.iter().any(|e| e.is("restarted", "hungry.1")) {
        events
    } else {
        stack.wait_event("hungry.1 restarted", WAIT, |e| {
            e.is("restarted", "hungry.1")
        })
    };
    let oom = events
        .iter()
        .position(|e| e.is("oom-killed", "hungry.1"))
        .unwrap();
    let restarted = events
        .iter()
        .position(|e| e.is("restarted", "hungry.1"))
        .unwrap();
    assert!(oom < restarted, "{}", show_events(&events));
    // The log shows it never got far past the limit.
    let grown: Vec<u64> = stack
        .log_lines("hungry.1")
        .iter()
        .filter_map(|l| {
            l.text
                .strip_prefix("grew memory to ")?
                .strip_suffix(" bytes")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        grown.iter().all(|bytes| *bytes <= 64 << 20),
        "hungry.1 used more than its 64 MiB: {grown:?}"
    );
    let status = stack.status_ok();
    assert_eq!(
        instance(&status, "calm.1").unwrap()["pid"],
        calm,
        "calm.1 is unaffected"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.instance.as_deref() == Some("calm.1")
                && ["exited", "oom-killed", "restarted"].contains(&e.kind.as_str())),
        "{}",
        show_events(&events)
    );
}
