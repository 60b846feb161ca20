//! What bow does to a running postgres service: waits until it answers, then (`bootstrap`,
//! after every start and every in-place change) reloads bow's conf files (`pg_reload_conf()`),
//! gives the role the secret's password (`ALTER ROLE`: open sessions stay), creates the
//! database and runs `init:` once; and checks its health with a real login and `SELECT 1`.
//!
//! Administration goes through `psql` as the superuser (the service's unix user) over the unix
//! socket, SQL on stdin; passwords go to the server only as SCRAM verifiers, and to `psql`
//! only in its environment (`PGPASSWORD`), never in an argv.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bow_spec::{Postgres, Service};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::postgres::{Cluster, tail};

/// How long a started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The record of `init:` in the data directory: which files ran, with their digests.
const INIT_RECORD: &str = "bow-init.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct InitRecord {
    ran_at_unix_ms: i64,
    files: Vec<InitFile>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct InitFile {
    path: String,
    sha256: String,
}

/// Runs `sql` through psql as the superuser on the unix socket of the server on `port`.
pub(crate) async fn admin(
    cluster: &Cluster,
    port: u16,
    database: &str,
    sql: &str,
) -> Result<String, String> {
    let mut child = cluster
        .tool("psql")
        .arg("-h")
        .arg(&cluster.sockets)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            &cluster.superuser,
            "-d",
            database,
        ])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .await
            .map_err(|e| format!("psql: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("psql: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(tail(&output.stderr))
    }
}

/// Waits until the server on `port` answers the superuser. The caller watches the process:
/// a server that exits ends the wait from outside.
async fn wait_ready(cluster: &Cluster, port: u16) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let error = match admin(cluster, port, "postgres", "SELECT 1;").await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the server did not accept connections within {} s: {error}",
                READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After every start and every in-place change of a running server: bow's conf files
/// written again and reloaded, the role with the secret's password (`ALTER ROLE`: open
/// sessions stay), the database owned by it, `init:` once. Returns what is worth an event:
/// init run or skipped, settings that wait for a restart (`pg_settings.pending_restart`).
///
/// A replica takes everything from its primary: only its files are written again (pointing at
/// `upstream`, the primary now) and reloaded.
pub(crate) async fn bootstrap(
    cluster: &Cluster,
    postgres: &Postgres,
    port: u16,
    password: &[u8],
    upstream: Option<&crate::postgres_replica::Upstream>,
) -> Result<Vec<String>, String> {
    wait_ready(cluster, port).await?;
    if crate::postgres_replica::is_replica(cluster) {
        if let Some(upstream) = upstream {
            crate::postgres_replica::follow(cluster, postgres, port, upstream).await?;
        }
        return Ok(Vec::new());
    }
    crate::postgres::write_conf(cluster, postgres, None)?;
    let (role, database) = (&postgres.user, &postgres.database);
    let sql = format!(
        "SELECT pg_reload_conf();\n\
         SELECT 'CREATE ROLE \"{role}\" LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec\n\
         ALTER ROLE \"{role}\" WITH LOGIN PASSWORD '{verifier}';\n\
         SELECT 'CREATE DATABASE \"{database}\" OWNER \"{role}\"' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec\n",
        verifier = scram_verifier(password)?
    );
    admin(cluster, port, "postgres", &sql)
        .await
        .map_err(|e| format!("setting up role {role} and database {database}: {e}"))?;
    admin(
        cluster,
        port,
        "postgres",
        &crate::postgres_replica::primary_slots_sql(postgres, cluster.member),
    )
    .await
    .map_err(|e| format!("replication slots: {e}"))?;
    let mut did = Vec::new();
    if let Some(init) = &postgres.init {
        did.extend(run_init(cluster, postgres, port, Path::new(init)).await?);
    }
    // The reload is asynchronous: the postmaster reads the files, then pg_settings shows it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pending = admin(
        cluster,
        port,
        "postgres",
        "SELECT string_agg(name, ', ' ORDER BY name) FROM pg_settings WHERE pending_restart;",
    )
    .await?;
    if !pending.is_empty() {
        did.push(format!(
            "settings waiting for a restart: {pending} (bow restart applies them)"
        ));
    }
    Ok(did)
}

