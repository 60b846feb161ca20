//! PostgreSQL's part: a logical backup (pg_dump's custom format, uncompressed: zstd does
//! that) taken in an exported snapshot whose row counts go into the manifest, a restore
//! through pg_restore in one transaction, and a verify drill that restores into a scratch
//! cluster (initdb in a private directory, unix socket only) and checks it with pg_amcheck
//! and the row counts.
//!
//! Every tool runs as the cluster's superuser (the service's unix user, over the unix socket
//! by `peer`) with a clean environment: no password is involved.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, DATA, MANIFEST, Manifest, Verification};
use crate::error::{BackupError, Result};
use crate::stream;

pub const KIND_LOGICAL: &str = "postgres-logical";

/// A server to back up from or restore into.
#[derive(Debug, Clone)]
pub struct Server {
    /// The version's binaries (`/usr/lib/postgresql/15/bin`).
    pub bin: PathBuf,
    /// The directory of its unix socket.
    pub sockets: PathBuf,
    pub port: u16,
    /// The superuser role, which is also the unix user the tools run as.
    pub superuser: String,
    /// The superuser's uid and gid when bow runs as root.
    pub ids: Option<(u32, u32)>,
    pub database: String,
}

impl Server {
    pub(crate) fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin.join(tool));
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("PGHOST", &self.sockets)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.superuser)
            .env("PGDATABASE", &self.database)
            .current_dir("/")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Runs `sql` with psql; its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let output = self
            .command("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-w",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| BackupError::io("cannot run psql", e))?;
        if !output.status.success() {
            return Err(BackupError::Tool(format!(
                "psql failed ({}): {}",
                output.status,
                tail(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Rows per table of the database, now.
    pub fn row_counts(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_counts(&self.psql(COUNT_ROWS)?))
    }
}

/// `schema.table|rows` for every ordinary table outside the system schemas.
const COUNT_ROWS: &str = "SELECT format('%I.%I', n.nspname, c.relname) || '|' || (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1;";

fn parse_counts(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| line.rsplit_once('|'))
        .filter_map(|(table, rows)| Some((table.to_string(), rows.trim().parse().ok()?)))
        .collect()
}

/// The last lines of a tool's stderr, for an error message.
pub fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// An open repeatable-read transaction whose snapshot pg_dump shares: the rows counted in it
/// are the rows dumped.
struct Snapshot {
    session: Child,
    id: String,
    row_counts: BTreeMap<String, u64>,
}

const END: &str = "__bow_snapshot_end__";

fn begin_snapshot(server: &Server) -> Result<Snapshot> {
    let mut session = server
        .command("psql")
        .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::io("cannot run psql", e))?;
    let script = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n{COUNT_ROWS}\n\\echo {END}\n"
    );
    let stdin = session.stdin.as_mut().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .and_then(|()| stdin.flush())
        .map_err(|e| BackupError::io("cannot talk to psql", e))?;
    let mut lines = Vec::new();
    let reader = BufReader::new(session.stdout.take().expect("piped"));
    for line in reader.lines() {
        let line = line.map_err(|e| BackupError::io("cannot read from psql", e))?;
        if line == END {
            break;
        }
        lines.push(line);
    }
    let Some(id) = lines.first().filter(|l| !l.is_empty()).cloned() else {
        let _ = session.kill();
        let output = session
            .wait_with_output()
            .map_err(|e| BackupError::io("psql", e))?;
        return Err(BackupError::Tool(format!(
            "cannot open a snapshot on {}: {}",
            server.database,
            tail(&output.stderr)
        )));
    };
    Ok(Snapshot {
        session,
        id,
        row_counts: parse_counts(&lines[1..].join("\n")),
    })
}

impl Snapshot {
    fn finish(mut self) {
        if let Some(mut stdin) = self.session.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        let _ = self.session.wait();
    }
}

/// Reads a child's stderr on a thread, so that a chatty tool never blocks on a full pipe.
pub(crate) fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    })
}

/// Dumps `server`'s database into backup `manifest.id` of `catalog` and writes the manifest.
/// On any failure the objects written so far are deleted: a failed run leaves nothing.
pub async fn backup(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    server: &Server,
    mut manifest: Manifest,
) -> Result<Manifest> {
    let began = Instant::now();
    manifest.started = crate::now_rfc3339();
    let result = dump_into(catalog, recipients.clone(), server, &mut manifest).await;
    finish(catalog, &recipients, manifest, began, result).await
}

