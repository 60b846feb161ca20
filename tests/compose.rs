//! `bow import` of Compose files written for the tests (a Flask + Postgres stack, a three-tier
//! app with volumes and secrets, a Swarm stack file with deploy: sections): each becomes a
//! bow.yaml (snapshot) with a note, at its line, for every item bow did not take over; the
//! three-tier one runs; `bow export compose` is accepted by docker-compose and `bow export
//! kubernetes` is a list of well-formed objects.

mod support;

use std::path::Path;
use std::process::Command;

use support::containers::testapp_image;
use support::procs::is_root;
use support::stack::{Stack, WAIT, instance};
use support::{bow, check_snapshot, root};

const FIXTURES: &[(&str, &str)] = &[
    ("flask-postgres", "docker-compose.yml"),
    ("three-tier", "compose.yaml"),
    ("swarm-stack", "stack.yml"),
];

fn import(dir: &Path, file: &str, output: &Path, image: &str) -> (i32, String, String) {
    let out = bow()
        .current_dir(dir)
        .args(["import", file, "-o"])
        .arg(output)
        .env("TESTAPP_IMAGE", image)
        .output()
        .expect("bow import");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_compose_fixture_imports_to_a_bow_yaml_with_each_untranslated_item_noted() {
    let mut failures = Vec::new();
    for (name, file) in FIXTURES {
        let dir = root().join("tests/fixtures/compose").join(name);
        let out = tempfile::tempdir().unwrap();
        let output = out.path().join("bow.yaml");
        let (code, _, stderr) = import(&dir, file, &output, "bow-test/testapp:fixture");
        let yaml = std::fs::read_to_string(&output).unwrap_or_default();
        let notes: String = stderr
            .lines()
            .filter(|l| !l.starts_with("wrote "))
            .map(|l| format!("{l}\n"))
            .collect();
        let actual = format!("exit {code}\n--- bow.yaml\n{yaml}--- notes\n{notes}");
        if let Err(diff) = check_snapshot(&dir.join("expected.txt"), &actual) {
            failures.push(format!("{name}: {diff}"));
        }
        // No note without its place.
        for line in notes.lines().filter(|l| !l.starts_with("the result")) {
            assert!(
                line.starts_with(&format!("{file}:"))
                    && line
                        .split(':')
                        .nth(1)
                        .is_some_and(|n| n.parse::<u32>().is_ok()),
                "a note without its line: {line}"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_imported_three_tier_stack_runs_and_exports_back_to_compose_and_kubernetes() {
    assert!(is_root(), "this test needs root");
    let image = testapp_image();
    let stack = Stack::new("compose-3t", "services: {}\n");
    let fixture = root().join("tests/fixtures/compose/three-tier");
    stack.write("config/api.yml", "level: info\n");
    let (code, _, stderr) = import(
        &fixture,
        "compose.yaml",
        &stack.file.with_extension("imported"),
        &image,
    );
    assert_eq!(code, 0, "{stderr}");
    // The stack's own project name, the imported services.
    let imported = std::fs::read_to_string(stack.file.with_extension("imported")).unwrap();
    let body = imported.split_once("services:\n").unwrap().1;
    std::fs::write(
        &stack.file,
        format!(
            "project: {}\nservices:\n{}",
            stack.project,
            body.replace(
                "port: 18080",
                &format!("port: {}", support::procs::free_port())
            )
        ),
    )
    .unwrap();
    support::secrets::use_key(&stack, "compose");
    support::secrets::init_and_set(&stack, &[("api_token", "t0ken"), ("signing_key", "k3y")]);
    let status = stack.up_ok();
    for id in ["front.1", "api.1", "api.2", "worker.1"] {
        assert_eq!(
            instance(&status, id).unwrap()["health"],
            "healthy",
            "{status}"
        );
    }
    let compose = stack.run(&["export", "compose"], WAIT);
    assert_eq!(compose.code, 0, "{}", compose.describe());
    let exported = stack.write("exported-compose.yml", &compose.stdout);
    let check = Command::new("docker-compose")
        .arg("-f")
        .arg(&exported)
        .args(["config", "-q"])
        .output()
        .expect("docker-compose");
    assert!(
        check.status.success(),
        "docker-compose rejects the export: {}\n{}",
        String::from_utf8_lossy(&check.stderr),
        compose.stdout
    );
    let kubernetes = stack.run(&["export", "kubernetes"], WAIT);
    assert_eq!(kubernetes.code, 0, "{}", kubernetes.describe());
    let objects = stack.write("exported-k8s.yml", &kubernetes.stdout);
    let kinds = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n  assert d['apiVersion'] and d['metadata']['name'], d\n  print(d['kind'], d['metadata']['name'])",
        ])
        .arg(&objects)
        .output()
        .expect("python3");
    let kinds = String::from_utf8_lossy(&kinds.stdout).into_owned();
    for expected in [
        "Deployment front",
        "Service front",
        "Ingress front",
        "Deployment api",
        "PersistentVolumeClaim uploads",
        "Secret api-token",
        "Deployment worker",
    ] {
        assert!(
            kinds.contains(expected),
            "{expected} missing in:\n{kinds}\n{}",
            kubernetes.stdout
        );
    }
    assert!(!kubernetes.stdout.contains("t0ken") && !compose.stdout.contains("t0ken"));
    stack.down();
}
