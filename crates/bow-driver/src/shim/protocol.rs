//! What the driver sends the shim on stdin (one JSON [`ShimConfig`]) and the one JSON line the
//! shim answers on stdout ([`ShimReply`]), plus the exit record it leaves in `exit.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupPlacement;
use crate::error::DriverError;
use crate::handle::{InstanceExit, InstanceHandle};
use crate::spec::LogRotation;

/// Everything the shim needs, fully resolved by the driver (user ids, cgroup, environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    pub project: String,
    pub service: String,
    pub index: u32,
    pub instance_id: String,
    #[serde(default)]
    pub release: u64,
    pub argv: Vec<String>,
    pub working_dir: PathBuf,
    /// The complete environment of the service.
    pub env: BTreeMap<String, String>,
    /// `<run_dir>/<instance_id>`, where `state.json` and `exit.json` go.
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub log_rotation: LogRotation,
    pub cgroup: Option<CgroupPlacement>,
    /// Join the cgroup before exec (the service has resource limits, which must hold from its
    /// first instruction). Otherwise the cgroup only tracks the instance's processes and the
    /// shim moves the service into it right after exec, off the restart's critical path
    /// (moving a task between cgroup v1 groups waits for an RCU grace period, ~5-10 ms).
    #[serde(default)]
    pub join_cgroup_before_exec: bool,
    /// The user the service runs as, and whether the child must switch to it.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub switch_user: bool,
    /// Bind-mounted over `/etc/hosts` in a mount namespace of the service's own.
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// Where the secret files go (`None`: the service has no secrets).
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// The secrets to write there; their values are also redacted from the captured output.
    #[serde(default)]
    pub secrets: Vec<crate::SecretFile>,
    /// How the service is confined; `None`: not at all.
    #[serde(default)]
    pub sandbox: Option<crate::sandbox::SandboxSpec>,
    /// [`crate::InstanceSpec::stop_signal`], recorded in the handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
}

/// The shim's answer: the service was exec'd, or why it could not be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShimReply {
    Started(Box<InstanceHandle>),
    Failed(StartFailure),
}

/// Why the service could not be exec'd, precise enough for the operator to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum StartFailure {
    CommandNotFound {
        command: String,
        path: String,
    },
    PermissionDenied {
        command: String,
        user: String,
    },
    WorkingDirMissing {
        dir: PathBuf,
    },
    WorkingDirNotADirectory {
        dir: PathBuf,
    },
    ExecFailed {
        command: String,
        message: String,
    },
    /// The shim itself failed (bad config, log file not writable, ...).
    Shim {
        message: String,
    },
}

impl StartFailure {
    /// The driver's error for this failure; `instance` and `log` name the shim's log.
    pub fn into_error(self, instance: &str, log: PathBuf) -> DriverError {
        match self {
            StartFailure::CommandNotFound { command, path } => {
                DriverError::CommandNotFound { command, path }
            }
            StartFailure::PermissionDenied { command, user } => {
                DriverError::PermissionDenied { command, user }
            }
            StartFailure::WorkingDirMissing { dir } => DriverError::WorkingDirMissing { dir },
            StartFailure::WorkingDirNotADirectory { dir } => {
                DriverError::WorkingDirNotADirectory { dir }
            }
            StartFailure::ExecFailed { command, message } => {
                DriverError::ExecFailed { command, message }
            }
            StartFailure::Shim { message } => DriverError::Shim {
                instance: instance.to_string(),
                message,
                log,
            },
        }
    }
}

/// `exit.json`: the exit of one particular process (pid and start time identify it, so an
/// old file is never taken for a newer run's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub pid: i32,
    pub start_time: u64,
    #[serde(flatten)]
    pub exit: InstanceExit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_become_precise_driver_errors() {
        let error = StartFailure::CommandNotFound {
            command: "foo".into(),
            path: "/bin".into(),
        }
        .into_error("web.0", "/run/web.0/shim.log".into());
        assert_eq!(
            error.to_string(),
            "command not found: foo (searched PATH=/bin); install it or use an absolute path"
        );
        let error =
            StartFailure::WorkingDirMissing { dir: "/x".into() }.into_error("web.0", "/l".into());
        assert_eq!(
            error.to_string(),
            "working directory /x does not exist; create it or fix `dir`"
        );
    }

    #[test]
    fn replies_round_trip_as_one_json_line() {
        let reply = ShimReply::Failed(StartFailure::ExecFailed {
            command: "a".into(),
            message: "b".into(),
        });
        let line = serde_json::to_string(&reply).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<ShimReply>(&line).unwrap(), reply);
    }
}
