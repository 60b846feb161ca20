//! A handle whose start time does not match the process at its pid is never taken for it.

mod support;

use std::time::Duration;

use bow_driver::{InstanceHandle, ProcessState, StopOutcome};
use support::{Sandbox, http_get};

#[test]
fn a_reused_pid_is_not_alive_and_is_never_signalled() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec("web", &[]);
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(http_get(port, "/healthz").0, 200);

    // The same pids, but started at other times: what a stored handle looks like after the
    // pids were reused (e.g. after a reboot).
    let stale = InstanceHandle {
        start_time: handle.start_time + 1,
        shim_start_time: handle.shim_start_time + 1,
        ..handle.clone()
    };
    assert_eq!(bow_driver::verify(&stale).unwrap(), ProcessState::PidReused);
    assert_eq!(
        bow_driver::verify_shim(&stale).unwrap(),
        ProcessState::PidReused
    );
    assert!(!bow_driver::is_alive(&stale));
    assert_eq!(bow_driver::exit_status(&stale).unwrap(), None);
    assert!(matches!(
        bow_driver::stop(&stale, Duration::from_secs(1)).unwrap(),
        StopOutcome::AlreadyGone(None)
    ));
    bow_driver::kill_instance(&stale).unwrap();

    // The real instance was not touched.
    assert!(bow_driver::is_alive(&handle));
    assert_eq!(http_get(port, "/healthz").0, 200);
    if let Some(cgroup) = &handle.cgroup {
        assert!(!cgroup.is_removed());
    }
    bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();
    sandbox.assert_clean();
}

#[test]
fn a_handle_of_a_process_that_never_existed_is_gone() {
    let sandbox = Sandbox::new();
    let (spec, _) = sandbox.testapp_spec("web", &[]);
    let handle = sandbox.start(&spec).unwrap();
    let missing = InstanceHandle {
        pid: i32::MAX - 1,
        shim_pid: i32::MAX - 2,
        ..handle.clone()
    };
    assert_eq!(bow_driver::verify(&missing).unwrap(), ProcessState::Gone);
    bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();
    sandbox.assert_clean();
}
