//! A secret's digest is part of the release of the services that use it: a new value shows
//! in `plan` as `~ secret NAME (changed)` and `up` replaces those services (only those) with
//! the new value; re-encryption, rotation and setting the same value change nothing. The
//! agent reads the key itself, so it restarts a crashed instance with its secrets also after
//! an agent restart.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::procs;
use support::secrets::{init_and_set, init_recipient, run_with_stdin, secrets_dir_of, use_key};
use support::stack::{Stack, WAIT};

const LIMIT: Duration = Duration::from_secs(90);

/// The id and pid of web's one instance (a deploy gives the new instance a new id).
fn web_instance(stack: &Stack) -> (String, i32) {
    let status = stack.status_ok();
    web_in(&status).expect("one running web instance")
}

fn web_in(status: &serde_json::Value) -> Option<(String, i32)> {
    let instances: Vec<&serde_json::Value> = support::stack::instances(status)
        .into_iter()
        .filter(|i| i["service"] == "web")
        .collect();
    match instances.as_slice() {
        [one] => Some((one["id"].as_str()?.to_string(), one["pid"].as_i64()? as i32)),
        _ => None,
    }
}

fn delivered(stack: &Stack) -> String {
    let dir = secrets_dir_of(web_instance(stack).1).expect("BOW_SECRETS_DIR");
    std::fs::read_to_string(dir.join("token")).unwrap()
}

fn plan_is_empty(stack: &Stack, why: &str) {
    let plan = stack.run(&["plan"], LIMIT);
    assert_eq!(plan.code, 0, "{why}: {}", plan.describe());
}

#[test]
fn a_changed_secret_replaces_the_services_using_it() {
    let stack = Stack::new(
        "schange",
        "
services:
  web:
    command: {testapp}
    secrets: [token]
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  plain:
    command: {testapp}
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
",
    );
    let key = use_key(&stack, "me");
    init_and_set(&stack, &[("token", "value-one")]);
    stack.up_ok();
    let (web, plain) = (web_instance(&stack).1, stack.pid("plain.1"));
    assert_eq!(delivered(&stack), "value-one");
    plan_is_empty(&stack, "nothing changed");

    // Re-encryption to one more recipient and setting the same value again: no change.
    use_key(&stack, "teammate");
    let (_, teammate) = init_recipient(&stack);
    use_key(&stack, "me");
    let file = stack.dir.path().join("secrets/development.yaml");
    let before = std::fs::read_to_string(&file).unwrap();
    let add = stack.run(&["secret", "recipients", "add", &teammate], LIMIT);
    assert_eq!(add.code, 0, "{}", add.describe());
    assert_ne!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "re-encrypted"
    );
    plan_is_empty(&stack, "re-encryption keeps the digests");
    let after_add = std::fs::read_to_string(&file).unwrap();
    let same = run_with_stdin(&stack, &["secret", "set", "token"], b"value-one\n");
    assert!(
        same.stderr.contains("already has this value"),
        "{}",
        same.describe()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after_add);

    // A new value: plan shows it (not the value, not the digest) as a replace of web only.
    let set = run_with_stdin(&stack, &["secret", "set", "token"], b"value-two");
    assert_eq!(set.code, 0, "{}", set.describe());
    let plan = stack.run(&["plan"], LIMIT);
    assert_eq!(plan.code, 2, "{}", plan.describe());
    assert!(
        plan.stdout
            .contains("~ web  (replace)\n    ~ secret token (changed)  (replace)\n"),
        "{}",
        plan.describe()
    );
    assert!(
        plan.stdout.contains("deploy a new release of web"),
        "{}",
        plan.describe()
    );
    assert!(!plan.stdout.contains("plain"), "{}", plan.describe());
    assert!(!plan.stdout.contains("value-"), "{}", plan.describe());
    let json = stack.run(&["plan", "--output", "json"], LIMIT);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["actions"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["actions"][0]["action"], "replace");
    assert_eq!(json["actions"][0]["service"], "web");

    let up = stack.up();
    assert_eq!(up.code, 0, "{}", up.describe());
    // A deploy: the new instance (a new id) replaces the old one.
    stack.wait_status("web replaced", WAIT, |s| {
        web_in(s).is_some_and(|(_, p)| p != web) && support::stack::all_healthy(s)
    });
    assert_eq!(delivered(&stack), "value-two");
    assert_eq!(stack.pid("plain.1"), plain, "plain does not use the secret");
    plan_is_empty(&stack, "applied");

    // Rotation: a new key, the same digests; the running agent reads the new key.
    let rotate = stack.run(&["secret", "rotate"], LIMIT);
    assert_eq!(rotate.code, 0, "{}", rotate.describe());
    assert!(key.with_extension("key.old").exists());
    plan_is_empty(&stack, "rotation keeps the digests");
    let (id, web) = web_instance(&stack);
    let restart = stack.run(&["restart", "web"], LIMIT);
    assert_eq!(restart.code, 0, "{}", restart.describe());
    assert_ne!(stack.pid(&id), web);
    assert_eq!(delivered(&stack), "value-two");

    // A new agent (the old one killed) restarts a crashed instance with its secrets by itself.
    let agent = stack.agent_pid_file().unwrap();
    procs::kill(agent, libc::SIGKILL);
    procs::wait_gone(agent, Duration::from_secs(10));
    let up = stack.up();
    assert_eq!(up.code, 0, "{}", up.describe());
    crash_and_wait(&stack);
    assert_eq!(delivered(&stack), "value-two");

    // Set but not applied: a crashed instance comes back with the applied value.
    let set = run_with_stdin(&stack, &["secret", "set", "token"], b"value-three");
    assert_eq!(set.code, 0, "{}", set.describe());
    crash_and_wait(&stack);
    assert_eq!(delivered(&stack), "value-two");
    // ... unless the agent no longer holds it (restarted alone, as systemd does): then the
    // instance gets the file's value, and an event says the release and the file differ.
    let agent = stack.agent_pid_file().unwrap();
    procs::kill(agent, libc::SIGKILL);
    procs::wait_gone(agent, Duration::from_secs(10));
    let mut alone = stack.command(&["agent"]);
    alone
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut alone = alone.spawn().unwrap();
    stack.wait_status("the agent adopted web", WAIT, support::stack::all_healthy);
    crash_and_wait(&stack);
    assert_eq!(delivered(&stack), "value-three");
    stack.wait_event("secret-changed", WAIT, |e| e.kind == "secret-changed");
    assert_eq!(stack.down().code, 0);
    let _ = alone.wait();
}

