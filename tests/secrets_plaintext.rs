//! A secret's plaintext is found only in the delivered tmpfs file: not in the state dir, the
//! project dir, any bow command's output, events, logs (the service printed it: the log says
//! `[redacted:NAME]`), nor in any process's argv or environment.

mod support;

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::procs;
use support::secrets::{
    contains, files_containing, init_and_set, run_with_stdin, secrets_dir_of, use_key,
};
use support::stack::{Ran, Stack, WAIT};

#[test]
fn the_plaintext_is_only_in_the_delivered_file() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let plaintext = format!("pt-{}-{nanos}-Qz", std::process::id());
    let second = format!("pt2-{}-{nanos}-Wy", std::process::id());
    // The service reads the secret and prints it on stdout and stderr, also split over two
    // writes, which the log must still redact.
    let stack = Stack::new(
        "splain",
        "
services:
  web:
    command: ['sh', '-c', 'v=$(cat $BOW_SECRETS_DIR/api_token); echo \"token is $v\"; echo \"on stderr $v\" >&2; printf %s \"split: $v\" | head -c 12; sleep 0.2; printf %s \"split: $v\" | tail -c +13; echo; exec {testapp}']
    secrets: [api_token]
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
",
    );
    use_key(&stack, "me");
    let outputs: RefCell<Vec<Ran>> =
        RefCell::new(init_and_set(&stack, &[("api_token", &plaintext)]));
    let run = |args: &[&str]| {
        let ran = stack.run(args, Duration::from_secs(90));
        outputs.borrow_mut().push(ran.clone());
        ran
    };
    let up = run(&["up", "-d"]);
    assert_eq!(up.code, 0, "{}", up.describe());
    let pid = stack.pid("web.1");
    let dir = secrets_dir_of(pid).unwrap();
    let delivered = dir.join("api_token");
    assert_eq!(std::fs::read_to_string(&delivered).unwrap(), plaintext);
    stack.wait_log("web.1", "split:", 1, WAIT);

    for args in [
        &["validate"][..],
        &["config"],
        &["config", "--output", "json"],
        &["plan"],
        &["plan", "--output", "json"],
        &["status"],
        &["status", "--output", "json"],
        &["logs"],
        &["events"],
        &["events", "--output", "json"],
        &["secret", "list"],
        &["secret", "list", "--output", "json"],
        &["secret", "recipients", "list"],
        &["secret", "get", "api_token"],
        &["agent", "--print-systemd-unit"],
    ] {
        run(args);
    }
    // A changed value is deployed the same way (plan and up print only the name).
    outputs.borrow_mut().push(run_with_stdin(
        &stack,
        &["secret", "set", "api_token"],
        second.as_bytes(),
    ));
    let plan = run(&["plan"]);
    assert!(
        plan.stdout.contains("~ secret api_token (changed)"),
        "{}",
        plan.describe()
    );
    let up = run(&["up", "-d"]);
    assert_eq!(up.code, 0, "{}", up.describe());
    // The new value is a new release: a new instance (with a new id) replaced web.1.
    let status = stack.wait_status("web replaced", WAIT, |s| {
        let ids: Vec<&str> = support::stack::instances(s)
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        ids.len() == 1 && ids[0] != "web.1" && support::stack::all_healthy(s)
    });
    let current = support::stack::instances(&status)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    stack.wait_log(&current, "split: [redacted:api_token]", 1, WAIT);
    run(&["logs"]);
    run(&["events"]);

    let logs = run(&["logs"]).stdout;
    assert!(
        logs.contains("token is [redacted:api_token]")
            && logs.contains("on stderr [redacted:api_token]")
            && logs.contains("split: [redacted:api_token]"),
        "the service printed the value; the log shows it redacted:\n{logs}"
    );

    for value in [&plaintext, &second] {
        let needle = value.as_bytes();
        for ran in outputs.borrow().iter() {
            assert!(
                !contains(ran.output().as_bytes(), needle),
                "bow printed the plaintext: {}",
                ran.describe()
            );
        }
        let found = files_containing(stack.dir.path(), needle);
        assert!(
            found.is_empty(),
            "plaintext in the project or state dir: {found:?}"
        );
        assert!(stack.state_dir.starts_with(stack.dir.path()));
        for process in procs::all_processes() {
            assert!(
                !process
                    .cmdline
                    .iter()
                    .any(|a| contains(a.as_bytes(), needle)),
                "plaintext in the argv of {process}"
            );
            assert!(
                !process
                    .environ
                    .iter()
                    .any(|a| contains(a.as_bytes(), needle)),
                "plaintext in the environment of {process}"
            );
        }
    }
    // The one place it is: the current value in the delivered file, and nowhere else under
    // the project's secrets dirs.
    let pid = stack.pid(&current);
    let delivered = secrets_dir_of(pid).unwrap().join("api_token");
    let base: PathBuf = dir.parent().unwrap().to_path_buf();
    assert_eq!(files_containing(&base, second.as_bytes()), vec![delivered]);
    assert!(files_containing(&base, plaintext.as_bytes()).is_empty());
}
