//! What the agent writes is not for every local user: agent.log, agent.pid and agent.lock are
//! 0600, the edge's access log is not world-readable, and a user who may not read the state dir
//! is told "permission denied: … run as root" by `bow logs`, `bow trust`, `bow history`,
//! `bow events` and `bow status` (before: nothing, or "no agent"). And `bow up -d` whose edge
//! cannot start (its port taken) leaves nothing running.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::procs::{all_processes, free_port, is_alive};
use support::stack::{Stack, WAIT, run_for};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `bow ARGS` for the stack, run as `nobody` (uid 65534) through util-linux's setpriv.
fn as_nobody(stack: &Stack, args: &[&str]) -> support::stack::Ran {
    let bow = stack.command(args);
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bow.get_program())
        .args(bow.get_args())
        .current_dir("/");
    for (name, value) in bow.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    run_for(&mut command, WAIT)
}

#[test]
fn the_agents_files_are_private_and_other_users_are_told_permission_denied() {
    let (http, https) = (free_port(), free_port());
    let stack = Stack::new(
        "private",
        &format!(
            "edge: {{ http_port: {http}, https_port: {https} }}\n\
             services:\n  web:\n    command: {{testapp}}\n    routes: [\"private.bow.localhost\"]\n    \
             health: {{ http: /healthz, interval: 200ms }}\n"
        ),
    );
    // Other users may read the stack file (as in a checkout), not the state dir.
    std::fs::set_permissions(stack.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&stack.file, std::fs::Permissions::from_mode(0o644)).unwrap();
    stack.up_ok();
    let trust = stack.run(&["trust"], WAIT);
    assert_eq!(trust.code, 0, "{}", trust.describe());
    // One request, so the access log has a line with a client address and a path.
    let ran = run_for(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", trust.stdout.trim()])
            .arg("--resolve")
            .arg(format!("private.bow.localhost:{https}:127.0.0.1"))
            .arg(format!("https://private.bow.localhost:{https}/secret-path")),
        WAIT,
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());

    for name in ["agent.log", "agent.pid", "agent.lock", "agent.sock"] {
        assert_eq!(
            mode(&stack.state_dir.join(name)),
            0o600,
            "{name} must be the agent's alone"
        );
    }
    for args in [
        &["logs", "web"][..],
        &["trust"],
        &["history"],
        &["events"],
        &["status"],
    ] {
        let ran = as_nobody(&stack, args);
        assert_ne!(ran.code, 0, "bow {args:?} as nobody: {}", ran.describe());
        assert!(
            ran.stderr.contains("permission denied") && ran.stderr.contains("as root"),
            "bow {args:?} as nobody must say permission denied, run as root: {}",
            ran.describe()
        );
    }
    let access_log = stack.state_dir.join("edge/access.log");
    support::procs::wait_for("the access log line", Duration::from_secs(10), || {
        std::fs::read_to_string(&access_log).is_ok_and(|text| text.contains("/secret-path"))
    });
    assert_eq!(
        mode(&access_log) & 0o007,
        0,
        "edge/access.log holds client addresses and paths: not for every user"
    );
    stack.down();
}

#[test]
fn up_d_whose_edge_port_is_taken_leaves_nothing_running() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let https = taken.local_addr().unwrap().port();
    let stack = Stack::new(
        "port-taken",
        &format!(
            "edge: {{ http_port: {}, https_port: {https} }}\n\
             services:\n  api:\n    command: {{testapp}}\n    replicas: 2\n    \
             health: {{ http: /healthz, interval: 200ms }}\n  \
             web:\n    command: {{testapp}}\n    routes: [\"taken.bow.localhost\"]\n    \
             health: {{ http: /healthz, interval: 200ms }}\n",
            free_port()
        ),
    );
    let ran = stack.up_within(Duration::from_secs(60));
    assert_ne!(ran.code, 0, "{}", ran.describe());
    assert!(
        ran.stderr.contains(&https.to_string()),
        "the error names the taken port: {}",
        ran.describe()
    );
    assert!(
        ran.stderr.contains("nothing keeps running"),
        "the error says what happened to what it started: {}",
        ran.describe()
    );
    if let Some(pid) = stack.agent_pid_file() {
        support::procs::wait_for("the agent to exit", Duration::from_secs(10), || {
            !is_alive(pid)
        });
    }
    let left: Vec<_> = all_processes()
        .into_iter()
        .filter(|p| p.env("BOW_PROJECT") == Some(stack.project.as_str()))
        .map(|p| p.pid)
        .collect();
    assert!(left.is_empty(), "instances left running: {left:?}");
    let status = stack.run(&["status"], WAIT);
    assert_ne!(status.code, 0, "no agent answers: {}", status.describe());
    drop(taken);
}
