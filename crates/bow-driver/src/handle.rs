//! What a started instance leaves behind for the agent: [`InstanceHandle`], and how it ended.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupPlacement;
use crate::error::Result;

/// Name of the state file in an instance's run dir; holds an [`InstanceHandle`].
pub const STATE_FILE: &str = "state.json";
/// Name of the exit file in an instance's run dir; holds an [`InstanceExit`].
pub const EXIT_FILE: &str = "exit.json";
/// Name of the shim's own diagnostics log in an instance's run dir.
pub const SHIM_LOG_FILE: &str = "shim.log";

/// A running (or once running) instance, identified so that a reused pid is never mistaken
/// for it. Serializable: the agent stores it, and a later agent adopts the instance from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHandle {
    pub project: String,
    pub service: String,
    pub index: u32,
    pub instance_id: String,
    /// The release number the caller gave in [`crate::InstanceSpec::release`].
    #[serde(default)]
    pub release: u64,
    /// The service process (the exec'd argv[0]).
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
    /// The service's process group (equal to `pid`): signals go to the whole group.
    pub pgid: i32,
    pub shim_pid: i32,
    pub shim_start_time: u64,
    /// `<run_dir>/<instance_id>`.
    pub run_dir: PathBuf,
    /// `<log_dir>/<instance_id>.log`.
    pub log_path: PathBuf,
    /// The cgroup(s) the service runs in; `None` when not root.
    pub cgroup: Option<CgroupPlacement>,
    /// The unix user and uid/gid the service runs as.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// When the service was exec'd, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// The instance's secrets dir, removed when it has ended.
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// How it is confined (its checks run confined the same way); `None`: not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Box<crate::sandbox::SandboxSpec>>,
    /// [`crate::InstanceSpec::stop_signal`]: what `stop` sends to the service process alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
}

impl InstanceHandle {
    /// Reads the handle the shim wrote into an instance's run dir (`state.json`), if any.
    pub fn load(instance_run_dir: &Path) -> Result<Option<InstanceHandle>> {
        crate::files::read_json(&instance_run_dir.join(STATE_FILE))
    }

    pub fn exit_file(&self) -> PathBuf {
        self.run_dir.join(EXIT_FILE)
    }

    pub fn shim_log(&self) -> PathBuf {
        self.run_dir.join(SHIM_LOG_FILE)
    }
}

/// How the service process ended, as recorded by its shim in `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceExit {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the instance's cgroup during its life
    /// (see [`crate::cgroup::CgroupPlacement::oom_killed`]).
    pub oom_killed: bool,
    /// When the shim reaped it, in milliseconds since the Unix epoch.
    pub exited_at_unix_ms: u64,
}

impl InstanceExit {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }
}

impl fmt::Display for InstanceExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            _ if self.oom_killed => write!(f, "oom-killed"),
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => {
                write!(f, "killed by signal {signal} ({})", signal_name(signal))
            }
            (None, None) => write!(f, "ended for an unknown reason"),
        }
    }
}

/// `SIGTERM`-style name of a signal number, for messages.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// What `verify` found at the handle's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessState {
    /// The very process that was started is alive.
    Running,
    /// No process has that pid any more (or only its zombie, waiting for the shim to reap it).
    Gone,
    /// Another process now has that pid (its start time differs): the instance is gone.
    PidReused,
}

/// How `stop` ended an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "exit", rename_all = "kebab-case")]
pub enum StopOutcome {
    /// It ended within the timeout after SIGTERM.
    Terminated(Option<InstanceExit>),
    /// It ignored SIGTERM for the whole timeout and was SIGKILLed.
    Killed(Option<InstanceExit>),
    /// It was not running when `stop` was called.
    AlreadyGone(Option<InstanceExit>),
}

impl StopOutcome {
    /// The recorded exit, when the shim was alive to record it.
    pub fn exit(&self) -> Option<&InstanceExit> {
        match self {
            StopOutcome::Terminated(exit)
            | StopOutcome::Killed(exit)
            | StopOutcome::AlreadyGone(exit) => exit.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, oom_killed: bool) -> InstanceExit {
        InstanceExit {
            code,
            signal,
            oom_killed,
            exited_at_unix_ms: 0,
        }
    }

    #[test]
    fn exits_describe_themselves() {
        assert_eq!(exit(Some(3), None, false).to_string(), "exited with code 3");
        assert_eq!(
            exit(None, Some(9), false).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(exit(None, Some(9), true).to_string(), "oom-killed");
        assert_eq!(
            exit(None, Some(64), false).to_string(),
            "killed by signal 64 (signal 64)"
        );
        assert!(exit(Some(0), None, false).success());
        assert!(!exit(Some(0), None, true).success());
    }

    #[test]
    fn stop_outcomes_serialize_with_a_tag() {
        let outcome = StopOutcome::Killed(Some(exit(None, Some(9), false)));
        let json = serde_json::to_string(&outcome).unwrap();
        assert!(
            json.starts_with("{\"outcome\":\"killed\",\"exit\":{"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<StopOutcome>(&json).unwrap(), outcome);
        assert_eq!(outcome.exit().unwrap().signal, Some(9));
    }
}
