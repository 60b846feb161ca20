//! Inspecting an instance from its handle: is it (still) that process, and how did it end.

use crate::error::{DriverError, Result};
use crate::handle::{InstanceExit, InstanceHandle, ProcessState};
use crate::procfs;
use crate::shim::protocol::ExitRecord;

/// Whether the handle's service process is alive. A pid now used by another process (its
/// start time differs) is [`ProcessState::PidReused`], never `Running`.
pub fn verify(handle: &InstanceHandle) -> Result<ProcessState> {
    verify_process(handle.pid, handle.start_time)
}

/// Whether the handle's shim is alive.
pub fn verify_shim(handle: &InstanceHandle) -> Result<ProcessState> {
    verify_process(handle.shim_pid, handle.shim_start_time)
}

/// `verify(handle) == Running`, with errors counted as not alive.
pub fn is_alive(handle: &InstanceHandle) -> bool {
    matches!(verify(handle), Ok(ProcessState::Running))
}

fn verify_process(pid: i32, start_time: u64) -> Result<ProcessState> {
    let stat = procfs::read_stat(pid)
        .map_err(|e| DriverError::io(format!("reading /proc/{pid}/stat"), e))?;
    Ok(match stat {
        None => ProcessState::Gone,
        Some(stat) if stat.start_time != start_time => ProcessState::PidReused,
        Some(stat) if !stat.is_alive() => ProcessState::Gone,
        Some(_) => ProcessState::Running,
    })
}

/// How the instance ended, as its shim recorded it in `exit.json`; `None` while it runs, or
/// when the shim died before recording (then the exit is unknown).
pub fn exit_status(handle: &InstanceHandle) -> Result<Option<InstanceExit>> {
    let record: Option<ExitRecord> = crate::files::read_json(&handle.exit_file())?;
    Ok(record
        .filter(|record| record.pid == handle.pid && record.start_time == handle.start_time)
        .map(|record| record.exit))
}

/// Every process of the instance: its cgroup's members, or (without a cgroup) the members of
/// its process group found in `/proc`.
pub fn instance_pids(handle: &InstanceHandle) -> Vec<i32> {
    if let Some(cgroup) = &handle.cgroup {
        return cgroup.pids();
    }
    if verify(handle).ok() != Some(ProcessState::Running) {
        return vec![];
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            procfs::read_stat(pid)
                .ok()
                .flatten()
                .is_some_and(|stat| stat.pgid == handle.pgid && stat.is_alive())
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Makes the calling process a child subreaper: shims started from it (which orphan
/// themselves on purpose) are re-parented to it rather than to init while it lives. Useful
/// where pid 1 does not reap orphans; the caller then reaps ended shims with [`reap_shim`].
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(DriverError::io(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Reaps the handle's shim if it has exited and this process is its parent (see
/// [`become_subreaper`]); true when it was reaped. Never touches another process: the pid,
/// start time, zombie state and parent must all match.
pub fn reap_shim(handle: &InstanceHandle) -> bool {
    let Ok(Some(stat)) = procfs::read_stat(handle.shim_pid) else {
        return false;
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    if stat.start_time != handle.shim_start_time || stat.state != 'Z' || stat.ppid != parent {
        return false;
    }
    let mut status = 0;
    // SAFETY: waits for one specific exited child without blocking.
    unsafe { libc::waitpid(handle.shim_pid, &mut status, libc::WNOHANG) == handle.shim_pid }
}
