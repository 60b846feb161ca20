//! How one instance of a service runs as a plain Linux process: shim, users, cgroups, logs.
//!
//! Each instance runs under its own shim process (like conmon): the shim is detached in its
//! own session, execs the service in a new process group (as its unix user, inside its
//! cgroup), timestamps its output into rotated log files and records its exit. Instances
//! therefore keep running, with their output captured, when the agent dies — even by
//! SIGKILL — and a later agent adopts them from their [`InstanceHandle`] (which names the
//! process by pid *and* start time, so a reused pid is never mistaken for it).
//!
//! On disk, per instance (`<run_dir>/<instance_id>/`): `state.json` (the handle, written by
//! the shim once the service was exec'd), `exit.json` (how it ended, written last by the
//! shim), `shim.log` (the shim's own diagnostics). Output goes to
//! `<log_dir>/<instance_id>.log` and its rotations `.1` … `.N` (format in [`logs`]).
//!
//! The operations are blocking; an async caller runs them on a blocking thread.

pub mod cgroup;
mod command_line;
mod error;
pub mod fake;
mod files;
mod handle;
pub mod logs;
pub mod procfs;
pub mod secret_files;
mod shim;
mod spec;
mod start;
mod status;
mod stop;
pub mod strays;
mod timestamp;
pub mod users;

use std::time::Duration;

pub use command_line::{command_to_argv, needs_shell};
pub use error::{DriverError, Result};
pub use handle::{
    EXIT_FILE, InstanceExit, InstanceHandle, ProcessState, SHIM_LOG_FILE, STATE_FILE, StopOutcome,
    signal_name,
};
pub use secret_files::{SECRETS_DIR_ENV, SecretFile};
pub use shim::shim_main;
pub use spec::{
    DEFAULT_CGROUP_PARENT, DEFAULT_LANG, DEFAULT_PATH, InstanceSpec, LogRotation, Resources,
    ShimCommand,
};
pub use start::{SHIM_REPLY_TIMEOUT, start};
pub use status::{
    become_subreaper, exit_status, instance_pids, is_alive, reap_shim, verify, verify_shim,
};
pub use stop::{kill_instance, stop};
pub use timestamp::{format_rfc3339_micros, parse_rfc3339};
pub use users::default_service_user;

/// Running instances as processes: the seam between the agent and the operating system.
/// [`LinuxProcessDriver`] is the real thing; [`fake::FakeProcessDriver`] records and scripts.
pub trait ProcessDriver: Send + Sync {
    /// Starts an instance; returns once its process was exec'd.
    fn start(&self, spec: &InstanceSpec) -> Result<InstanceHandle>;
    /// SIGTERM, up to `timeout`, then SIGKILL; says how it ended.
    fn stop(&self, handle: &InstanceHandle, timeout: Duration) -> Result<StopOutcome>;
    /// Whether the handle's very process is alive.
    fn verify(&self, handle: &InstanceHandle) -> Result<ProcessState>;
    /// How the instance ended, once it has.
    fn exit_status(&self, handle: &InstanceHandle) -> Result<Option<InstanceExit>>;
    /// SIGKILLs every process of the instance at once.
    fn kill(&self, handle: &InstanceHandle) -> Result<()>;
}

/// The real driver: starts instances under `shim` (for bow: [`ShimCommand::current_exe`]).
#[derive(Debug, Clone)]
pub struct LinuxProcessDriver {
    pub shim: ShimCommand,
}

impl LinuxProcessDriver {
    pub fn new(shim: ShimCommand) -> LinuxProcessDriver {
        LinuxProcessDriver { shim }
    }
}

impl ProcessDriver for LinuxProcessDriver {
    fn start(&self, spec: &InstanceSpec) -> Result<InstanceHandle> {
        start(spec, &self.shim)
    }

    fn stop(&self, handle: &InstanceHandle, timeout: Duration) -> Result<StopOutcome> {
        stop(handle, timeout)
    }

    fn verify(&self, handle: &InstanceHandle) -> Result<ProcessState> {
        verify(handle)
    }

    fn exit_status(&self, handle: &InstanceHandle) -> Result<Option<InstanceExit>> {
        exit_status(handle)
    }

    fn kill(&self, handle: &InstanceHandle) -> Result<()> {
        kill_instance(handle)
    }
}
