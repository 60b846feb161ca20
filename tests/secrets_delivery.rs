//! Secrets reach a service as files: one private tmpfs per instance, one 0400 file per
//! secret owned by the service's user, `BOW_SECRETS_DIR` pointing at it, `${secret:NAME}` in
//! `env` resolved (for exec health checks too); the files are gone when the instance stops, also when its shim was killed.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use support::procs::{self, uid_of};
use support::secrets::{init_and_set, is_tmpfs_mount, on_tmpfs, secrets_dir_of, use_key};
use support::stack::Stack;

const STACK: &str = "
services:
  web:
    command: {testapp}
    secrets: [db_password, api_key]
    env: { API_KEY: '${secret:api_key}' }
    # The exec check sees what the service sees: the files and the resolved env.
    health: { exec: 'test -s $BOW_SECRETS_DIR/db_password && expr \"$API_KEY\" : key- >/dev/null', interval: 200ms, timeout: 1s, retries: 3 }
  plain:
    command: {testapp}
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
";

#[test]
fn secrets_are_files_on_a_private_tmpfs_owned_by_the_service_user() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let stack = Stack::new("sdeliver", STACK);
    use_key(&stack, "me");
    init_and_set(
        &stack,
        &[
            ("db_password", "pw-delivery-1"),
            ("api_key", "key-delivery-1"),
        ],
    );
    stack.up_ok();

    let pid = stack.pid("web.1");
    let dir = secrets_dir_of(pid).expect("web has BOW_SECRETS_DIR");
    assert_eq!(
        dir,
        std::path::Path::new("/run/bow")
            .join(format!("{}-development", stack.project))
            .join("web.1")
    );
    assert!(
        is_tmpfs_mount(&dir),
        "{} is not its own tmpfs mount",
        dir.display()
    );
    assert!(on_tmpfs(&dir));
    let uid = uid_of("bow-web").expect("bow created bow-web");
    let dir_meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((dir_meta.uid(), dir_meta.mode() & 0o7777), (uid, 0o500));
    for (name, value) in [
        ("db_password", "pw-delivery-1"),
        ("api_key", "key-delivery-1"),
    ] {
        let file = dir.join(name);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o400, "{}", file.display());
        assert_eq!(meta.uid(), uid, "{}", file.display());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), value);
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Written explicitly in env: resolved into the service's own environment.
    let web = procs::process(pid).unwrap();
    assert_eq!(web.env("API_KEY"), Some("key-delivery-1"));
    // A service without secrets gets no dir.
    assert_eq!(secrets_dir_of(stack.pid("plain.1")), None);

    // A restart (new process) gets a fresh dir; stopping removes it.
    let ran = stack.run(&["restart", "web"], Duration::from_secs(60));
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let mounts_at_dir = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
        .count();
    assert_eq!(
        mounts_at_dir, 1,
        "one tmpfs per instance, not stacked mounts"
    );
    let ran = stack.down();
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(!dir.exists(), "{} outlived the instance", dir.display());
    assert!(!is_tmpfs_mount(&dir));
}

#[test]
fn secrets_of_an_instance_whose_shim_was_killed_are_cleaned_up() {
    let stack = Stack::new("sorphan", STACK);
    use_key(&stack, "me");
    init_and_set(
        &stack,
        &[("db_password", "pw-orphan-1"), ("api_key", "key-orphan-1")],
    );
    stack.up_ok();
    let pid = stack.pid("web.1");
    let dir = secrets_dir_of(pid).unwrap();
    // Everything dies at once: the agent, the shim and the service (e.g. the OOM killer).
    let handle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stack.state_dir.join("run/web.1/state.json")).unwrap(),
    )
    .unwrap();
    let agent = stack.agent_pid_file().expect("agent pid");
    let shim = handle["shim_pid"].as_i64().unwrap() as i32;
    for victim in [agent, shim, pid] {
        procs::kill(victim, libc::SIGKILL);
    }
    for victim in [agent, shim, pid] {
        procs::wait_gone(victim, Duration::from_secs(10));
    }
    assert!(is_tmpfs_mount(&dir), "nothing could clean up yet");
    // The next agent (here the one `down` runs) removes what no running instance owns.
    let ran = stack.down();
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert!(!is_tmpfs_mount(&dir));
}
