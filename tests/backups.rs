//! Backups of a postgres service (docs/backups.md) on the host's PostgreSQL 15: a logical
//! backup to a directory and to an S3 server (moto, started by scripts/test.sh), restored
//! after the table is dropped, verified in a scratch cluster; the stored bytes hold no
//! plaintext; a corrupted object fails verify loudly and restore refuses it; retention keeps
//! exactly `keep`; an interrupted run is never listed complete and is cleaned up; a run
//! SIGKILLed mid-upload and a store that goes away mid-upload (a proxy that stalls or cuts
//! after 4 MiB) leave the previous backup intact and nothing listed complete; DR from nothing.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::secrets::{files_containing, init_and_set, use_key};
use support::stack::{Stack, instance};

const LIMIT: Duration = Duration::from_secs(180);
const MARKER: &str = "plaintext-marker-7f3a9c";

const INIT: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5000) g;
INSERT INTO items VALUES (0, 'plaintext-marker-7f3a9c');
CREATE TABLE notes (body text);
INSERT INTO notes VALUES ('one'), ('two');
";

fn stack(label: &str, backup: &str, secrets: &[(&str, &str)]) -> Stack {
    stack_with(label, backup, secrets, "")
}

/// [`stack`] with more services after db.
fn stack_with(label: &str, backup: &str, secrets: &[(&str, &str)], more: &str) -> Stack {
    let yaml = format!(
        "services:\n  db:\n    postgres: {{ version: 15, database: shop, user: shopper, password_secret: db_password, init: ./init.sql }}\n    backup: {backup}\n{more}"
    );
    let stack = Stack::new(label, &yaml);
    stack.write("init.sql", INIT);
    use_key(&stack, "me");
    let mut values = vec![("db_password", "pw-1")];
    values.extend_from_slice(secrets);
    init_and_set(&stack, &values);
    stack
}

