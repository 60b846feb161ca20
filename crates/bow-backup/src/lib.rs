//! Backups: a service's data streamed through zstd and age into a directory or an
//! S3-compatible store, one manifest per backup, restore and verify drills, retention.
//!
//! The store never sees plaintext: every object (the data and the manifest) is compressed
//! then encrypted to the environment's age recipients on this host ([`stream`]). A backup is
//! complete once its manifest is written, last ([`catalog`]): an interrupted run leaves data
//! objects without a manifest, which `list` never calls complete and the next successful run
//! deletes. Memory stays flat whatever the size: data moves in 1 MiB chunks through bounded
//! channels and a multipart upload of 8 MiB parts. PostgreSQL's part (dump, restore, the
//! scratch cluster of a verify) is [`postgres`]; volumes' (a tar with a listing) is [`volume`]. See docs/backups.md.

pub mod catalog;
mod error;
pub mod pitr;
pub mod postgres;
pub mod retention;
pub mod store;
pub mod stream;
pub mod volume;

pub use catalog::{Catalog, Entry, Manifest, ObjectRecord, Verification};
pub use error::{BackupError, Result};
pub use store::{Destination, S3Credentials};

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A backup id from an RFC 3339 time: `20261206T161503.123Z` (sorts by time).
pub fn id_from_time(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

pub use age::x25519::{Identity, Recipient};

/// Parses age recipients (`age1…`).
pub fn recipients(texts: &[String]) -> Result<Vec<Recipient>> {
    texts
        .iter()
        .map(|text| {
            text.parse::<Recipient>()
                .map_err(|e| BackupError::Crypt(format!("{text}: not an age recipient: {e}")))
        })
        .collect()
}
