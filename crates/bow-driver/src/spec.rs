//! What the caller asks for: one instance of a service, as plain data ([`InstanceSpec`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};

/// `PATH` given to a service whose spec does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `LANG` given to a service whose spec does not set one.
pub const DEFAULT_LANG: &str = "C.UTF-8";
/// Cgroup directory (under each hierarchy's mount) that holds every bow project.
pub const DEFAULT_CGROUP_PARENT: &str = "bow";

/// One instance of a service, everything the driver needs to run it.
///
/// The environment is exactly `env` plus defaults for variables it lacks (see
/// [`InstanceSpec::effective_env`]); nothing is inherited from the agent. The agent adds
/// `PORT`, `BOW_SERVICE` and `BOW_INSTANCE` itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Project name (`[a-z0-9-]`), part of the cgroup path.
    pub project: String,
    pub service: String,
    /// Replica number within the service.
    pub index: u32,
    /// Unique among the instances of a project that may run at the same time; names the run
    /// dir, the cgroup and the log files. [`InstanceSpec::new`] sets `<service>.<index>`; a
    /// rolling deploy that overlaps old and new instances gives the new one another id.
    pub instance_id: String,
    /// The caller's release number of what runs (0: none), kept in the handle so that an
    /// instance found after an agent restart can be matched to the release that started it.
    #[serde(default)]
    pub release: u64,
    /// Program and arguments; see [`crate::command_to_argv`] for turning a command string into it.
    pub argv: Vec<String>,
    pub working_dir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Unix user to run as; only honoured when the driver runs as root (created when missing).
    /// `None` as root runs the service as root. The caller picks the default name
    /// ([`crate::default_service_user`]).
    pub user: Option<String>,
    pub resources: Resources,
    /// Base run directory; the instance's files go in `<run_dir>/<instance_id>/`.
    pub run_dir: PathBuf,
    /// Directory of the captured output: `<log_dir>/<instance_id>.log` and its rotations.
    pub log_dir: PathBuf,
    pub log_rotation: LogRotation,
    /// How long `stop` waits after SIGTERM before SIGKILL (the caller passes it to `stop`).
    pub stop_timeout: Duration,
    /// Cgroup directory under each hierarchy's mount point, normally [`DEFAULT_CGROUP_PARENT`].
    pub cgroup_parent: String,
    /// A file the service sees as `/etc/hosts` (service discovery names): the service starts
    /// in its own mount namespace where this file is bind-mounted, read-only, over
    /// `/etc/hosts`. Only honoured when the driver runs as root. Rewrite the file in place
    /// (never replace it) and running instances see the new content.
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// Secrets delivered as files in the instance's secrets dir (see [`crate::secret_files`]);
    /// `BOW_SECRETS_DIR` names it. Empty: no dir, no variable.
    #[serde(default)]
    pub secrets: Vec<crate::SecretFile>,
    /// How the instance is confined (see [`crate::sandbox`]); `None`: not at all.
    #[serde(default)]
    pub sandbox: Option<crate::sandbox::SandboxSpec>,
    /// A signal `stop` sends to the service process alone, instead of SIGTERM to its whole
    /// group: for programs that stop their own children in order (PostgreSQL's postmaster
    /// does a fast shutdown with a checkpoint on SIGINT). `None`: SIGTERM to the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
    /// Run as a container (the container driver), not as a process: the image and what
    /// replaces `argv` and `working_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
}

/// What a container instance runs and how it is wired (the container driver's part of an
/// [`InstanceSpec`]; `argv` and `working_dir` are not used for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image reference, as the engine knows it.
    pub image: String,
    /// Replaces the image's CMD (`None`: the image's).
    pub command: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT (`None`: the image's).
    pub entrypoint: Option<Vec<String>>,
    /// The port the program listens on inside the container.
    pub container_port: u16,
    /// The port on 127.0.0.1 of the host that reaches `container_port` (the edge, health
    /// checks and discovery connect to it).
    pub host_port: u16,
    /// The working directory inside the container (`None`: the image's).
    pub working_dir: Option<String>,
    /// `user[:group]` inside the container (`None`: the image's).
    pub user: Option<String>,
    /// Volumes and bind mounts.
    pub mounts: Vec<ContainerMount>,
    /// The engine network the container joins.
    pub network: String,
    /// Credentials to pull the image with, when its registry needs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_auth: Option<PullAuth>,
}

