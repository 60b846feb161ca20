//! Every file in tests/fixtures/bad/ is rejected with exit 1, each diagnostic names
//! file:line:col, and the whole report matches its `.expected` snapshot.

mod support;

use std::path::Path;

#[test]
fn every_bad_fixture_is_rejected_with_its_expected_diagnostics() {
    let dir = support::root().join("tests/fixtures/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/bad")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 30,
        "the bad corpus has {} files; keep at least 30",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(support::root())
            .expect("relative")
            .to_path_buf();
        let shown = relative.display().to_string();
        let (code, stdout, stderr) = support::run(support::bow().args(["validate", "-f", &shown]));
        if code != 1 {
            failures.push(format!(
                "{shown}: exit {code}, expected 1\n{stdout}{stderr}"
            ));
            continue;
        }
        let headers: Vec<&str> = stderr
            .lines()
            .filter(|l| l.trim_start().starts_with('×'))
            .collect();
        if headers.is_empty() || !headers.iter().all(|h| has_position(h, &shown)) {
            failures.push(format!(
                "{shown}: every diagnostic must name {shown}:LINE:COL\n{stderr}"
            ));
        }
        let snapshot = relative.with_extension("expected");
        if let Err(message) = support::check_snapshot(Path::new(&snapshot), &stderr) {
            failures.push(message);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn has_position(header: &str, file: &str) -> bool {
    let Some(at) = header.find(&format!("{file}:")) else {
        return false;
    };
    let rest = &header[at + file.len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().unwrap_or_default();
    let col = parts.next().unwrap_or_default();
    line.parse::<usize>().is_ok_and(|l| l >= 1) && col.parse::<usize>().is_ok_and(|c| c >= 1)
}

#[test]
fn three_independent_mistakes_give_three_diagnostics_in_one_run() {
    let (code, _, stderr) =
        support::run(support::bow().args(["validate", "-f", "tests/fixtures/three-mistakes.yaml"]));
    assert_eq!(code, 1, "{stderr}");
    let headers: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with('×'))
        .collect();
    assert_eq!(headers.len(), 3, "{stderr}");
    assert!(
        headers[0].contains("tests/fixtures/three-mistakes.yaml:5:5"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 problems; nothing was started"),
        "{stderr}"
    );
}

#[test]
fn json_diagnostics_carry_positions() {
    let (code, stdout, _) = support::run(support::bow().args([
        "validate",
        "-f",
        "tests/fixtures/three-mistakes.yaml",
        "--output",
        "json",
    ]));
    assert_eq!(code, 1);
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(value["valid"], false);
    let diagnostics = value["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diagnostics.len(), 3);
    for diagnostic in diagnostics {
        assert!(diagnostic["line"].as_u64().unwrap() >= 1);
        assert!(diagnostic["column"].as_u64().unwrap() >= 1);
        assert!(!diagnostic["path"].as_str().unwrap().is_empty());
    }
}
