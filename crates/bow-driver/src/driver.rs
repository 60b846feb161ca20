//! The seam between the agent and whatever runs instances: [`Driver`], whose [`Handle`] the
//! agent stores, hands back and shows, but never looks into. The process driver
//! ([`crate::LinuxProcessDriver`]) is one implementation; a container driver is another
//! implementation of the same trait, with a handle of its own inside [`Handle`].

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::handle::{InstanceExit, InstanceHandle, StopOutcome};
use crate::logs::LogLine;
use crate::spec::InstanceSpec;

/// What the async operations of a driver return: owned, so an executor can hold it.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How instances of one workload kind run: started, stopped, watched, found again after an
/// agent restart, and their output and usage read. Every wait is a notification (no polling
/// of the instance by the caller); blocking work happens inside the driver.
pub trait Driver: Send + Sync + 'static {
    /// Starts an instance; resolves once it runs (its handle) or could not start. A start
    /// over an instance id that still runs fails with [`crate::DriverError::AlreadyRunning`].
    fn start(&self, spec: InstanceSpec) -> BoxFuture<Result<Handle>>;
    /// Asks the instance to end (SIGTERM for a process), ends it by force after `timeout`;
    /// says how it ended. Draining its traffic first is the caller's job.
    fn stop(&self, handle: &Handle, timeout: Duration) -> BoxFuture<Result<StopOutcome>>;
    /// Resolves when the instance has ended (by itself or stopped), with how when known.
    fn wait_exit(&self, handle: &Handle) -> BoxFuture<Option<InstanceExit>>;
    /// Whether the handle's very instance still runs.
    fn is_running(&self, handle: &Handle) -> bool;
    /// How the instance ended, once it has and when that was recorded.
    fn exit_status(&self, handle: &Handle) -> Option<InstanceExit>;
    /// The instance that runs under `instance_id` now, if any.
    fn live(&self, instance_id: &str) -> Option<Handle>;
    /// Everything of this scope that outlived a previous agent (for adoption): each handle
    /// found, whether it runs, and what runs that no handle accounts for.
    fn list(&self) -> BoxFuture<Listing>;
    /// Runs a health `exec` check inside the instance, when the driver runs checks itself (a
    /// container: the command runs in it through the engine); `None` for a driver whose
    /// instances the agent checks by running the command on the host as their user.
    fn exec_check(
        &self,
        _handle: &Handle,
        _command: &str,
        _timeout: Duration,
    ) -> Option<BoxFuture<std::result::Result<(), String>>> {
        None
    }
    /// Stops what [`Driver::list`] found unaccounted for, one instance id at a time.
    fn stop_stray(&self, stray: Stray, timeout: Duration) -> BoxFuture<()>;
    /// The port the instance was started with, read from the instance itself (for one the
    /// agent's records lost).
    fn port_of(&self, handle: &Handle) -> Option<u16>;
    /// The last `lines` lines of an instance's output, oldest first.
    fn log_tail(&self, instance_id: &str, lines: usize) -> Vec<LogLine>;
    /// What the instance uses now, as far as the driver knows.
    fn usage(&self, handle: &Handle) -> Usage;
    /// `sh -c CHECK` in `dir` run the way the instance runs (its user; confined like it, in
    /// its sandbox); the caller adds the environment and stdio. A driver whose `exec_check`
    /// runs checks inside the instance returns one that fails and runs nothing of the check.
    fn check_command(&self, handle: &Handle, check: &str, dir: &Path) -> std::process::Command;
    /// After every instance of the scope was stopped (`bow down`): ends whatever is left of
    /// them (a child that escaped) and frees what the driver holds for them.
    fn clean_up(&self) -> BoxFuture<()>;
}

/// A running (or once running) instance as its driver knows it. Who it is (service, index,
/// instance id, release) and how to show it are public; how the driver finds it is not.
/// Serializable: the agent records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Handle(Repr);

/// One variant per driver; the process handle serializes as it always did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Process(InstanceHandle),
    Container(ContainerHandle),
}

/// A container instance as the container driver knows it: the engine's container id and the
/// host process of its main program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerHandle {
    /// `<project>-<environment>`: the scope its labels carry.
    pub scope: String,
    pub service: String,
    pub index: u32,
    pub instance_id: String,
    pub release: u64,
    /// The engine's full container id.
    pub container_id: String,
    pub name: String,
    pub image: String,
    /// The container's main process as the host sees it, and its start time (field 22 of
    /// `/proc/<pid>/stat`), so that a reused pid is never mistaken for it.
    pub pid: i32,
    pub start_time: u64,
    /// The user inside the container (`root` when the image does not say).
    pub user: String,
    /// Where its output is captured (bow's log pipeline, as for a process).
    pub log_path: PathBuf,
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// The port on 127.0.0.1 that reaches it (published by the engine, for operators).
    pub port: u16,
    /// Where bow reaches it: its address on the scope's network and the port it listens on
    /// inside (no proxy between; `None` when the engine did not say).
    #[serde(default)]
    pub endpoint: Option<std::net::SocketAddr>,
    pub started_at_unix_ms: u64,
}

impl Handle {
    /// The handle of an instance run as a process (the process driver and its fakes).
    pub fn process(handle: InstanceHandle) -> Handle {
        Handle(Repr::Process(handle))
    }

    /// The handle of an instance run as a container.
    pub fn container(handle: ContainerHandle) -> Handle {
        Handle(Repr::Container(handle))
    }

