//! Stopping an instance: SIGTERM to its group and cgroup, SIGKILL after the timeout, and the
//! exit its shim recorded.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::handle::{InstanceExit, InstanceHandle, ProcessState, StopOutcome};
use crate::status::{exit_status, verify, verify_shim};

/// How long to wait for the process to vanish after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the shim to record the exit once the process is gone. The shim may
/// spend up to 4 s stopping leftover processes first.
const EXIT_RECORD_TIMEOUT: Duration = Duration::from_secs(8);

/// Stops the instance: SIGTERM to its process group (and to any other process of its
/// cgroup), up to `timeout` for it to exit, then SIGKILL to all of them. Returns how it ended,
/// with the exit the shim recorded. Safe to call on an instance that already ended.
pub fn stop(handle: &InstanceHandle, timeout: Duration) -> Result<StopOutcome> {
    if verify(handle)? != ProcessState::Running {
        let exit = wait_for_exit_record(handle)?;
        clean_up_without_shim(handle)?;
        return Ok(StopOutcome::AlreadyGone(exit));
    }
    match handle.stop_signal {
        // The service stops its own children: only the service process is told.
        Some(signal) => {
            if matches!(verify(handle), Ok(ProcessState::Running)) {
                // SAFETY: the process is alive and is ours (pid and start time match).
                unsafe { libc::kill(handle.pid, signal) };
            }
        }
        None => signal_instance(handle, libc::SIGTERM),
    }
    let killed = !wait_until_gone(handle, timeout)?;
    if killed {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            signal_instance(handle, libc::SIGKILL);
            if verify(handle)? != ProcessState::Running || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let exit = wait_for_exit_record(handle)?;
    clean_up_without_shim(handle)?;
    Ok(if killed {
        StopOutcome::Killed(exit)
    } else {
        StopOutcome::Terminated(exit)
    })
}

/// SIGKILLs every process of the instance (group and cgroup) at once, then removes its cgroup
/// once the shim is gone. For `down` and for cleaning up after a lost agent.
pub fn kill_instance(handle: &InstanceHandle) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    while verify(handle)? == ProcessState::Running && Instant::now() < deadline {
        signal_instance(handle, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(cgroup) = handle.cgroup.as_ref().filter(|_| is_latest_run(handle)) {
        cgroup.kill_all(KILL_TIMEOUT);
    }
    wait_for_exit_record(handle)?;
    clean_up_without_shim(handle)
}

/// Sends `signal` to the service's process group (only while the handle's process is alive,
/// so a reused pid is never signalled) and to every other process of its cgroup.
fn signal_instance(handle: &InstanceHandle, signal: i32) {
    if matches!(verify(handle), Ok(ProcessState::Running)) {
        // SAFETY: the group leader is alive and is ours (pid and start time match).
        unsafe { libc::kill(-handle.pgid, signal) };
    }
    if let Some(cgroup) = handle.cgroup.as_ref().filter(|_| is_latest_run(handle)) {
        cgroup.signal_all(signal);
    }
}

/// The cgroup path is reused by a later run of the same instance id: only touch it when the
/// run dir's `state.json` still describes this handle's process (or is gone).
fn is_latest_run(handle: &InstanceHandle) -> bool {
    match InstanceHandle::load(&handle.run_dir) {
        Ok(Some(latest)) => latest.pid == handle.pid && latest.start_time == handle.start_time,
        Ok(None) => true,
        Err(_) => false,
    }
}

/// True when the process exited within `timeout`.
fn wait_until_gone(handle: &InstanceHandle, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if verify(handle)? != ProcessState::Running {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `exit.json`; gives up as soon as the shim is gone (it would never come).
fn wait_for_exit_record(handle: &InstanceHandle) -> Result<Option<InstanceExit>> {
    let deadline = Instant::now() + EXIT_RECORD_TIMEOUT;
    loop {
        if let Some(exit) = exit_status(handle)? {
            return Ok(Some(exit));
        }
        if verify_shim(handle)? != ProcessState::Running {
            return exit_status(handle);
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// When the shim is gone (killed), nobody else removes what is left of the cgroup.
fn clean_up_without_shim(handle: &InstanceHandle) -> Result<()> {
    if let Some(dir) = &handle.secrets_dir
        && verify_shim(handle)? != ProcessState::Running
        && is_latest_run(handle)
    {
        crate::secret_files::remove(dir)
            .map_err(|e| crate::error::DriverError::io(format!("removing {}", dir.display()), e))?;
    }
    let Some(cgroup) = &handle.cgroup else {
        return Ok(());
    };
    if verify_shim(handle)? == ProcessState::Running
        || cgroup.is_removed()
        || !is_latest_run(handle)
    {
        return Ok(());
    }
    cgroup.kill_all(KILL_TIMEOUT);
    cgroup.remove()
}
