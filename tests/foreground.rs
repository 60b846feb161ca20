//! The agent in the foreground: `bow up` without `-d` stops every instance gracefully on
//! Ctrl-C; `bow agent` serves `up -d`, leaves its instances to the next agent when it gets
//! SIGTERM, and prints a usable systemd unit.

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::procs::{is_alive, kill, wait_gone};
use support::stack::{Stack, WAIT, all_healthy, instances};

const STACK: &str = "
services:
  web:
    command: {testapp}
    replicas: 2
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
";

/// A foreground bow process; SIGKILLed when dropped if still running.
struct Foreground(Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Foreground {
    fn spawn(stack: &Stack, args: &[&str]) -> Foreground {
        Foreground(
            stack
                .command(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Waits for the exit; panics after `timeout`.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the foreground bow did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn pids(status: &serde_json::Value) -> Vec<i32> {
    instances(status)
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn foreground_up_stops_everything_on_ctrl_c() {
    let stack = Stack::new("fg-up", STACK);
    let mut up = Foreground::spawn(&stack, &["up"]);
    let status = stack.wait_status("every instance healthy", WAIT, all_healthy);
    assert_eq!(status["agent_pid"].as_i64(), Some(up.0.id() as i64));
    let running = pids(&status);

    kill(up.0.id() as i32, libc::SIGINT);
    let exit = up.wait(WAIT);
    assert!(exit.success(), "bow up exited with {exit}");
    for pid in &running {
        assert!(!is_alive(*pid), "pid {pid} survived Ctrl-C");
    }
    for id in ["web.1", "web.2"] {
        assert!(
            stack.log_lines(id).iter().any(|l| l.text == "terminating"),
            "{id} was not stopped gracefully (no SIGTERM)"
        );
    }
    stack.assert_nothing_runs();
}

#[test]
fn bow_agent_serves_up_and_leaves_instances_on_sigterm() {
    let stack = Stack::new("fg-agent", STACK);
    let mut agent = Foreground::spawn(&stack, &["agent"]);
    let agent_pid = agent.0.id() as i32;
    let status = stack.wait_status("the agent applied the file", WAIT, all_healthy);
    assert_eq!(status["agent_pid"].as_i64(), Some(agent_pid as i64));

    let ran = stack.up();
    assert_eq!(ran.code, 0, "bow up -d: {}", ran.describe());
    let status = stack.status_ok();
    assert_eq!(
        status["agent_pid"].as_i64(),
        Some(agent_pid as i64),
        "up -d should use the running `bow agent`"
    );
    let running = pids(&status);

    kill(agent_pid, libc::SIGTERM);
    let exit = agent.wait(WAIT);
    assert!(exit.success(), "bow agent exited with {exit}");
    for pid in &running {
        assert!(is_alive(*pid), "pid {pid} should outlive the agent");
    }
    let ran = stack.up();
    assert_eq!(ran.code, 0, "bow up -d after the agent: {}", ran.describe());
    let status = stack.wait_status("adopted", WAIT, all_healthy);
    assert_eq!(pids(&status), running, "the instances should be adopted");

    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    for pid in &running {
        wait_gone(*pid, Duration::from_secs(1));
    }
    stack.assert_nothing_runs();
}

#[test]
fn the_systemd_unit_runs_this_agent_from_anywhere() {
    let stack = Stack::new("fg-unit", STACK);
    // As a user would run it: in the stack's directory, the file found there.
    let mut command = support::bow();
    command
        .current_dir(stack.dir.path())
        .args(["agent", "--print-systemd-unit", "--state-dir"])
        .arg(&stack.state_dir);
    let ran = support::stack::run_for(&mut command, WAIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let unit = ran.stdout;
    assert!(
        unit.contains("[Service]") && unit.contains("[Install]"),
        "{unit}"
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in {unit}"));
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert!(
        argv[0].starts_with('/'),
        "ExecStart needs an absolute binary: {exec}"
    );
    assert_eq!(argv.get(1), Some(&"agent"), "{exec}");
    // systemd starts it in /, so every path it names must be absolute.
    for flag in ["--file", "--state-dir"] {
        if let Some(at) = argv.iter().position(|a| *a == flag) {
            let value = argv.get(at + 1).copied().unwrap_or("");
            assert!(
                value.starts_with('/'),
                "{flag} in ExecStart must be absolute, found {value:?}: {exec}"
            );
        }
    }
    assert!(
        !stack.state_dir.join("agent.sock").exists(),
        "printing the unit must not start an agent"
    );
}
