//! Zero-downtime deploys under load through the edge: rolling and blue-green replace every
//! instance with 0 failed requests; a release that fails its checks or crashes at start is
//! rolled back while the old one keeps serving; `bow rollback`; `bow history`; and an agent
//! SIGKILLed mid-deploy ends, after a restart, with one release fully serving.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::load::Load;
use support::procs::{free_port, kill, wait_for, wait_gone};
use support::stack::{Stack, WAIT, instances};

/// A 3-replica service behind the edge answering with `APP_VERSION`.
fn stack(label: &str, host: &str, deploy: &str) -> (Stack, u16) {
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n\
         services:\n  web:\n    command: {{testapp}}\n    replicas: 3\n    routes: [\"{host}\"]\n    \
         env: {{ APP_VERSION: v1 }}\n    \
         health: {{ http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }}\n    \
         deploy: {deploy}\n"
    );
    (Stack::new(label, &yaml), https)
}

/// Rewrites the stack file: `APP_VERSION: v1` becomes `env`.
fn change_env(stack: &Stack, env: &str) {
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(&stack.file, text.replace("APP_VERSION: v1", env)).unwrap();
}

fn apply(stack: &Stack) -> support::stack::Ran {
    stack.run(&["apply", "--yes"], Duration::from_secs(90))
}

