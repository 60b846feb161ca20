//! Streaming read replicas of a postgres service (`postgres.replicas`) on the host's
//! PostgreSQL 15: a row written on the primary is read through `db-ro` within a second; `bow
//! psql db-ro` reaches a replica; `bow db switchover` under a write loop loses no acknowledged
//! write, blocks writes for less than 5 s, and the old primary rejoins as a replica.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pg::{psql_at, stack};
use support::stack::{Stack, WAIT, instance};

const LIMIT: Duration = Duration::from_secs(180);

const DB: &str = "
services:
  db:
    postgres: { version: 15, database: shop, user: shopper, password_secret: db_password,
                init: ./init.sql, replicas: 1 }
";

/// The discovery address (`ip`, `port`) of `name` (`db`, `db-ro`).
fn address(status: &Value, name: &str) -> (String, u16) {
    let entry = status["discovery"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["service"] == name)
        .unwrap_or_else(|| panic!("no discovery entry {name}: {status}"));
    let address: std::net::SocketAddr = entry["address"].as_str().unwrap().parse().unwrap();
    (address.ip().to_string(), address.port())
}

fn role(status: &Value, id: &str) -> Option<String> {
    instance(status, id)?["database"]["role"]
        .as_str()
        .map(str::to_string)
}

fn serving(status: &Value, primary: &str, replica: &str) -> bool {
    let healthy = |id| instance(status, id).is_some_and(|i| i["health"] == "healthy");
    healthy(primary)
        && healthy(replica)
        && role(status, primary).as_deref() == Some("primary")
        && role(status, replica).as_deref() == Some("replica")
        && instance(status, replica).unwrap()["database"]["serving_reads"] == true
}

fn query(host: &str, port: u16, sql: &str) -> String {
    let (ok, out, err) = psql_at(host, port, "shopper", "pw-1", sql);
    assert!(ok, "{sql} on {host}:{port}: {err}");
    out
}

