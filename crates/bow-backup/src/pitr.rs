//! Point-in-time recovery: base backups (pg_basebackup's tar stream, its WAL included), the
//! archived WAL, and a recovery to a moment in a scratch cluster.
//!
//! Archiving has two halves. The server's `archive_command` runs `bow backup wal-spool` as the
//! service's user: it copies the finished segment into the service's spool directory
//! (`<volume>/wal-spool`, fsynced, renamed into place) and succeeds; that user never holds the
//! store's credentials nor the age key. The agent (root, with the environment's secrets) then
//! pushes the spool — each segment zstd + age encrypted like every object — to
//! `<prefix>/<project>-<env>/<service>.wal/<segment>.zst.age` and deletes what was stored.
//!
//! A recovery untars a base backup into a scratch directory, fetches the archived segments
//! from the base's first one on (every timeline, with the timelines' history files), and
//! starts the server there with `restore_command` reading them and `recovery_target_time`;
//! once promoted, the database is moved into the live service by pg_dump | pg_restore in one
//! transaction ([`transfer`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::catalog::{Catalog, DATA, Manifest};
use crate::error::{BackupError, Result};
use crate::postgres::{GuardedStdin, Scratch, Server, collect_stderr, tail};
use crate::stream;

pub const KIND_BASE: &str = "postgres-base";
const WAL_SUFFIX: &str = ".zst.age";

/// Takes a base backup of `server`'s cluster into backup `manifest.id` and writes the
/// manifest (start/end LSN, timeline, first WAL segment). A failed run leaves nothing.
pub async fn base_backup(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    server: &Server,
    mut manifest: Manifest,
) -> Result<Manifest> {
    let began = Instant::now();
    manifest.started = crate::now_rfc3339();
    let result = base_into(catalog, recipients.clone(), server, &mut manifest).await;
    crate::postgres::finish(catalog, &recipients, manifest, began, result).await
}

async fn base_into(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    server: &Server,
    manifest: &mut Manifest,
) -> Result<()> {
    // Rows as the backup starts: a base backup is not one snapshot, so these are what the
    // database held then, for the operator, not a check.
    manifest.row_counts = server.row_counts()?;
    let mut child = server
        .command("pg_basebackup")
        .args([
            "--pgdata=-",
            "--format=tar",
            "--wal-method=fetch",
            "--checkpoint=fast",
            "--verbose",
            "--no-password",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::io("cannot run pg_basebackup", e))?;
    let stderr = collect_stderr(&mut child);
    let stdout = child.stdout.take().expect("piped");
    let uploaded = stream::upload(
        catalog.store.clone(),
        &catalog.path(&manifest.id, DATA),
        recipients,
        stdout,
    )
    .await;
    if uploaded.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| BackupError::io("pg_basebackup", e))?;
    let stderr = stderr.join().unwrap_or_default();
    let mut record = uploaded?;
    if !status.success() {
        return Err(BackupError::Tool(format!(
            "pg_basebackup failed ({status}): {}",
            tail(&stderr)
        )));
    }
    let (start, timeline, end) =
        parse_points(&String::from_utf8_lossy(&stderr)).ok_or_else(|| {
            BackupError::Tool(format!(
                "pg_basebackup did not say where its WAL starts and ends: {}",
                tail(&stderr)
            ))
        })?;
    let wal = server.psql(&format!("SELECT pg_walfile_name('{start}')"))?;
    let wal = wal.trim();
    // pg_walfile_name names the segment on the server's current timeline: the backup's.
    manifest.start_wal = Some(format!("{timeline:08X}{}", &wal[8.min(wal.len())..]));
    let system = server.psql("SELECT system_identifier FROM pg_control_system()")?;
    manifest.system_id =
        Some(system.trim().parse().map_err(|_| {
            BackupError::Tool(format!("not a system identifier: {:?}", system.trim()))
        })?);
    manifest.start_lsn = Some(start);
    manifest.end_lsn = Some(end);
    manifest.timeline = Some(timeline);
    record.name = DATA.to_string();
    manifest.objects = vec![record];
    manifest.database = Some(server.database.clone());
    Ok(())
}

/// pg_basebackup --verbose's `write-ahead log start point: 0/2000028 on timeline 1` and
/// `write-ahead log end point: 0/2000100`.
fn parse_points(stderr: &str) -> Option<(String, u32, String)> {
    let after = |marker: &str| {
        stderr.lines().find_map(|l| {
            l.split_once(marker)
                .map(|(_, rest)| rest.trim().to_string())
        })
    };
    let start = after("write-ahead log start point:")?;
    let (lsn, timeline) = start.split_once(" on timeline ")?;
    let end = after("write-ahead log end point:")?;
    Some((
        lsn.trim().to_string(),
        timeline.trim().parse().ok()?,
        end.split_whitespace().next()?.to_string(),
    ))
}

