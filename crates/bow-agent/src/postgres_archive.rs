//! WAL archiving of a postgres service with `backup: {pitr: true}` (docs/backups.md): the
//! settings bow adds to the server's `bow.conf`, and the spool they fill.
//!
//! `archive_command` runs this very binary as the service's user, `bow backup wal-spool %p
//! <spool>/%f`: it copies each finished segment into `<volume>/wal-spool` (fsynced, renamed
//! into place) and returns. That user holds neither the store's credentials nor the age key:
//! the agent's WAL thread (`crates/bow/src/backup_schedule.rs`) encrypts and stores what is
//! spooled, as root, every few seconds. Every member of the service shares the spool; only
//! the primary archives (`archive_mode = on` is idle on a standby), so after a switchover the
//! new primary goes on archiving there, its new timeline's history file first.

use std::path::{Path, PathBuf};

use crate::postgres::{Cluster, make_dir, quote};

/// A segment is archived at the latest this long after its first write, busy or not.
pub const ARCHIVE_TIMEOUT_S: u32 = 60;

/// Where the server spools its finished WAL segments: `<volume>/wal-spool`.
pub fn spool_dir(volume: &Path) -> PathBuf {
    volume.join("wal-spool")
}

/// The binary `archive_command` runs, which the server's sandbox must show it.
pub(crate) fn archiver() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

/// The archiving lines of `bow.conf`; creates the spool (the service user's, 0700).
pub(crate) fn conf_lines(cluster: &Cluster) -> Result<String, String> {
    let spool = spool_dir(&cluster.volume);
    make_dir(&spool, 0o700, cluster.ids)?;
    let exe = archiver().ok_or("cannot tell where the bow binary is, for archive_command")?;
    let command = format!(
        "\"{}\" backup wal-spool \"%p\" \"{}/%f\"",
        exe.display(),
        spool.display()
    );
    Ok(format!(
        "# backup.pitr: every finished WAL segment to the spool, stored off-host by the agent\narchive_mode = on\narchive_timeout = {ARCHIVE_TIMEOUT_S}\narchive_command = {}\n",
        quote(&command)
    ))
}
