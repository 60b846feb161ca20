//! A started instance serves HTTP, and its output is captured with timestamps.

mod support;

use std::time::{Duration, SystemTime};

use bow_driver::logs::{LogStream, read_instance_log};
use bow_driver::{DEFAULT_PATH, InstanceHandle, ProcessState, StopOutcome};
use support::{Sandbox, http_get, wait_for_exit, wait_for_log_line};

#[test]
fn testapp_answers_http_and_its_output_is_captured() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec(
        "web",
        &[
            ("APP_VERSION", "v3"),
            ("TESTAPP_ECHO_ENV", "PATH,LANG,HOME,CARGO_PKG_NAME"),
        ],
    );
    let before = SystemTime::now();
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(bow_driver::verify(&handle).unwrap(), ProcessState::Running);
    assert_eq!(handle.pgid, handle.pid);
    assert_eq!(http_get(port, "/healthz"), (200, "ok\n".to_string()));
    let (status, body) = http_get(port, "/");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(
            "{{\"version\":\"v3\",\"instance\":\"web.0\",\"service\":\"web\",\"pid\":{}}}\n",
            handle.pid
        )
    );

    let listening = wait_for_log_line(&spec, "listening on");
    assert_eq!(listening.stream, LogStream::Stdout);
    assert_eq!(
        listening.text,
        format!("listening on 127.0.0.1:{port} version=v3")
    );
    assert!(listening.time >= before && listening.time <= SystemTime::now());
    wait_for_log_line(&spec, "GET /healthz 200");
    // The environment is the spec's plus defaults, nothing inherited from the test process.
    assert_eq!(
        wait_for_log_line(&spec, "env PATH").text,
        format!("env PATH={DEFAULT_PATH}")
    );
    assert_eq!(
        wait_for_log_line(&spec, "env LANG").text,
        "env LANG=C.UTF-8"
    );
    assert_eq!(
        wait_for_log_line(&spec, "env CARGO_PKG_NAME").text,
        "env CARGO_PKG_NAME (unset)"
    );

    // The on-disk line format is the documented one.
    let raw = std::fs::read_to_string(spec.log_path()).unwrap();
    let first = raw
        .lines()
        .find(|line| line.contains("listening on"))
        .unwrap();
    let (time, rest) = first.split_once(' ').unwrap();
    assert!(
        time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{first}"
    );
    assert!(rest.starts_with("stdout listening on"), "{first}");

    // The shim wrote the same handle to state.json for a later agent.
    assert_eq!(
        InstanceHandle::load(&spec.instance_run_dir()).unwrap(),
        Some(handle.clone())
    );

    let outcome = bow_driver::stop(&handle, spec.stop_timeout).unwrap();
    assert!(
        matches!(outcome, StopOutcome::Terminated(Some(ref exit)) if exit.code == Some(0)),
        "{outcome:?}"
    );
    sandbox.assert_clean();
}

#[test]
fn stdout_and_stderr_are_told_apart() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec(
        "sh",
        &[
            "/bin/sh",
            "-c",
            "echo to-out; echo to-err >&2; printf 'no newline'",
        ],
    );
    let handle = sandbox.start(&spec).unwrap();
    let exit = wait_for_exit(&handle);
    assert_eq!(exit.code, Some(0));
    let lines = read_instance_log(&spec.log_dir, &spec.instance_id, Default::default()).unwrap();
    let seen: Vec<(LogStream, &str)> = lines
        .iter()
        .map(|line| (line.stream, line.text.as_str()))
        .collect();
    assert!(seen.contains(&(LogStream::Stdout, "to-out")), "{seen:?}");
    assert!(seen.contains(&(LogStream::Stderr, "to-err")), "{seen:?}");
    assert!(
        seen.contains(&(LogStream::Stdout, "no newline")),
        "{seen:?}"
    );
    assert!(lines.windows(2).all(|pair| pair[0].time <= pair[1].time));
    sandbox.assert_clean();
}

#[test]
fn a_command_string_with_shell_syntax_runs_through_sh() {
    let sandbox = Sandbox::new();
    let argv = bow_driver::command_to_argv("echo \"greeting=${GREETING}\" | tr a-z A-Z").unwrap();
    let mut spec = sandbox.spec("shell", &[]);
    spec.argv = argv;
    spec.env.insert("GREETING".into(), "hello".into());
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(wait_for_exit(&handle).code, Some(0));
    assert_eq!(wait_for_log_line(&spec, "GREETING").text, "GREETING=HELLO");
    sandbox.assert_clean();
}

#[test]
fn restarting_an_instance_id_appends_to_its_log() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec("again", &["/bin/echo", "run"]);
    for _ in 0..2 {
        let handle = sandbox.start(&spec).unwrap();
        wait_for_exit(&handle);
        bow_driver::stop(&handle, Duration::from_secs(1)).unwrap();
    }
    let lines = read_instance_log(&spec.log_dir, &spec.instance_id, Default::default()).unwrap();
    assert_eq!(lines.iter().filter(|line| line.text == "run").count(), 2);
    sandbox.assert_clean();
}