    /// The process handle; panics for another kind (only the process driver, which never
    /// gets another kind's handle, calls it).
    pub(crate) fn as_process(&self) -> &InstanceHandle {
        match &self.0 {
            Repr::Process(handle) => handle,
            Repr::Container(handle) => {
                panic!("container {} handed to the process driver", handle.name)
            }
        }
    }

    /// The container handle, for the container driver.
    pub fn as_container(&self) -> Option<&ContainerHandle> {
        match &self.0 {
            Repr::Container(handle) => Some(handle),
            Repr::Process(_) => None,
        }
    }

    /// The driver that runs it (`process` or `container`).
    pub fn kind(&self) -> &'static str {
        match &self.0 {
            Repr::Process(_) => "process",
            Repr::Container(_) => "container",
        }
    }

    pub fn service(&self) -> &str {
        match &self.0 {
            Repr::Process(h) => &h.service,
            Repr::Container(h) => &h.service,
        }
    }

    pub fn index(&self) -> u32 {
        match &self.0 {
            Repr::Process(h) => h.index,
            Repr::Container(h) => h.index,
        }
    }

    pub fn instance_id(&self) -> &str {
        match &self.0 {
            Repr::Process(h) => &h.instance_id,
            Repr::Container(h) => &h.instance_id,
        }
    }

    /// The release number it was started with ([`InstanceSpec::release`]).
    pub fn release(&self) -> u64 {
        match &self.0 {
            Repr::Process(h) => h.release,
            Repr::Container(h) => h.release,
        }
    }

    /// The host's process id of its main process, when it has one.
    pub fn pid(&self) -> Option<i32> {
        match &self.0 {
            Repr::Process(h) => Some(h.pid),
            Repr::Container(h) => Some(h.pid),
        }
    }

    /// The user it runs as (a unix user of the host; for a container, its user inside).
    pub fn user(&self) -> &str {
        match &self.0 {
            Repr::Process(h) => &h.user,
            Repr::Container(h) => &h.user,
        }
    }

    /// The uid and gid its own checks (`health.exec`) run as on the host (a container's
    /// checks run inside it: [`Driver::exec_check`]).
    pub fn run_as(&self) -> (u32, u32) {
        match &self.0 {
            Repr::Process(h) => (h.uid, h.gid),
            Repr::Container(_) => (0, 0),
        }
    }

    /// When it started, in milliseconds since the Unix epoch.
    pub fn started_at_unix_ms(&self) -> u64 {
        match &self.0 {
            Repr::Process(h) => h.started_at_unix_ms,
            Repr::Container(h) => h.started_at_unix_ms,
        }
    }

    /// Where its output goes, when a file holds it.
    pub fn log_path(&self) -> Option<&Path> {
        match &self.0 {
            Repr::Process(h) => Some(&h.log_path),
            Repr::Container(h) => Some(&h.log_path),
        }
    }

    /// Its secrets dir, when it has one (the same files for its checks).
    pub fn secrets_dir(&self) -> Option<&Path> {
        match &self.0 {
            Repr::Process(h) => h.secrets_dir.as_deref(),
            Repr::Container(h) => h.secrets_dir.as_deref(),
        }
    }

    /// Where the agent reaches the instance when not at 127.0.0.1 and the port it was given
    /// (a container: its address on the engine's network).
    pub fn endpoint(&self) -> Option<std::net::SocketAddr> {
        match &self.0 {
            Repr::Process(_) => None,
            Repr::Container(h) => h.endpoint,
        }
    }

    /// Whether `other` is the very same instance (not just the same id).
    pub fn same_as(&self, other: &Handle) -> bool {
        match (&self.0, &other.0) {
            (Repr::Process(a), Repr::Process(b)) => a.pid == b.pid && a.start_time == b.start_time,
            (Repr::Container(a), Repr::Container(b)) => a.container_id == b.container_id,
            _ => false,
        }
    }
}

/// How events name it: `pid 1234`, `container 0123456789ab`.
impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Process(handle) => write!(f, "pid {}", handle.pid),
            Repr::Container(handle) => write!(
                f,
                "container {}",
                handle
                    .container_id
                    .get(..12)
                    .unwrap_or(&handle.container_id)
            ),
        }
    }
}

/// What [`Driver::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every instance a handle names, and whether it runs.
    pub instances: Vec<Found>,
    /// What runs that no handle accounts for, by instance id.
    pub strays: Vec<Stray>,
}

/// One instance a handle names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub handle: Handle,
    pub running: bool,
}

/// What runs under one instance id that no handle accounts for (started as a previous agent
/// died, before the instance was recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub instance_id: String,
    /// What it is and why it is a stray, for the event.
    pub description: String,
    pub(crate) processes: Vec<crate::strays::RunProcess>,
}

/// What an instance uses now; `None` where the driver cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub cpu_micros: Option<u64>,
    /// File descriptors the instance's main process holds open.
    pub open_fds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_handle_serializes_as_the_process_handle_it_holds() {
        let inner = crate::fake::handle_for_tests("web", 2, 1234);
        let handle = Handle::process(inner.clone());
        let json = serde_json::to_string(&handle).unwrap();
        assert_eq!(json, serde_json::to_string(&inner).unwrap());
        let back: Handle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, handle);
        assert_eq!(handle.to_string(), "pid 1234");
        assert_eq!(handle.instance_id(), "web.2");
        assert_eq!(handle.kind(), "process");
    }
}
