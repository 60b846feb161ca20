//! The process driver: [`Driver`] for instances that run as plain Linux processes under a
//! shim. Everything process-shaped the agent used to do itself lives here: exits noticed
//! through a pidfd, the shim's `exit.json` and reaping, `run/*/state.json` and the process
//! table for adoption, log files, cgroups.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::driver::{BoxFuture, Driver, Found, Handle, Listing, Stray, Usage};
use crate::error::{DriverError, Result};
use crate::handle::{InstanceExit, InstanceHandle, ProcessState, StopOutcome};
use crate::logs::LogLine;
use crate::spec::{InstanceSpec, ShimCommand};
use crate::strays::{self, RunProcess};

/// How long [`Driver::list`] waits for shims that have not written their `state.json` yet
/// (started the moment the previous agent died) before it calls them strays.
const STARTING_SHIM_PATIENCE: Duration = Duration::from_secs(3);
/// How long an instance's end waits for its shim to record the exit.
const SHIM_RECORD_PATIENCE: Duration = Duration::from_secs(5);

/// Which instances a process driver answers for: one state dir's project and environment.
#[derive(Debug, Clone)]
pub struct ProcessScope {
    /// `<state-dir>/run`: one dir per instance (`state.json`, `exit.json`, `shim.log`).
    pub run_dir: PathBuf,
    /// `<state-dir>/logs`.
    pub log_dir: PathBuf,
    pub project: String,
    pub environment: String,
}

/// The real process driver: starts instances under `shim` (for bow: the running binary).
#[derive(Debug, Clone)]
pub struct LinuxProcessDriver {
    pub shim: ShimCommand,
    pub scope: ProcessScope,
    /// The mount namespace of each confined instance it started, held open. A namespace is
    /// torn down (every mount of it unmounted) when its last reference goes: without this,
    /// in the dying service's exit, which its restart waits for; held here, in the
    /// background once the exit was seen ([`HELD_NAMESPACE_RELEASE`] later).
    namespaces: Namespaces,
}

type Namespaces = Arc<Mutex<HashMap<(i32, u64), std::fs::File>>>;

/// How long after an instance's exit the driver lets its namespace go.
const HELD_NAMESPACE_RELEASE: Duration = Duration::from_millis(500);

impl LinuxProcessDriver {
    pub fn new(shim: ShimCommand, scope: ProcessScope) -> LinuxProcessDriver {
        LinuxProcessDriver {
            shim,
            scope,
            namespaces: Namespaces::default(),
        }
    }