/// A registry login for pulling an image (the password from a bow secret; never shown).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullAuth {
    /// The registry host (`ghcr.io`).
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PullAuth({}@{}, password hidden)",
            self.username, self.server
        )
    }
}

/// One mount of a container: a named volume of the engine or a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMount {
    /// A volume name (`named: true`) or an absolute host path.
    pub source: String,
    pub named: bool,
    pub target: String,
    pub read_only: bool,
}

/// Resource limits, enforced with cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Hard memory limit (and memory+swap limit where the kernel has one).
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in cores, e.g. `0.5`.
    pub cpu_cores: Option<f64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu_cores.is_none()
    }
}

/// Size-based rotation of the captured output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    /// The current file is rotated before a line would take it past this size.
    pub max_bytes: u64,
    /// How many rotated files (`.1` newest … `.N` oldest) are kept.
    pub keep: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_bytes: 10 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// How to run the shim: `program args... <instance_id>`.
///
/// The `bow` binary uses [`ShimCommand::current_exe`], i.e. `/proc/self/exe shim`, and
/// dispatches the hidden `shim` subcommand to [`crate::shim_main`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl ShimCommand {
    /// The running binary with the `shim` subcommand: `/proc/self/exe shim`. The path is
    /// kept literal, not resolved: exec'ing `/proc/self/exe` in the forked child runs the very
    /// binary the agent runs, even after an upgrade replaced or deleted it on disk. (The shim
    /// shows up in `ps` under the binary's own name.)
    pub fn current_exe() -> ShimCommand {
        ShimCommand {
            program: PathBuf::from("/proc/self/exe"),
            args: vec!["shim".into()],
        }
    }
}

impl InstanceSpec {
    /// A spec with the defaults: id `<service>.<index>`, working dir `/`, no env, no user,
    /// no limits, 10 MiB × 5 log files, 10 s stop timeout.
    pub fn new(
        project: &str,
        service: &str,
        index: u32,
        argv: Vec<String>,
        run_dir: &Path,
        log_dir: &Path,
    ) -> InstanceSpec {
        InstanceSpec {
            project: project.to_string(),
            service: service.to_string(),
            index,
            instance_id: format!("{service}.{index}"),
            release: 0,
            argv,
            working_dir: PathBuf::from("/"),
            env: BTreeMap::new(),
            user: None,
            resources: Resources::default(),
            run_dir: run_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            log_rotation: LogRotation::default(),
            stop_timeout: Duration::from_secs(10),
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_string(),
            hosts_file: None,
            secrets: Vec::new(),
            sandbox: None,
            stop_signal: None,
            container: None,
        }
    }

    /// `<run_dir>/<instance_id>`: state, exit status and the shim's own log.
    pub fn instance_run_dir(&self) -> PathBuf {
        self.run_dir.join(&self.instance_id)
    }

    /// `<log_dir>/<instance_id>.log`, the file being written.
    pub fn log_path(&self) -> PathBuf {
        crate::logs::current_log_path(&self.log_dir, &self.instance_id)
    }

