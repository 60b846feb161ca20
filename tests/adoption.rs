//! When the agent dies (SIGKILL), its instances keep running and keep their output captured;
//! the next `bow up -d` adopts them by pid and start time, resumes health checks, and never
//! starts a duplicate.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::procs::{http_get, is_alive, kill, start_time, wait_gone};
use support::stack::{Stack, WAIT, all_healthy, instance, instances, show_events};

const STACK: &str = "
services:
  web:
    command: {testapp}
    replicas: 2
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  api:
    command: {testapp}
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
";

/// instance id → (pid, process start time).
fn pids(status: &serde_json::Value) -> BTreeMap<String, (i32, u64)> {
    instances(status)
        .into_iter()
        .map(|i| {
            let pid = i["pid"].as_i64().expect("every instance has a pid") as i32;
            let start = start_time(pid).expect("the instance's process is alive");
            (i["id"].as_str().unwrap().to_string(), (pid, start))
        })
        .collect()
}

fn kill_agent(stack: &Stack, status: &serde_json::Value) -> i32 {
    let agent = status["agent_pid"].as_i64().expect("status has agent_pid") as i32;
    assert_eq!(
        stack.agent_pid_file(),
        Some(agent),
        "agent.pid should hold the agent's pid"
    );
    kill(agent, libc::SIGKILL);
    wait_gone(agent, WAIT);
    agent
}

#[test]
fn a_new_agent_adopts_the_running_instances() {
    let stack = Stack::new("adopt", STACK);
    let status = stack.up_ok();
    let before = pids(&status);
    assert_eq!(before.len(), 3, "{status}");
    let old_agent = kill_agent(&stack, &status);

    // Without an agent the instances still run and their output is still captured.
    std::thread::sleep(Duration::from_millis(500));
    for (id, (pid, start)) in &before {
        assert_eq!(start_time(*pid), Some(*start), "{id} died with the agent");
    }
    let web1 = instance(&status, "web.1").unwrap();
    let port = web1["port"].as_u64().unwrap() as u16;
    assert_eq!(http_get(port, "/while-no-agent").0, 404);
    stack.wait_log("web.1", "GET /while-no-agent 404", 1, WAIT);
    // `bow logs` reads the files: it works without an agent.
    let logs = stack.run(&["logs", "web"], WAIT);
    assert_eq!(
        logs.code,
        0,
        "bow logs without an agent: {}",
        logs.describe()
    );
    assert!(
        logs.stdout.contains("GET /while-no-agent 404"),
        "{}",
        logs.stdout
    );

    let ran = stack.up();
    assert_eq!(ran.code, 0, "second bow up -d: {}", ran.describe());
    let status = stack.wait_status("every instance healthy after adoption", WAIT, all_healthy);
    let new_agent = status["agent_pid"].as_i64().unwrap() as i32;
    assert_ne!(new_agent, old_agent);
    assert!(is_alive(new_agent));
    assert_eq!(
        pids(&status),
        before,
        "the same processes should be adopted"
    );
    for i in instances(&status) {
        assert_eq!(i["restarts"], 0, "{i}");
    }

    let events = stack.events();
    for id in before.keys() {
        assert!(
            events.iter().any(|e| e.is("adopted", id)),
            "no `adopted` event for {id}:\n{}",
            show_events(&events)
        );
        let starts = events
            .iter()
            .filter(|e| e.is("started", id) || e.is("restarted", id))
            .count();
        assert_eq!(
            starts,
            1,
            "{id} should have been started once only:\n{}",
            show_events(&events)
        );
        let processes = stack.instance_processes(id);
        assert_eq!(
            processes.len(),
            1,
            "exactly one process should run as {id}: {processes:?}"
        );
    }

    // Health checks resumed: new /healthz requests show up in the log after adoption.
    let seen = stack
        .log_lines("web.1")
        .iter()
        .filter(|l| l.text.contains("GET /healthz"))
        .count();
    stack.wait_log("web.1", "GET /healthz", seen + 3, WAIT);
    // And `bow logs` shows output from before, during and after the agent's absence.
    assert_eq!(http_get(port, "/after-adoption").0, 404);
    stack.wait_log("web.1", "GET /after-adoption 404", 1, WAIT);
    let logs = stack.run(&["logs", "web"], WAIT);
    assert_eq!(logs.code, 0, "{}", logs.describe());
    for needle in [
        "listening on",
        "GET /while-no-agent 404",
        "GET /after-adoption 404",
    ] {
        assert!(
            logs.stdout
                .lines()
                .any(|l| l.starts_with("web.1 | ") && l.contains(needle)),
            "bow logs web lacks {needle:?}:\n{}",
            logs.stdout
        );
    }
}

