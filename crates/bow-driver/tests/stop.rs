//! `stop`: SIGTERM honoured, SIGKILL after the timeout, leftovers of the group stopped too.

mod support;

use std::time::{Duration, Instant};

use bow_driver::{ProcessState, StopOutcome};
use support::{Sandbox, http_get, wait_for, wait_for_exit, wait_for_log_line};

#[test]
fn sigterm_is_honoured() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec("web", &[]);
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(http_get(port, "/healthz").0, 200);
    let started = Instant::now();
    let outcome = bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        started.elapsed()
    );
    match outcome {
        StopOutcome::Terminated(Some(exit)) => assert_eq!(exit.code, Some(0), "{exit}"),
        other => panic!("expected a graceful exit, got {other:?}"),
    }
    wait_for_log_line(&spec, "terminating");
    assert_eq!(bow_driver::verify(&handle).unwrap(), ProcessState::Gone);
    sandbox.assert_clean();
}

#[test]
fn ignored_sigterm_gets_sigkill_after_the_timeout() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec("stubborn", &[("TESTAPP_IGNORE_SIGTERM", "1")]);
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(http_get(port, "/healthz").0, 200);
    let started = Instant::now();
    let outcome = bow_driver::stop(&handle, Duration::from_millis(500)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    match outcome {
        StopOutcome::Killed(Some(exit)) => {
            assert_eq!(exit.signal, Some(libc::SIGKILL));
            assert!(!exit.oom_killed);
        }
        other => panic!("expected SIGKILL, got {other:?}"),
    }
    sandbox.assert_clean();
}

#[test]
fn stopping_an_ended_instance_reports_already_gone() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec("oneshot", &["/bin/sh", "-c", "exit 4"]);
    let handle = sandbox.start(&spec).unwrap();
    wait_for_exit(&handle);
    match bow_driver::stop(&handle, Duration::from_secs(1)).unwrap() {
        StopOutcome::AlreadyGone(Some(exit)) => assert_eq!(exit.code, Some(4)),
        other => panic!("expected already gone, got {other:?}"),
    }
    sandbox.assert_clean();
}

#[test]
fn children_in_the_group_are_stopped_too() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec(
        "forks",
        &[
            "/bin/sh",
            "-c",
            "sleep 300 & sleep 300 & echo started; wait",
        ],
    );
    let handle = sandbox.start(&spec).unwrap();
    wait_for_log_line(&spec, "started");
    let mut pids = vec![];
    wait_for(
        "three processes in the instance",
        Duration::from_secs(5),
        || {
            pids = bow_driver::instance_pids(&handle);
            pids.len() == 3
        },
    );
    let outcome = bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();
    assert!(matches!(outcome, StopOutcome::Terminated(_)), "{outcome:?}");
    for pid in pids {
        wait_for("a child to be gone", Duration::from_secs(5), || {
            bow_driver::procfs::read_stat(pid)
                .unwrap()
                .is_none_or(|stat| !stat.is_alive())
        });
    }
    assert_eq!(bow_driver::instance_pids(&handle), Vec::<i32>::new());
    sandbox.assert_clean();
}

#[test]
fn the_shim_forwards_sigterm_to_the_service() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec("web", &[]);
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(http_get(port, "/healthz").0, 200);
    // SAFETY: signalling the shim this test started (its pid and start time are in the handle).
    assert_eq!(
        bow_driver::verify_shim(&handle).unwrap(),
        ProcessState::Running
    );
    unsafe { libc::kill(handle.shim_pid, libc::SIGTERM) };
    assert_eq!(wait_for_exit(&handle).code, Some(0));
    wait_for_log_line(&spec, "terminating");
    sandbox.assert_clean();
}
