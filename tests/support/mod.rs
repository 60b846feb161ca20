//! Shared helpers for the end-to-end tests: the `bow` binary, the workspace root, snapshots;
//! running stacks under the agent ([`stack`]) and looking at their processes ([`procs`]).

#![allow(dead_code)]

pub mod chromium;
pub mod containers;
pub mod discovery;
pub mod git;
pub mod load;
pub mod pebble;
pub mod pg;
pub mod procs;
pub mod prometheus;
pub mod secrets;
pub mod stack;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (tests run with paths relative to it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `bow` with a clean environment for the stack-related variables, run from the workspace root.
pub fn bow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bow"));
    command
        .current_dir(root())
        .env_remove("BOW_ENV")
        .env_remove("BOW_STATE_DIR")
        .env("NO_COLOR", "1");
    command
}

pub fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run bow");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Compares `actual` with the file at `path` (relative to the workspace root); with
/// `UPDATE_EXPECT=1` writes it instead. Returns a description of the mismatch.
pub fn check_snapshot(path: &Path, actual: &str) -> Result<(), String> {
    let full = root().join(path);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&full, actual).expect("write snapshot");
        return Ok(());
    }
    let expected = std::fs::read_to_string(&full).map_err(|_| {
        format!(
            "{}: missing snapshot; run with UPDATE_EXPECT=1 to create it",
            path.display()
        )
    })?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{}: snapshot differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ))
    }
}

pub fn assert_snapshot(path: &str, actual: &str) {
    if let Err(message) = check_snapshot(Path::new(path), actual) {
        panic!("{message}");
    }
}