fn history(stack: &Stack) -> Vec<Value> {
    let ran = stack.run(&["history", "web", "--output", "json"], WAIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    serde_json::from_str::<Vec<Value>>(&ran.stdout).unwrap()
}

/// The releases of the running instances of web.
fn running_releases(status: &Value) -> Vec<i64> {
    let mut releases: Vec<i64> = instances(status)
        .iter()
        .map(|i| i["release"].as_i64().unwrap_or(-1))
        .collect();
    releases.sort();
    releases
}

fn assert_no_failures(stack: &Stack, load: &Value) {
    assert!(
        load["ok"].as_u64().unwrap() > 300,
        "too few requests: {load}"
    );
    assert_eq!(
        load["failed"],
        0,
        "failed requests during the deploy: {load}\n{}",
        explain(stack)
    );
}

/// What the agent did and the edge's answers other than 200, for a failure message.
fn explain(stack: &Stack) -> String {
    let log = std::fs::read_to_string(stack.state_dir.join("edge/access.log")).unwrap_or_default();
    let not_ok: Vec<&str> = log
        .lines()
        .filter(|line| !line.contains("\"status\":200"))
        .collect();
    format!(
        "events:\n{}\nedge answers other than 200: {} (first {:?}, last {:?})",
        support::stack::show_events(&stack.events()),
        not_ok.len(),
        not_ok.first(),
        not_ok.last()
    )
}

/// A deploy of v2 under load: 0 failed requests, then only v2 answers.
fn deploy_under_load(label: &str, deploy: &str, strategy: &str) {
    let host = format!("{label}.bow.localhost");
    let (stack, https) = stack(label, &host, deploy);
    stack.up_ok();
    let load = Load::start(&stack, &host, https, 14.0);
    std::thread::sleep(Duration::from_secs(2));
    change_env(&stack, "APP_VERSION: v2");
    let ran = apply(&stack);
    assert_eq!(ran.code, 0, "apply failed: {}", ran.describe());
    let out = ran.output();
    assert!(out.contains("services.web.env.APP_VERSION"), "{out}");
    assert!(
        out.contains(&format!("web: release 2 live ({strategy}")),
        "{out}"
    );
    // Old instances are drained and stopped before apply returns: from now on only v2.
    load.mark();
    let status = stack.status_ok();
    assert_eq!(running_releases(&status), [2, 2, 2], "{status}");
    let report = load.finish();
    assert_no_failures(&stack, &report);
    assert!(report["versions"]["v1"].as_u64().unwrap() > 0, "{report}");
    let after = report["after_mark"].as_object().unwrap();
    assert!(
        after.len() == 1 && after["v2"].as_u64().unwrap() > 100,
        "after the deploy only v2 may answer: {report}"
    );
    let releases = history(&stack);
    assert_eq!(releases[0]["status"], "live", "{releases:?}");
    assert_eq!(releases[0]["strategy"], strategy);
    assert_eq!(releases[1]["status"], "superseded");
}

#[test]
fn rolling_deploy_under_load_fails_no_request() {
    deploy_under_load("roll", "{ drain_timeout: 5s }", "rolling");
}

#[test]
fn blue_green_deploy_under_load_fails_no_request() {
    deploy_under_load(
        "bluegreen",
        "{ strategy: blue-green, drain_timeout: 5s }",
        "blue-green",
    );
}

/// A release that cannot become healthy: apply exits 1 saying why, v1 serves throughout.
fn rolled_back_under_load(label: &str, env: &str, expect: &str) {
    let host = format!("{label}.bow.localhost");
    let (stack, https) = stack(label, &host, "{ timeout: 4s, drain_timeout: 5s }");
    stack.up_ok();
    let load = Load::start(&stack, &host, https, 10.0);
    std::thread::sleep(Duration::from_secs(1));
    change_env(&stack, env);
    let ran = apply(&stack);
    assert_eq!(ran.code, 1, "apply must fail: {}", ran.describe());
    let out = ran.output();
    assert!(out.contains("web: release 2 FAILED"), "{out}");
    assert!(out.contains(expect), "{out}");
    assert!(
        out.contains("rolled back: release 1 keeps serving"),
        "{out}"
    );
    load.mark();
    let status = stack.status_ok();
    assert_eq!(running_releases(&status), [1, 1, 1], "{status}");
    let report = load.finish();
    assert_no_failures(&stack, &report);
    assert_eq!(
        report["versions"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["v1"],
        "{report}"
    );
    let releases = history(&stack);
    assert_eq!(releases[0]["status"], "failed", "{releases:?}");
    assert_eq!(releases[1]["status"], "live", "{releases:?}");
    // What is applied is v1 again: plan shows the failed change as still to do.
    let plan = stack.run(&["plan"], WAIT);
    assert_eq!(plan.code, 2, "{}", plan.describe());
    assert!(plan.stdout.contains("APP_VERSION"), "{}", plan.stdout);
}

#[test]
fn a_release_failing_its_health_check_is_rolled_back() {
    rolled_back_under_load(
        "failhealth",
        "APP_VERSION: v2, TESTAPP_FAIL_HEALTH: \"1\"",
        "failed its health check",
    );
}

#[test]
fn a_release_crashing_at_start_is_rolled_back_with_its_last_lines() {
    rolled_back_under_load(
        "crashstart",
        "APP_VERSION: v2, TESTAPP_CRASH_AT_START: \"1\"",
        "exited before it was healthy",
    );
}

#[test]
fn rollback_deploys_the_previous_release_and_history_tells_the_story() {
    let host = "back.bow.localhost";
    let (stack, https) = stack("rollback", host, "{ drain_timeout: 5s }");
    stack.up_ok();
    change_env(&stack, "APP_VERSION: v2");
    let ran = apply(&stack);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let load = Load::start(&stack, host, https, 8.0);
    std::thread::sleep(Duration::from_secs(1));
    let ran = stack.run(&["rollback", "web"], Duration::from_secs(90));
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(
        ran.stdout.contains("web: release 3 live (rolling"),
        "{}",
        ran.stdout
    );
    load.mark();
    let report = load.finish();
    assert_no_failures(&stack, &report);
    let after = report["after_mark"].as_object().unwrap();
    assert!(after.len() == 1 && after.contains_key("v1"), "{report}");
    let releases = history(&stack);
    assert_eq!(releases.len(), 3, "{releases:?}");
    assert_eq!(releases[0]["status"], "live");
    assert_eq!(releases[0]["reason"], "rollback to release 1");
    let text = stack.run(&["history"], WAIT).stdout;
    assert!(text.contains("rollback to release 1"), "{text}");
    // Rolling back again goes to release 2 (v2): the last good one before the live one.
    let ran = stack.run(&["rollback", "web", "--to", "7"], WAIT);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("no release 7"), "{}", ran.describe());
}

#[test]
fn agent_killed_mid_deploy_ends_consistent_after_restart() {
    let host = "crash.bow.localhost";
    let (stack, https) = stack("midkill", host, "{ drain_timeout: 5s }");
    // Slow starts need a start period before failed checks count.
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replace("retries: 2 }", "retries: 2, start_period: 10s }"),
    )
    .unwrap();
    stack.up_ok();
    // Slow starts stretch the deploy so that the kill lands in the middle of it.
    change_env(&stack, "APP_VERSION: v2, TESTAPP_START_DELAY: 1500ms");
    let mut apply = stack.command(&["apply", "--yes"]);
    let mut child = apply
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    stack.wait_status("a new instance next to the old ones", WAIT, |s| {
        running_releases(s).contains(&2)
    });
    let agent = stack.agent_pid_file().expect("agent pid");
    kill(agent, libc::SIGKILL);
    wait_gone(agent, WAIT);
    let _ = child.wait();
    // A new agent adopts old and new instances and finishes the deploy.
    let ran = stack.up();
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let load = Load::start(&stack, host, https, 3.0);
    // The deploy goes on (or is rolled back) to its end: release 2 live or failed.
    wait_for("release 2 finished", Duration::from_secs(60), || {
        history(&stack)
            .iter()
            .any(|r| r["release"] == 2 && (r["status"] == "live" || r["status"] == "failed"))
    });
    let live: Vec<i64> = history(&stack)
        .iter()
        .filter(|r| r["status"] == "live")
        .map(|r| r["release"].as_i64().unwrap())
        .collect();
    assert_eq!(live.len(), 1, "one live release: {:?}", history(&stack));
    let release = live[0];
    // Exactly the three instances of the live release run, healthy, and nothing else.
    let status = stack.wait_status("three healthy instances of the live release", WAIT, |s| {
        running_releases(s) == [release; 3] && support::stack::all_healthy(s)
    });
    let ids: Vec<String> = instances(&status)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    wait_for("no other instance process", WAIT, || {
        stack
            .processes()
            .iter()
            .filter(|p| p.env("BOW_INSTANCE").is_some())
            .count()
            == 3
    });
    let running: Vec<String> = stack
        .processes()
        .iter()
        .filter_map(|p| p.env("BOW_INSTANCE").map(str::to_string))
        .collect();
    let mut sorted = running.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        sorted,
        expected,
        "{}",
        support::stack::show_events(&stack.events())
    );
    let report = load.finish();
    assert_no_failures_short(&stack, &report);
}

