//! A hostile bow.yaml costs `bow validate` bounded time and memory: an alias bomb, deep
//! nesting, a huge flat mapping, a file past the size budget and a file that is not UTF-8 each
//! end at once with a diagnostic at file:line:col (budgets: docs/stack-file.md).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `bow validate -f FILE` once in this test process (nextest runs each test in its own
/// process, so the children's peak RSS is this run's); returns exit code, stderr, wall time
/// and peak resident memory in MiB.
fn validate(file: &Path) -> (i32, String, Duration, u64) {
    let started = Instant::now();
    let (code, _, stderr) = support::run(support::bow().arg("validate").arg("-f").arg(file));
    let took = started.elapsed();
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_CHILDREN covers waited children.
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss as u64
    };
    (code, stderr, took, peak_kib / 1024)
}

fn write(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Generous bounds for a debug build on a busy 2-core machine; the unbounded versions took
/// gigabytes (killed) and tens of seconds.
const TIME: Duration = Duration::from_secs(5);
const MEMORY_MIB: u64 = 300;

#[test]
fn an_alias_bomb_fails_fast_with_a_budget_error() {
    let mut text = String::from("project: bomb\nservices: {}\n");
    text.push_str("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let items = vec![format!("*{}", pair[0]); 9].join(", ");
        text.push_str(&format!("{}: &{} [{items}]\n", pair[1], pair[1]));
    }
    let (_dir, file) = write("bow.yaml", text.as_bytes());
    let (code, stderr, took, peak) = validate(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "bow.yaml:8:32: over budget: this alias makes the file more than 500000 nodes"
        ),
        "{stderr}"
    );
    assert!(took < TIME, "took {took:?}");
    assert!(peak < MEMORY_MIB, "peak RSS {peak} MiB");
}

#[test]
fn deep_nesting_fails_fast_with_a_budget_error() {
    let text = format!(
        "project: deep\nservices: {}{}\n",
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    );
    let (_dir, file) = write("bow.yaml", text.as_bytes());
    let (code, stderr, took, peak) = validate(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bow.yaml:2:"), "{stderr}");
    assert!(
        stderr.contains("over budget: lists and mappings nested"),
        "{stderr}"
    );
    assert!(took < TIME, "took {took:?}");
    assert!(peak < MEMORY_MIB, "peak RSS {peak} MiB");
}

/// The best of two runs of `bow validate` on `text` (less noise from a busy machine).
fn best_time(text: &str, expect_code: i32) -> Duration {
    let (_dir, file) = write("bow.yaml", text.as_bytes());
    (0..2)
        .map(|_| {
            let (code, stderr, took, _) = validate(&file);
            assert_eq!(code, expect_code, "{}", &stderr[..stderr.len().min(3000)]);
            took
        })
        .min()
        .unwrap()
}

/// Time for `n` and `4 * n` entries: linear work takes ~4 times as long, quadratic 16.
fn assert_linear(what: &str, make: impl Fn(usize) -> String, expect_code: i32) {
    let small = best_time(&make(15_000), expect_code);
    let large = best_time(&make(60_000), expect_code);
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    eprintln!("{what}: 15000 entries {small:?}, 60000 entries {large:?}, ratio {ratio:.1}");
    assert!(
        ratio < 8.0 && large < Duration::from_secs(20),
        "{what} is not linear: 15000 entries {small:?}, 60000 entries {large:?} (ratio {ratio:.1})"
    );
}

#[test]
fn a_large_flat_mapping_is_read_in_linear_time() {
    // The duplicate-key scan was quadratic (a 4 MB mapping took 4.75 s, 50 MB did not end).
    assert_linear(
        "vars",
        |n| {
            let mut text = String::from("project: flat\nservices: {web: {command: run}}\nvars:\n");
            for i in 0..n {
                text.push_str(&format!(
                    "  variable_{i:06}: value-{i:06}-and-some-padding\n"
                ));
            }
            text
        },
        0,
    );
}

#[test]
fn many_unknown_keys_are_reported_in_linear_time() {
    // One diagnostic each up to the report cap, then one saying reporting stopped.
    let make = |n: usize| {
        let mut text = String::from("project: flat\nservices: {web: {command: run}}\n");
        for i in 0..n {
            text.push_str(&format!("unknown_{i:06}: value-{i:06}\n"));
        }
        text
    };
    assert_linear("unknown keys", make, 1);
    let (_dir, file) = write("bow.yaml", make(5_000).as_bytes());
    let (_, stderr, _, _) = validate(&file);
    assert!(
        stderr.contains("too many problems: stopped reporting after 1000"),
        "{}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
}

#[test]
fn a_file_past_the_size_budget_is_refused_unread() {
    let text = format!(
        "project: big\nservices: {{}}\nx: \"{}\"\n",
        "y".repeat(50 << 20)
    );
    let (_dir, file) = write("bow.yaml", text.as_bytes());
    let (code, stderr, took, _) = validate(&file);
    assert_eq!(code, 1, "{}", &stderr[..stderr.len().min(2000)]);
    assert!(
        stderr.contains(&format!(
            "bow.yaml:3:16777191: over budget: the file is {} bytes, more than 16 MiB",
            text.len()
        )),
        "{}",
        &stderr[..stderr.len().min(2000)]
    );
    assert!(took < TIME, "took {took:?}");
}

#[test]
fn a_file_that_is_not_utf8_names_its_first_bad_byte() {
    let (_dir, file) = write(
        "bow.yaml",
        b"project: shop\nservices:\n  web: {command: \"./caf\xe9\"}\n",
    );
    let (code, stderr, _, _) = validate(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("bow.yaml:3:24: the file is not UTF-8: byte 0xe9"),
        "{stderr}"
    );
    let (code, json, _) = support::run(
        support::bow()
            .args(["validate", "--output", "json", "-f"])
            .arg(&file),
    );
    assert_eq!(code, 1);
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let diagnostic = &value["diagnostics"][0];
    assert_eq!(
        (diagnostic["line"].as_u64(), diagnostic["column"].as_u64()),
        (Some(3), Some(24)),
        "{json}"
    );
}