    /// Every `run/<id>/state.json` and whether its process runs.
    fn read_run_dir(&self) -> Vec<Found> {
        let Ok(entries) = std::fs::read_dir(&self.scope.run_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let handle = InstanceHandle::load(&entry.path()).ok()??;
                let running = crate::status::is_alive(&handle);
                Some(Found {
                    handle: Handle::process(handle),
                    running,
                })
            })
            .collect()
    }

    /// Every live process of the scope's instances, by the process table.
    fn processes(&self) -> Vec<RunProcess> {
        strays::list(&strays::Markers {
            run_dir: &self.scope.run_dir,
            environment: &[
                ("BOW_PROJECT", self.scope.project.as_str()),
                ("BOW_ENV", self.scope.environment.as_str()),
            ],
            instance_variable: "BOW_INSTANCE",
        })
    }

    /// The run dir's handles and the processes no handle accounts for. A shim that is not
    /// accounted for may still be starting (its `state.json` comes right after its service's
    /// exec): the look is repeated until none is left or the patience runs out.
    fn list_blocking(&self) -> Listing {
        let deadline = Instant::now() + STARTING_SHIM_PATIENCE;
        loop {
            let instances = self.read_run_dir();
            let named: Vec<InstanceHandle> = instances
                .iter()
                .map(|f| f.handle.as_process().clone())
                .collect();
            let live: Vec<InstanceHandle> = instances
                .iter()
                .filter(|f| f.running)
                .map(|f| f.handle.as_process().clone())
                .collect();
            let orphans = strays::unaccounted(&self.processes(), &named, &live);
            if !orphans.iter().any(|p| p.shim) || Instant::now() >= deadline {
                return Listing {
                    instances,
                    strays: group_strays(orphans),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One [`Stray`] per instance id.
fn group_strays(orphans: Vec<RunProcess>) -> Vec<Stray> {
    let mut by_instance: BTreeMap<String, Vec<RunProcess>> = BTreeMap::new();
    for process in orphans {
        by_instance
            .entry(process.instance_id.clone())
            .or_default()
            .push(process);
    }
    by_instance
        .into_iter()
        .map(|(instance_id, processes)| {
            let pids = processes
                .iter()
                .map(|p| format!("{}{}", p.pid, if p.shim { " (shim)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ");
            Stray {
                description: format!(
                    "pid {pids}: ran with no handle in run/{instance_id}/state.json naming it"
                ),
                instance_id,
                processes,
            }
        })
        .collect()
}

/// Runs blocking driver work off the async threads.
fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> BoxFuture<T> {
    Box::pin(async move {
        match tokio::task::spawn_blocking(work).await {
            Ok(value) => value,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    })
}

impl Driver for LinuxProcessDriver {
    fn start(&self, spec: InstanceSpec) -> BoxFuture<Result<Handle>> {
        let shim = self.shim.clone();
        let namespaces = Arc::clone(&self.namespaces);
        blocking(move || {
            subreaper()?;
            let handle = crate::start::start(&spec, &shim)?;
            hold_namespace(&namespaces, &handle);
            Ok(Handle::process(handle))
        })
    }

    fn stop(&self, handle: &Handle, timeout: Duration) -> BoxFuture<Result<StopOutcome>> {
        let handle = handle.as_process().clone();
        let namespaces = Arc::clone(&self.namespaces);
        Box::pin(async move {
            let stopped = handle.clone();
            let outcome = tokio::task::spawn_blocking(move || crate::stop::stop(&stopped, timeout))
                .await
                .map_err(|e| DriverError::io("stop task", std::io::Error::other(e.to_string())))?;
            release_namespace(&namespaces, &handle);
            reap_later(handle);
            outcome
        })
    }

    fn wait_exit(&self, handle: &Handle) -> BoxFuture<Option<InstanceExit>> {
        let handle = handle.as_process().clone();
        let namespaces = Arc::clone(&self.namespaces);
        Box::pin(async move {
            let exit = wait_exit(handle.clone()).await;
            release_namespace(&namespaces, &handle);
            exit
        })
    }

    fn is_running(&self, handle: &Handle) -> bool {
        crate::status::is_alive(handle.as_process())
    }

    fn exit_status(&self, handle: &Handle) -> Option<InstanceExit> {
        crate::status::exit_status(handle.as_process())
            .ok()
            .flatten()
    }

    fn live(&self, instance_id: &str) -> Option<Handle> {
        let handle = InstanceHandle::load(&self.scope.run_dir.join(instance_id)).ok()??;
        crate::status::is_alive(&handle).then(|| Handle::process(handle))
    }

    fn list(&self) -> BoxFuture<Listing> {
        let driver = self.clone();
        blocking(move || driver.list_blocking())
    }

    fn stop_stray(&self, stray: Stray, timeout: Duration) -> BoxFuture<()> {
        blocking(move || strays::stop(&stray.processes, timeout))
    }

    fn port_of(&self, handle: &Handle) -> Option<u16> {
        let pid = handle.as_process().pid;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .find_map(|entry| entry.strip_prefix(b"PORT="))
            .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
    }

    fn log_tail(&self, instance_id: &str, lines: usize) -> Vec<LogLine> {
        crate::logs::tail(&self.scope.log_dir, instance_id, lines)
    }

    fn usage(&self, handle: &Handle) -> Usage {
        usage(handle.as_process())
    }

    fn check_command(
        &self,
        handle: &Handle,
        check: &str,
        dir: &std::path::Path,
    ) -> std::process::Command {
        crate::check::check_command(handle.as_process(), check, dir)
    }

    fn clean_up(&self) -> BoxFuture<()> {
        let project = format!("{}-{}", self.scope.project, self.scope.environment);
        let held = std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        blocking(move || {
            drop(held);
            // Anything left in the project's cgroups (a child that escaped its process group).
            let Some(layout) = crate::cgroup::detect_layout() else {
                return;
            };
            let parent = crate::spec::DEFAULT_CGROUP_PARENT;
            for placement in crate::cgroup::project_cgroups(&layout, parent, &project) {
                placement.kill_all(Duration::from_secs(2));
            }
            let _ = crate::cgroup::remove_project_cgroups(&layout, parent, &project);
        })
    }
}

/// Holds a confined instance's mount namespace open (as root: only then has it one).
fn hold_namespace(namespaces: &Namespaces, handle: &InstanceHandle) {
    if handle.sandbox.is_none() || !crate::users::is_root() {
        return;
    }
    // Opened first, verified second: the namespace cannot be a reused pid's.
    if let Ok(file) = std::fs::File::open(format!("/proc/{}/ns/mnt", handle.pid))
        && crate::status::is_alive(handle)
    {
        let mut held = namespaces.lock().unwrap_or_else(|e| e.into_inner());
        held.insert((handle.pid, handle.start_time), file);
    }
}

/// Lets an ended instance's namespace go, a moment later and off the async threads (the
/// tear-down unmounts every mount of it).
fn release_namespace(namespaces: &Namespaces, handle: &InstanceHandle) {
    let held = namespaces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(handle.pid, handle.start_time));
    if let Some(file) = held {
        tokio::spawn(async move {
            tokio::time::sleep(HELD_NAMESPACE_RELEASE).await;
            let _ = tokio::task::spawn_blocking(move || drop(file)).await;
        });
    }
}

/// Makes this process the subreaper of the shims it starts (they orphan themselves on
/// purpose; it reaps them, see `reap_later`), once.
fn subreaper() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| crate::status::become_subreaper().map_err(|e| e.to_string()))
        .clone()
        .map_err(|message| DriverError::io(message, std::io::Error::other("prctl failed")))
}

/// Resolves when the instance's process has ended, with what its shim recorded. Both waits
/// are notifications: the service's pidfd, then the shim's (it writes `exit.json` after
/// reaping the service and removing its cgroup, and exits right after).
async fn wait_exit(handle: InstanceHandle) -> Option<InstanceExit> {
    if let Some(fd) = crate::pidfd::open(handle.pid) {
        // Opened first, verified second: the pidfd cannot refer to a reused pid.
        if crate::status::is_alive(&handle) {
            crate::pidfd::exited(fd).await;
        }
    }
    shim_done(&handle).await;
    crate::status::exit_status(&handle).ok().flatten()
}

/// Waits for the instance's shim to end (a shim stuck on leftovers: not past
/// `SHIM_RECORD_PATIENCE`) and reaps it (this process is its subreaper).
async fn shim_done(handle: &InstanceHandle) {
    if let Some(fd) = crate::pidfd::open(handle.shim_pid)
        && matches!(
            crate::status::verify_shim(handle),
            Ok(ProcessState::Running)
        )
    {
        let _ = tokio::time::timeout(SHIM_RECORD_PATIENCE, crate::pidfd::exited(fd)).await;
    }
    crate::status::reap_shim(handle);
}

/// Reaps the shim once it has ended, in the background.
fn reap_later(handle: InstanceHandle) {
    tokio::spawn(async move { shim_done(&handle).await });
}

/// Memory and cpu time: the cgroup's counters, or (without one) the process's own.
fn usage(handle: &InstanceHandle) -> Usage {
    let read = |path: PathBuf| std::fs::read_to_string(path).ok();
    if let Some(cgroup) = &handle.cgroup
        && let Some(dir) = cgroup.dirs.first()
    {
        let memory_bytes = read(dir.join("memory.current"))
            .or_else(|| read(dir.join("memory.usage_in_bytes")))
            .and_then(|text| text.trim().parse().ok());
        let cpu_micros = read(cgroup.dirs.last().unwrap_or(dir).join("cpu.stat"))
            .and_then(|text| crate::cgroup::parse_counter(&text, "usage_usec"))
            // cgroup v1 keeps cpu time in cpuacct, which bow does not join.
            .or_else(|| process_cpu_micros(handle.pid));
        return Usage {
            memory_bytes,
            cpu_micros,
            open_fds: open_fds(handle.pid),
        };
    }
    if !crate::status::is_alive(handle) {
        return Usage::default();
    }
    // SAFETY: sysconf with a valid name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    let memory_bytes = read(PathBuf::from(format!("/proc/{}/statm", handle.pid)))
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page);
    Usage {
        memory_bytes,
        cpu_micros: process_cpu_micros(handle.pid),
        open_fds: open_fds(handle.pid),
    }
}

/// The cpu time of a process and of the children it waited for.
fn process_cpu_micros(pid: i32) -> Option<u64> {
    crate::procfs::usage_of(&pid.to_string()).cpu_micros_with_children
}

/// The descriptors a process holds open (readable by its owner and root).
fn open_fds(pid: i32) -> Option<u64> {
    crate::procfs::usage_of(&pid.to_string()).open_fds
}