/// `archive_command`'s half: copies the finished WAL segment `source` to `destination` (in
/// the spool), fsynced and renamed into place. A segment already spooled with the same bytes
/// is fine (postgres retries after a crash); different bytes are refused, never overwritten.
pub fn spool_segment(source: &Path, destination: &Path) -> Result<()> {
    let io = |what: &str, e| BackupError::io(format!("{what} {}", destination.display()), e);
    let bytes = std::fs::read(source)
        .map_err(|e| BackupError::io(format!("cannot read {}", source.display()), e))?;
    if destination.exists() {
        let there = std::fs::read(destination).map_err(|e| io("cannot read", e))?;
        if there == bytes {
            return Ok(());
        }
        return Err(BackupError::Integrity(format!(
            "{} is spooled already with other contents: not overwritten",
            destination.display()
        )));
    }
    let temporary = PathBuf::from(format!("{}.tmp", destination.display()));
    let mut file = std::fs::File::create(&temporary).map_err(|e| io("cannot create", e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("cannot write", e))?;
    std::fs::rename(&temporary, destination).map_err(|e| io("cannot rename into", e))?;
    if let Some(dir) = destination.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync the directory of", e))?;
    }
    Ok(())
}

/// The system identifier of the cluster in data directory `data` (the first field of
/// `global/pg_control`, in the host's byte order).
pub fn system_id(data: &Path) -> Result<u64> {
    let control = data.join("global/pg_control");
    let mut bytes = [0u8; 8];
    std::fs::File::open(&control)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| BackupError::io(format!("cannot read {}", control.display()), e))?;
    Ok(u64::from_ne_bytes(bytes))
}

/// The segments waiting in `spool`, oldest first (a `.tmp` is a copy in progress).
pub fn spooled(spool: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "tmp"))
        .collect();
    files.sort();
    files
}

/// The agent's half: stores every spooled segment (encrypted) and deletes each once stored.
/// Returns how many were stored; stops at the first failure (they wait in the spool). One
/// pusher at a time (the agent's thread and a restore's own push): an exclusive lock on
/// `<spool>.lock`.
pub async fn push_spool(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    spool: &Path,
    system: u64,
) -> Result<usize> {
    let lock_path = PathBuf::from(format!("{}.lock", spool.display()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| BackupError::io(format!("cannot open {}", lock_path.display()), e))?;
    let lock = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this closure owns; released when it closes.
        match unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } {
            0 => Ok(lock),
            _ => Err(std::io::Error::last_os_error()),
        }
    })
    .await
    .map_err(|e| BackupError::Tool(e.to_string()))?
    .map_err(|e| BackupError::io(format!("cannot lock {}", lock_path.display()), e))?;
    let mut pushed = 0;
    for file in spooled(spool) {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let path = catalog
            .wal_root(system)
            .join(format!("{name}{WAL_SUFFIX}").as_str());
        let source = match std::fs::File::open(&file) {
            Ok(source) => source,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(BackupError::io(
                    format!("cannot read {}", file.display()),
                    e,
                ));
            }
        };
        stream::upload(catalog.store.clone(), &path, recipients.clone(), source).await?;
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BackupError::io(
                    format!("cannot remove {}", file.display()),
                    e,
                ));
            }
        }
        pushed += 1;
    }
    drop(lock);
    Ok(pushed)
}