/// Ends a run: on success the manifest (its finish time and duration) is written last, so a
/// backup without one was never complete; on any failure what was written is deleted.
pub(crate) async fn finish(
    catalog: &Catalog,
    recipients: &Arc<Vec<age::x25519::Recipient>>,
    mut manifest: Manifest,
    began: Instant,
    result: Result<()>,
) -> Result<Manifest> {
    let result = match result {
        Ok(()) => {
            manifest.finished = crate::now_rfc3339();
            manifest.duration_ms = began.elapsed().as_millis() as u64;
            catalog
                .write(&manifest.id, MANIFEST, &manifest, recipients)
                .await
        }
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        let _ = catalog.delete(&manifest.id).await;
        return Err(error);
    }
    Ok(manifest)
}

async fn dump_into(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    server: &Server,
    manifest: &mut Manifest,
) -> Result<()> {
    let owned = server.clone();
    let snapshot = tokio::task::spawn_blocking(move || begin_snapshot(&owned))
        .await
        .map_err(|e| BackupError::Tool(e.to_string()))??;
    let mut dump = server
        .command("pg_dump")
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={}", snapshot.id))
        .arg(format!("--dbname={}", server.database))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::io("cannot run pg_dump", e))?;
    let stderr = collect_stderr(&mut dump);
    let stdout = dump.stdout.take().expect("piped");
    let uploaded = stream::upload(
        catalog.store.clone(),
        &catalog.path(&manifest.id, DATA),
        recipients,
        stdout,
    )
    .await;
    if uploaded.is_err() {
        let _ = dump.kill();
    }
    let status = dump.wait().map_err(|e| BackupError::io("pg_dump", e))?;
    let stderr = stderr.join().unwrap_or_default();
    manifest.row_counts = snapshot.row_counts.clone();
    snapshot.finish();
    let mut record = uploaded?;
    if !status.success() {
        return Err(BackupError::Tool(format!(
            "pg_dump failed ({status}): {}",
            tail(&stderr)
        )));
    }
    if record.plain_size == 0 {
        return Err(BackupError::Tool(
            "pg_dump wrote nothing: an empty backup is a failed one".into(),
        ));
    }
    record.name = DATA.to_string();
    manifest.objects = vec![record];
    manifest.database = Some(server.database.clone());
    Ok(())
}

/// A child's stdin that kills the child before it closes unless the stream ended cleanly:
/// pg_restore must never see a clean end of a stream that failed its checks.
pub(crate) struct GuardedStdin {
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) pid: i32,
    pub(crate) clean: bool,
}

impl Write for GuardedStdin {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.stdin.as_mut().expect("open").write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.as_mut().expect("open").flush()
    }
}

impl Drop for GuardedStdin {
    fn drop(&mut self) {
        if !self.clean {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        self.stdin.take();
    }
}

/// Makes a child's stdin pipe hold 1 MiB instead of 64 KiB, so the writer and the tool
/// reading it switch less often (best effort: a kernel that refuses keeps the default).
pub(crate) fn enlarge_pipe(stdin: &ChildStdin) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a pipe descriptor this process owns; the result is only checked.
    unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
}

/// How a restore treats what is in the database already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The service's own database: its objects are dropped and recreated, owners kept.
    Live,
    /// A fresh scratch database: no owners or grants (the roles are not there).
    Scratch,
}

/// Ends every other session on `server`'s database (the app's pools reconnect and wait on
/// the restore's locks): an idle transaction must not hold a restore up.
pub(crate) fn end_sessions(server: &Server) -> Result<()> {
    server.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )?;
    Ok(())
}

