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
//! The agent goes through [`Driver`] only (an opaque [`Handle`] per instance);
//! [`LinuxProcessDriver`] is the process driver, [`fake::FakeProcessDriver`] records and
//! scripts for the agent's unit tests. The free functions below it are blocking.

pub mod cgroup;
mod check;
mod command_line;
mod driver;
mod error;
pub mod fake;
mod files;
mod handle;
pub mod logs;
mod pidfd;
mod process;
pub mod procfs;
pub mod sandbox;
pub mod secret_files;
mod shim;
mod spec;
mod start;
mod status;
mod stop;
pub mod strays;
mod timestamp;
pub mod users;

pub use command_line::{command_to_argv, needs_shell};
pub use driver::{BoxFuture, ContainerHandle, Driver, Found, Handle, Listing, Stray, Usage};
pub use error::{DriverError, Result};
pub use handle::{
    EXIT_FILE, InstanceExit, InstanceHandle, ProcessState, SHIM_LOG_FILE, STATE_FILE, StopOutcome,
    signal_name,
};
pub use process::{LinuxProcessDriver, ProcessScope};
pub use procfs::{ProcessUsage, own_usage, running_binary};
pub use sandbox::SandboxSpec;
pub use secret_files::{SECRETS_DIR_ENV, SecretFile};
pub use shim::log_writer::RotatingLog;
pub use shim::redact::Redactor;
pub use shim::shim_main;
pub use spec::{
    ContainerMount, ContainerSpec, DEFAULT_CGROUP_PARENT, DEFAULT_LANG, DEFAULT_PATH, InstanceSpec,
    LogRotation, PullAuth, Resources, ShimCommand,
};
pub use start::{SHIM_REPLY_TIMEOUT, start};
pub use status::{
    become_subreaper, exit_status, instance_pids, is_alive, reap_shim, verify, verify_shim,
};
pub use stop::{kill_instance, stop};
pub use timestamp::{format_rfc3339_micros, parse_rfc3339, unix_millis};
pub use users::default_service_user;
