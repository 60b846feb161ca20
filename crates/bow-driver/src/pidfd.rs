//! Waiting for a process that is not our child to exit, without polling: `pidfd_open(2)`
//! gives a descriptor that becomes readable when the process ends.

use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Opens a pidfd for `pid`; `None` when the process is already gone.
pub fn open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves when the process behind `fd` has exited.
pub async fn exited(fd: OwnedFd) {
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and refers to the same
    // description until the AsyncFd is dropped.
    match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
        Ok(async_fd) => {
            let _ = async_fd.readable().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
