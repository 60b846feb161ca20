//! Helpers for the secrets tests: a stack with a key file of its own, `bow secret` with a
//! value on stdin, and looking for a plaintext on disk, in mounts and in processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::stack::{Ran, Stack};

/// Points the stack's commands at `<stack dir>/keys/<name>.key` (made by `bow secret init`).
pub fn use_key(stack: &Stack, name: &str) -> PathBuf {
    let path = stack.dir.path().join("keys").join(format!("{name}.key"));
    stack.set_env("BOW_AGE_KEY_FILE", path.to_str().unwrap());
    path
}

/// `bow <args>` with `input` on stdin.
pub fn run_with_stdin(stack: &Stack, args: &[&str], input: &[u8]) -> Ran {
    let mut command = stack.command(args);
    let started = std::time::Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bow");
    // bow may refuse before it reads stdin (a bad name): a broken pipe is its answer.
    let _ = child.stdin.take().unwrap().write_all(input);
    let output = child.wait_with_output().expect("wait for bow");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        timed_out: false,
        took: started.elapsed(),
        pipes_left_open: false,
    }
}

/// `bow secret init` with a new key, then `bow secret set` of each value; returns every run.
pub fn init_and_set(stack: &Stack, values: &[(&str, &str)]) -> Vec<Ran> {
    let mut ran = vec![stack.run(&["secret", "init"], Duration::from_secs(30))];
    assert_eq!(ran[0].code, 0, "{}", ran[0].describe());
    for (name, value) in values {
        let set = run_with_stdin(stack, &["secret", "set", name], value.as_bytes());
        assert_eq!(set.code, 0, "{}", set.describe());
        ran.push(set);
    }
    ran
}

/// `bow secret init` with the current key; returns the public key (recipient) it printed.
pub fn init_recipient(stack: &Stack) -> (Ran, String) {
    let init = stack.run(&["secret", "init"], Duration::from_secs(30));
    assert_eq!(init.code, 0, "{}", init.describe());
    let recipient = init
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("your public key (recipient): "))
        .unwrap_or_else(|| panic!("no recipient in {}", init.describe()))
        .to_string();
    (init, recipient)
}

/// Every regular file under `root` (not following symlinks) whose bytes contain `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if metadata.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && contains(&bytes, needle)
        {
            found.push(path);
        }
    }
    found
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `dir` is a mount point of a tmpfs, per /proc/mounts.
pub fn is_tmpfs_mount(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.len() > 2 && Path::new(fields[1]) == dir && fields[2] == "tmpfs"
        })
}

/// Whether `path` is on a tmpfs, per statfs.
pub fn on_tmpfs(path: &Path) -> bool {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: statfs fills a zeroed struct for a NUL-terminated path.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type == libc::TMPFS_MAGIC
    }
}

/// `BOW_SECRETS_DIR` of a running process.
pub fn secrets_dir_of(pid: i32) -> Option<PathBuf> {
    super::procs::process(pid)?
        .env("BOW_SECRETS_DIR")
        .map(PathBuf::from)
}
