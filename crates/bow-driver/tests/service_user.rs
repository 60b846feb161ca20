//! As root, the service runs as its own system user, created when missing.

mod support;

use std::time::Duration;

use bow_driver::procfs::read_uid;
use bow_driver::users::{ensure_system_user, lookup_user};
use support::{Sandbox, http_get, is_root, run_starter, wait_for_log_line};

/// Shared by the tests of this file (and created concurrently by them).
const TEST_USER: &str = "bow-drivertest";

#[test]
fn service_runs_as_the_created_user() {
    assert!(is_root(), "this test needs root: it creates a system user");
    let sandbox = Sandbox::new();
    let (mut spec, port) = sandbox.testapp_spec("web", &[("TESTAPP_ECHO_ENV", "USER,HOME")]);
    spec.user = Some(TEST_USER.into());
    let handle = sandbox.start(&spec).unwrap();
    let user = lookup_user(TEST_USER)
        .unwrap()
        .expect("the user was created");
    assert_eq!(
        (handle.user.as_str(), handle.uid, handle.gid),
        (TEST_USER, user.uid, user.gid)
    );
    assert_ne!(user.uid, 0);
    assert_eq!(read_uid(handle.pid).unwrap(), Some(user.uid));
    let status = std::fs::read_to_string(format!("/proc/{}/status", handle.pid)).unwrap();
    let gid_line = status
        .lines()
        .find(|line| line.starts_with("Gid:"))
        .unwrap();
    assert!(
        gid_line
            .split_whitespace()
            .skip(1)
            .all(|gid| gid == user.gid.to_string()),
        "{gid_line}"
    );
    let groups_line = status
        .lines()
        .find(|line| line.starts_with("Groups:"))
        .unwrap();
    assert!(
        !groups_line.split_whitespace().any(|gid| gid == "0"),
        "kept root's groups: {groups_line}"
    );
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(
        wait_for_log_line(&spec, "env USER").text,
        format!("env USER={TEST_USER}")
    );
    assert_eq!(
        wait_for_log_line(&spec, "env HOME").text,
        "env HOME=/nonexistent"
    );
    // The shim (root) keeps writing the log; the service cannot touch it.
    let shim_uid = read_uid(handle.shim_pid).unwrap();
    assert_eq!(shim_uid, Some(0));
    bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();
    sandbox.assert_clean();
}

#[test]
fn concurrent_creation_of_one_user_agrees() {
    assert!(is_root(), "this test needs root: it creates a system user");
    let users: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| ensure_system_user(TEST_USER).unwrap()))
        .collect();
    let users: Vec<_> = users
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    assert!(users.windows(2).all(|pair| pair[0] == pair[1]), "{users:?}");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let entries: Vec<&str> = passwd
        .lines()
        .filter(|line| line.starts_with(&format!("{TEST_USER}:")))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].ends_with(":/nonexistent:/usr/sbin/nologin"),
        "{}",
        entries[0]
    );
}

#[test]
fn without_root_the_service_runs_as_the_caller_and_limits_are_refused() {
    assert!(
        is_root(),
        "this test needs root: it creates a user to drop privileges to"
    );
    let user = ensure_system_user(TEST_USER).unwrap();
    let sandbox = Sandbox::new();
    std::os::unix::fs::chown(sandbox.dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let (mut spec, port) = sandbox.testapp_spec("web", &[]);
    // Ignored without root: the service runs as whoever runs the driver.
    spec.user = Some("root".into());
    let uid = format!("--reuid={}", user.uid);
    let gid = format!("--regid={}", user.gid);
    let unprivileged = ["setpriv", uid.as_str(), gid.as_str(), "--clear-groups"];
    let spec_path = sandbox.dir.path().join("spec.json");
    let (mut starter, handle) = run_starter(&unprivileged, &spec, &spec_path).unwrap();
    sandbox.track(handle.clone());
    assert_eq!((handle.uid, handle.user.as_str()), (user.uid, TEST_USER));
    assert_eq!(read_uid(handle.pid).unwrap(), Some(user.uid));
    assert_eq!(read_uid(handle.shim_pid).unwrap(), Some(user.uid));
    assert_eq!(handle.cgroup, None);
    assert_eq!(http_get(port, "/healthz").0, 200);
    starter.kill().unwrap();
    starter.wait().unwrap();
    bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();

    spec.resources.memory_bytes = Some(64 << 20);
    let error = run_starter(&unprivileged, &spec, &spec_path).unwrap_err();
    assert!(
        error.contains("cannot enforce resource limits: bow is not running as root"),
        "{error}"
    );
    sandbox.assert_clean();
}
