//! `bow promote --from staging --to production`: production gets the code staging runs, with
//! its own settings; `--dry-run` shows what would change; code that changed on disk since
//! staging deployed it is refused.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::stack::{Stack, WAIT, all_healthy};

const LIMIT: Duration = Duration::from_secs(120);

const YAML: &str = "services:
  web:
    command: {testapp}
    dir: ./app
    env: { GREETING: hello }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }
environments:
  staging: {}
  production:
    services:
      web: { replicas: 2, env: { GREETING: welcome } }
";

fn code(stack: &Stack, env: &str) -> (String, Value) {
    let ran = stack.run(&["history", "web", "-e", env, "--output", "json"], WAIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let releases: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
    let live = releases
        .iter()
        .find(|r| r["status"] == "live")
        .unwrap_or_else(|| panic!("no live release: {releases:?}"))
        .clone();
    (live["code"].as_str().unwrap().to_string(), live)
}

#[test]
fn production_gets_the_code_staging_runs_with_its_own_settings() {
    let staging = Stack::new("promote", YAML);
    staging.write("app/version.txt", "1\n");
    // Real code versions (the tests' stacks pin one otherwise).
    staging.set_env("BOW_CODE_VERSION", "");
    let production = Stack::from_file(&staging.file, &staging.project);
    production.set_env("BOW_CODE_VERSION", "");
    for (stack, env) in [(&staging, "staging"), (&production, "production")] {
        let ran = stack.run(&["up", "-d", "-e", env], LIMIT);
        assert_eq!(ran.code, 0, "{}", ran.describe());
    }
    let (first, _) = code(&production, "production");

    // New code reaches staging only.
    staging.write("app/version.txt", "2\n");
    let ran = staging.run(&["apply", "--yes", "-e", "staging"], LIMIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let (second, _) = code(&staging, "staging");
    assert_ne!(first, second);

    let from = staging.state_dir.to_str().unwrap();
    let promote = |extra: &[&str]| {
        let mut args = vec![
            "promote",
            "--from",
            "staging",
            "--to",
            "production",
            "--from-state-dir",
            from,
        ];
        args.extend_from_slice(extra);
        production.run(&args, LIMIT)
    };
    let dry = promote(&["--dry-run"]);
    assert_eq!(dry.code, 2, "{}", dry.describe());
    assert!(
        dry.stdout.contains("promote from staging to production"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("~ web"), "{}", dry.stdout);
    assert_eq!(
        code(&production, "production").0,
        first,
        "a dry run changes nothing"
    );

    let ran = promote(&["--yes"]);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let (promoted, release) = code(&production, "production");
    assert_eq!(promoted, second, "{release}");
    production.wait_status("production healthy", WAIT, all_healthy);
    let status = production.status_ok();
    let instances = support::stack::instances(&status);
    assert_eq!(
        instances.len(),
        2,
        "production keeps its 2 replicas: {status}"
    );
    let ran = promote(&["--dry-run"]);
    assert_eq!(ran.code, 0, "nothing left to promote: {}", ran.describe());

    // Files changed since staging deployed them: refused, nothing changes.
    staging.write("app/version.txt", "3\n");
    let ran = promote(&["--yes"]);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr.contains("staging runs code")
            && ran.stderr.contains("deploy these files to staging first"),
        "{}",
        ran.stderr
    );
    assert_eq!(code(&production, "production").0, second);

    // Another host: staging's live releases go through a file (no state dir shared).
    let ran = staging.run(&["apply", "--yes", "-e", "staging"], LIMIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let (third, _) = code(&staging, "staging");
    let file = staging.dir.path().join("promotion.json");
    let ran = staging.run(
        &[
            "promote",
            "--from",
            "staging",
            "--export",
            file.to_str().unwrap(),
        ],
        WAIT,
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());
    let text = std::fs::read_to_string(&file).unwrap();
    let exported: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(exported["environment"], "staging", "{text}");
    assert_eq!(
        exported["services"]["web"]["code"],
        third.as_str(),
        "{text}"
    );
    assert!(
        !text.contains("hello") && !text.contains("healthz"),
        "only what pins the release leaves the host: {text}"
    );
    let by_file = |extra: &[&str]| {
        let mut args = vec![
            "promote",
            "--from-file",
            file.to_str().unwrap(),
            "--to",
            "production",
        ];
        args.extend_from_slice(extra);
        production.run(&args, LIMIT)
    };
    let dry = by_file(&["--dry-run"]);
    assert_eq!(dry.code, 2, "{}", dry.describe());
    let ran = by_file(&["--yes"]);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    assert_eq!(code(&production, "production").0, third);
    // Another project's file is refused.
    std::fs::write(&file, text.replace(&staging.project, "someone-else")).unwrap();
    let ran = by_file(&["--yes"]);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr.contains("exported from project someone-else"),
        "{}",
        ran.stderr
    );

    for (stack, env) in [(&staging, "staging"), (&production, "production")] {
        let ran = stack.run(&["down", "-e", env], LIMIT);
        assert_eq!(ran.code, 0, "{}", ran.describe());
    }
}
