//! Managed PostgreSQL on the host's PostgreSQL 15 (`postgres:` services): bow's own cluster
//! on a port of its own, never the machine's default one. First start (role, database and
//! init SQL present), init run once, a process service reading rows through the name `db`
//! served through the edge, crash and agent kill, password rotation with a session open,
//! settings reload vs restart, removal keeps the data, a major version change refused.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::procs;
use support::secrets::{init_and_set, run_with_stdin, use_key};
use support::stack::{Stack, WAIT, instance, pid_in};

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
const LIMIT: Duration = Duration::from_secs(120);

const DB: &str = "
services:
  db:
    postgres: { version: 15, database: shop, user: shopper, password_secret: db_password,
                init: ./init.sql, settings: { work_mem: 8MB } }
";

const INIT: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items VALUES (1, 'anvil'), (2, 'rope');
CREATE TABLE init_runs (at timestamptz DEFAULT now());
INSERT INTO init_runs DEFAULT VALUES;
";

/// A stack with a postgres service `db` (password `pw`), set up but not started.
fn stack(label: &str, yaml: &str, password: &str) -> Stack {
    let stack = Stack::new(label, yaml);
    stack.write("init.sql", INIT);
    use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", password)]);
    stack
}

/// The port the `db.1` instance listens on (127.0.0.1).
fn db_port(stack: &Stack) -> u16 {
    let status = stack.status_ok();
    instance(&status, "db.1").expect("db.1")["port"]
        .as_u64()
        .expect("port") as u16
}

/// Runs `sql` as `user` with `password` on 127.0.0.1:`port`; (success, stdout, stderr).
fn psql(port: u16, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    let output = Command::new(PSQL)
        .env("PGPASSWORD", password)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "shop",
        ])
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
        .expect("psql runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

fn query(port: u16, sql: &str) -> String {
    let (ok, out, err) = psql(port, "shopper", "pw-1", sql);
    assert!(ok, "{sql}: {err}");
    out
}

fn data_dir(stack: &Stack) -> PathBuf {
    stack.state_dir.join("volumes/db/data")
}

#[test]
fn first_start_creates_role_database_and_runs_init_once() {
    assert!(procs::is_root(), "this test needs root");
    let stack = stack("pgfirst", DB, "pw-1");
    stack.up_ok();
    let port = db_port(&stack);
    assert_ne!(
        port, 5432,
        "bow's cluster is never on the machine's default port"
    );
    assert_eq!(
        query(port, "SELECT name FROM items ORDER BY id"),
        "anvil\nrope"
    );
    // The role owns the database and is no superuser; the init tables are its own.
    assert_eq!(
        query(
            port,
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ),
        "f"
    );
    assert_eq!(
        query(
            port,
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"
        ),
        "shopper"
    );
    assert_eq!(
        query(
            port,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ),
        "shopper"
    );
    assert_eq!(query(port, "SHOW data_checksums"), "on");
    assert_eq!(query(port, "SHOW work_mem"), "8MB");
    assert_eq!(query(port, "SHOW password_encryption"), "scram-sha-256");
    // A wrong password is refused: the server checks passwords.
    let (ok, _, err) = psql(port, "shopper", "wrong", "SELECT 1");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    // The service runs as its own user, the data dir is its own and private.
    let data = data_dir(&stack);
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&data).unwrap().uid();
    assert_eq!(Some(owner), procs::uid_of("bow-db"));
    assert!(data.join("bow-init.json").is_file());

    // A second start (down, up) keeps the data and does not run init again.
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(data.join("PG_VERSION").is_file(), "bow down keeps the data");
    stack.up_ok();
    let port = db_port(&stack);
    assert_eq!(query(port, "SELECT count(*) FROM init_runs"), "1");
    assert_eq!(query(port, "SELECT count(*) FROM items"), "2");
}
