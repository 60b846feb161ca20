//! The crate's one error type.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, BackupError>;

#[derive(Debug, Error)]
pub enum BackupError {
    /// The destination could not be reached or refused an operation.
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    /// An object is not what its manifest says: changed, truncated or corrupted.
    #[error("{0}")]
    Integrity(String),
    /// Encryption or decryption failed.
    #[error("{0}")]
    Crypt(String),
    /// A tool (pg_dump, pg_restore, initdb, ...) failed.
    #[error("{0}")]
    Tool(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl BackupError {
    pub fn store(what: impl Into<String>, source: object_store::Error) -> BackupError {
        BackupError::Store {
            what: what.into(),
            source,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> BackupError {
        BackupError::Io {
            what: what.into(),
            source,
        }
    }
}