/// The archived WAL: (file name, path) of every segment and history file, sorted.
pub async fn archived(
    catalog: &Catalog,
    system: u64,
) -> Result<Vec<(String, object_store::path::Path)>> {
    let root = catalog.wal_root(system);
    let objects: Vec<_> = catalog
        .store
        .list(Some(&root))
        .try_collect()
        .await
        .map_err(|e| BackupError::store(format!("cannot list {root}"), e))?;
    let mut names: Vec<(String, object_store::path::Path)> = objects
        .into_iter()
        .filter_map(|o| {
            let name = o.location.filename()?.strip_suffix(WAL_SUFFIX)?.to_string();
            Some((name, o.location))
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Whether `name` is a WAL segment at or after `start`'s position (any timeline).
fn needed(name: &str, start: &str) -> bool {
    let segment = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
    segment && start.len() == 24 && name[8..] >= start[8..]
}

/// Deletes archived segments before `oldest_start` (the oldest kept base backup's first
/// segment): no kept base backup can replay them. History files stay. Returns how many went.
pub async fn prune_wal(catalog: &Catalog, system: u64, oldest_start: &str) -> Result<usize> {
    let mut deleted = 0;
    for (name, path) in archived(catalog, system).await? {
        let segment = name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit());
        if segment && !needed(&name, oldest_start) {
            catalog
                .store
                .delete(&path)
                .await
                .map_err(|e| BackupError::store(format!("cannot delete {path}"), e))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A point to recover to: `None` replays every archived segment.
pub struct Recovery<'a> {
    pub bin: &'a Path,
    /// The scratch directory (created; removed when the returned cluster drops).
    pub dir: &'a Path,
    pub superuser: &'a str,
    pub ids: Option<(u32, u32)>,
    /// RFC 3339, UTC: `recovery_target_time`.
    pub to: Option<&'a str>,
    /// Fetch the archived WAL (a point-in-time recovery); without, the base backup's own
    /// WAL only (the moment the backup ended: a restore drill).
    pub replay_archive: bool,
}

/// The base backup `manifest` untarred into `place.dir`, recovered (to `place.to`) and
/// promoted, running: the caller checks or copies out of it, then drops it.
pub async fn recover(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    place: Recovery<'_>,
) -> Result<Scratch> {
    if manifest.kind != KIND_BASE {
        return Err(BackupError::Invalid(format!(
            "backup {} is a {} backup: a point in time needs a base backup (`pitr: true` takes them)",
            manifest.id, manifest.kind
        )));
    }
    let record = manifest.object(DATA)?.clone();
    let data = place.dir.join("data");
    let wal = place.dir.join("wal");
    for dir in [place.dir, &data, &wal] {
        make_private(dir, place.ids)?;
    }
    let server = Server {
        bin: place.bin.to_path_buf(),
        sockets: place.dir.to_path_buf(),
        port: 5432,
        superuser: place.superuser.to_string(),
        ids: place.ids,
        database: manifest
            .database
            .clone()
            .unwrap_or_else(|| "postgres".into()),
    };
    untar(catalog, identity.clone(), manifest, record, &server, &data).await?;
    let mut settings: Vec<(&str, String)> = Vec::new();
    if place.replay_archive {
        let start = manifest.start_wal.clone().unwrap_or_default();
        let system = manifest.system_id.ok_or_else(|| {
            BackupError::Integrity(format!(
                "backup {}: no system identifier in its manifest",
                manifest.id
            ))
        })?;
        for (name, path) in archived(catalog, system).await? {
            if !(needed(&name, &start) || name.ends_with(".history")) {
                continue;
            }
            let file = wal.join(&name);
            let sink = std::fs::File::create(&file)
                .map_err(|e| BackupError::io(format!("cannot create {}", file.display()), e))?;
            stream::download_unrecorded(catalog.store.clone(), &path, identity.clone(), sink)
                .await?;
            if let Some((uid, gid)) = place.ids {
                std::os::unix::fs::chown(&file, Some(uid), Some(gid))
                    .map_err(|e| BackupError::io(format!("cannot chown {}", file.display()), e))?;
            }
        }
        let signal = data.join("recovery.signal");
        std::fs::write(&signal, b"")
            .map_err(|e| BackupError::io(format!("cannot write {}", signal.display()), e))?;
        settings.push((
            "restore_command",
            format!("cp \"{}/%f\" \"%p\"", wal.display()),
        ));
        settings.push(("recovery_target_action", "promote".into()));
        settings.push(("recovery_target_timeline", "latest".into()));
        if let Some(to) = place.to {
            settings.push(("recovery_target_time", to.to_string()));
        }
    }
    let dir = place.dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut scratch = Scratch::launch(server, &dir, &settings)?;
        let deadline = Instant::now() + Duration::from_secs(3600);
        while scratch.server.psql("SELECT pg_is_in_recovery()")?.trim() != "f" {
            scratch.alive(deadline)?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(scratch)
    })
    .await
    .map_err(|e| BackupError::Tool(e.to_string()))?
}

fn make_private(dir: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(|e| BackupError::io(format!("cannot create {}", dir.display()), e))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| BackupError::io(format!("cannot chown {}", dir.display()), e))?;
    }
    Ok(())
}

/// Streams the base backup's tar into `tar -x` in `data`, as the cluster's user.
async fn untar(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    record: crate::ObjectRecord,
    server: &Server,
    data: &Path,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("tar");
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(["-x", "-f", "-", "-C"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = server.ids {
        command.uid(uid).gid(gid);
    }
    let mut child = command
        .spawn()
        .map_err(|e| BackupError::io("cannot run tar", e))?;
    let stderr = collect_stderr(&mut child);
    let sink = GuardedStdin {
        stdin: child.stdin.take(),
        pid: child.id() as i32,
        clean: false,
    };
    let streamed = stream::download(
        catalog.store.clone(),
        &catalog.path(&manifest.id, DATA),
        identity,
        record,
        sink,
    )
    .await
    .map(|(n, mut sink)| {
        sink.clean = true;
        drop(sink);
        n
    });
    let status = child.wait().map_err(|e| BackupError::io("tar", e))?;
    let stderr = stderr.join().unwrap_or_default();
    streamed?;
    if !status.success() {
        return Err(BackupError::Tool(format!(
            "tar of base backup {} failed ({status}): {}",
            manifest.id,
            tail(&stderr)
        )));
    }
    Ok(())
}

/// Moves `from`'s database into `to`'s (same name): `pg_dump -Fc | pg_restore --clean
/// --if-exists --single-transaction`, owners and grants kept (the roles are the same: `from`
/// is a copy of the cluster). A dump that fails kills pg_restore before its input ends, so
/// the transaction rolls back and `to` is as it was.
pub fn transfer(from: &Server, to: &Server) -> Result<()> {
    let mut dump = from
        .command("pg_dump")
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--dbname={}", from.database))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::io("cannot run pg_dump", e))?;
    let dump_err = collect_stderr(&mut dump);
    crate::postgres::end_sessions(to)?;
    let mut restore = to
        .command("pg_restore")
        .args([
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
            "--clean",
            "--if-exists",
        ])
        .arg(format!("--dbname={}", to.database))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::io("cannot run pg_restore", e))?;
    let restore_err = collect_stderr(&mut restore);
    let mut sink = GuardedStdin {
        stdin: restore.stdin.take(),
        pid: restore.id() as i32,
        clean: false,
    };
    let mut source = dump.stdout.take().expect("piped");
    let mut buffer = vec![0u8; 1 << 20];
    let copied = loop {
        match source.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = sink.write_all(&buffer[..n]) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let dumped = dump.wait().map_err(|e| BackupError::io("pg_dump", e))?;
    if copied.is_ok() && dumped.success() {
        sink.clean = true;
    }
    drop(sink);
    let restored = restore
        .wait()
        .map_err(|e| BackupError::io("pg_restore", e))?;
    let (dump_err, restore_err) = (
        dump_err.join().unwrap_or_default(),
        restore_err.join().unwrap_or_default(),
    );
    if !dumped.success() {
        return Err(BackupError::Tool(format!(
            "pg_dump of the recovered copy failed ({dumped}), nothing was changed: {}",
            tail(&dump_err)
        )));
    }
    copied.map_err(|e| BackupError::io("copying the dump into pg_restore", e))?;
    if !restored.success() {
        return Err(BackupError::Tool(format!(
            "pg_restore failed ({restored}), nothing was changed: {}",
            tail(&restore_err)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basebackup_points_parse() {
        let stderr = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\npg_basebackup: checkpoint completed\npg_basebackup: write-ahead log start point: 0/2000028 on timeline 3\npg_basebackup: write-ahead log end point: 0/2000100\npg_basebackup: base backup completed\n";
        assert_eq!(
            parse_points(stderr),
            Some(("0/2000028".into(), 3, "0/2000100".into()))
        );
        assert_eq!(parse_points("pg_basebackup: error"), None);
    }

    #[test]
    fn segments_needed_from_the_start_on_any_timeline() {
        let start = "000000010000000000000005";
        assert!(needed("000000010000000000000005", start));
        assert!(needed("000000020000000000000007", start));
        assert!(!needed("000000010000000000000004", start));
        assert!(!needed("00000002.history", start));
        assert!(!needed("000000010000000000000005.00000028.backup", start));
    }

    #[test]
    fn spooling_is_idempotent_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("seg");
        std::fs::write(&source, b"wal bytes").unwrap();
        let spool = dir.path().join("000000010000000000000001");
        spool_segment(&source, &spool).unwrap();
        spool_segment(&source, &spool).unwrap();
        assert_eq!(std::fs::read(&spool).unwrap(), b"wal bytes");
        std::fs::write(&source, b"other bytes").unwrap();
        assert!(spool_segment(&source, &spool).is_err());
        assert_eq!(spooled(dir.path()).len(), 2);
    }
}