/// Restores backup `manifest` into `server`'s database in one transaction. A stream that
/// fails its checks kills pg_restore before it ends, so the transaction rolls back.
pub async fn restore(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    server: &Server,
    into: Target,
) -> Result<()> {
    if manifest.kind != KIND_LOGICAL {
        return Err(BackupError::Invalid(format!(
            "backup {} is a {} backup; this bow restores {KIND_LOGICAL} ones",
            manifest.id, manifest.kind
        )));
    }
    let record = manifest.object(DATA)?.clone();
    if into == Target::Live {
        end_sessions(server)?;
    }
    let mut command = server.command("pg_restore");
    command.args(["--single-transaction", "--exit-on-error", "--no-password"]);
    match into {
        Target::Live => command.args(["--clean", "--if-exists"]),
        Target::Scratch => command.args(["--no-owner", "--no-privileges"]),
    };
    let mut child = command
        .arg(format!("--dbname={}", server.database))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackupError::io("cannot run pg_restore", e))?;
    let stderr = collect_stderr(&mut child);
    if let Some(stdin) = &child.stdin {
        enlarge_pipe(stdin);
    }
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
    .await;
    let streamed = streamed.map(|(n, mut sink)| {
        sink.clean = true;
        drop(sink);
        n
    });
    let status = child.wait().map_err(|e| BackupError::io("pg_restore", e))?;
    let stderr = stderr.join().unwrap_or_default();
    streamed?;
    if !status.success() {
        return Err(BackupError::Tool(format!(
            "pg_restore failed ({status}), nothing was changed: {}",
            tail(&stderr)
        )));
    }
    Ok(())
}

/// A temporary cluster in a private directory: unix socket only, no TCP port, removed on drop.
pub struct Scratch {
    pub server: Server,
    dir: PathBuf,
    postmaster: Child,
}

impl Scratch {
    /// initdb + start in `dir` (created; it must not exist), database `database` created.
    pub fn start(
        bin: &Path,
        dir: &Path,
        superuser: &str,
        ids: Option<(u32, u32)>,
        database: &str,
    ) -> Result<Scratch> {
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
        let server = Server {
            bin: bin.to_path_buf(),
            sockets: dir.to_path_buf(),
            port: 5432,
            superuser: superuser.to_string(),
            ids,
            database: "postgres".to_string(),
        };
        let data = dir.join("data");
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--username={superuser}"))
            .output()
            .map_err(|e| BackupError::io("cannot run initdb", e))?;
        if !output.status.success() {
            return Err(BackupError::Tool(format!(
                "initdb of the scratch cluster failed: {}",
                tail(&output.stderr)
            )));
        }
        let mut scratch = Scratch::launch(server, dir, &[])?;
        let quoted = database.replace('"', "\"\"");
        scratch
            .server
            .psql(&format!("CREATE DATABASE \"{quoted}\""))?;
        scratch.server.database = database.to_string();
        Ok(scratch)
    }

