//! Confinement of a service, applied in the child between fork and exec (and to its checks):
//! a mount namespace with a read-only view of the host (`mounts`), capabilities dropped down
//! to an opt-in list (`caps`), no new privileges, a seccomp filter that refuses a list of
//! system calls with EPERM (`seccomp`), and rlimits.
//!
//! The caller (the agent) decides the policy as plain paths and names in a [`SandboxSpec`];
//! this module is the mechanism. Everything the child needs is computed before the fork
//! ([`Prepared`]): the child only makes system calls, never allocates.
//!
//! What needs root (the mount namespace, the capability bounding set) is skipped when the
//! driver does not run as root; no new privileges, the filter and the rlimits hold always.

pub mod caps;
pub mod mounts;
pub mod seccomp;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How one instance is confined, as the caller decided it. `None` in the instance spec: not
/// confined (`level: off`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The level's name, for status and `bow security` (`default`, `strict`).
    pub level: String,
    /// Stay visible and writable at the same place (the service's dir at the default level,
    /// `sandbox.writable`). Must exist.
    #[serde(default)]
    pub writable: Vec<PathBuf>,
    /// Stay visible, read-only, at the same place even under a hidden or private dir (the
    /// paths its definition names, its venv). Missing ones are skipped.
    #[serde(default)]
    pub visible: Vec<PathBuf>,
    /// Hidden behind an empty read-only tmpfs (bow's state dir, other services' dirs);
    /// `writable` and `visible` paths below them stay.
    #[serde(default)]
    pub hidden: Vec<PathBuf>,
    /// Capabilities kept, by name (`net_bind_service`); every other one is dropped.
    #[serde(default)]
    pub caps: Vec<String>,
    /// System calls refused with EPERM, by name.
    #[serde(default)]
    pub denied_syscalls: Vec<String>,
    /// `RLIMIT_NOFILE` (soft and hard; never raised above the current hard limit).
    #[serde(default)]
    pub nofile: Option<u64>,
    /// `RLIMIT_NPROC` of the service's user (not applied to a service that runs as root).
    #[serde(default)]
    pub nproc: Option<u64>,
}

/// Default rlimits of a confined service.
pub const DEFAULT_NOFILE: u64 = 65_536;
pub const DEFAULT_NPROC: u64 = 8_192;

/// What the child applies, computed before the fork.
#[derive(Debug)]
pub struct Prepared {
    /// The mount steps, when the namespace is built (root only).
    pub mounts: Option<mounts::MountPlan>,
    pub caps: caps::CapPlan,
    pub filter: seccomp::Filter,
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
}

/// Who the child becomes.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
}

/// The extra context the shim knows: the program it runs, the files it made for the
/// instance, whether it is root.
pub struct Context<'a> {
    pub program: &'a Path,
    pub hosts_file: Option<&'a Path>,
    pub secrets_dir: Option<&'a Path>,
    pub root: bool,
    pub switches_user: bool,
}

impl Prepared {
    /// Resolves names to numbers and paths to a mount plan; `Err` says what is wrong.
    pub fn new(spec: &SandboxSpec, context: &Context<'_>) -> Result<Prepared, String> {
        let mounts = if context.root {
            Some(mounts::MountPlan::new(spec, context)?)
        } else {
            None
        };
        let keep = caps::mask_of(&spec.caps)?;
        let filter = seccomp::Filter::compile(&spec.denied_syscalls)?;
        Ok(Prepared {
            mounts,
            caps: caps::CapPlan::new(keep, context.root, context.switches_user),
            filter,
            nofile: spec.nofile,
            nproc: spec.nproc,
        })
    }
}

impl Prepared {
    /// For a check that enters the instance's namespace: no mount plan of its own.
    pub fn for_check(spec: &SandboxSpec, root: bool) -> Result<Prepared, String> {
        Ok(Prepared {
            mounts: None,
            caps: caps::CapPlan::new(caps::mask_of(&spec.caps)?, root, root),
            filter: seccomp::Filter::compile(&spec.denied_syscalls)?,
            nofile: spec.nofile,
            nproc: spec.nproc,
        })
    }
}

/// Step codes a failing child reports (see the shim's `pre_exec` error protocol); a mount
/// step reports `STEP_MOUNTS + n` for entry `n` of its plan.
pub const STEP_MOUNTS: i32 = 1000;
pub const STEP_CAPS: i32 = 8;
pub const STEP_FILTER: i32 = 9;
pub const STEP_RLIMITS: i32 = 10;
pub const STEP_CHDIR: i32 = 11;

