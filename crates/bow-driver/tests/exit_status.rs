//! The shim records how the service ended: exit code or signal.

mod support;

use bow_driver::ProcessState;
use bow_driver::logs::LogStream;
use support::{Sandbox, wait_for_exit, wait_for_log_line};

#[test]
fn exit_code_is_recorded() {
    let sandbox = Sandbox::new();
    let (spec, _) = sandbox.testapp_spec(
        "crashy",
        &[("TESTAPP_CRASH_AFTER", "200ms"), ("TESTAPP_EXIT_CODE", "7")],
    );
    let handle = sandbox.start(&spec).unwrap();
    let exit = wait_for_exit(&handle);
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (Some(7), None, false)
    );
    assert_eq!(exit.to_string(), "exited with code 7");
    assert!(exit.exited_at_unix_ms >= handle.started_at_unix_ms);
    assert_eq!(bow_driver::verify(&handle).unwrap(), ProcessState::Gone);
    sandbox.assert_clean();
}

#[test]
fn crash_at_start_is_a_started_instance_that_exits_1() {
    let sandbox = Sandbox::new();
    let (spec, _) = sandbox.testapp_spec("broken", &[("TESTAPP_CRASH_AT_START", "1")]);
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(wait_for_exit(&handle).code, Some(1));
    let line = wait_for_log_line(&spec, "crashing at start");
    assert_eq!(line.stream, LogStream::Stderr);
    sandbox.assert_clean();
}

#[test]
fn killing_signal_is_recorded() {
    let sandbox = Sandbox::new();
    let (spec, _) = sandbox.testapp_spec("victim", &[]);
    let handle = sandbox.start(&spec).unwrap();
    wait_for_log_line(&spec, "listening on");
    // SAFETY: signalling the service this test started, verified alive just before.
    assert!(bow_driver::is_alive(&handle));
    unsafe { libc::kill(handle.pid, libc::SIGUSR1) };
    let exit = wait_for_exit(&handle);
    assert_eq!((exit.code, exit.signal), (None, Some(libc::SIGUSR1)));
    assert_eq!(exit.to_string(), "killed by signal 10 (SIGUSR1)");
    sandbox.assert_clean();
}
