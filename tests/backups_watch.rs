//! Watching backups (docs/backups.md): a good backup then a failed one — the failure is in
//! `bow status`, in `/metrics` (`bow_backup_failures_total`, the last success's timestamp
//! kept) and a firing `BackupFailed` alert, and the good backup is still listed; the next good
//! run clears it. `backup.verify` on a one-minute cron runs a restore drill by itself.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::procs::free_port;
use support::secrets::{init_and_set, use_key};
use support::stack::Stack;

const LIMIT: Duration = Duration::from_secs(180);
const TOKEN: &str = "watch-token-9d2c";

fn bow_ok(stack: &Stack, args: &[&str]) -> String {
    let ran = stack.run(args, LIMIT);
    assert_eq!(ran.code, 0, "bow {args:?}: {}", ran.describe());
    ran.stdout
}

fn metrics(admin: u16) -> String {
    let output = Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("http://127.0.0.1:{admin}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `check` every 500 ms until it holds; panics with `what` after `within`.
fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            None => return,
            Some(last) if Instant::now() > deadline => panic!("{what}: {last}"),
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn a_failed_backup_is_shown_counted_and_alerted_and_drills_run_on_schedule() {
    let admin = free_port();
    let hook = free_port();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:{admin}, token_secret: admin_token }}\n\
         alerts: {{ webhook: \"http://127.0.0.1:{hook}/hook\" }}\n\
         services:\n  db:\n    postgres: {{ version: 15, database: shop, user: shopper, password_secret: db_password, init: ./init.sql }}\n    \
         backup: {{ to: ./backups, keep: 3, verify: \"* * * * *\" }}\n"
    );
    let stack = Stack::new("bkwatch", &yaml);
    stack.write(
        "init.sql",
        "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2);",
    );
    use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", "pw-1"), ("admin_token", TOKEN)]);
    stack.up_ok();

    bow_ok(&stack, &["backup", "run", "db"]);
    let status = bow_ok(&stack, &["status"]);
    assert!(
        status.contains("db: last backup") && !status.contains("never"),
        "{status}"
    );
    let text = metrics(admin);
    assert!(
        text.contains("bow_backup_last_success_timestamp_seconds{service=\"db\"}")
            && text.contains("bow_backup_failures_total{service=\"db\"} 0"),
        "{text}"
    );

    // The store goes away (a file where its directory was): the run fails.
    let store = stack.dir.path().join("backups");
    let moved = stack.dir.path().join("backups.away");
    std::fs::rename(&store, &moved).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let failed = stack.run(&["backup", "run", "db"], LIMIT);
    assert_eq!(failed.code, 1, "{}", failed.describe());
    let status = bow_ok(&stack, &["status"]);
    assert!(status.contains("LAST RUN FAILED"), "{status}");
    let text = metrics(admin);
    assert!(
        text.contains("bow_backup_failures_total{service=\"db\"} 1")
            && text.contains("bow_backup_last_success_timestamp_seconds{service=\"db\"}"),
        "{text}"
    );
    wait_for(Duration::from_secs(20), "no BackupFailed alert", || {
        let alerts = stack.run(&["alerts"], LIMIT).output();
        (!alerts.contains("BackupFailed")).then_some(alerts)
    });

    // The store is back: the good backup is still there, and the next run clears the failure.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&moved, &store).unwrap();
    let listed = bow_ok(&stack, &["backup", "list", "db"]);
    assert!(listed.contains("yes,"), "{listed}");
    bow_ok(&stack, &["backup", "run", "db"]);
    let status = bow_ok(&stack, &["status"]);
    assert!(!status.contains("FAILED"), "{status}");

    // verify: "* * * * *": the agent runs a restore drill within the next minute or so.
    wait_for(Duration::from_secs(130), "no scheduled drill", || {
        let events = stack.run(&["events"], LIMIT).output();
        (!events.contains("scheduled restore drill of db done")).then_some(events)
    });
}