    /// Checks names, argv, env and limits; the first problem is returned.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(DriverError::InvalidSpec(message));
        for (field, value) in [("project", &self.project), ("service", &self.service)] {
            if !is_name(value, false) {
                return invalid(format!("{field} {value:?} must match [a-z0-9][a-z0-9_-]*"));
            }
        }
        if !is_name(&self.instance_id, true) {
            return invalid(format!(
                "instance_id {:?} must match [a-z0-9][a-z0-9._-]*",
                self.instance_id
            ));
        }
        if !is_name(&self.cgroup_parent, true) {
            return invalid(format!(
                "cgroup_parent {:?} must be one plain name",
                self.cgroup_parent
            ));
        }
        match self.argv.first() {
            None => return invalid("argv is empty; give a command".into()),
            Some(program) if program.is_empty() => return invalid("argv[0] is empty".into()),
            _ => {}
        }
        if self.argv.iter().any(|arg| arg.contains('\0')) {
            return invalid("argv contains a NUL byte".into());
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return invalid(format!("env {name:?} is not a valid variable"));
            }
        }
        if let Some(user) = &self.user
            && !crate::users::is_valid_user_name(user)
        {
            return invalid(format!(
                "user {user:?} must match [a-z_][a-z0-9_-]* and be at most 32 characters"
            ));
        }
        if let Some(secret) = self
            .secrets
            .iter()
            .find(|s| !crate::secret_files::is_valid_secret_name(&s.name))
        {
            return invalid(format!(
                "secret name {:?} must match [A-Za-z0-9_-]+",
                secret.name
            ));
        }
        if self.resources.memory_bytes == Some(0) {
            return invalid("resources.memory must be more than 0".into());
        }
        if let Some(cpu) = self.resources.cpu_cores
            && !(cpu.is_finite() && cpu >= 0.01)
        {
            return invalid(format!(
                "resources.cpu must be at least 0.01 cores, found {cpu}"
            ));
        }
        if self.log_rotation.max_bytes < 1024 {
            return invalid("log_rotation.max_bytes must be at least 1024".into());
        }
        for (field, dir) in [
            ("working_dir", &self.working_dir),
            ("run_dir", &self.run_dir),
            ("log_dir", &self.log_dir),
        ] {
            if !dir.is_absolute() {
                return invalid(format!(
                    "{field} {} must be an absolute path",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// The environment the service gets: `env`, plus `PATH` ([`DEFAULT_PATH`]), `LANG`
    /// ([`DEFAULT_LANG`]), and `HOME`, `USER`, `LOGNAME` of the user it runs as, each only
    /// when `env` does not set it.
    pub fn effective_env(&self, user_name: &str, user_home: &Path) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        let mut default = |name: &str, value: &str| {
            env.entry(name.to_string())
                .or_insert_with(|| value.to_string());
        };
        default("PATH", DEFAULT_PATH);
        default("LANG", DEFAULT_LANG);
        default("HOME", &user_home.to_string_lossy());
        default("USER", user_name);
        default("LOGNAME", user_name);
        env
    }
}

/// `[a-z0-9][a-z0-9_-]*`, with `.` also allowed when `allow_dot`; at most 64 characters.
fn is_name(value: &str, allow_dot: bool) -> bool {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && value.len() <= 64
        && chars.all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || c == '_'
                || (allow_dot && c == '.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec::new(
            "shop",
            "back",
            2,
            vec!["app".into()],
            Path::new("/run/x"),
            Path::new("/log"),
        )
    }

    #[test]
    fn new_names_the_instance_after_service_and_index() {
        let spec = spec();
        assert_eq!(spec.instance_id, "back.2");
        assert_eq!(spec.instance_run_dir(), Path::new("/run/x/back.2"));
        assert_eq!(spec.log_path(), Path::new("/log/back.2.log"));
        spec.validate().unwrap();
    }

    #[test]
    fn validate_rejects_what_would_break_paths_or_exec() {
        type BreakIt = fn(&mut InstanceSpec);
        let cases: Vec<(BreakIt, &str)> = vec![
            (|s| s.project = "Shop".into(), "project \"Shop\""),
            (|s| s.instance_id = "../x".into(), "instance_id \"../x\""),
            (|s| s.argv.clear(), "argv is empty"),
            (
                |s| {
                    s.env.insert("A=B".into(), "1".into());
                },
                "env \"A=B\"",
            ),
            (|s| s.user = Some("Root User".into()), "user \"Root User\""),
            (|s| s.resources.cpu_cores = Some(0.0), "resources.cpu"),
            (|s| s.resources.memory_bytes = Some(0), "resources.memory"),
            (
                |s| {
                    s.secrets.push(crate::SecretFile {
                        name: "../etc".into(),
                        value: b"x".to_vec(),
                    })
                },
                "secret name \"../etc\"",
            ),
            (|s| s.run_dir = "relative".into(), "run_dir relative"),
        ];
        for (break_it, expected) in cases {
            let mut spec = spec();
            break_it(&mut spec);
            let message = spec.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn effective_env_fills_only_missing_defaults() {
        let mut spec = spec();
        spec.env.insert("PATH".into(), "/opt/bin".into());
        spec.env.insert("DB_HOST".into(), "db".into());
        let env = spec.effective_env("bow-back", Path::new("/nonexistent"));
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["DB_HOST"], "db");
        assert_eq!(env["LANG"], DEFAULT_LANG);
        assert_eq!(env["HOME"], "/nonexistent");
        assert_eq!(env["USER"], "bow-back");
        assert_eq!(env["LOGNAME"], "bow-back");
        assert_eq!(env.len(), 6);
    }
}
