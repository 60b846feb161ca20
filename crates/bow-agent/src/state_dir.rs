//! The state dir's lock: one agent per state dir (`agent.lock`, flock), and waiting until a
//! stopping agent has let it go.

use std::path::Path;
use std::time::Duration;

use crate::error::{AgentError, Result};

pub(crate) fn lock(state_dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(crate::layout::LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| AgentError::Io {
            what: format!("cannot open {}", path.display()),
            source,
        })?;
    // An agent that was just told to stop holds the lock until its process has exited: give
    // it a moment before deciding that another agent runs.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let mut locked = try_flock(file.as_raw_fd());
    while !locked && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        locked = try_flock(file.as_raw_fd());
    }
    if !locked {
        let pid = std::fs::read_to_string(state_dir.join(crate::api::PID_FILE))
            .unwrap_or_default()
            .trim()
            .to_string();
        return Err(AgentError::AlreadyRunning { pid, path });
    }
    Ok(file)
}

/// How long a starting agent waits for the state dir's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

fn try_flock(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: flock on a descriptor the caller owns; non-blocking.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Waits until no agent holds `state_dir`'s lock (an agent that was told to stop has fully
/// exited); false when one still holds it after `timeout`.
pub fn wait_released(state_dir: &Path, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(state_dir.join(crate::layout::LOCK_FILE)) else {
        return true;
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if try_flock(file.as_raw_fd()) {
            return true; // released when `file` is dropped
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
