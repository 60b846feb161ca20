//! Bad input: an instance that cannot start (command not found, missing dir, port taken,
//! crash at start) fails with an event saying why while the other services run on; `up -d`
//! exits 1 naming it with its last log lines; an invalid file starts nothing; a second `up`
//! talks to the running agent.

mod support;

use std::net::TcpListener;

use support::stack::{Event, Stack, WAIT, instance, pid_in, show_events};

const GOOD: &str = "
  good:
    command: {testapp}
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
";

/// Runs `up -d` on a stack with `good` and the failing `bad`; checks that up fails naming
/// `bad.1`, that `good` is healthy and untouched, and returns the events and up's output.
fn up_with_a_failing_instance(stack: &Stack) -> (Vec<Event>, String) {
    let ran = stack.up();
    assert!(
        ran.code == 1 && !ran.timed_out,
        "bow up -d should exit 1 when an instance cannot start: {}\n{}",
        ran.describe(),
        stack.diagnose()
    );
    assert!(
        ran.output().contains("bad.1"),
        "bow up -d should name the failing instance: {}",
        ran.describe()
    );
    let status = stack.wait_status("good healthy", WAIT, |s| {
        instance(s, "good.1").is_some_and(|i| i["health"] == "healthy")
    });
    let good = instance(&status, "good.1").unwrap();
    assert_eq!(good["restarts"], 0, "{good}");
    let bad = instance(&status, "bad.1").expect("bad.1 in the status");
    assert_ne!(bad["health"], "healthy", "{bad}");
    assert_ne!(
        support::stack::service(&status, "bad").unwrap()["state"],
        "healthy"
    );
    let events = stack.events();
    assert!(
        !events
            .iter()
            .any(|e| e.instance.as_deref() == Some("good.1")
                && ["exited", "restarted", "start-failed"].contains(&e.kind.as_str())),
        "good.1 was affected:\n{}",
        show_events(&events)
    );
    (events, ran.output())
}

/// The first `start-failed` or `exited` event of bad.1.
fn failure(events: &[Event]) -> &Event {
    events
        .iter()
        .find(|e| e.is("start-failed", "bad.1") || e.is("exited", "bad.1"))
        .unwrap_or_else(|| {
            panic!(
                "no start-failed or exited event for bad.1:\n{}",
                show_events(events)
            )
        })
}

#[test]
fn a_command_that_is_not_found_fails_that_instance_only() {
    let stack = Stack::new(
        "bad-command",
        &format!("services:{GOOD}  bad:\n    command: bow-e2e-no-such-program --flag\n"),
    );
    let (events, _) = up_with_a_failing_instance(&stack);
    let event = failure(&events);
    let message = event.message.to_lowercase();
    assert!(
        message.contains("bow-e2e-no-such-program")
            && (message.contains("not found") || message.contains("no such file")),
        "the event should say the command was not found: {event}"
    );
}

#[test]
fn a_missing_dir_fails_that_instance_only() {
    let stack = Stack::new(
        "bad-dir",
        &format!("services:{GOOD}  bad:\n    command: {{testapp}}\n    dir: ./does-not-exist\n"),
    );
    let (events, _) = up_with_a_failing_instance(&stack);
    let event = failure(&events);
    assert!(
        event.message.contains("does-not-exist"),
        "the event should name the missing dir: {event}"
    );
}

#[test]
fn a_port_already_taken_fails_that_instance_with_its_log() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let stack = Stack::new(
        "bad-port",
        &format!("services:{GOOD}  bad:\n    command: env PORT={port} {{testapp}}\n"),
    );
    // The instance insists on a port the test holds: it cannot bind and exits.
    let (events, output) = up_with_a_failing_instance(&stack);
    failure(&events);
    assert!(
        output.contains("Address already in use"),
        "bow up -d should show bad.1's last log lines: {output}"
    );
    drop(taken);
}

#[test]
fn a_crash_at_start_is_reported_with_the_last_log_lines() {
    let stack = Stack::new(
        "bad-crash",
        &format!(
            "services:{GOOD}  bad:\n    command: {{testapp}}\n    env: {{ TESTAPP_CRASH_AT_START: \"1\" }}\n"
        ),
    );
    let (events, output) = up_with_a_failing_instance(&stack);
    assert!(
        events.iter().any(|e| e.is("exited", "bad.1")),
        "{}",
        show_events(&events)
    );
    assert!(
        output.contains("crashing at start because TESTAPP_CRASH_AT_START is set"),
        "bow up -d should show bad.1's last log lines: {output}"
    );
}

#[test]
fn an_invalid_file_starts_nothing() {
    let stack = Stack::new(
        "bad-file",
        "
services:
  web:
    comand: {testapp}
    health: { http: /healthz, interval: soon }
",
    );
    let ran = stack.up();
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr.contains("services.web.comand") && ran.stderr.contains("health.interval"),
        "every problem should be reported: {}",
        ran.describe()
    );
    assert!(
        !stack.state_dir.join("agent.sock").exists() && !stack.state_dir.join("agent.pid").exists(),
        "no agent should have been started for an invalid file"
    );
    stack.assert_nothing_runs();
}

#[test]
fn a_second_up_talks_to_the_running_agent() {
    let stack = Stack::new("bad-twice", &format!("services:{GOOD}"));
    let status = stack.up_ok();
    let agent = status["agent_pid"].as_i64().unwrap();
    let pid = pid_in(&status, "good.1").unwrap();

    let again = stack.up();
    assert_eq!(again.code, 0, "second bow up -d: {}", again.describe());
    let status = stack.status_ok();
    assert_eq!(
        status["agent_pid"].as_i64(),
        Some(agent),
        "another agent was started"
    );
    assert_eq!(stack.agent_pid_file(), Some(agent as i32));
    assert_eq!(pid_in(&status, "good.1"), Some(pid), "good.1 was restarted");
    let events = stack.events();
    assert_eq!(
        events.iter().filter(|e| e.is("started", "good.1")).count(),
        1,
        "{}",
        show_events(&events)
    );

    // A changed file is applied by the running agent.
    let text = std::fs::read_to_string(&stack.file)
        .unwrap()
        .replace("    command: ", "    replicas: 2\n    command: ");
    std::fs::write(&stack.file, text).unwrap();
    let scaled = stack.up();
    assert_eq!(
        scaled.code,
        0,
        "bow up -d after scaling: {}",
        scaled.describe()
    );
    let status = stack.status_ok();
    assert!(support::stack::all_healthy(&status), "{status}");
    assert_eq!(status["agent_pid"].as_i64(), Some(agent));
    assert_eq!(pid_in(&status, "good.1"), Some(pid), "good.1 was restarted");
    assert!(pid_in(&status, "good.2").is_some(), "{status}");
}
