//! Managed PostgreSQL on the host's PostgreSQL 15 (`postgres:` services): bow's own cluster
//! on a port of its own, never the machine's default one. First start (role, database and
//! init SQL present), init run once, a process service reading rows through the name `db`
//! served through the edge, crash and agent kill, password rotation with a session open,
//! settings reload vs restart, removal keeps the data, a major version change refused.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::pg::{PSQL, psql_at, stack};
use support::procs;
use support::secrets::run_with_stdin;
use support::stack::{Stack, WAIT, instance, pid_in};

const LIMIT: Duration = Duration::from_secs(120);

const DB: &str = "
services:
  db:
    postgres: { version: 15, database: shop, user: shopper, password_secret: db_password,
                init: ./init.sql, settings: { work_mem: 8MB } }
";

/// The port the `db.1` instance listens on (127.0.0.1).
fn db_port(stack: &Stack) -> u16 {
    let status = stack.status_ok();
    instance(&status, "db.1").expect("db.1")["port"]
        .as_u64()
        .expect("port") as u16
}

/// Runs `sql` as `user` with `password` on 127.0.0.1:`port`; (success, stdout, stderr).
fn psql(port: u16, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    psql_at("127.0.0.1", port, user, password, sql)
}

fn query(port: u16, sql: &str) -> String {
    let (ok, out, err) = psql(port, "shopper", "pw-1", sql);
    assert!(ok, "{sql}: {err}");
    out
}

/// Replaces the stack file's services (the project line stays).
fn rewrite(stack: &Stack, yaml: &str) {
    let text = format!(
        "project: {}\n{}",
        stack.project,
        yaml.replace("{testapp}", support::stack::testapp().to_str().unwrap())
    );
    std::fs::write(&stack.file, text).unwrap();
}

/// The postmaster's pid (db.1's process).
fn postmaster(stack: &Stack) -> i32 {
    stack.pid("db.1")
}

fn plan(stack: &Stack) -> String {
    let plan = stack.run(&["plan"], LIMIT);
    assert_eq!(plan.code, 2, "plan shows changes: {}", plan.describe());
    plan.stdout
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
    // Confined by default like every process service (docs/sandbox.md): no new privileges,
    // the system call filter, its own mount namespace where bow's state is hidden and its
    // volume is there.
    let pid = postmaster(&stack);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"),
        "{status}"
    );
    let inside = |path: &std::path::Path| {
        PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap())
    };
    assert!(stack.state_dir.join("state.db").is_file());
    assert!(!inside(&stack.state_dir.join("state.db")).exists());
    assert!(inside(&data.join("PG_VERSION")).is_file());

    // A second start (down, up) keeps the data and does not run init again.
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    assert!(data.join("PG_VERSION").is_file(), "bow down keeps the data");
    stack.up_ok();
    let port = db_port(&stack);
    assert_eq!(query(port, "SELECT count(*) FROM init_runs"), "1");
    assert_eq!(query(port, "SELECT count(*) FROM items"), "2");

    // `bow psql` logs in as the role with no password typed; arguments after -- go to psql.
    // Stack flags before the command: everything after `--` is psql's.
    let mut command = support::bow();
    command
        .env("BOW_AGE_KEY_FILE", stack.dir.path().join("keys/me.key"))
        .arg("--file")
        .arg(&stack.file)
        .arg("--state-dir")
        .arg(&stack.state_dir)
        .args([
            "psql",
            "db",
            "--",
            "-XAtc",
            "SELECT current_user || '@' || current_database()",
        ]);
    let session = support::stack::run_for(&mut command, LIMIT);
    assert_eq!(session.code, 0, "{}", session.describe());
    assert_eq!(session.stdout.trim(), "shopper@shop");
    let wrong = stack.run(&["psql", "nope"], LIMIT);
    assert!(
        wrong.code != 0 && wrong.stderr.contains("postgres services: db"),
        "{}",
        wrong.describe()
    );
}