fn query(stack: &Stack, sql: &str) -> String {
    let status = stack.status_ok();
    let port = instance(&status, "db.1").expect("db.1")["port"]
        .as_u64()
        .unwrap() as u16;
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

fn complete_ids(stack: &Stack) -> Vec<String> {
    list(stack)
        .iter()
        .filter(|b| b["complete"] == true)
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

const ITEMS: &str = "SELECT count(*), sum(id), max(name) FROM items";

#[test]
fn directory_backup_restores_verifies_and_refuses_corruption() {
    // app depends on db: a restore stops it first and starts it again after, healthy.
    let stack = stack_with(
        "bkdir",
        "{ to: ./backups, keep: 2, check: 'SELECT count(*) > 5000 FROM items' }",
        &[],
        "  app:\n    command: {testapp}\n    depends_on: [db]\n    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 2 }\n",
    );
    stack.up_ok();
    let before = query(&stack, ITEMS);
    let run = bow_ok(&stack, &["backup", "run", "db"]);
    assert!(
        run.contains("2 tables, 5003 rows")
            && run.contains("verified")
            && run.contains("backup.check true"),
        "{run}"
    );

    // The store never sees plaintext: no file under it holds the marker row's text.
    let store = stack.dir.path().join("backups");
    assert!(files_containing(&store, b"item 4999").is_empty());
    assert!(files_containing(&store, MARKER.as_bytes()).is_empty());
    assert!(
        files_containing(&store, b"items").is_empty(),
        "table names are in the encrypted manifest only"
    );

    let backups = list(&stack);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["verified"], true, "{backups:?}");
    assert_eq!(backups[0]["row_counts"]["public.items"], 5001);

    // Drop the table, restore: the rows are back, identical. Without a terminal, --yes is needed.
    query(&stack, "DROP TABLE items; DELETE FROM notes");
    let refused = stack.run(&["backup", "restore", "db"], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(refused.stderr.contains("--yes"), "{}", refused.describe());
    let app_pid = support::stack::pid_in(&stack.status_ok(), "app.1").unwrap();
    let seen_before = stack.events().len();
    let restored = bow_ok(&stack, &["backup", "restore", "db", "--yes"]);
    assert!(
        restored.contains("stopped app.1") && restored.contains("started app.1 again"),
        "{restored}"
    );
    assert_eq!(query(&stack, ITEMS), before);
    assert_eq!(query(&stack, "SELECT count(*) FROM notes"), "2");
    let events = stack.events()[seen_before..].to_vec();
    let at = |kind: &str, id: &str, text: &str| {
        events
            .iter()
            .position(|e| e.is(kind, id) && e.message.contains(text))
    };
    let (held, started, recorded) = (
        at("stopped", "app.1", "held"),
        at("started", "app.1", ""),
        events
            .iter()
            .position(|e| e.kind == "backup" && e.message.starts_with("restore of db done")),
    );
    assert!(
        held.is_some() && held < started && started < recorded,
        "app stopped during the restore, started after: {}",
        support::stack::show_events(&events)
    );
    let status = stack.status_ok();
    assert_eq!(instance(&status, "app.1").unwrap()["health"], "healthy");
    assert_ne!(support::stack::pid_in(&status, "app.1"), Some(app_pid));
    assert_eq!(
        query(
            &stack,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ),
        "shopper"
    );

    // An interrupted run (data, no manifest) is never called complete...
    let first = complete_ids(&stack)[0].clone();
    let stray = store.join(format!(
        "{}-development/db/20200101T000000.000Z",
        stack.project
    ));
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("data.zst.age"), b"half an upload").unwrap();
    let with_stray = list(&stack);
    assert_eq!(with_stray.len(), 2);
    assert_eq!(with_stray[0]["complete"], false, "{with_stray:?}");

    // ...and retention keeps exactly `keep` complete backups and cleans the stray.
    query(&stack, "INSERT INTO items VALUES (9001, 'late')");
    bow_ok(&stack, &["backup", "run", "db"]);
    bow_ok(&stack, &["backup", "run", "db"]);
    let kept = complete_ids(&stack);
    assert_eq!(kept.len(), 2, "{:?}", list(&stack));
    assert!(!kept.contains(&first), "the oldest went");
    assert_eq!(
        list(&stack).len(),
        2,
        "the stray is cleaned: {:?}",
        list(&stack)
    );
    assert!(!stray.exists());

    // One byte flipped in the newest data object: verify fails loudly, restore refuses it.
    let newest = kept[1].clone();
    let data = store.join(format!(
        "{}-development/db/{newest}/data.zst.age",
        stack.project
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let verify = stack.run(&["backup", "verify", "db", &newest], LIMIT);
    assert_eq!(verify.code, 1, "{}", verify.describe());
    assert!(
        verify.stderr.contains("FAILED verification"),
        "{}",
        verify.describe()
    );
    let listed = list(&stack);
    let entry = listed.iter().find(|b| b["id"] == newest.as_str()).unwrap();
    assert_eq!(entry["verified"], false, "{entry:?}");
    query(&stack, "DELETE FROM notes");
    let refused = stack.run(&["backup", "restore", "db", &newest, "--yes"], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert!(
        refused.stderr.contains("failed its restore drill"),
        "{}",
        refused.describe()
    );
    assert_eq!(
        query(&stack, "SELECT count(*) FROM notes"),
        "0",
        "nothing was changed"
    );
    // Without an id, restore takes the newest backup that did not fail its drill.
    bow_ok(&stack, &["backup", "restore", "db", "--yes"]);
    assert_eq!(query(&stack, "SELECT count(*) FROM notes"), "2");
    assert_eq!(
        query(&stack, "SELECT name FROM items WHERE id = 9001"),
        "late"
    );

    // A corrupted object that was never verified: restore streams it, finds the damage and
    // leaves the database as it was (one transaction, pg_restore killed before the end).
    let fresh = stack.run(&["backup", "run", "db", "--no-verify"], LIMIT);
    assert_eq!(fresh.code, 0, "{}", fresh.describe());
    let latest = complete_ids(&stack).last().unwrap().clone();
    let data = store.join(format!(
        "{}-development/db/{latest}/data.zst.age",
        stack.project
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    query(&stack, "DELETE FROM notes");
    let refused = stack.run(&["backup", "restore", "db", &latest, "--yes"], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    assert_eq!(
        query(&stack, "SELECT count(*) FROM notes"),
        "0",
        "nothing was changed"
    );
    assert_eq!(query(&stack, "SELECT count(*) FROM items"), "5002");

    // The service's own check is part of the drill: one that does not hold fails it.
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(&stack.file, text.replace("> 5000", "> 10000")).unwrap();
    let verify = stack.run(&["backup", "verify", "db", &kept[0]], LIMIT);
    assert_eq!(verify.code, 1, "{}", verify.describe());
    assert!(
        verify.stderr.contains("backup.check returned \"f\""),
        "{}",
        verify.describe()
    );
}

/// The S3 server scripts/test.sh starts.
fn s3_endpoint() -> String {
    std::env::var("BOW_TEST_S3").expect(
        "BOW_TEST_S3 is not set: run the tests with scripts/test.sh, which starts moto (scripts/s3.sh)",
    )
}

fn s3(method: &str, url: &str) -> (bool, Vec<u8>) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-f",
            "-X",
            method,
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "test:test",
            url,
        ])
        .output()
        .unwrap();
    (output.status.success(), output.stdout)
}

#[test]
fn s3_backup_round_trip_and_outage() {
    let endpoint = s3_endpoint();
    let bucket = format!("bow-e2e-{}", std::process::id());
    assert!(
        s3("PUT", &format!("{endpoint}/{bucket}")).0,
        "create bucket {bucket}"
    );
    let backup = format!(
        "{{ to: 's3://{bucket}/nightly', endpoint: '{endpoint}', region: us-east-1, access_key_secret: s3_id, secret_key_secret: s3_key, keep: 3 }}"
    );
    let stack = stack("bks3", &backup, &[("s3_id", "test"), ("s3_key", "test")]);
    stack.up_ok();
    let before = query(&stack, ITEMS);
    let run = bow_ok(&stack, &["backup", "run", "db"]);
    assert!(
        run.contains(&format!("s3://{bucket}/nightly")) && run.contains("verified"),
        "{run}"
    );

    // The objects in the bucket: the data, the manifest, the verification; no plaintext.
    let (ok, listing) = s3("GET", &format!("{endpoint}/{bucket}?list-type=2"));
    assert!(ok);
    let listing = String::from_utf8_lossy(&listing).into_owned();
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "{listing}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("nightly/{}-development/db/", stack.project))),
        "{keys:?}"
    );
    for key in &keys {
        let (ok, body) = s3("GET", &format!("{endpoint}/{bucket}/{key}"));
        assert!(ok && !body.is_empty());
        for needle in [MARKER.as_bytes(), b"item 4999", b"public.items"] {
            assert!(
                !support::secrets::contains(&body, needle),
                "{key} holds plaintext"
            );
        }
    }

    query(&stack, "DROP TABLE items");
    bow_ok(&stack, &["backup", "restore", "db", "--yes"]);
    assert_eq!(query(&stack, ITEMS), before);

    // The store unreachable: the run fails, says why, and the previous backup stays intact.
    let good = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(&stack.file, good.replace(&endpoint, "http://127.0.0.1:9")).unwrap();
    let failed = stack.run(&["backup", "run", "db"], LIMIT);
    assert_eq!(failed.code, 1, "{}", failed.describe());
    assert!(
        failed.stderr.contains("backup failed"),
        "{}",
        failed.describe()
    );
    std::fs::write(&stack.file, &good).unwrap();
    let backups = list(&stack);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["complete"], true);
    bow_ok(&stack, &["backup", "verify", "db"]);

    // Enough data for several 8 MiB parts (random hex: it compresses only about 2:1).
    query(
        &stack,
        "CREATE TABLE blobs AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) AS body FROM generate_series(1, 150000) g",
    );
    let through = |proxy_port: u16| {
        std::fs::write(
            &stack.file,
            good.replace(&endpoint, &format!("http://127.0.0.1:{proxy_port}")),
        )
        .unwrap();
    };
    let target: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();

    // The agent of a run killed mid-upload (SIGKILL while a part is in flight): nothing it
    // left is listed as a backup.
    let stalling = proxy(target, 4 << 20, Cut::Stall);
    through(stalling);
    let mut run = stack.command(&["backup", "run", "db"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while !stalled(stalling) {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never reached 4 MiB"
        );
        assert!(
            run.try_wait().unwrap().is_none(),
            "bow ended before the stall"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    std::fs::write(&stack.file, &good).unwrap();
    let after_kill = list(&stack);
    assert_eq!(after_kill.len(), 1, "{after_kill:?}");
    assert_eq!(after_kill[0]["complete"], true);

    // The store goes away mid-upload: the run fails and says so, the backup before is intact
    // and nothing half-written is listed.
    let cutting = proxy(target, 4 << 20, Cut::Drop);
    through(cutting);
    let failed = stack.run(&["backup", "run", "db"], LIMIT);
    assert!(stalled(cutting), "the cut happened mid-upload");
    assert_eq!(failed.code, 1, "{}", failed.describe());
    assert!(
        failed.stderr.contains("backup failed"),
        "{}",
        failed.describe()
    );
    std::fs::write(&stack.file, &good).unwrap();
    let after_cut = list(&stack);
    assert_eq!(after_cut.len(), 1, "{after_cut:?}");
    assert_eq!(after_cut[0]["complete"], true);

    // And with the store back, a run with all the data works and is verified.
    let run = bow_ok(&stack, &["backup", "run", "db"]);
    assert!(
        run.contains("155003 rows") && run.contains("verified"),
        "{run}"
    );
    assert_eq!(complete_ids(&stack).len(), 2);
}

#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Stop forwarding (the connections stay open, nothing moves).
    Stall,
    /// Close every connection and refuse new ones.
    Drop,
}

static STALLED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

fn stalled(port: u16) -> bool {
    STALLED.lock().unwrap().contains(&port)
}

/// A TCP proxy on loopback to `target` that, once `limit` bytes went upstream, cuts as asked.
fn proxy(target: std::net::SocketAddr, limit: u64, cut: Cut) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if stalled(port) && cut == Cut::Drop {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let pump = |mut from: TcpStream, mut to: TcpStream, counted: Option<Arc<AtomicU64>>| {
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 16 << 10];
                    loop {
                        let n = match from.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if let Some(counted) = &counted
                            && counted.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit
                        {
                            STALLED.lock().unwrap().push(port);
                            match cut {
                                Cut::Stall => std::thread::sleep(Duration::from_secs(600)),
                                Cut::Drop => {}
                            }
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            break;
                        }
                        if stalled(port) && cut == Cut::Drop || to.write_all(&buffer[..n]).is_err()
                        {
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                })
            };
            pump(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                Some(sent.clone()),
            );
            pump(server, client, None);
        }
    });
    port
}

