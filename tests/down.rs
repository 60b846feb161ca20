//! `bow down` stops every instance, dependants first, SIGKILLs the ones that ignore SIGTERM
//! after `stop_timeout`, stops the agent, and leaves no process of the project behind — also
//! when the agent was killed before.

mod support;

use std::time::Duration;

use support::procs::{is_alive, kill, leftover_instance_cgroups, wait_gone};
use support::stack::{Stack, WAIT, instances};

const STACK: &str = "
services:
  front:
    command: {testapp}
    replicas: 2
    depends_on: [back]
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  back:
    command: {testapp}
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  stubborn:
    command: {testapp}
    env: { TESTAPP_IGNORE_SIGTERM: \"1\" }
    stop_timeout: 2s
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
";

fn assert_down_leaves_nothing(stack: &Stack, watched: &[i32]) {
    let ran = stack.down();
    assert_eq!(ran.code, 0, "bow down: {}", ran.describe());
    for pid in watched {
        assert!(!is_alive(*pid), "pid {pid} survived bow down");
    }
    stack.assert_nothing_runs();
    let cgroups = leftover_instance_cgroups(&stack.project);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    assert!(
        !stack.state_dir.join("agent.sock").exists()
            || std::os::unix::net::UnixStream::connect(stack.state_dir.join("agent.sock")).is_err(),
        "an agent still answers on the socket after bow down"
    );
    assert_dependants_stopped_first(stack);
    assert!(
        ran.took < Duration::from_secs(8),
        "stubborn's stop_timeout is 2 s, but bow down took {:?}: {}",
        ran.took,
        ran.describe()
    );
}

/// The testapp prints "terminating" on SIGTERM: front's instances got it before back did.
fn assert_dependants_stopped_first(stack: &Stack) {
    let terminated_at = |id: &str| {
        stack
            .log_lines(id)
            .iter()
            .find(|l| l.text == "terminating")
            .unwrap_or_else(|| panic!("{id} was not sent SIGTERM (no \"terminating\" line)"))
            .micros
    };
    let back = terminated_at("back.1");
    for front in ["front.1", "front.2"] {
        let front_at = terminated_at(front);
        assert!(
            front_at <= back,
            "{front} (a dependant) should be stopped before back.1, but got SIGTERM {} ms after it",
            (front_at - back) / 1000
        );
    }
}

#[test]
fn down_stops_everything_dependants_first() {
    let stack = Stack::new("down", STACK);
    let status = stack.up_ok();
    let agent = status["agent_pid"].as_i64().unwrap() as i32;
    let watched: Vec<i32> = instances(&status)
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    assert!(stack.processes().len() >= 5, "{:?}", stack.processes());

    let ran = stack.down();
    assert_eq!(ran.code, 0, "bow down: {}", ran.describe());
    assert!(
        ran.took >= Duration::from_millis(1900),
        "stubborn ignores SIGTERM: down should have waited its 2 s stop_timeout, took {:?}",
        ran.took
    );
    for pid in &watched {
        assert!(!is_alive(*pid), "instance pid {pid} survived bow down");
    }
    let lingered = std::time::Instant::now();
    wait_gone(agent, Duration::from_secs(5));
    let lingered = lingered.elapsed();
    assert!(
        lingered < Duration::from_millis(100),
        "the agent (pid {agent}) was still running {lingered:?} after bow down returned"
    );
    stack.assert_nothing_runs();
    let cgroups = leftover_instance_cgroups(&stack.project);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");

    assert_dependants_stopped_first(&stack);

    // A second down has nothing to do and says so without failing.
    let again = stack.down();
    assert_eq!(again.code, 0, "second bow down: {}", again.describe());
}

#[test]
fn down_without_an_agent_still_stops_every_instance() {
    let stack = Stack::new("down-orphans", STACK);
    let status = stack.up_ok();
    let agent = status["agent_pid"].as_i64().unwrap() as i32;
    let watched: Vec<i32> = instances(&status)
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    kill(agent, libc::SIGKILL);
    wait_gone(agent, WAIT);
    for pid in &watched {
        assert!(is_alive(*pid), "instances outlive the agent");
    }
    assert_down_leaves_nothing(&stack, &watched);
}
