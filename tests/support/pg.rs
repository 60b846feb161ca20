//! PostgreSQL helpers for the postgres tests: a stack with a `db` service, psql as the app role.

use std::process::Command;

use super::secrets::{init_and_set, use_key};
use super::stack::Stack;

pub const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

pub const INIT: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items VALUES (1, 'anvil'), (2, 'rope');
CREATE TABLE init_runs (at timestamptz DEFAULT now());
INSERT INTO init_runs DEFAULT VALUES;
";

/// A stack with a postgres service `db` (password `password`), set up but not started.
pub fn stack(label: &str, yaml: &str, password: &str) -> Stack {
    let stack = Stack::new(label, yaml);
    stack.write("init.sql", INIT);
    use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", password)]);
    stack
}

/// Runs `sql` as `user` with `password` on `host`:`port` (database `shop`);
/// (success, stdout, stderr).
pub fn psql_at(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    sql: &str,
) -> (bool, String, String) {
    let output = Command::new(PSQL)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .args([
            "-h",
            host,
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
