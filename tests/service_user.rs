//! As root, every service runs as its own unix user: `bow-<service>` by default (created when
//! missing), or the one `user:` names.

mod support;

use support::procs::{is_root, uid_of, uids};
use support::stack::{Stack, instance};

#[test]
fn services_run_as_their_own_users() {
    assert!(is_root(), "this test needs root: bow creates users");
    let stack = Stack::new(
        "users",
        "
services:
  plain:
    command: {testapp}
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  named:
    command: {testapp}
    user: bow-e2e-named
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
",
    );
    let status = stack.up_ok();
    for (id, user) in [("plain.1", "bow-plain"), ("named.1", "bow-e2e-named")] {
        let uid = uid_of(user).unwrap_or_else(|| panic!("bow should have created {user}"));
        assert_ne!(uid, 0);
        let entry = instance(&status, id).unwrap();
        let pid = entry["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            uids(pid),
            Some((uid, uid)),
            "{id} (pid {pid}) should run as {user} (uid {uid})"
        );
        assert_eq!(entry["user"], user, "status of {id}: {entry}");
    }
}