    /// Starts the server of `<dir>/data` as a scratch one: a unix socket in `dir` only, no
    /// TCP, no fsync, no WAL archiving, `settings` (name, value) on top; waits until it takes
    /// connections.
    pub(crate) fn launch(
        server: Server,
        dir: &Path,
        settings: &[(&str, String)],
    ) -> Result<Scratch> {
        use std::os::unix::process::CommandExt;
        let data = dir.join("data");
        let log = std::fs::File::create(dir.join("server.log"))
            .map_err(|e| BackupError::io("scratch server log", e))?;
        if let Some((uid, gid)) = server.ids {
            let _ = std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid));
        }
        let mut postmaster = server.command("postgres");
        postmaster
            .arg("-D")
            .arg(&data)
            .args(["-p", "5432", "-k"])
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "archive_mode=off",
                "-c",
                "synchronous_standby_names=",
            ]);
        for (name, value) in settings {
            postmaster.arg("-c").arg(format!("{name}={value}"));
        }
        postmaster
            .stdout(log.try_clone().map_err(|e| BackupError::io("log", e))?)
            .stderr(log)
            .process_group(0);
        let postmaster = postmaster
            .spawn()
            .map_err(|e| BackupError::io("cannot start the scratch server", e))?;
        let mut scratch = Scratch {
            server,
            dir: dir.to_path_buf(),
            postmaster,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while scratch.server.psql("SELECT 1").is_err() {
            scratch.alive(deadline)?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(scratch)
    }

    /// `Err` with the server log's last lines when the server exited or `deadline` passed.
    pub(crate) fn alive(&mut self, deadline: Instant) -> Result<()> {
        let exited = self.postmaster.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            let log = std::fs::read(self.dir.join("server.log")).unwrap_or_default();
            return Err(BackupError::Tool(format!(
                "the scratch server {}: {}",
                if exited {
                    "stopped"
                } else {
                    "did not get ready in time"
                },
                tail(&log)
            )));
        }
        Ok(())
    }

    /// pg_amcheck over every table and index of the database (btree structure, heap pages).
    pub fn amcheck(&self) -> Result<()> {
        let output = self
            .server
            .command("pg_amcheck")
            .args(["--install-missing", "--no-password", "--heapallindexed"])
            .arg(format!("--database={}", self.server.database))
            .output()
            .map_err(|e| BackupError::io("cannot run pg_amcheck", e))?;
        if !output.status.success() {
            let mut text = output.stdout.clone();
            text.extend_from_slice(&output.stderr);
            return Err(BackupError::Integrity(format!(
                "pg_amcheck found problems: {}",
                tail(&text)
            )));
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not reaped yet. SIGINT: fast shutdown.
        unsafe { libc::kill(self.postmaster.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.postmaster.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.postmaster.kill();
        let _ = self.postmaster.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where and how a restore drill runs.
pub struct Drill<'a> {
    /// The postgres binaries of the backup's version.
    pub bin: &'a Path,
    /// The scratch cluster's directory (created, then deleted).
    pub dir: &'a Path,
    /// The unix user (and superuser role) the scratch cluster runs as.
    pub superuser: &'a str,
    pub ids: Option<(u32, u32)>,
    /// `backup.check`: SQL that must return true in the restored database.
    pub check: Option<&'a str>,
}

/// A restore drill: the backup into a scratch cluster, pg_amcheck, the row counts against the
/// manifest's, `backup.check`. `Ok` holds the verdict; `Err` only when the drill could not be
/// run (no binaries, no space).
pub async fn verify(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    place: Drill<'_>,
) -> Result<Verification> {
    let Drill {
        bin,
        dir: scratch_dir,
        superuser,
        ids,
        check,
    } = place;
    let began = Instant::now();
    let at = crate::now_rfc3339();
    let database = manifest
        .database
        .clone()
        .unwrap_or_else(|| "postgres".into());
    let (bin, dir, user) = (
        bin.to_path_buf(),
        scratch_dir.to_path_buf(),
        superuser.to_string(),
    );
    let scratch =
        tokio::task::spawn_blocking(move || Scratch::start(&bin, &dir, &user, ids, &database))
            .await
            .map_err(|e| BackupError::Tool(e.to_string()))??;
    let verdict = drill(catalog, identity, manifest, &scratch, check).await;
    tokio::task::spawn_blocking(move || drop(scratch))
        .await
        .map_err(|e| BackupError::Tool(e.to_string()))?;
    let (ok, message) = match verdict {
        Ok(message) => (true, message),
        Err(error) => (false, error.to_string()),
    };
    Ok(Verification {
        at,
        ok,
        message,
        duration_ms: began.elapsed().as_millis() as u64,
    })
}

async fn drill(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    scratch: &Scratch,
    check: Option<&str>,
) -> Result<String> {
    restore(
        catalog,
        identity,
        manifest,
        &scratch.server,
        Target::Scratch,
    )
    .await?;
    scratch.amcheck()?;
    let counts = scratch.server.row_counts()?;
    if counts != manifest.row_counts {
        let differ: Vec<String> = manifest
            .row_counts
            .iter()
            .filter(|(t, n)| counts.get(*t) != Some(n))
            .map(|(t, n)| {
                format!(
                    "{t}: {n} backed up, {} restored",
                    counts.get(t).copied().unwrap_or(0)
                )
            })
            .collect();
        return Err(BackupError::Integrity(format!(
            "row counts differ: {}",
            differ.join(", ")
        )));
    }
    if let Some(sql) = check {
        let answer = scratch.server.psql(sql)?;
        if answer.trim() != "t" {
            return Err(BackupError::Integrity(format!(
                "backup.check returned {:?}, not true: {sql}",
                answer.trim()
            )));
        }
    }
    let rows: u64 = counts.values().sum();
    Ok(format!(
        "restored into a scratch cluster; pg_amcheck clean; {} tables, {rows} rows as backed up{}",
        counts.len(),
        if check.is_some() {
            "; backup.check true"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_parse() {
        let counts = super::parse_counts("public.items|2\npublic.\"a|b\"|7\n\n");
        assert_eq!(counts["public.items"], 2);
        assert_eq!(counts["public.\"a|b\""], 7);
    }
}