fn assert_no_failures_short(stack: &Stack, load: &Value) {
    assert!(
        load["ok"].as_u64().unwrap() > 50,
        "too few requests: {load}"
    );
    assert_eq!(
        load["failed"],
        0,
        "failed requests: {load}\n{}",
        explain(stack)
    );
}

#[test]
fn in_place_changes_keep_the_processes_and_scaling_keeps_the_others() {
    let host = "inplace.bow.localhost";
    let (stack, _https) = stack("inplace", host, "{ drain_timeout: 5s }");
    stack.up_ok();
    let before = stack.status_ok();
    let pids: Vec<i64> = instances(&before)
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    // A slower check and 4 replicas: an in-place release, one more instance, nobody restarted.
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replace("interval: 200ms", "interval: 1s")
            .replace("replicas: 3", "replicas: 4"),
    )
    .unwrap();
    let ran = apply(&stack);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(
        ran.stdout.contains("web: release 2 live (in-place"),
        "{}",
        ran.stdout
    );
    let status = stack.wait_status("four healthy", WAIT, |s| {
        instances(s).len() == 4 && support::stack::all_healthy(s)
    });
    for pid in &pids {
        assert!(
            instances(&status).iter().any(|i| i["pid"] == *pid),
            "instance with pid {pid} was replaced: {status}"
        );
    }
    assert_eq!(running_releases(&status), [2, 2, 2, 2], "{status}");
    stack.wait_event("reconfigured", WAIT, |e| e.kind == "reconfigured");
    let releases = history(&stack);
    assert_eq!(releases[0]["strategy"], "in-place", "{releases:?}");
    assert_eq!(releases[0]["status"], "live");
}

#[test]
fn dependencies_deploy_before_dependants() {
    let stack = Stack::new(
        "deporder",
        "services:
  api:
    command: {testapp}
    replicas: 2
    env: { APP_VERSION: v1 }
    health: { http: /healthz, interval: 200ms }
  web:
    command: {testapp}
    replicas: 2
    env: { APP_VERSION: v1 }
    health: { http: /healthz, interval: 200ms }
    depends_on: [api]
",
    );
    stack.up_ok();
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(
        &stack.file,
        text.replace("APP_VERSION: v1", "APP_VERSION: v2"),
    )
    .unwrap();
    // Without a terminal, apply proceeds without asking.
    let ran = stack.run(&["apply"], Duration::from_secs(90));
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert!(!ran.stdout.contains("[y/N]"), "{}", ran.stdout);
    let again = stack.run(&["apply"], WAIT);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    let events = stack.events();
    let at = |service: &str, kind: &str| {
        support::stack::position(&events, |e| {
            e.service.as_deref() == Some(service)
                && e.kind == kind
                && e.message.contains("release 2")
        })
        .unwrap_or_else(|| {
            panic!(
                "no {kind} of {service}: {}",
                support::stack::show_events(&events)
            )
        })
    };
    assert!(
        at("api", "deployed") < at("web", "deploying"),
        "web deployed before api finished: {}",
        support::stack::show_events(&events)
    );
}
