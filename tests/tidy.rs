//! Tidy: the rules that keep the code base honest, checked on every `cargo test`.
//! Every Rust file opens with a `//!` doc; no test is ignored; the pure crates (spec, plan,
//! reconcile, place)
//! use no file system, network or process APIs and depend on no async runtime; every
//! end-to-end test file is registered; ARCHITECTURE.md names every crate; the agent reaches
//! instances through the driver trait only; a source file stays under `MAX_LINES` unless the
//! allow-list says why.

mod support;

use std::path::{Path, PathBuf};

/// Crates that must stay pure: data in, data out.
const PURE_CRATES: &[&str] = &["bow-spec", "bow-plan", "bow-reconcile", "bow-place"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n != "target" && n != "fixtures")
            {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let root = support::root();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    rust_files(&root.join("bench"), &mut files);
    files.sort();
    files
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let missing: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|file| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "start these files with a `//!` line saying what they are for:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_test_is_ignored() {
    let marker = concat!("#[", "ignore");
    let offenders: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|file| {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .contains(marker)
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "tests must run, not be ignored:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn pure_crates_do_no_io() {
    let forbidden = [
        concat!("std::", "fs"),
        concat!("std::", "net"),
        concat!("std::", "process"),
        concat!("tok", "io"),
        // Time is an input of the pure crates, never read.
        concat!("Instant", "::now"),
        concat!("System", "Time"),
    ];
    let mut offenders = Vec::new();
    for krate in PURE_CRATES {
        let mut files = Vec::new();
        rust_files(
            &support::root().join("crates").join(krate).join("src"),
            &mut files,
        );
        assert!(!files.is_empty(), "{krate} has no sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for word in forbidden {
                if text.contains(word) {
                    offenders.push(format!("{}: uses {word}", file.display()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the pure crates take data and return data:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn pure_crates_depend_on_no_async_runtime_or_io_crate() {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .current_dir(support::root())
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let name_of = |id: &str| -> String {
        metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    for krate in PURE_CRATES {
        let start = nodes
            .iter()
            .find(|n| name_of(n["id"].as_str().unwrap()) == *krate)
            .expect("crate in metadata");
        let mut stack = vec![start];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(node) = stack.pop() {
            for dep in node["deps"].as_array().unwrap() {
                let normal = dep["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null());
                let id = dep["pkg"].as_str().unwrap();
                if normal && seen.insert(id.to_string()) {
                    let name = name_of(id);
                    assert!(
                        !["tokio", "mio", "hyper", "rusqlite", "reqwest", "async-std"]
                            .contains(&name.as_str()),
                        "{krate} must stay pure but depends on {name}"
                    );
                    if let Some(next) = nodes.iter().find(|n| n["id"] == id) {
                        stack.push(next);
                    }
                }
            }
        }
    }
}

/// A file longer than this usually holds two ideas.
const MAX_LINES: usize = 700;

/// Files allowed past `MAX_LINES`, and why. Keep it short: split instead when you can.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "crates/bow-spec/src/yaml.rs",
        "the spanned YAML tree and the reader's budgets, built from one stream of parser events",
    ),
    (
        "crates/bow-edge/src/client.rs",
        "the upstream HTTP/1.1 client; its framing is to be shared with h1.rs (issue 15, item 7)",
    ),
];

#[test]
fn source_files_stay_short_or_say_why() {
    let root = support::root();
    let mut long = Vec::new();
    for file in all_rust_files() {
        let lines = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count();
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let allowed = LONG_FILES.iter().any(|(path, _)| *path == name);
        if lines > MAX_LINES && !allowed {
            long.push(format!("{name}: {lines} lines"));
        }
        if allowed && lines <= MAX_LINES {
            long.push(format!("{name}: {lines} lines now; take it off LONG_FILES"));
        }
    }
    for (path, _) in LONG_FILES {
        if !root.join(path).exists() {
            long.push(format!("{path}: on LONG_FILES but gone; take it off"));
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines a file usually holds two ideas: split it (or add it to LONG_FILES with why):\n{}",
        long.join("\n")
    );
}

/// What only a process driver knows: the agent names none of it (one exception: `drivers.rs`
/// builds the process driver it is given).
const PROCESS_ONLY: &[&str] = &[
    "InstanceHandle",
    "LinuxProcessDriver",
    "ProcessScope",
    "bow_driver::cgroup",
    "bow_driver::strays",
    "bow_driver::logs",
    "bow_driver::procfs",
    "bow_driver::verify",
    "bow_driver::reap_shim",
    "bow_driver::become_subreaper",
    "bow_driver::exit_status",
    "bow_driver::stop(",
    "pidfd",
    "/proc/",
];

#[test]
fn the_agent_reaches_instances_through_the_driver_trait_only() {
    let mut files = Vec::new();
    rust_files(&support::root().join("crates/bow-agent/src"), &mut files);
    let mut offenders = Vec::new();
    for file in files {
        if file.ends_with("drivers.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in PROCESS_ONLY.iter().filter(|w| code.contains(*w)) {
                offenders.push(format!("{}:{}: {word}", file.display(), number + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "bow-agent goes through bow_driver::Driver and its opaque Handle; move this into the driver:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_end_to_end_test_is_registered() {
    let manifest = std::fs::read_to_string(support::root().join("crates/bow/Cargo.toml")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(support::root().join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !manifest.contains(&format!("path = \"../../tests/{name}\"")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "add a [[test]] for these to crates/bow/Cargo.toml: {missing:?}"
    );
}

#[test]
fn architecture_names_every_crate() {
    let architecture =
        std::fs::read_to_string(support::root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(support::root().join("crates")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !architecture.contains(&format!("`{name}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "describe these crates in ARCHITECTURE.md: {missing:?}"
    );
}