/// SIGKILLs web's process and waits until the agent has restarted it and it is healthy.
fn crash_and_wait(stack: &Stack) {
    let (id, pid) = web_instance(stack);
    procs::kill(pid, libc::SIGKILL);
    stack.wait_status("web came back", WAIT, |s| {
        support::stack::pid_in(s, &id).is_some_and(|p| p != pid) && support::stack::all_healthy(s)
    });
}

/// A changed secret rolls the 3 instances of the service that uses it, under load through the
/// edge, with 0 failed requests; every new instance has the new value.
#[test]
fn a_changed_secret_rolls_the_service_under_load_without_a_failed_request() {
    let (http, https) = (procs::free_port(), procs::free_port());
    let host = "secret-roll.bow.localhost";
    let stack = Stack::new(
        "sroll",
        &format!(
            "edge: {{ http_port: {http}, https_port: {https} }}
services:
  web:
    command: {{testapp}}
    replicas: 3
    secrets: [token]
    routes: [\"{host}\"]
    health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}
    deploy: {{ drain_timeout: 5s }}
"
        ),
    );
    use_key(&stack, "me");
    init_and_set(&stack, &[("token", "value-one")]);
    stack.up_ok();
    let load = support::load::Load::start(&stack, host, https, 10.0);
    std::thread::sleep(Duration::from_secs(1));
    let set = run_with_stdin(&stack, &["secret", "set", "token"], b"value-two");
    assert_eq!(set.code, 0, "{}", set.describe());
    let apply = stack.run(&["apply", "--yes"], LIMIT);
    assert_eq!(apply.code, 0, "{}", apply.describe());
    assert!(
        apply.stdout.contains("~ secret token (changed)")
            && apply.stdout.contains("web: release 2 live (rolling"),
        "{}",
        apply.describe()
    );
    assert!(!apply.output().contains("value-"), "{}", apply.describe());
    let status = stack.status_ok();
    let instances = support::stack::instances(&status);
    assert_eq!(instances.len(), 3, "{status}");
    for instance in instances {
        assert_eq!(instance["release"], 2, "{status}");
        let dir = secrets_dir_of(instance["pid"].as_i64().unwrap() as i32).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("token")).unwrap(),
            "value-two"
        );
    }
    let report = load.finish();
    assert!(report["ok"].as_u64().unwrap() > 300, "{report}");
    assert_eq!(
        report["failed"], 0,
        "failed requests during the roll: {report}"
    );
    plan_is_empty(&stack, "applied");
}
