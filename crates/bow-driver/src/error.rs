//! The one error type of the driver: every way starting, stopping or inspecting an instance fails.

use std::path::PathBuf;

/// What went wrong, worded for the operator who reads it in `bow status` or `bow up`.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),

    #[error(
        "command not found: {command} (searched PATH={path}); install it or use an absolute path"
    )]
    CommandNotFound { command: String, path: String },

    #[error(
        "permission denied: {command} cannot be executed by {user}; check its mode and every directory above it"
    )]
    PermissionDenied { command: String, user: String },

    #[error("working directory {} does not exist; create it or fix `dir`", dir.display())]
    WorkingDirMissing { dir: PathBuf },

    #[error("working directory {} is not a directory", dir.display())]
    WorkingDirNotADirectory { dir: PathBuf },

    #[error("could not execute {command}: {message}")]
    ExecFailed { command: String, message: String },

    #[error("could not create system user {user}: {message}")]
    UserCreation { user: String, message: String },

    #[error("could not look up user {user}: {message}")]
    UserLookup { user: String, message: String },

    #[error("cannot enforce resource limits: {0}; run bow as root or remove `resources`")]
    CgroupUnavailable(String),

    #[error("cgroup {}: {message}", path.display())]
    Cgroup { path: PathBuf, message: String },

    #[error("instance {instance} is already running (pid {pid}); stop it before starting it again")]
    AlreadyRunning { instance: String, pid: i32 },

    #[error("shim for {instance} failed: {message}; see {}", log.display())]
    Shim {
        instance: String,
        message: String,
        log: PathBuf,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The container engine refused or could not be reached (its message, with what was
    /// asked of it).
    #[error("{0}")]
    Engine(String),

    #[error("{}: malformed state file: {message}", path.display())]
    StateFile { path: PathBuf, message: String },
}

impl DriverError {
    /// Wraps an I/O error with what was being done, e.g. `reading /run/x/state.json`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> DriverError {
        DriverError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;