#[test]
fn a_killed_postmaster_restarts_and_a_killed_agent_leaves_it_running() {
    let admin = support::procs::free_port();
    let yaml = format!("admin: {{ listen: \"127.0.0.1:{admin}\" }}{DB}");
    let stack = stack("pgcrash", &yaml, "pw-1");
    stack.up_ok();
    // The login check counts as the service's health check.
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("bow_health_checks_total{service=\"db\",result=\"passed\"}"),
        "{metrics}"
    );
    let port = db_port(&stack);
    query(port, "INSERT INTO items VALUES (3, 'hammer')");
    let pid = postmaster(&stack);
    procs::kill(pid, libc::SIGKILL);
    procs::wait_gone(pid, WAIT);
    stack.wait_status("db restarted after SIGKILL", WAIT, |s| {
        instance(s, "db.1")
            .is_some_and(|i| i["health"] == "healthy" && pid_in(s, "db.1") != Some(pid))
    });
    let port = db_port(&stack);
    assert_eq!(
        query(port, "SELECT string_agg(name, ',' ORDER BY id) FROM items"),
        "anvil,rope,hammer"
    );
    assert_eq!(query(port, "SELECT count(*) FROM init_runs"), "1");

    // The agent dies: the server keeps running and serving, and the next agent adopts it.
    let pid = postmaster(&stack);
    let status = stack.status_ok();
    let agent = status["agent_pid"].as_i64().expect("agent_pid") as i32;
    procs::kill(agent, libc::SIGKILL);
    procs::wait_gone(agent, WAIT);
    query(port, "INSERT INTO items VALUES (4, 'nails')");
    stack.up_ok();
    assert_eq!(
        postmaster(&stack),
        pid,
        "the running server was adopted, not restarted"
    );
    assert_eq!(db_port(&stack), port);
    assert_eq!(query(port, "SELECT count(*) FROM items"), "4");
    let events = stack.events();
    assert!(
        events.iter().any(|e| e.is("adopted", "db.1")),
        "{}",
        support::stack::show_events(&events)
    );

    // `bow down` stops it with a fast shutdown (SIGINT): a clean shutdown checkpoint.
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
    procs::wait_gone(pid, WAIT);
    let control = Command::new("/usr/lib/postgresql/15/bin/pg_controldata")
        .arg(data_dir(&stack))
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout);
    assert!(
        control.contains("Database cluster state:               shut down"),
        "{control}"
    );
}