/// In the child, before the user switch: the mount namespace, rlimits, the bounding set.
/// Returns `(step, errno)` on failure. Async-signal-safe: system calls only.
pub fn enter_before_user_switch(prepared: &Prepared, uid: u32) -> Result<(), (i32, i32)> {
    if let Some(plan) = &prepared.mounts {
        plan.apply()
            .map_err(|(entry, errno)| (STEP_MOUNTS + entry as i32, errno))?;
    }
    set_rlimits(prepared, uid).map_err(|errno| (STEP_RLIMITS, errno))?;
    prepared
        .caps
        .before_user_switch()
        .map_err(|errno| (STEP_CAPS, errno))
}

/// In the child, after the user switch: capabilities, no new privileges, the filter (last:
/// it may refuse what came before).
pub fn enter_after_user_switch(prepared: &Prepared) -> Result<(), (i32, i32)> {
    prepared
        .caps
        .after_user_switch()
        .map_err(|errno| (STEP_CAPS, errno))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((STEP_FILTER, errno()));
    }
    prepared
        .filter
        .install()
        .map_err(|errno| (STEP_FILTER, errno))
}

/// Explains a failed step for the start failure.
pub fn describe_step(prepared: &Prepared, step: i32, reason: &io::Error) -> Option<String> {
    Some(match step {
        STEP_MOUNTS.. => {
            let entry = prepared
                .mounts
                .as_ref()
                .and_then(|plan| plan.described.get((step - STEP_MOUNTS) as usize))
                .map_or("its mount namespace", String::as_str);
            format!("sandbox: setting up {entry} failed: {reason}")
        }
        STEP_CAPS => format!("dropping its capabilities failed: {reason}"),
        STEP_FILTER => format!("installing its system call filter failed: {reason}"),
        STEP_RLIMITS => format!("setting its rlimits failed: {reason}"),
        STEP_CHDIR => format!("entering its working directory in its sandbox failed: {reason}"),
        _ => return None,
    })
}

fn set_rlimits(prepared: &Prepared, uid: u32) -> Result<(), i32> {
    let limits = [
        (libc::RLIMIT_NOFILE, prepared.nofile),
        (libc::RLIMIT_NPROC, prepared.nproc.filter(|_| uid != 0)),
    ];
    for (resource, value) in limits {
        let Some(value) = value else { continue };
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: get/setrlimit with a valid struct.
        unsafe {
            if libc::getrlimit(resource, &mut current) != 0 {
                return Err(errno());
            }
            let hard = current.rlim_max.min(value as libc::rlim_t);
            let limit = libc::rlimit {
                rlim_cur: hard,
                rlim_max: hard,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(errno());
            }
        }
    }
    Ok(())
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub(crate) fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL")
}

/// Every absolute path in `text`: words (split at white space, quotes, `=`, `:` and shell
/// operators) that start with `/`. `sh -c "exec /srv/app/run --conf=/etc/app.toml"` names
/// `/srv/app/run` and `/etc/app.toml`; `PATH=/opt/a/bin:/opt/b/bin` names both dirs.
pub fn named_paths(text: &str) -> Vec<PathBuf> {
    let separators = |c: char| {
        c.is_whitespace()
            || matches!(c, '"' | '\'' | '=' | ':' | ';' | '|' | '&' | '(' | ')')
            || matches!(c, '<' | '>' | '`' | ',' | '$' | '{' | '}')
    };
    text.split(separators)
        .filter(|word| word.starts_with('/') && !word.starts_with("//"))
        .map(|word| PathBuf::from(word.trim_end_matches('/')))
        .map(|path| {
            if path.as_os_str().is_empty() {
                PathBuf::from("/")
            } else {
                path
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_paths_finds_absolute_paths_in_commands_and_values() {
        let found = named_paths(
            "sh -c 'exec env X=1 /tmp/ci/target/debug/bow-testapp --conf=/etc/app.toml; cat $DIR/x'",
        );
        assert_eq!(
            found,
            vec![
                PathBuf::from("/tmp/ci/target/debug/bow-testapp"),
                PathBuf::from("/etc/app.toml"),
            ]
        );
        assert_eq!(
            named_paths("/opt/a/bin:/opt/b/bin/"),
            vec![PathBuf::from("/opt/a/bin"), PathBuf::from("/opt/b/bin")]
        );
        assert!(named_paths("postgres://db:5432/app relative/path").is_empty());
    }
}
