//! Point-in-time recovery of a postgres service (`backup: {pitr: true}`, docs/backups.md) on
//! the host's PostgreSQL 15: base backups (pg_basebackup), WAL archived by the server through
//! `bow backup wal-spool` and stored by the agent by itself, rows inserted at t1 and deleted
//! at t2 back after `restore --to` a time between, gone again after a restore to the newest
//! WAL; no stored object (WAL included) holds plaintext. With a read replica and a
//! switchover, the new primary archives on and a recovery follows its timeline (S3, moto).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::secrets::{files_containing, init_and_set, use_key};
use support::stack::{Stack, instances};

const LIMIT: Duration = Duration::from_secs(240);
const MARKER: &str = "plaintext-marker-5e1d0b";

const INIT: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g;
INSERT INTO items VALUES (0, 'plaintext-marker-5e1d0b');
";

fn stack(label: &str, postgres_extra: &str, backup: &str, secrets: &[(&str, &str)]) -> Stack {
    let yaml = format!(
        "services:\n  db:\n    postgres: {{ version: 15, database: shop, user: shopper, password_secret: db_password, init: ./init.sql{postgres_extra} }}\n    backup: {backup}\n"
    );
    let stack = Stack::new(label, &yaml);
    stack.write("init.sql", INIT);
    use_key(&stack, "me");
    let mut values = vec![("db_password", "pw-1")];
    values.extend_from_slice(secrets);
    init_and_set(&stack, &values);
    stack
}

/// The port of the service's primary.
fn primary_port(stack: &Stack) -> u16 {
    let status = stack.status_ok();
    instances(&status)
        .into_iter()
        .find(|i| {
            i["id"].as_str().is_some_and(|id| id.starts_with("db."))
                && i["database"]["role"]
                    .as_str()
                    .is_none_or(|r| r == "primary")
        })
        .and_then(|i| i["port"].as_u64())
        .expect("a primary") as u16
}

fn query(stack: &Stack, sql: &str) -> String {
    let port = primary_port(stack);
    let (ok, out, err) = support::pg::psql_at("127.0.0.1", port, "shopper", "pw-1", sql);
    assert!(ok, "{sql}: {err}");
    out
}

fn bow_ok(stack: &Stack, args: &[&str]) -> String {
    let ran = stack.run(args, LIMIT);
    assert_eq!(ran.code, 0, "bow {args:?}: {}", ran.describe());
    ran.stdout
}