#[test]
fn a_new_password_is_applied_with_alter_role_while_sessions_stay_open() {
    let stack = stack("pgrotate", DB, "pw-1");
    stack.up_ok();
    let port = db_port(&stack);
    let pid = postmaster(&stack);
    // A session opened with the old password stays open through the change.
    let mut session = Command::new(PSQL)
        .env("PGPASSWORD", "pw-1")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "shopper",
            "-d",
            "shop",
            "-XAtq",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = session.stdin.take().unwrap();
    writeln!(input, "SELECT 'before:' || pg_backend_pid();").unwrap();
    input.flush().unwrap();
    let set = run_with_stdin(&stack, &["secret", "set", "db_password"], b"pw-2");
    assert_eq!(set.code, 0, "{}", set.describe());
    let planned = plan(&stack);
    assert!(
        planned.contains("secret db_password (changed)  (in-place: ALTER ROLE)"),
        "{planned}"
    );
    stack.up_ok();
    assert_eq!(postmaster(&stack), pid, "no restart for a new password");
    let (old, _, err) = psql(port, "shopper", "pw-1", "SELECT 1");
    assert!(!old, "the old password no longer logs in");
    assert!(err.contains("password authentication failed"), "{err}");
    let (new, out, err) = psql(port, "shopper", "pw-2", "SELECT 1");
    assert!(new && out == "1", "the new password logs in: {err}");
    writeln!(input, "SELECT 'after:' || pg_backend_pid();").unwrap();
    drop(input);
    let mut output = String::new();
    session
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(session.wait().unwrap().success(), "{output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 2, "{output}");
    assert_eq!(
        lines[0].strip_prefix("before:"),
        lines[1].strip_prefix("after:"),
        "one session, open through the change: {output}"
    );
    // The password is nowhere in the state dir's files.
    let leaks = support::secrets::files_containing(&stack.state_dir, b"pw-2");
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[test]
fn a_changed_setting_is_reloaded_or_restarted_as_the_plan_says() {
    let stack = stack("pgsettings", DB, "pw-1");
    stack.up_ok();
    let pid = postmaster(&stack);
    rewrite(&stack, &DB.replace("work_mem: 8MB", "work_mem: 16MB"));
    let planned = plan(&stack);
    assert!(
        planned.contains("postgres.settings.work_mem: \"8MB\" → \"16MB\"  (in-place: reload)"),
        "{planned}"
    );
    stack.up_ok();
    assert_eq!(postmaster(&stack), pid, "a reload, no restart");
    assert_eq!(query(db_port(&stack), "SHOW work_mem"), "16MB");

    rewrite(
        &stack,
        &DB.replace("work_mem: 8MB", "work_mem: 16MB, shared_buffers: 32MB"),
    );
    let planned = plan(&stack);
    assert!(
        planned.contains(
            "+ services.db.postgres.settings.shared_buffers: \"32MB\"  (replace: restart)"
        ),
        "{planned}"
    );
    // A session held through the service address (a pool's connection) does not hold the
    // restart up: a database is not drained like HTTP, its fast shutdown ends the session.
    let status = stack.status_ok();
    let address = status["discovery"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["service"] == "db")
        .and_then(|d| d["address"].as_str())
        .expect("db's service address")
        .to_string();
    let (host, service_port) = address.rsplit_once(':').unwrap();
    let mut pooled = Command::new(PSQL)
        .env("PGPASSWORD", "pw-1")
        .args([
            "-h",
            host,
            "-p",
            service_port,
            "-U",
            "shopper",
            "-d",
            "shop",
            "-XAtq",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pooled_in = pooled.stdin.take().unwrap();
    writeln!(pooled_in, "SELECT 'connected';").unwrap();
    pooled_in.flush().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(pooled.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "connected", "a session through {address}");
    let started = std::time::Instant::now();
    stack.up_ok();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the restart waited {:?} (a drain of the held session?)",
        started.elapsed()
    );
    drop(pooled_in);
    let _ = pooled.kill();
    let _ = pooled.wait();
    assert_ne!(postmaster(&stack), pid, "a restart");
    let port = db_port(&stack);
    assert_eq!(query(port, "SHOW shared_buffers"), "32MB");
    assert_eq!(query(port, "SELECT count(*) FROM items"), "2");
}

#[test]
fn removing_the_service_keeps_its_data_until_volume_rm() {
    let with_web = format!("{DB}  web:\n    command: {{testapp}}\n");
    let stack = stack("pgremove", &with_web, "pw-1");
    stack.up_ok();
    query(db_port(&stack), "INSERT INTO items VALUES (3, 'hammer')");
    let pid = postmaster(&stack);
    rewrite(&stack, "services:\n  web:\n    command: {testapp}\n");
    let planned = plan(&stack);
    assert!(planned.contains("- db  (stop 1 instance)"), "{planned}");
    assert!(
        planned.contains("data kept: volume db stays on this host; `bow volume rm db` deletes it"),
        "{planned}"
    );
    stack.up_ok();
    procs::wait_gone(pid, WAIT);
    assert!(
        data_dir(&stack).join("PG_VERSION").is_file(),
        "the data stays"
    );
    let volumes = stack.run(&["volume", "ls"], LIMIT);
    assert!(
        volumes.stdout.contains("db") && volumes.stdout.contains("orphaned"),
        "{}",
        volumes.describe()
    );

    // Back in the file: the same data, init not run again.
    rewrite(&stack, &with_web);
    stack.up_ok();
    let port = db_port(&stack);
    assert_eq!(query(port, "SELECT count(*) FROM items"), "3");
    assert_eq!(query(port, "SELECT count(*) FROM init_runs"), "1");
    let refused = stack.run(&["volume", "rm", "db", "--yes"], LIMIT);
    assert!(
        refused.code != 0 && refused.stderr.contains("in use"),
        "{}",
        refused.describe()
    );
    assert!(data_dir(&stack).is_dir());
    let unconfirmed = stack.run(&["volume", "rm", "db"], LIMIT);
    assert!(unconfirmed.code != 0, "{}", unconfirmed.describe());

    let pid = postmaster(&stack);
    rewrite(&stack, "services:\n  web:\n    command: {testapp}\n");
    stack.up_ok();
    procs::wait_gone(pid, WAIT);
    let removed = stack.run(&["volume", "rm", "db", "--yes"], LIMIT);
    assert_eq!(removed.code, 0, "{}", removed.describe());
    assert!(!stack.state_dir.join("volumes/db").exists());
}

#[test]
fn a_major_version_change_is_refused_with_the_upgrade_path() {
    let stack = stack("pgmajor", DB, "pw-1");
    stack.up_ok();
    let pid = postmaster(&stack);
    rewrite(&stack, &DB.replace("version: 15", "version: 16"));
    let planned = plan(&stack);
    assert!(
        planned.contains("refused: a major version change needs pg_upgrade"),
        "{planned}"
    );
    let up = stack.up();
    assert_ne!(up.code, 0, "{}", up.describe());
    let said = format!("{}{}", up.stdout, up.stderr);
    assert!(
        said.contains("made by PostgreSQL 15")
            && said.contains("pg_upgrade")
            && said.contains("pg_dump"),
        "{said}"
    );
    assert!(procs::is_alive(pid), "the old server still runs");
    assert_eq!(
        std::fs::read_to_string(data_dir(&stack).join("PG_VERSION"))
            .unwrap()
            .trim(),
        "15"
    );
}

/// A Flask-style app in Python's standard library: GET / answers the items it reads from
/// the database its DATABASE_URL names (`${postgres:db}`: the service `db` by name).
const APP: &str = r#"
import http.server, os, subprocess, urllib.parse
url = urllib.parse.urlparse(os.environ["DATABASE_URL"])
database = dict(os.environ, PGHOST=url.hostname, PGPORT=str(url.port), PGUSER=url.username,
                PGPASSWORD=urllib.parse.unquote(url.password), PGDATABASE=url.path[1:])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        rows = subprocess.run(
            ["/usr/lib/postgresql/15/bin/psql", "-XAtc", "SELECT string_agg(name, ',' ORDER BY id) FROM items"],
            env=database, capture_output=True, text=True)
        body = (rows.stdout if rows.returncode == 0 else "error: " + rows.stderr).encode()
        self.send_response(200 if rows.returncode == 0 else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[test]
fn a_process_service_reads_rows_through_the_name_db_behind_the_edge() {
    let (http, https) = (procs::free_port(), procs::free_port());
    let yaml = format!(
        "edge: {{ http_port: {http}, https_port: {https} }}\n{DB}  back:\n    command: /usr/bin/python3 app.py\n    dir: ./back\n    port: 5001\n    secrets: [db_password]\n    env: {{ DATABASE_URL: '${{postgres:db}}' }}\n    depends_on: [db]\n    routes: [shop.bow.localhost]\n    health: {{ http: /, interval: 500ms, timeout: 2s, retries: 3 }}\n"
    );
    let stack = stack("pgseed", &yaml, "pw-1");
    stack.write("back/app.py", APP);
    stack.up_ok();
    let output = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "10",
            "--resolve",
            &format!("shop.bow.localhost:{https}:127.0.0.1"),
        ])
        .arg(format!("https://shop.bow.localhost:{https}/"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "anvil,rope\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn missing_server_binaries_name_the_package_to_install() {
    let stack = stack("pgmissing", DB, "pw-1");
    // Where the binaries of each version are (the Debian layout unless this says otherwise).
    stack.set_env("BOW_POSTGRES_BIN", "/nonexistent/postgresql/{version}/bin");
    let up = stack.up();
    assert_ne!(up.code, 0, "{}", up.describe());
    let said = format!("{}{}", up.stdout, up.stderr);
    assert!(
        said.contains("PostgreSQL 15 is not installed")
            && said.contains("install the Debian package postgresql-15"),
        "{said}"
    );
    assert!(!data_dir(&stack).exists(), "nothing was initialised");
}