/// DR from nothing: the host is gone; a fresh state dir with only the stack file, the
/// secrets file, the age key and the store brings the database back (docs/backups.md).
#[test]
fn disaster_recovery_on_a_fresh_state_dir() {
    use std::os::unix::fs::PermissionsExt;
    let store = tempfile::Builder::new()
        .prefix("bow-e2e-store-")
        .tempdir()
        .unwrap();
    let backup = format!("{{ to: '{}', keep: 3 }}", store.path().display());
    let lost = stack("bkdr", &backup, &[]);
    lost.up_ok();
    query(
        &lost,
        "INSERT INTO items VALUES (7777, 'written before the fire')",
    );
    let before = query(&lost, ITEMS);
    bow_ok(&lost, &["backup", "run", "db"]);
    let down = lost.down();
    assert_eq!(down.code, 0, "{}", down.describe());

    // The new host: the repository (bow.yaml, init.sql, secrets/), the key put back.
    let host = tempfile::Builder::new()
        .prefix("bow-e2e-host-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["bow.yaml", "init.sql", "secrets/development.yaml"] {
        let to = host.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lost.dir.path().join(file), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let key = host.path().join("me.key");
    std::fs::copy(lost.dir.path().join("keys/me.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fresh = Stack::from_file(&host.path().join("bow.yaml"), &lost.project);
    fresh.set_env("BOW_AGE_KEY_FILE", key.to_str().unwrap());
    assert!(!fresh.state_dir.exists());

    let backups = {
        let out = bow_ok(&fresh, &["backup", "list", "db", "--output", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()
    };
    assert_eq!(backups[0]["verified"], true, "{backups}");
    // `bow up -d --restore latest`: up, then every service from its newest good backup.
    let up = bow_ok(&fresh, &["up", "-d", "--restore", "latest"]);
    assert!(up.contains("restored backup"), "{up}");
    assert_eq!(query(&fresh, ITEMS), before);
    // Never on a host with data: a repeated command must not roll a live system back.
    let again = fresh.run(&["up", "-d", "--restore", "latest"], LIMIT);
    assert_eq!(again.code, 1, "{}", again.describe());
    assert!(again.stderr.contains("fresh host"), "{}", again.describe());
    let refused = fresh.run(&["restore-all"], LIMIT);
    assert_eq!(refused.code, 1, "{}", refused.describe());
    query(&fresh, "DELETE FROM items WHERE id = 7777");
    bow_ok(&fresh, &["restore-all", "--yes"]);
    assert_eq!(query(&fresh, ITEMS), before);
    assert_eq!(
        query(&fresh, "SELECT name FROM items WHERE id = 7777"),
        "written before the fire"
    );
}

#[test]
fn a_schedule_runs_the_backup_in_the_agent() {
    // Every minute: the agent's scheduler runs `bow backup run db` at the next minute.
    let stack = stack(
        "bkschedule",
        "{ to: ./backups, keep: 3, schedule: \"* * * * *\" }",
        &[],
    );
    stack.up_ok();
    let events = stack.wait_event("a scheduled backup", Duration::from_secs(150), |e| {
        e.kind == "backup"
    });
    let done = events.iter().find(|e| e.kind == "backup").unwrap();
    assert!(
        done.message.starts_with("scheduled backup of db done"),
        "{}",
        done.message
    );
    let backups = list(&stack);
    assert!(
        backups
            .iter()
            .any(|b| b["complete"] == true && b["verified"] == true),
        "{backups:?}"
    );
    assert_eq!(stack.down().code, 0);
}
