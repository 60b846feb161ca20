//! Forking and exec'ing the service from the shim: own process group, cgroup joined and user
//! switched in the child before exec, and exec failures turned into precise reasons.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::protocol::{ShimConfig, StartFailure};

/// `pre_exec` reports which step failed by adding a step code to the errno (std passes the
/// child's error number through unchanged): `STEP_BASE * step + errno`.
const STEP_BASE: i32 = 1 << 16;
const STEP_JOIN_CGROUP: i32 = 1;
const STEP_SET_GROUPS: i32 = 2;
const STEP_SET_GID: i32 = 3;
const STEP_SET_UID: i32 = 4;
const STEP_NAMESPACE: i32 = 5;
const STEP_HOSTS: i32 = 6;

/// Starts the service process; its stdout and stderr are pipes, stdin is /dev/null.
///
/// Must be called while the shim is single-threaded (the child runs `pre_exec` after fork).
pub fn spawn_service(config: &ShimConfig) -> Result<Child, StartFailure> {
    check_working_dir(&config.working_dir)?;
    let command_name = &config.argv[0];
    let search_path = config.env.get("PATH").map(String::as_str).unwrap_or("");
    let Some(program) = resolve_program(command_name, search_path, &config.working_dir) else {
        return Err(StartFailure::CommandNotFound {
            command: command_name.clone(),
            path: search_path.into(),
        });
    };
    let procs_files: Vec<CString> = config
        .cgroup
        .iter()
        .filter(|_| config.join_cgroup_before_exec)
        .flat_map(|placement| placement.procs_files())
        .map(|path| CString::new(path.as_os_str().as_bytes()).expect("cgroup paths have no NUL"))
        .collect();
    let identity = config
        .switch_user
        .then(|| (config.uid, config.gid, config.groups.clone()));
    let hosts_file = config
        .hosts_file
        .as_ref()
        .map(|path| CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL"));
    let sandbox = prepare_sandbox(config, &program)?;
    let uid = if config.switch_user {
        config.uid
    } else {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    };

    let mut command = Command::new(&program);
    command
        .arg0(command_name)
        .args(&config.argv[1..])
        .env_clear()
        .envs(&config.env)
        .current_dir(&config.working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let explain = sandbox.clone();
    // The working dir is entered again inside the sandbox: std's chdir came before it and
    // points at the host's (now read-only) mount of the dir.
    let working_dir =
        CString::new(config.working_dir.as_os_str().as_bytes()).expect("paths have no NUL");
    // SAFETY: the closure only makes async-signal-safe calls (open, write, close, getpid,
    // unshare, mount, prctl, setrlimit, setgroups, setgid, setuid) and does not allocate;
    // the shim is single-threaded here.
    unsafe {
        command.pre_exec(move || {
            for file in &procs_files {
                join_cgroup(file).map_err(|errno| step_error(STEP_JOIN_CGROUP, errno))?;
            }
            match (&sandbox, &hosts_file) {
                (Some(prepared), _) => crate::sandbox::enter_before_user_switch(prepared, uid)
                    .map_err(|(step, errno)| step_error(step, errno))?,
                (None, Some(hosts_file)) => mount_hosts_file(hosts_file)?,
                (None, None) => {}
            }
            if let Some((uid, gid, groups)) = &identity {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(step_error(STEP_SET_GROUPS, errno()));
                }
                if libc::setgid(*gid) != 0 {
                    return Err(step_error(STEP_SET_GID, errno()));
                }
                if libc::setuid(*uid) != 0 {
                    return Err(step_error(STEP_SET_UID, errno()));
                }
            }
            if let Some(prepared) = &sandbox {
                if libc::chdir(working_dir.as_ptr()) != 0 {
                    return Err(step_error(crate::sandbox::STEP_CHDIR, errno()));
                }
                crate::sandbox::enter_after_user_switch(prepared)
                    .map_err(|(step, errno)| step_error(step, errno))?;
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|error| explain_spawn_error(&error, config, &program, explain.as_deref()))
}

/// The sandbox computed before the fork (mount plan, capability masks, compiled filter).
fn prepare_sandbox(
    config: &ShimConfig,
    program: &Path,
) -> Result<Option<std::sync::Arc<crate::sandbox::Prepared>>, StartFailure> {
    let Some(spec) = &config.sandbox else {
        return Ok(None);
    };
    let context = crate::sandbox::Context {
        program,
        hosts_file: config.hosts_file.as_deref(),
        secrets_dir: config.secrets_dir.as_deref(),
        // SAFETY: geteuid has no preconditions.
        root: unsafe { libc::geteuid() } == 0,
        switches_user: config.switch_user,
    };
    crate::sandbox::Prepared::new(spec, &context)
        .map(|prepared| Some(std::sync::Arc::new(prepared)))
        .map_err(|message| StartFailure::ExecFailed {
            command: config.argv[0].clone(),
            message,
        })
}

fn check_working_dir(dir: &Path) -> Result<(), StartFailure> {
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(StartFailure::WorkingDirNotADirectory {
            dir: dir.to_path_buf(),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(StartFailure::WorkingDirMissing {
                dir: dir.to_path_buf(),
            })
        }
        Err(error) => Err(StartFailure::ExecFailed {
            command: String::new(),
            message: format!("cannot use working directory {}: {error}", dir.display()),
        }),
    }
}

/// Finds the program like `execvp` would, using the service's `PATH`: a name with a `/` is a
/// path relative to the working directory; otherwise the first executable regular file in
/// `PATH` wins (a non-executable match is returned only if nothing better exists, so that
/// exec reports "permission denied" rather than "not found").
pub fn resolve_program(name: &str, search_path: &str, working_dir: &Path) -> Option<PathBuf> {
    if name.contains('/') {
        let candidate = working_dir.join(name);
        return candidate.is_file().then_some(candidate);
    }
    let mut not_executable = None;
    for dir in search_path.split(':') {
        let dir = if dir.is_empty() {
            working_dir.to_path_buf()
        } else {
            working_dir.join(dir)
        };
        let candidate = dir.join(name);
        match std::fs::metadata(&candidate) {
            Ok(metadata) if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 => {
                return Some(candidate);
            }
            Ok(metadata) if metadata.is_file() => {
                not_executable.get_or_insert(candidate);
            }
            _ => {}
        }
    }
    not_executable
}

fn explain_spawn_error(
    error: &io::Error,
    config: &ShimConfig,
    program: &Path,
    sandbox: Option<&crate::sandbox::Prepared>,
) -> StartFailure {
    let command = config.argv[0].clone();
    let code = error.raw_os_error().unwrap_or(0);
    if code >= STEP_BASE {
        let (step, errno) = (code / STEP_BASE, code % STEP_BASE);
        let reason = io::Error::from_raw_os_error(errno);
        if let Some(message) =
            sandbox.and_then(|prepared| crate::sandbox::describe_step(prepared, step, &reason))
        {
            return StartFailure::ExecFailed { command, message };
        }
        let message = match step {
            STEP_JOIN_CGROUP => format!("joining its cgroup failed: {reason}"),
            STEP_SET_GROUPS => format!(
                "setting the groups of user {} failed: {reason}",
                config.user
            ),
            STEP_SET_GID => format!("switching to gid {} failed: {reason}", config.gid),
            STEP_NAMESPACE => format!("entering a mount namespace of its own failed: {reason}"),
            STEP_HOSTS => format!(
                "mounting {} over /etc/hosts failed: {reason}",
                config
                    .hosts_file
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            ),
            _ => format!(
                "switching to user {} (uid {}) failed: {reason}",
                config.user, config.uid
            ),
        };
        return StartFailure::ExecFailed { command, message };
    }
    match code {
        libc::EACCES => StartFailure::PermissionDenied {
            command,
            user: config.user.clone(),
        },
        libc::ENOENT if program.exists() => StartFailure::ExecFailed {
            command,
            message: "its interpreter (the #! line) or dynamic loader does not exist".into(),
        },
        libc::ENOENT => StartFailure::CommandNotFound {
            command,
            path: config.env.get("PATH").cloned().unwrap_or_default(),
        },
        libc::ENOEXEC => StartFailure::ExecFailed {
            command,
            message: "not an executable format; add a #! line or run it through sh".into(),
        },
        _ => StartFailure::ExecFailed {
            command,
            message: error.to_string(),
        },
    }
}

/// In the child before exec: a mount namespace of its own, whose mounts no longer propagate
/// to the host's, with `hosts_file` bind-mounted read-only over `/etc/hosts`. The bind
/// follows the file's inode, so the agent rewrites the file in place to publish new names.
fn mount_hosts_file(hosts_file: &CString) -> io::Result<()> {
    const ETC_HOSTS: &CStr = c"/etc/hosts";
    // SAFETY: unshare has no memory preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(step_error(STEP_NAMESPACE, errno()));
    }
    let private = libc::MS_REC | libc::MS_PRIVATE;
    mount(None, c"/", private).map_err(|errno| step_error(STEP_NAMESPACE, errno))?;
    let read_only = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    mount(Some(hosts_file), ETC_HOSTS, libc::MS_BIND)
        .and_then(|()| mount(None, ETC_HOSTS, read_only))
        .map_err(|errno| step_error(STEP_HOSTS, errno))
}

/// `mount(source, target, NULL, flags, NULL)`; the errno on failure.
fn mount(source: Option<&CStr>, target: &CStr, flags: libc::c_ulong) -> Result<(), i32> {
    let source = source.map_or(std::ptr::null(), CStr::as_ptr);
    let null = std::ptr::null();
    // SAFETY: NUL-terminated strings that outlive the call, or null where mount allows it.
    match unsafe { libc::mount(source, target.as_ptr(), null, flags, null.cast()) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

fn step_error(step: i32, errno: i32) -> io::Error {
    io::Error::from_raw_os_error(STEP_BASE * step + errno)
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes the calling process's pid into a `cgroup.procs` file, without allocating.
fn join_cgroup(procs_file: &CString) -> Result<(), i32> {
    // SAFETY: open/write/close on a NUL-terminated path and a stack buffer.
    unsafe {
        let fd = libc::open(procs_file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let mut digits = [0u8; 12];
        let text = format_pid(libc::getpid(), &mut digits);
        let written = libc::write(fd, text.as_ptr().cast(), text.len());
        let write_errno = errno();
        libc::close(fd);
        if written < 0 {
            return Err(write_errno);
        }
    }
    Ok(())
}

/// Formats a positive pid into `buffer`, returning the digits.
fn format_pid(pid: libc::pid_t, buffer: &mut [u8; 12]) -> &[u8] {
    let mut value = pid.unsigned_abs();
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buffer[start..]
}

/// Moves a started service into its cgroup (when it did not join before exec), with every
/// process it forked meanwhile. A failure is logged, not fatal: without limits the cgroup only
/// tracks processes, and the process group does too.
pub fn join_cgroup_after_exec(config: &ShimConfig, pid: i32) {
    if config.join_cgroup_before_exec {
        return;
    }
    let files: Vec<std::path::PathBuf> = config
        .cgroup
        .iter()
        .flat_map(|placement| placement.procs_files())
        .collect();
    let move_pid = |member: i32| {
        for file in &files {
            if let Err(error) = std::fs::write(file, member.to_string())
                && error.raw_os_error() != Some(libc::ESRCH)
            {
                super::shim_log(&format!(
                    "could not move pid {member} into {}: {error}",
                    file.display()
                ));
            }
        }
    };
    if files.is_empty() {
        return;
    }
    move_pid(pid);
    // Processes forked before the move stayed behind. All of them descend from the shim (a
    // child subreaper adopts orphans, so even a daemonized child stays below it), and one
    // forked during a sweep follows its already-moved parent: two sweeps leave none outside.
    let shim = std::process::id() as i32;
    for _ in 0..2 {
        for member in descendants(shim) {
            if member != pid {
                move_pid(member);
            }
        }
    }
}

/// Every process below `root` in the process tree.
fn descendants(root: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(i32, i32)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 1..];
            let ppid = after_name.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_format_without_allocation() {
        let mut buffer = [0u8; 12];
        assert_eq!(format_pid(0, &mut buffer), b"0");
        assert_eq!(format_pid(4_194_304, &mut buffer), b"4194304");
        assert_eq!(format_pid(i32::MAX, &mut buffer), b"2147483647");
    }

    #[test]
    fn programs_resolve_like_execvp() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = bin.join("tool");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        // Not executable: still found (exec will say "permission denied").
        assert_eq!(
            resolve_program("tool", &path, dir.path()),
            Some(script.clone())
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_program("tool", &path, dir.path()),
            Some(script.clone())
        );
        assert_eq!(
            resolve_program("./bin/tool", "", dir.path()),
            Some(script.clone())
        );
        assert_eq!(
            resolve_program(script.to_str().unwrap(), "", Path::new("/")),
            Some(script)
        );
        assert_eq!(resolve_program("missing", &path, dir.path()), None);
        assert_eq!(
            resolve_program("bin", dir.path().to_str().unwrap(), dir.path()),
            None
        );
        assert!(resolve_program("sh", crate::spec::DEFAULT_PATH, Path::new("/")).is_some());
    }
}