/// Waits until `sql` on `host:port` answers `want`; how long it took.
fn wait_answer(host: &str, port: u16, sql: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (ok, out, _) = psql_at(host, port, "shopper", "pw-1", sql);
        if ok && out == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{sql} on {host}:{port} never answered {want:?} (last: {out:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn up(stack: &Stack) -> Value {
    stack.up_ok();
    stack.wait_status("a primary and a replica serving", WAIT, |s| {
        serving(s, "db.1", "db.2")
    });
    stack.status_ok()
}

#[test]
fn a_replica_serves_reads_as_db_ro_within_a_second() {
    let stack = stack("pgro", DB, "pw-1");
    let status = up(&stack);
    let (db_host, db_port) = address(&status, "db");
    let (ro_host, ro_port) = address(&status, "db-ro");
    assert_eq!(query(&db_host, db_port, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(query(&ro_host, ro_port, "SELECT pg_is_in_recovery()"), "t");
    // The replica is a copy: init ran once, on the primary.
    assert_eq!(
        query(&ro_host, ro_port, "SELECT count(*) FROM init_runs"),
        "1"
    );
    let mut worst = Duration::ZERO;
    for id in 10..15 {
        query(
            &db_host,
            db_port,
            &format!("INSERT INTO items VALUES ({id}, 'n{id}')"),
        );
        let took = wait_answer(
            &ro_host,
            ro_port,
            &format!("SELECT count(*) FROM items WHERE id = {id}"),
            "1",
            Duration::from_secs(5),
        );
        worst = worst.max(took);
    }
    eprintln!("replica visibility: worst {} ms", worst.as_millis());
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    // The replica refuses writes; `bow psql db-ro` lands on it, `bow psql db` on the primary.
    let (ok, _, err) = psql_at(
        &ro_host,
        ro_port,
        "shopper",
        "pw-1",
        "INSERT INTO items VALUES (99, 'x')",
    );
    assert!(!ok && err.contains("read-only"), "{err}");
    for (name, want) in [("db-ro", "t"), ("db", "f")] {
        let ran = stack.run_trailing(
            &["psql", name, "--", "-XAtc", "SELECT pg_is_in_recovery()"],
            LIMIT,
        );
        assert_eq!(ran.code, 0, "{}", ran.describe());
        assert_eq!(ran.stdout.trim(), want, "bow psql {name}");
    }
    // A killed agent leaves both servers running; the next one adopts them in their roles.
    let pids = (stack.pid("db.1"), stack.pid("db.2"));
    let agent = stack.status_ok()["agent_pid"].as_i64().expect("agent_pid") as i32;
    support::procs::kill(agent, libc::SIGKILL);
    support::procs::wait_gone(agent, WAIT);
    up(&stack);
    assert_eq!(
        (stack.pid("db.1"), stack.pid("db.2")),
        pids,
        "adopted, not restarted"
    );
    query(
        &db_host,
        db_port,
        "INSERT INTO items VALUES (20, 'after the agent')",
    );
    wait_answer(
        &ro_host,
        ro_port,
        "SELECT count(*) FROM items WHERE id = 20",
        "1",
        Duration::from_secs(5),
    );
    // Status shows the role and the lag.
    let table = stack.run(&["status"], LIMIT);
    assert!(
        table.stdout.contains("primary") && table.stdout.contains("replica lag"),
        "{}",
        table.stdout
    );
    // A second replica is a scale: copied from the primary, in `db-ro` too; removing it
    // stops it and leaves the primary alone.
    let text = std::fs::read_to_string(&stack.file).unwrap();
    std::fs::write(&stack.file, text.replace("replicas: 1 }", "replicas: 2 }")).unwrap();
    let plan = stack.run(&["plan"], LIMIT);
    assert!(
        plan.stdout.contains("services.db.postgres.replicas"),
        "{}",
        plan.stdout
    );
    let ran = stack.run(&["apply", "--yes"], LIMIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    stack.wait_status("db.3 a replica serving reads", WAIT, |s| {
        serving(s, "db.1", "db.3")
    });
    assert_eq!(stack.pid("db.1"), pids.0, "the primary was not restarted");
    std::fs::write(&stack.file, text).unwrap();
    let ran = stack.run(&["apply", "--yes"], LIMIT);
    assert_eq!(ran.code, 0, "{}", ran.describe());
    stack.wait_status("db.3 gone", WAIT, |s| instance(s, "db.3").is_none());
    assert_eq!(stack.pid("db.1"), pids.0, "the primary was not restarted");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn switchover_under_writes_loses_no_acknowledged_write() {
    let stack = stack("pgswitch", DB, "pw-1");
    let status = up(&stack);
    let (db_host, db_port) = address(&status, "db");
    let (ro_host, ro_port) = address(&status, "db-ro");

    // A writer through the name `db`: one insert per connection, acknowledged ids recorded,
    // failures retried with the next id.
    let acked = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, host) = (acked.clone(), stop.clone(), db_host.clone());
        std::thread::spawn(move || {
            let mut id = 1000;
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                id += 1;
                let (ok, _, _) = psql_at(
                    &host,
                    db_port,
                    "shopper",
                    "pw-1",
                    &format!("INSERT INTO items VALUES ({id}, 'w')"),
                );
                if ok {
                    acked.lock().unwrap().push((id, Instant::now()));
                }
            }
        })
    };
    let wait_acks = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "the writer stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_acks(20);
    let switch = stack.run(&["db", "switchover", "db"], LIMIT);
    assert_eq!(switch.code, 0, "{}", switch.describe());
    eprintln!("{}", switch.stderr.trim());
    let before = acked.lock().unwrap().len();
    wait_acks(before + 20);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    let longest = acked
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} writes acknowledged; longest wait between two: {} ms",
        acked.len(),
        longest.as_millis()
    );
    assert!(
        longest < Duration::from_secs(5),
        "writes blocked {longest:?}"
    );
    // Every acknowledged write is on the new primary.
    let ids: Vec<String> = acked.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(
        query(
            &db_host,
            db_port,
            &format!("SELECT count(*) FROM items WHERE id IN ({})", ids.join(","))
        ),
        ids.len().to_string()
    );
    // db.2 is the primary, db.1 its replica; a new row reaches the old primary.
    stack.wait_status("db.2 primary, db.1 replica", WAIT, |s| {
        serving(s, "db.2", "db.1")
    });
    query(
        &db_host,
        db_port,
        "INSERT INTO items VALUES (5000, 'after')",
    );
    wait_answer(
        &ro_host,
        ro_port,
        "SELECT count(*) FROM items WHERE id = 5000",
        "1",
        Duration::from_secs(5),
    );
    let events = stack.events();
    assert!(
        events.iter().any(|e| e.is("switchover", "db.2")),
        "{}",
        support::stack::show_events(&events)
    );
    // And back: the old primary can take over again.
    let back = stack.run(&["db", "switchover", "db", "--to", "1"], LIMIT);
    assert_eq!(back.code, 0, "{}", back.describe());
    stack.wait_status("db.1 primary again", WAIT, |s| serving(s, "db.1", "db.2"));
    assert_eq!(
        query(
            &db_host,
            db_port,
            "SELECT count(*) FROM items WHERE id = 5000"
        ),
        "1"
    );
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn a_replica_name_taken_by_a_service_is_refused() {
    let yaml = format!("{DB}  db-ro:\n    command: /bin/sleep 100\n");
    let stack = Stack::new("pgronamed", &yaml);
    let ran = stack.run(&["validate"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr
            .contains("`db-ro` is the name of db's read replicas"),
        "{}",
        ran.stderr
    );
    let yaml = DB.replace("replicas: 1 }", "}\n    replicas: 2");
    let stack = Stack::new("pgreplicas", &yaml);
    let ran = stack.run(&["validate"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr.contains("postgres.replicas: 1"),
        "{}",
        ran.stderr
    );
}