/// The files `init` names: the file, or a directory's `*.sql` in name order.
fn init_files(init: &Path) -> Result<Vec<PathBuf>, String> {
    if !init.is_dir() {
        return Ok(vec![init.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(init)
        .map_err(|e| format!("init {}: {e}", init.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "sql") && path.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("init {}: no *.sql file in it", init.display()));
    }
    Ok(files)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `init:` once: each file in one transaction as the application role, then the record.
/// A failed file leaves no record (its transaction rolled back), so the next start tries again.
async fn run_init(
    cluster: &Cluster,
    postgres: &Postgres,
    port: u16,
    init: &Path,
) -> Result<Vec<String>, String> {
    let record_path = cluster.data.join(INIT_RECORD);
    let files = init_files(init)?;
    let mut record = InitRecord {
        ran_at_unix_ms: crate::agent::now_ms(),
        files: Vec::new(),
    };
    let mut contents = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("init {}: {e}", file.display()))?;
        record.files.push(InitFile {
            path: file.display().to_string(),
            sha256: hex(&Sha256::digest(text.as_bytes())),
        });
        contents.push(text);
    }
    if let Ok(text) = std::fs::read_to_string(&record_path) {
        let ran: InitRecord =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", record_path.display()))?;
        let digests = |r: &InitRecord| r.files.iter().map(|f| f.sha256.clone()).collect::<Vec<_>>();
        return Ok(if digests(&ran) == digests(&record) {
            Vec::new()
        } else {
            vec![format!(
                "init SQL changed since it ran (recorded in {}): it runs once and is not run again; apply changes with migrations",
                record_path.display()
            )]
        });
    }
    for (file, text) in files.iter().zip(&contents) {
        let sql = format!(
            "BEGIN;\nSET ROLE \"{role}\";\n{text}\n;\nCOMMIT;\n",
            role = postgres.user
        );
        admin(cluster, port, &postgres.database, &sql)
            .await
            .map_err(|e| format!("init {}: {e}", file.display()))?;
    }
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    std::fs::write(&record_path, text).map_err(|e| format!("{}: {e}", record_path.display()))?;
    Ok(vec![format!(
        "init SQL ran once: {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )])
}

/// The health check: log in as the application role with its password and ask the server
/// what it is (`postgres_replica::ROLE_QUERY`: as much work as `SELECT 1`).
pub(crate) async fn probe(
    cluster: &Cluster,
    postgres: &Postgres,
    port: u16,
    password: &[u8],
    timeout: Duration,
) -> Result<crate::postgres_replica::Seen, String> {
    let mut command = tokio::process::Command::new(cluster.bin.join("psql"));
    command
        .env_clear()
        .env("PATH", bow_driver::DEFAULT_PATH)
        .env("PGPASSWORD", String::from_utf8_lossy(password).as_ref())
        .env("PGCONNECT_TIMEOUT", timeout.as_secs().max(1).to_string())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", &postgres.user, "-d", &postgres.database])
        .args(["-X", "-A", "-t", "-q", "-w", "-c"])
        .arg(crate::postgres_replica::ROLE_QUERY)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("cannot run psql: {e}"))?;
    let seen = output
        .status
        .success()
        .then(|| crate::postgres_replica::parse_role(&String::from_utf8_lossy(&output.stdout)))
        .flatten();
    if let Some(seen) = seen {
        Ok(seen)
    } else {
        Err(format!(
            "SELECT 1 as {} on 127.0.0.1:{port}: {}",
            postgres.user,
            tail(&output.stderr)
        ))
    }
}

/// The SCRAM-SHA-256 verifier of `password` (RFC 7677, PostgreSQL's format:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), with a fresh random salt.
pub(crate) fn scram_verifier(password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("cannot read random bytes: {e}"))?;
    Ok(verifier_with(password, &salt, 4096))
}

fn verifier_with(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    let hmac = |key: &[u8], message: &[u8]| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(message);
        mac.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        base64(salt),
        base64(&stored_key),
        base64(&server_key)
    )
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of the service's password secret among an instance's secret files.
pub(crate) fn password<'a>(
    definition: &Service,
    secrets: &'a [bow_driver::SecretFile],
) -> Result<&'a [u8], String> {
    let postgres = crate::postgres::of(definition).ok_or("not a postgres service")?;
    let value = secrets
        .iter()
        .find(|s| s.name == postgres.password_secret)
        .map(|s| s.value.as_slice())
        .ok_or_else(|| format!("secret {} is not available", postgres.password_secret))?;
    // A trailing newline (`echo pw | bow secret set`) is not part of the password.
    Ok(value.strip_suffix(b"\n").unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_verifier_is_postgres_format() {
        // RFC 7677's example password and salt; the keys computed independently with
        // Python's hashlib.pbkdf2_hmac and hmac (and PostgreSQL accepts these verifiers:
        // tests/postgres.rs logs in with them).
        let salt = [
            0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36,
            0xfa, 0x81,
        ];
        let verifier = verifier_with(b"pencil", &salt, 4096);
        assert!(
            verifier.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{verifier}"
        );
        assert_eq!(
            verifier,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }
}
