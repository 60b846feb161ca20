//! Continuous deployment (`bow up -d --follow`): a bare repository and a developer's clone
//! made here; the stack's directory is the deploy work tree. A pushed commit is live within
//! the interval plus the deploy with 0 failed requests under load; a broken commit is rolled
//! back and not tried again; `bow history` names the commits; a dirty work tree holds
//! following back with an event; `bow rollback` pauses it until `bow follow resume`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::git::{git, push, repo};
use support::load::Load;
use support::procs::free_port;
use support::stack::{Stack, WAIT, all_healthy};

const LIMIT: Duration = Duration::from_secs(120);

fn follow_up(stack: &Stack) {
    let ran = stack.run(&["up", "-d", "--follow", "--interval", "1s"], LIMIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(ran.stderr.contains("following main"), "{}", ran.stderr);
}

fn follow_events(stack: &Stack) -> Vec<String> {
    stack
        .events()
        .into_iter()
        .filter(|e| e.kind == "follow")
        .map(|e| e.message)
        .collect()
}

fn wait_follow(stack: &Stack, what: &str, needle: &str) {
    stack.wait_event(what, LIMIT, |e| {
        e.kind == "follow" && e.message.contains(needle)
    });
}

fn history(stack: &Stack) -> Vec<Value> {
    let ran = stack.run(&["history", "web", "--output", "json"], WAIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    serde_json::from_str(&ran.stdout).unwrap()
}

#[test]
fn a_pushed_commit_goes_live_under_load_and_a_broken_one_is_rolled_back_once() {
    let host = "follow.bow.localhost";
    let (stack, others, https) = repo("follow", host);
    let dev = others.path().join("dev");
    follow_up(&stack);
    let load = Load::start(&stack, host, https, 16.0);
    std::thread::sleep(Duration::from_millis(500));

    let pushed = Instant::now();
    push(&dev, "APP_VERSION: v1", "APP_VERSION: v2", "web v2");
    wait_follow(&stack, "v2 live", "web v2: live as revision");
    let took = pushed.elapsed();
    eprintln!("push to live: {} ms (interval 1 s)", took.as_millis());
    assert_eq!(
        git(stack.dir.path(), &["log", "-1", "--format=%s"]),
        "web v2"
    );

    // A commit whose release cannot become healthy: rolled back, recorded, not retried.
    push(
        &dev,
        "APP_VERSION: v2",
        "APP_VERSION: v3, TESTAPP_FAIL_HEALTH: \"1\"",
        "web v3 broken",
    );
    wait_follow(&stack, "v3 failed", "web v3 broken: revision");
    load.mark();
    let releases = history(&stack).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        history(&stack).len(),
        releases,
        "the failed commit was tried again"
    );
    let report = load.finish();
    assert_eq!(report["failed"], 0, "failed requests: {report}");
    let after = report["after_mark"].as_object().unwrap();
    assert!(
        after.keys().all(|v| v == "v2"),
        "only v2 serves after the failed commit: {report}"
    );
    let releases = history(&stack);
    assert_eq!(releases[0]["status"], "failed", "{releases:?}");
    assert!(
        releases[0]["commit"]
            .as_str()
            .unwrap()
            .ends_with("web v3 broken"),
        "{releases:?}"
    );
    assert!(
        releases[1]["commit"].as_str().unwrap().ends_with("web v2"),
        "{releases:?}"
    );
    let status = stack.run(&["follow", "status"], WAIT);
    assert!(status.stdout.contains("failed:"), "{}", status.stdout);

    // A newer commit is applied again.
    push(
        &dev,
        "APP_VERSION: v3, TESTAPP_FAIL_HEALTH: \"1\"",
        "APP_VERSION: v4",
        "web v4",
    );
    wait_follow(&stack, "v4 live", "web v4: live");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn a_dirty_tree_holds_following_back_and_a_rollback_pauses_it() {
    let (stack, others, _) = repo("followdirty", "followdirty.bow.localhost");
    let dev = others.path().join("dev");
    follow_up(&stack);
    stack.wait_status("healthy", WAIT, all_healthy);

    // A local edit in the deploy work tree: nothing is applied, one event says why.
    let work = stack.dir.path();
    let local = std::fs::read_to_string(&stack.file).unwrap() + "# a local note\n";
    std::fs::write(&stack.file, &local).unwrap();
    push(&dev, "APP_VERSION: v1", "APP_VERSION: v2", "web v2");
    wait_follow(&stack, "dirty tree", "local changes");
    std::thread::sleep(Duration::from_secs(2));
    let said = follow_events(&stack)
        .iter()
        .filter(|m| m.contains("local changes"))
        .count();
    assert_eq!(said, 1, "said once: {:?}", follow_events(&stack));
    assert_eq!(history(&stack).len(), 1, "nothing applied");
    git(work, &["checkout", "--", "bow.yaml"]);
    wait_follow(&stack, "v2 live", "web v2: live");

    // A rollback pauses following: the next commit waits for `bow follow resume`.
    let ran = stack.run(&["rollback", "web"], LIMIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(
        ran.stderr.contains("following main paused"),
        "{}",
        ran.stderr
    );
    push(&dev, "APP_VERSION: v2", "APP_VERSION: v3", "web v3");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !follow_events(&stack).iter().any(|m| m.contains("web v3")),
        "{:?}",
        follow_events(&stack)
    );
    let status = stack.run(&["follow", "status"], WAIT);
    assert!(
        status.stdout.contains("bow rollback web"),
        "{}",
        status.stdout
    );
    let ran = stack.run(&["follow", "resume"], WAIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    wait_follow(&stack, "v3 live", "web v3: live");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn follow_needs_a_work_tree_with_an_upstream() {
    let stack = Stack::new("follownogit", "services:\n  web:\n    command: {testapp}\n");
    let ran = stack.run(&["up", "-d", "--follow"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(ran.stderr.contains("git work tree"), "{}", ran.stderr);
    git(stack.dir.path(), &["init", "-q", "-b", "main"]);
    git(stack.dir.path(), &["add", "bow.yaml"]);
    git(stack.dir.path(), &["commit", "-q", "-m", "one"]);
    let ran = stack.run(&["up", "-d", "--follow"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(ran.stderr.contains("has no upstream"), "{}", ran.stderr);
    let ran = stack.run(&["up", "--follow"], LIMIT);
    assert_ne!(ran.code, 0, "--follow needs -d: {}", ran.describe());
}

#[test]
fn bow_agent_follows_as_a_systemd_unit_would_run_it() {
    let (stack, others, _https) = repo("followunit", "unit.bow.localhost");
    let dev = others.path().join("dev");
    let unit = stack.run(
        &[
            "agent",
            "--print-systemd-unit",
            "--follow",
            "--interval",
            "1s",
        ],
        WAIT,
    );
    assert_eq!(unit.code, 0, "{}", unit.describe());
    let exec = unit
        .stdout
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap();
    assert!(exec.ends_with(" --follow main --interval 1s"), "{exec}");
    // The unit's command, in the foreground as systemd runs it.
    let mut agent = stack
        .command(&["agent", "--follow", "--interval", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stack.dir.path().join("agent.err")).unwrap())
        .spawn()
        .unwrap();
    stack.wait_status("healthy", WAIT, all_healthy);
    push(&dev, "APP_VERSION: v1", "APP_VERSION: v2", "web v2");
    wait_follow(&stack, "v2 live", "web v2: live as revision");
    let status = stack.run(&["follow", "status"], WAIT);
    assert!(
        status.stdout.contains("following main"),
        "{}",
        status.describe()
    );
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    let _ = agent.wait();
}

/// POSTs `body` to the admin listener's /hooks/git with `headers`; the status code.
fn post_hook(port: u16, body: &str, headers: &[String]) -> String {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .args(["--data-binary", body])
        .arg(format!("http://127.0.0.1:{port}/hooks/git"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// HMAC-SHA256 of `body` with `key`, in hex (openssl, as a git host computes it).
fn hmac(key: &str, body: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_signed_push_webhook_fetches_at_once_and_a_bad_one_is_refused() {
    let (stack, others, _) = repo("followhook", "followhook.bow.localhost");
    let admin = free_port();
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replacen(
            "services:",
            &format!("admin: {{ listen: \"127.0.0.1:{admin}\" }}\nservices:"),
            1,
        ),
    )
    .unwrap();
    git(stack.dir.path(), &["commit", "-q", "-am", "admin listener"]);
    git(stack.dir.path(), &["push", "-q", "origin", "main"]);
    let dev = others.path().join("dev");
    git(&dev, &["pull", "-q"]);
    support::secrets::use_key(&stack, "me");
    support::secrets::init_and_set(&stack, &[("hook", "s3cret-hook")]);
    // An hour between polls: only the webhook can make it fetch within the test.
    let ran = stack.run(
        &[
            "up",
            "-d",
            "--follow",
            "--interval",
            "1h",
            "--webhook-secret",
            "hook",
        ],
        LIMIT,
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());
    stack.wait_status("healthy", WAIT, all_healthy);
    push(&dev, "APP_VERSION: v1", "APP_VERSION: v2", "web v2");
    let body = r#"{"ref":"refs/heads/main"}"#;
    assert_eq!(post_hook(admin, body, &[]), "401");
    let wrong = format!("X-Hub-Signature-256: sha256={}", hmac("other", body));
    assert_eq!(post_hook(admin, body, &[wrong]), "401");
    stack.wait_event("refusal recorded", WAIT, |e| {
        e.kind == "follow" && e.message.starts_with("webhook refused")
    });
    assert!(!follow_events(&stack).iter().any(|m| m.contains("web v2")));
    let good = format!("X-Hub-Signature-256: sha256={}", hmac("s3cret-hook", body));
    assert_eq!(post_hook(admin, body, &[good]), "202");
    wait_follow(&stack, "v2 live after the webhook", "web v2: live");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
