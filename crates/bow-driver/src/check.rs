//! An instance's own checks (`health.exec`): `sh -c CHECK` run the way the instance runs —
//! as its user and, when it is confined, inside its sandbox: its very mount namespace
//! (entered with `setns`, so the check sees what the service sees, private /tmp included),
//! its capabilities, rlimits, no new privileges and its system call filter.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::handle::InstanceHandle;
use crate::sandbox::{self, Prepared};

/// The command that runs `check` in `dir` for the instance; the caller adds the environment
/// and its stdio.
pub fn check_command(handle: &InstanceHandle, check: &str, dir: &Path) -> Command {
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(check).current_dir(dir);
    let root = crate::users::is_root();
    let Some(spec) = &handle.sandbox else {
        if root {
            command.uid(handle.uid).gid(handle.gid);
        }
        return command;
    };
    let prepared = match Prepared::for_check(spec, root) {
        Ok(prepared) => prepared,
        Err(message) => return failing(&message),
    };
    // Opened first, verified second: the namespace cannot be a reused pid's.
    let namespace = if root {
        match File::open(format!("/proc/{}/ns/mnt", handle.pid)) {
            Ok(file) if crate::status::is_alive(handle) => Some(file),
            _ => return failing("the instance is not running"),
        }
    } else {
        None
    };
    let dir = sandbox::c_path(dir);
    let identity = root.then_some((handle.uid, handle.gid));
    let uid = handle.uid;
    // SAFETY: setns, chdir, setrlimit, prctl, capset, setgroups, setgid, setuid: system
    // calls only, no allocation.
    unsafe {
        command.pre_exec(move || {
            let fail = |_| std::io::Error::from_raw_os_error(sandbox::errno());
            if let Some(namespace) = &namespace {
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(fail(0));
                }
                if libc::chdir(dir.as_ptr()) != 0 {
                    return Err(fail(0));
                }
            }
            sandbox::enter_before_user_switch(&prepared, uid)
                .map_err(|(_, errno)| std::io::Error::from_raw_os_error(errno))?;
            if let Some((uid, gid)) = identity {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(fail(0));
                }
            }
            sandbox::enter_after_user_switch(&prepared)
                .map_err(|(_, errno)| std::io::Error::from_raw_os_error(errno))
        });
    }
    command
}

/// A command that fails, saying why on stderr (the check's reason).
fn failing(reason: &str) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("echo \"$1\" >&2; exit 1")
        .arg("check")
        .arg(format!("cannot run the check confined: {reason}"));
    command
}
