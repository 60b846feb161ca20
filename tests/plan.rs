//! `bow plan` against recorded state: first apply, field-level changes, exit codes, JSON.

mod support;

use std::path::Path;

/// The code version of every process service in these tests: the fixtures live in this
/// repository, whose commit changes.
const FIXTURE_CODE: &str = "fixture";

/// `bow` with the fixed code version.
fn bow() -> std::process::Command {
    let mut command = support::bow();
    command.env("BOW_CODE_VERSION", FIXTURE_CODE);
    command
}

/// Records `before` as the applied spec in `state_dir`, the way the agent does.
fn record(state_dir: &Path, before: &str) {
    let text = std::fs::read_to_string(support::root().join(before)).expect("before.yaml");
    // SAFETY: geteuid has no preconditions; the binary decides default edge ports the same way.
    let privileged = unsafe { libc::geteuid() == 0 };
    let options = bow_spec::LoadOptions {
        privileged,
        ..Default::default()
    };
    let mut spec = bow_spec::load(&text, &options).expect("before.yaml is valid");
    // As the CLI does: paths relative to the file's directory become absolute.
    let base = support::root()
        .join(before)
        .parent()
        .expect("a directory")
        .to_path_buf();
    bow_spec::anchor_paths(&mut spec, &base);
    // The code version `bow plan` gets from BOW_CODE_VERSION (see `support::bow`).
    for service in spec.services.values_mut() {
        if matches!(service.workload, bow_spec::Workload::Command(_)) {
            service.code = Some(FIXTURE_CODE.to_string());
        }
    }
    let store = bow_store::Store::open(state_dir).expect("open store");
    store.record_revision(&spec, 0).expect("record");
}

#[test]
fn first_plan_adds_every_service_and_exits_2() {
    let state = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = support::run(
        bow()
            .args(["plan", "-f", "examples/hello/bow.yaml", "--state-dir"])
            .arg(state.path()),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.contains("+ api  (process, 1 replica)"), "{stdout}");
    assert!(
        stdout.contains("+ web  (process, 1 replica, routes hello.localhost)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 to add, 0 to change, 0 to remove"),
        "{stdout}"
    );
}

#[test]
fn plan_json_is_valid_and_complete() {
    let state = tempfile::tempdir().unwrap();
    let (code, stdout, _) = support::run(
        bow()
            .args([
                "plan",
                "-f",
                "examples/hello/bow.yaml",
                "--output",
                "json",
                "--state-dir",
            ])
            .arg(state.path()),
    );
    assert_eq!(code, 2);
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(plan["first_apply"], true);
    let added: Vec<&str> = plan["diff"]["to_add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["service"].as_str().unwrap())
        .collect();
    assert_eq!(added, ["api", "web"]);
    assert_eq!(plan["actions"][0]["action"], "create");
    assert_eq!(plan["actions"][0]["service"], "api");
}

#[test]
fn plan_scenarios_match_their_snapshots() {
    let dir = support::root().join("tests/fixtures/plan");
    let mut scenarios: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    scenarios.sort();
    assert!(
        scenarios.len() >= 4,
        "expected plan scenarios in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for scenario in scenarios {
        let name = scenario.file_name().unwrap().to_string_lossy().into_owned();
        let base = format!("tests/fixtures/plan/{name}");
        let state = tempfile::tempdir().unwrap();
        record(state.path(), &format!("{base}/before.yaml"));
        let (code, stdout, stderr) = support::run(
            bow()
                .args(["plan", "-f", &format!("{base}/after.yaml"), "--state-dir"])
                .arg(state.path()),
        );
        let expected_code = if name.starts_with("unchanged") { 0 } else { 2 };
        if code != expected_code {
            failures.push(format!(
                "{name}: exit {code}, expected {expected_code}\n{stdout}{stderr}"
            ));
        }
        if let Err(message) =
            support::check_snapshot(Path::new(&format!("{base}/plan.expected")), &stdout)
        {
            failures.push(message);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn plan_reads_bow_env_and_state_dir_from_the_environment() {
    let state = tempfile::tempdir().unwrap();
    record(state.path(), "examples/hello/bow.yaml");
    let (code, stdout, _) = support::run(
        bow()
            .args(["plan", "-f", "examples/hello/bow.yaml"])
            .env("BOW_STATE_DIR", state.path())
            .env("BOW_ENV", "production"),
    );
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("plan for hello in production"), "{stdout}");
    assert!(
        stdout.contains("~ services.web.replicas: 1 → 3  (in-place)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "~ services.web.routes: [\"hello.localhost\"] → [\"hello.example.com\"]  (edge-only)"
        ),
        "{stdout}"
    );
}

#[test]
fn config_shows_the_environment_overrides() {
    let (code, stdout, stderr) = support::run(bow().args([
        "config",
        "-f",
        "examples/hello/bow.yaml",
        "-e",
        "production",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("environment: production"), "{stdout}");
    assert!(stdout.contains("- hello.example.com"), "{stdout}");
    assert!(stdout.contains("replicas: 3"), "{stdout}");
    let (_, json, _) = support::run(bow().args([
        "config",
        "-f",
        "examples/hello/bow.yaml",
        "--output",
        "json",
    ]));
    let config: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(config["services"]["web"]["replicas"], 1);
    assert_eq!(config["services"]["web"]["routes"][0], "hello.localhost");
}

#[test]
fn config_shows_hosts_and_placement_where_the_environment_has_them() {
    let file = "tests/fixtures/good/hosts.yaml";
    let (code, stdout, stderr) =
        support::run(bow().args(["config", "-f", file, "-e", "production"]));
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "- https://10.0.0.2:2379",
        "address: web2.internal",
        "memory: 32G",
        "singleton: true",
        "spread: true",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    let (_, json, _) = support::run(bow().args(["config", "-f", file, "--output", "json"]));
    let config: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    // Development runs on this host alone: no hosts, the placement kept as written.
    assert!(config.get("hosts").is_none(), "{json}");
    assert_eq!(config["services"]["web"]["placement"]["roles"][0], "worker");
    let (_, json, _) =
        support::run(bow().args(["config", "-f", file, "-e", "production", "--output", "json"]));
    let config: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(config["hosts"]["members"]["db1"]["capacity"]["cpu"], 4.0);
    assert_eq!(config["hosts"]["members"]["db1"]["roles"][0], "data");
}

#[test]
fn config_keeps_secret_references_as_references() {
    let (code, stdout, stderr) = support::run(bow().args([
        "config",
        "-f",
        "tests/fixtures/good/full.yaml",
        "-e",
        "production",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("${secret:api_key}"), "{stdout}");
    assert!(stdout.contains("- db_password"), "{stdout}");
}

#[test]
fn unknown_environment_is_an_error_naming_the_declared_ones() {
    let (code, _, stderr) =
        support::run(bow().args(["plan", "-f", "examples/hello/bow.yaml", "-e", "prod"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown environment `prod`"), "{stderr}");
    assert!(stderr.contains("did you mean `production`?"), "{stderr}");
}

#[test]
fn the_file_is_found_in_a_parent_directory() {
    let (code, stdout, stderr) = support::run(
        bow()
            .arg("validate")
            .current_dir(support::root().join("examples/hello/web")),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("bow.yaml is valid"), "{stdout}");
}
