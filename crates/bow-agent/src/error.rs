//! The agent's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] bow_store::StoreError),
    #[error(transparent)]
    Driver(#[from] bow_driver::DriverError),
    #[error(
        "another agent already runs for this state dir (pid {pid}); talk to it with bow commands or stop it with `bow down`"
    )]
    AlreadyRunning { pid: String, path: PathBuf },
    #[error("agent protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