fn list(stack: &Stack) -> Vec<Value> {
    let out = bow_ok(stack, &["backup", "list", "db", "--output", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// The database's clock now, UTC, as `--to` takes it.
fn now_in_db(stack: &Stack) -> String {
    query(
        stack,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    )
}

const PITR_ROWS: &str = "SELECT count(*) FROM items WHERE id > 10000";

/// Rows in at t1, a time noted, rows deleted at t2: returns the time between.
fn insert_then_delete(stack: &Stack, from: u32) -> String {
    query(
        stack,
        &format!(
            "INSERT INTO items SELECT g, 'pitr row ' || g FROM generate_series({from}, {}) g",
            from + 99
        ),
    );
    std::thread::sleep(Duration::from_millis(1200));
    let between = now_in_db(stack);
    std::thread::sleep(Duration::from_millis(1200));
    query(stack, "DELETE FROM items WHERE id > 10000");
    assert_eq!(query(stack, PITR_ROWS), "0");
    between
}

#[test]
fn pitr_restores_to_a_time_between_insert_and_delete() {
    let stack = stack(
        "bkpitr",
        "",
        "{ to: ./backups, keep: 2, pitr: true, check: 'SELECT count(*) >= 2001 FROM items' }",
        &[],
    );
    stack.up_ok();
    let store = stack.dir.path().join("backups");
    let wal = store.join(format!("{}-development/db.wal", stack.project));
    let spool = stack.state_dir.join("volumes/db/wal-spool");

    // Before any base backup, a point in time has nothing to start from.
    let early = stack.run(
        &[
            "backup",
            "restore",
            "db",
            "--to",
            "2020-01-01 00:00:00",
            "--yes",
        ],
        LIMIT,
    );
    assert_eq!(early.code, 1, "{}", early.describe());
    assert!(
        early.stderr.contains("no base backup"),
        "{}",
        early.describe()
    );

    let run = bow_ok(&stack, &["backup", "run", "db"]);
    assert!(
        run.contains("verified") && run.contains("backup.check true"),
        "{run}"
    );
    let backups = list(&stack);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["kind"], "postgres-base", "{backups:?}");
    assert_eq!(backups[0]["verified"], true, "{backups:?}");

    // The base backup ended with a segment switch: the server spooled it and the agent
    // stored it, by itself, within seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while files(&wal).is_empty() || !files(&spool).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no WAL stored by the agent: store {:?}, spool {:?}\n{}",
            files(&wal),
            files(&spool),
            stack.run(&["events"], LIMIT).output()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let between = insert_then_delete(&stack, 10001);
    let restored = bow_ok(
        &stack,
        &["backup", "restore", "db", "--to", &between, "--yes"],
    );
    assert!(restored.contains("restored database shop to"), "{restored}");
    assert_eq!(query(&stack, PITR_ROWS), "100", "{restored}");
    assert_eq!(
        query(&stack, "SELECT name FROM items WHERE id = 10050"),
        "pitr row 10050"
    );
    assert_eq!(query(&stack, "SELECT count(*) FROM items"), "2101");
    assert_eq!(
        query(
            &stack,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ),
        "shopper"
    );

    // Without --to: the newest archived WAL, where the restore above is the last thing.
    query(
        &stack,
        "INSERT INTO items VALUES (20000, 'after the restore')",
    );
    bow_ok(&stack, &["backup", "restore", "db", "--yes"]);
    assert_eq!(query(&stack, PITR_ROWS), "101");

    // Nothing stored is plaintext: not the data, not the WAL (which holds every row written).
    assert!(!files(&wal).is_empty());
    assert!(files_containing(&store, MARKER.as_bytes()).is_empty());
    assert!(files_containing(&store, b"pitr row").is_empty());
    assert!(files_containing(&store, b"after the restore").is_empty());

    // Without a terminal, --yes is needed.
    let refused = stack.run(&["backup", "restore", "db", "--to", &between], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(refused.stderr.contains("--yes"), "{}", refused.describe());
}

fn s3_endpoint() -> String {
    std::env::var("BOW_TEST_S3").expect(
        "BOW_TEST_S3 is not set: run the tests with scripts/test.sh, which starts moto (scripts/s3.sh)",
    )
}

#[test]
fn pitr_with_a_replica_follows_a_switchover_on_s3() {
    let endpoint = s3_endpoint();
    let bucket = format!("pitr-{}", std::process::id());
    let made = Command::new("curl")
        .args(["-sf", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3"])
        .args(["--user", "test:test", &format!("{endpoint}/{bucket}")])
        .status()
        .unwrap();
    assert!(made.success());
    let backup = format!(
        "{{ to: 's3://{bucket}/pitr', endpoint: '{endpoint}', region: us-east-1, access_key_secret: s3_id, secret_key_secret: s3_key, keep: 2, pitr: true }}"
    );
    let stack = stack(
        "bkpitrr",
        ", replicas: 1",
        &backup,
        &[("s3_id", "test"), ("s3_key", "test")],
    );
    stack.up_ok();
    bow_ok(&stack, &["backup", "run", "db"]);

    // The replica becomes the primary: it archives from now on, on a new timeline.
    bow_ok(&stack, &["db", "switchover", "db"]);
    let between = insert_then_delete(&stack, 30001);
    let restored = bow_ok(
        &stack,
        &["backup", "restore", "db", "--to", &between, "--yes"],
    );
    assert_eq!(query(&stack, PITR_ROWS), "100", "{restored}");

    // The replica follows the restored database (it is WAL on the live timeline).
    let status = stack.status_ok();
    assert!(
        instances(&status)
            .iter()
            .filter(|i| i["id"].as_str().is_some_and(|id| id.starts_with("db.")))
            .all(|i| i["health"] == "healthy"),
        "{status}"
    );
}