#[test]
fn an_instance_that_died_with_the_agent_away_is_started_again_the_others_adopted() {
    let stack = Stack::new("adopt-dead", STACK);
    let status = stack.up_ok();
    let before = pids(&status);
    kill_agent(&stack, &status);
    let (dead, _) = before["web.1"];
    kill(dead, libc::SIGKILL);
    wait_gone(dead, WAIT);

    let ran = stack.up();
    assert_eq!(ran.code, 0, "second bow up -d: {}", ran.describe());
    let status = stack.wait_status("every instance healthy after adoption", WAIT, all_healthy);
    let after = pids(&status);
    assert_ne!(after["web.1"].0, dead, "web.1 must be a new process");
    assert_eq!(after["web.2"], before["web.2"]);
    assert_eq!(after["api.1"], before["api.1"]);
    let events = stack.events();
    assert!(
        !events.iter().any(|e| e.is("adopted", "web.1")),
        "a dead process cannot be adopted:\n{}",
        show_events(&events)
    );
    for id in ["web.2", "api.1"] {
        assert!(
            events.iter().any(|e| e.is("adopted", id)),
            "no `adopted` event for {id}:\n{}",
            show_events(&events)
        );
    }
    for id in ["web.1", "web.2", "api.1"] {
        assert_eq!(
            stack.instance_processes(id).len(),
            1,
            "one process for {id}"
        );
    }
}

#[test]
fn instances_the_file_no_longer_wants_are_stopped_not_adopted() {
    let stack = Stack::new("adopt-scale", STACK);
    let status = stack.up_ok();
    let before = pids(&status);
    kill_agent(&stack, &status);
    let text = std::fs::read_to_string(&stack.file)
        .unwrap()
        .replace("replicas: 2", "replicas: 1");
    std::fs::write(&stack.file, text).unwrap();

    let ran = stack.up();
    assert_eq!(ran.code, 0, "second bow up -d: {}", ran.describe());
    let status = stack.wait_status("web down to one instance", WAIT, |s| {
        all_healthy(s) && instance(s, "web.2").is_none()
    });
    let after = pids(&status);
    assert_eq!(after["web.1"], before["web.1"], "web.1 should be adopted");
    assert_eq!(after["api.1"], before["api.1"], "api.1 should be adopted");
    wait_gone(before["web.2"].0, WAIT);
    assert!(stack.instance_processes("web.2").is_empty());
}

#[test]
fn a_reused_pid_is_not_mistaken_for_the_instance() {
    let stack = Stack::new("adopt-reuse", STACK);
    let status = stack.up_ok();
    let before = pids(&status);
    kill_agent(&stack, &status);
    // web.1 dies with its shim while no agent watches; an unrelated process gets "its" pid.
    let state_file = stack.state_dir.join("run/web.1/state.json");
    let mut handle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    for key in ["pid", "shim_pid"] {
        let pid = handle[key]
            .as_i64()
            .unwrap_or_else(|| panic!("state.json lacks {key}"));
        kill(pid as i32, libc::SIGKILL);
        wait_gone(pid as i32, WAIT);
    }
    let mut stranger = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let stranger_pid = stranger.id() as i32;
    let stranger_start = start_time(stranger_pid).unwrap();
    for key in ["pid", "shim_pid", "pgid"] {
        handle[key] = stranger_pid.into();
    }
    std::fs::write(&state_file, handle.to_string()).unwrap();

    let ran = stack.up();
    let status = stack.status();
    let events = stack.events();
    let stranger_alive = start_time(stranger_pid) == Some(stranger_start);
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert_eq!(ran.code, 0, "second bow up -d: {}", ran.describe());
    assert!(
        stranger_alive,
        "bow signalled pid {stranger_pid}, a process that only reuses web.1's recorded pid"
    );
    assert!(
        !events.iter().any(|e| e.is("adopted", "web.1")),
        "pid {stranger_pid} has another start time: it is not web.1:\n{}",
        show_events(&events)
    );
    let status = status.expect("status");
    let after = pids(&status);
    assert!(![stranger_pid, before["web.1"].0].contains(&after["web.1"].0));
    assert_eq!(after["web.2"], before["web.2"]);
}

#[test]
fn a_process_no_handle_names_is_stopped_and_its_instance_started_afresh() {
    let stack = Stack::new("adopt-stray", STACK);
    let status = stack.up_ok();
    let before = pids(&status);
    kill_agent(&stack, &status);
    // web.2 runs, but nothing in its run dir names it any more (as for a shim killed with its
    // agent before it wrote state.json): only the process table shows it.
    let (stray, stray_start) = before["web.2"];
    std::fs::remove_file(stack.state_dir.join("run/web.2/state.json")).unwrap();

    let ran = stack.up();
    assert_eq!(ran.code, 0, "second bow up -d: {}", ran.describe());
    let status = stack.wait_status("every instance healthy", WAIT, all_healthy);
    wait_gone(stray, WAIT);
    assert_ne!(start_time(stray), Some(stray_start));
    let after = pids(&status);
    assert_ne!(after["web.2"].0, stray, "web.2 must be a new process");
    assert_eq!(after["web.1"], before["web.1"], "web.1 should be adopted");
    assert_eq!(after["api.1"], before["api.1"], "api.1 should be adopted");
    let events = stack.events();
    let orphan = events
        .iter()
        .find(|e| e.is("orphan-stopped", "web.2"))
        .unwrap_or_else(|| {
            panic!(
                "no orphan-stopped event for web.2:\n{}",
                show_events(&events)
            )
        });
    assert!(
        orphan.message.contains(&stray.to_string()),
        "the event names the stray pid {stray}: {orphan}"
    );
    for id in ["web.1", "web.2", "api.1"] {
        assert_eq!(
            stack.instance_processes(id).len(),
            1,
            "one process for {id}: {:?}",
            stack.instance_processes(id)
        );
    }
}
