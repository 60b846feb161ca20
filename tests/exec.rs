//! `bow exec SERVICE -- CMD`: a command run the way an instance of the service runs. For a
//! process service: its user, dir, environment (PORT, discovery variables, secrets) and
//! sandbox; for a container: inside it. The exit code is the command's.

mod support;

use support::procs::{is_root, uid_of};
use support::stack::{Stack, WAIT, instance};

#[test]
fn exec_runs_as_the_process_instance_runs_user_env_secrets_and_sandbox() {
    assert!(is_root(), "this test needs root");
    let stack = Stack::new(
        "exec-proc",
        "services:\n  web:\n    command: {testapp}\n    replicas: 2\n    secrets: [token]\n    \
         env: { GREETING: hello }\n    health: { http: /healthz, interval: 200ms }\n",
    );
    support::secrets::use_key(&stack, "exec");
    support::secrets::init_and_set(&stack, &[("token", "t0ken-value")]);
    let status = stack.up_ok();
    let port = instance(&status, "web.2").unwrap()["port"]
        .as_u64()
        .unwrap();
    let ran = stack.run_trailing(
        &[
            "exec", "web", "--instance", "2", "--", "sh", "-c",
            "id -u; echo $GREETING $PORT; cat $BOW_SECRETS_DIR/token; echo; grep NoNewPrivs /proc/self/status; touch /etc/bow-exec-probe 2>&1 || echo refused",
        ],
        WAIT,
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let uid = uid_of("bow-web").expect("the service user exists");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], uid.to_string(), "{}", ran.stdout);
    assert_eq!(lines[1], format!("hello {port}"), "{}", ran.stdout);
    assert_eq!(lines[2], "t0ken-value", "{}", ran.stdout);
    assert!(lines[3].ends_with('1'), "no_new_privs: {}", ran.stdout);
    assert!(ran.stdout.contains("refused"), "{}", ran.stdout);
    assert!(!std::path::Path::new("/etc/bow-exec-probe").exists());
    // The command's exit code is bow exec's.
    let failed = stack.run_trailing(&["exec", "web", "--", "sh", "-c", "exit 7"], WAIT);
    assert_eq!(failed.code, 7, "{}", failed.describe());
    let missing = stack.run_trailing(&["exec", "nope", "--", "true"], WAIT);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no service `nope`"),
        "{}",
        missing.describe()
    );
    stack.down();
}

#[test]
fn exec_runs_inside_a_container() {
    assert!(is_root(), "this test needs root");
    let image = support::containers::testapp_image();
    let stack = Stack::new(
        "exec-ctr",
        &format!(
            "services:\n  web:\n    image: {image}\n    secrets: [token]\n    env: {{ GREETING: hi }}\n    \
             health: {{ http: /healthz, interval: 200ms }}\n"
        ),
    );
    support::secrets::use_key(&stack, "exec-ctr");
    support::secrets::init_and_set(&stack, &[("token", "c0ntainer-token")]);
    stack.up_ok();
    let ran = stack.run_trailing(
        &["exec", "web", "--", "sh", "-c", "echo $GREETING; cat /run/secrets/token; test -f /.dockerenv && echo in-container || echo other"],
        WAIT,
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(
        ran.stdout.starts_with("hi\nc0ntainer-token"),
        "{}",
        ran.stdout
    );
    let failed = stack.run_trailing(
        &["exec", "web", "--", "sh", "-c", "echo oops >&2; exit 3"],
        WAIT,
    );
    assert_eq!(failed.code, 3, "{}", failed.describe());
    assert!(failed.stderr.contains("oops"), "{}", failed.describe());
    stack.down();
}
