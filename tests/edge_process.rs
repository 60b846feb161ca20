//! The edge in its own process (docs/agent.md, "The edge process"): under HTTPS load over
//! HTTP/1.1 keep-alive and HTTP/2, an agent SIGKILLed and started again, an agent away for
//! 10 s (an instance killed meanwhile) and an upgrade to another build of bow fail no request;
//! the edge process's own crash is an event and it is started again at once.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::load::Load;
use support::procs::{free_port, kill};
use support::stack::{Stack, WAIT};

const HOST: &str = "plane.bow.localhost";

fn stack(label: &str) -> (Stack, u16) {
    stack_with(label, "")
}

/// The stack with `extra` top-level lines.
fn stack_with(label: &str, extra: &str) -> (Stack, u16) {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "{extra}edge: {{ http_port: {http}, https_port: {https} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 2\n    routes: [\"{HOST}\"]\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    deploy: {{ drain_timeout: 5s }}\n"
    );
    (Stack::new(label, &yaml), https)
}

/// HTTP/2 load: h2load, two connections at a bounded rate, for `seconds`.
struct H2Load(Child);

impl H2Load {
    fn start(https: u16, seconds: u32) -> H2Load {
        let child = Command::new("h2load")
            .args([
                "-c",
                "2",
                "-m",
                "1",
                "--rps",
                "40",
                "-D",
                &seconds.to_string(),
                "--warm-up-time",
                "0",
                "-H",
                &format!(":authority: {HOST}"),
                &format!("https://127.0.0.1:{https}/"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("h2load (nghttp2-client)");
        H2Load(child)
    }

    /// (succeeded, everything else) and the report.
    fn finish(self) -> (u64, u64, String) {
        let output = self.0.wait_with_output().expect("h2load");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("requests:"))
            .unwrap_or_else(|| panic!("no requests line from h2load:\n{text}"));
        let count = |what: &str| -> u64 {
            line.split(',')
                .find(|part| part.trim().ends_with(what))
                .and_then(|part| part.trim().split(' ').next()?.parse().ok())
                .unwrap_or(0)
        };
        let codes = text
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .unwrap_or_default()
            .to_string();
        let non_2xx: u64 = codes
            .trim_start_matches("status codes:")
            .split(',')
            .filter(|part| !part.trim().ends_with("2xx"))
            .filter_map(|part| part.trim().split(' ').next()?.parse::<u64>().ok())
            .sum();
        let bad = count("failed") + count("errored") + count("timeout") + non_2xx;
        (count("succeeded"), bad, text)
    }
}

/// The stack's `bow <args>` run by another build of the binary, as an upgrade would.
fn run_binary(stack: &Stack, exe: &Path, args: &[&str]) -> support::stack::Ran {
    let usual = stack.command(args);
    let mut other = Command::new(exe);
    if let Some(dir) = usual.get_current_dir() {
        other.current_dir(dir);
    }
    other.args(usual.get_args());
    for (name, value) in usual.get_envs() {
        match value {
            Some(value) => other.env(name, value),
            None => other.env_remove(name),
        };
    }
    support::stack::run_for(&mut other, Duration::from_secs(90))
}

fn edge_pid(stack: &Stack) -> Option<i32> {
    let status = stack.status()?;
    let process = status["edge"]["process"].as_str()?.to_string();
    process
        .strip_prefix("pid ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn edge_exe(stack: &Stack) -> String {
    stack.status_ok()["edge"]["process"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_gone(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_failures(h1: serde_json::Value, h2: (u64, u64, String), stack: &Stack) {
    assert!(
        h1["ok"].as_u64().unwrap_or(0) > 200,
        "too few HTTP/1.1 requests: {h1}"
    );
    assert_eq!(
        h1["failed"],
        0,
        "HTTP/1.1 requests failed: {h1}\n{}",
        stack.diagnose()
    );
    let (succeeded, bad, report) = h2;
    assert!(succeeded > 50, "too few HTTP/2 requests:\n{report}");
    assert_eq!(
        bad,
        0,
        "HTTP/2 requests failed:\n{report}\n{}",
        stack.diagnose()
    );
}

#[test]
fn agent_crashes_and_absences_fail_no_request() {
    let (stack, https) = stack("plane-agent");
    stack.up_ok();
    let edge = edge_pid(&stack).expect("the edge process's pid");
    let h1 = Load::start(&stack, HOST, https, 18.0);
    let h2 = H2Load::start(https, 18);
    std::thread::sleep(Duration::from_millis(1500));

    // SIGKILL, then `bow up -d` at once (what a systemd unit does).
    let agent = stack.agent_pid_file().expect("the agent's pid");
    kill(agent, libc::SIGKILL);
    wait_gone(agent, Duration::from_secs(5));
    let up = stack.up();
    assert_eq!(up.code, 0, "{}", up.describe());
    assert_eq!(
        edge_pid(&stack),
        Some(edge),
        "the new agent adopts the edge process"
    );
    std::thread::sleep(Duration::from_secs(2));

    // Away for 10 s; an instance killed meanwhile.
    let agent = stack.agent_pid_file().expect("the agent's pid");
    let victim = stack.pid("web.1");
    kill(agent, libc::SIGKILL);
    wait_gone(agent, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    kill(victim, libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(8));
    assert!(alive(edge), "the edge process serves while no agent runs");

    let up = stack.up();
    assert_eq!(up.code, 0, "{}", up.describe());
    // The dead instance is started again (a new pid) and back in the edge.
    stack.wait_status("web.1 restarted and healthy", WAIT, |status| {
        support::stack::all_healthy(status)
            && support::stack::pid_in(status, "web.1").is_some_and(|pid| pid != victim)
    });
    assert_no_failures(h1.finish(), h2.finish(), &stack);
    assert_eq!(edge_pid(&stack), Some(edge), "one edge process all along");
    let events = stack.events();
    assert!(
        events.iter().filter(|e| e.kind == "agent-crashed").count() >= 2,
        "each crash is reported by the next agent:\n{}",
        support::stack::show_events(&events)
    );
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    wait_gone(edge, Duration::from_secs(10));
    stack.assert_nothing_runs();
}

#[test]
fn the_edge_process_killed_is_started_again() {
    // Alerts evaluated (their notifications go nowhere: `bow alerts` lists what fires).
    let (stack, https) = stack_with(
        "plane-crash",
        &format!(
            "alerts: {{ webhook: \"http://127.0.0.1:{}/hook\" }}\n",
            free_port()
        ),
    );
    stack.up_ok();
    let edge = edge_pid(&stack).expect("the edge process's pid");
    let h1 = Load::start(&stack, HOST, https, 6.0);
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = Instant::now();
    kill(edge, libc::SIGKILL);
    let status = stack.wait_status("a new edge process", WAIT, |status| {
        status["edge"]["process"]
            .as_str()
            .is_some_and(|p| !p.starts_with(&format!("pid {edge} ")))
    });
    let back_in = killed_at.elapsed();
    let result = h1.finish();
    eprintln!(
        "edge process SIGKILLed: a new one reported after {back_in:?}; load: {result}; status: {}",
        status["edge"]
    );
    assert!(result["ok"].as_u64().unwrap_or(0) > 100, "{result}");
    let events = stack.wait_event("edge-crashed", WAIT, |e| e.kind == "edge-crashed");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "edge-crashed" && e.message.contains(&edge.to_string())),
        "{}",
        support::stack::show_events(&events)
    );
    // An alert says so.
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = stack.run(&["alerts", "--output", "json"], WAIT);
        if listed.stdout.contains("EdgeCrashed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no EdgeCrashed alert: {}",
            listed.describe()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // It serves again.
    let ca = stack.run(&["trust"], WAIT).stdout.trim().to_string();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &ca, "--resolve"])
        .arg(format!("{HOST}:{https}:127.0.0.1"))
        .arg(format!("https://{HOST}:{https}/"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("\"service\":\"web\""),
        "{output:?}"
    );
}

#[test]
fn an_upgrade_to_another_build_fails_no_request() {
    let (stack, https) = stack("plane-upgrade");
    // "Another build": a copy of the binary (another file, another inode).
    let new_binary = stack.dir.path().join("bow-new");
    std::fs::copy(env!("CARGO_BIN_EXE_bow"), &new_binary).unwrap();
    stack.up_ok();
    let old_edge = edge_pid(&stack).expect("the edge process's pid");
    let h1 = Load::start(&stack, HOST, https, 10.0);
    let h2 = H2Load::start(https, 10);
    std::thread::sleep(Duration::from_millis(1500));

    // The documented procedure: end the agent (SIGTERM leaves instances and the edge
    // running), then `bow up -d` with the new binary.
    let agent = stack.agent_pid_file().expect("the agent's pid");
    kill(agent, libc::SIGTERM);
    wait_gone(agent, Duration::from_secs(10));
    let up = run_binary(&stack, &new_binary, &["up", "-d"]);
    assert_eq!(up.code, 0, "{}", up.describe());
    let events = stack.wait_event("edge-upgraded", WAIT, |e| e.kind == "edge-upgraded");
    let new_exe = edge_exe(&stack);
    assert!(
        new_exe.contains(new_binary.to_str().unwrap()),
        "the new binary's edge answers: {new_exe}\n{}",
        support::stack::show_events(&events)
    );
    wait_gone(old_edge, Duration::from_secs(15));
    assert_no_failures(h1.finish(), h2.finish(), &stack);
}
