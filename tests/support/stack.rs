//! A running stack for the agent's end-to-end tests: a bow.yaml in a tempdir, its own state dir,
//! `bow` commands bounded in time, status and events as JSON, and a cleanup that always runs.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::procs::{self, ProcessInfo};

/// How long a test waits for anything the agent should do by itself.
pub const WAIT: Duration = Duration::from_secs(30);
/// How long `bow up -d` may take on a small stack (user creation, first start).
pub const UP_TIMEOUT: Duration = Duration::from_secs(90);
/// The variable every `bow` command of a stack carries, so that the agent and its shims can be
/// found (and killed) by it should `bow down` fail.
pub const MARK_VARIABLE: &str = "BOW_E2E_STACK";

static STACKS: AtomicU32 = AtomicU32::new(0);

/// The `bow-testapp` binary, next to the `bow` binary under test; built when a narrower
/// `cargo test` did not build it.
pub fn testapp() -> PathBuf {
    let bow = Path::new(env!("CARGO_BIN_EXE_bow"));
    let profile_dir = bow.parent().expect("the bow binary's directory");
    let path = profile_dir.join("bow-testapp");
    if !path.exists() {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "bow-testapp", "--manifest-path"])
            .arg(super::root().join("Cargo.toml"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building bow-testapp failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// What a `bow` command did within its time limit.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The exit code; -1 when killed by a signal or by the time limit.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub took: Duration,
    /// The command exited but something it started kept its stdout or stderr open.
    pub pipes_left_open: bool,
}

impl Ran {
    /// Stdout and stderr, for assertion messages and searching.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {}{} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.took,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `command` for at most `timeout` (then kills it), capturing its output. The output
/// readers do not wait for processes the command left behind holding its pipes.
pub fn run_for(command: &mut Command, timeout: Duration) -> Ran {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bow");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (done_sender, done) = std::sync::mpsc::channel();
    type Sink = Arc<Mutex<Vec<u8>>>;
    let readers: Vec<(Box<dyn Read + Send>, Sink)> = vec![
        (Box::new(child.stdout.take().unwrap()), Arc::clone(&stdout)),
        (Box::new(child.stderr.take().unwrap()), Arc::clone(&stderr)),
    ];
    for (mut pipe, sink) in readers {
        let done_sender = done_sender.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(read) = pipe.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
            let _ = done_sender.send(());
        });
    }
    let deadline = started + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bow") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let mut closed = 0;
    let readers_deadline = Instant::now() + Duration::from_secs(2);
    while closed < 2 {
        let left = readers_deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Ok(()) => closed += 1,
            Err(_) => break,
        }
    }
    let text =
        |sink: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&sink.lock().unwrap()).into_owned();
    Ran {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: text(&stdout),
        stderr: text(&stderr),
        timed_out,
        took,
        pipes_left_open: closed < 2,
    }
}

/// One entry of `bow events --output json`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Value,
    pub at_ms: i64,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub kind: String,
    pub message: String,
}

impl Event {
    fn from_json(value: &Value) -> Event {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        Event {
            id: value["id"].clone(),
            at_ms: value["at_ms"].as_i64().unwrap_or(0),
            service: text("service"),
            instance: text("instance"),
            kind: text("kind").unwrap_or_default(),
            message: text("message").unwrap_or_default(),
        }
    }

    pub fn is(&self, kind: &str, instance: &str) -> bool {
        self.kind == kind && self.instance.as_deref() == Some(instance)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}: {}",
            self.at_ms,
            self.instance
                .as_deref()
                .or(self.service.as_deref())
                .unwrap_or("-"),
            self.kind,
            self.id,
            self.message
        )
    }
}

/// Events as lines, for assertion messages.
pub fn show_events(events: &[Event]) -> String {
    events.iter().map(|e| format!("  {e}\n")).collect()
}

/// Position of the first event matching `predicate`.
pub fn position(events: &[Event], predicate: impl Fn(&Event) -> bool) -> Option<usize> {
    events.iter().position(predicate)
}

/// The instance `id` in a status document.
pub fn instance<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
        .find(|i| i["id"] == id)
}

/// The service `name` in a status document.
pub fn service<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// Every instance of a status document.
pub fn instances(status: &Value) -> Vec<&Value> {
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["instances"].as_array().into_iter().flatten())
        .collect()
}

/// True when every service is `healthy` and has as many healthy instances as replicas.
pub fn all_healthy(status: &Value) -> bool {
    let Some(services) = status["services"].as_array() else {
        return false;
    };
    !services.is_empty()
        && services.iter().all(|s| {
            let instances = s["instances"].as_array().cloned().unwrap_or_default();
            s["state"] == "healthy"
                && instances.iter().all(|i| i["health"] == "healthy")
                && s["replicas"]
                    .as_u64()
                    .is_none_or(|replicas| instances.len() as u64 == replicas)
        })
}

/// `pid` of an instance in a status document.
pub fn pid_in(status: &Value, id: &str) -> Option<i32> {
    instance(status, id)?["pid"].as_i64().map(|p| p as i32)
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A stack under test: a bow.yaml in its own tempdir and a state dir of its own. Dropping it
/// runs `bow down` and then kills whatever of it is still running.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub project: String,
    /// The stack file.
    pub file: PathBuf,
    pub state_dir: PathBuf,
    /// When false, the project name is shared (an example's), so leftovers are found by the
    /// marker variable, the state dir and recorded pids only.
    unique_project: bool,
    /// (pid, start time) of every process the test saw as part of the stack.
    seen: Mutex<BTreeSet<(i32, u64)>>,
    /// Variables every `bow` command of the stack gets (e.g. `BOW_AGE_KEY_FILE`).
    env: Mutex<Vec<(String, String)>>,
}

impl Stack {
    /// A stack whose file is `project: <unique>` followed by `yaml`. In `yaml`, `{testapp}`
    /// stands for the testapp's path. `label` becomes part of the project name.
    pub fn new(label: &str, yaml: &str) -> Stack {
        let number = STACKS.fetch_add(1, Ordering::SeqCst);
        let project = format!("e2e-{label}-{}-{number}", std::process::id());
        assert!(project.len() <= 63, "label too long: {project}");
        let dir = Self::tempdir();
        let file = dir.path().join("bow.yaml");
        let text = format!(
            "project: {project}\n{}",
            yaml.replace("{testapp}", testapp().to_str().unwrap())
        );
        std::fs::write(&file, text).unwrap();
        let state_dir = dir.path().join("state");
        Stack {
            dir,
            project,
            file,
            state_dir,
            unique_project: true,
            seen: Mutex::new(BTreeSet::new()),
            env: Mutex::new(Vec::new()),
        }
    }

    /// A stack from an existing file (e.g. an example) whose project name others may share.
    pub fn from_file(file: &Path, project: &str) -> Stack {
        let dir = Self::tempdir();
        let state_dir = dir.path().join("state");
        Stack {
            dir,
            project: project.to_string(),
            file: file.to_path_buf(),
            state_dir,
            unique_project: false,
            seen: Mutex::new(BTreeSet::new()),
            env: Mutex::new(Vec::new()),
        }
    }

    /// A tempdir that services running as their own users can enter.
    fn tempdir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("bow-e2e-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Writes a file relative to the stack's directory (parents created, readable by all).
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(relative);
        let mut parent = path.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&parent).unwrap();
        while parent.starts_with(self.dir.path()) && parent != self.dir.path() {
            std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
            parent.pop();
        }
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// `bow <args> --file <file> --state-dir <state>`, run from the stack's directory.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(args, false)
    }

    /// The stack's `bow` command; `globals_first` puts `--file`/`--state-dir` before `args`.
    fn command_with(&self, args: &[&str], globals_first: bool) -> Command {
        let mut command = super::bow();
        command.current_dir(self.dir.path());
        if !globals_first {
            command.args(args);
        }
        command
            .arg("--file")
            .arg(&self.file)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if globals_first {
            command.args(args);
        }
        command
            .env(MARK_VARIABLE, &self.project)
            // Keys and scripts beside bow.yaml are no new code (code versions have unit tests).
            .env("BOW_CODE_VERSION", "e2e");
        for (name, value) in self.env.lock().unwrap().iter() {
            command.env(name, value);
        }
        command
    }

    /// [`Stack::run`] with the global flags first: `args` may end with `-- …` (`bow exec`).
    pub fn run_trailing(&self, args: &[&str], timeout: Duration) -> Ran {
        run_for(&mut self.command_with(args, true), timeout)
    }

    /// Gives every later `bow` command of the stack the variable `name`.
    pub fn set_env(&self, name: &str, value: &str) {
        let mut env = self.env.lock().unwrap();
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value.to_string()));
    }

    /// Runs `bow <args>` for at most `timeout`.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Ran {
        let ran = run_for(&mut self.command(args), timeout);
        self.remember_processes();
        ran
    }

    /// `bow up -d`.
    pub fn up(&self) -> Ran {
        self.up_within(UP_TIMEOUT)
    }

    pub fn up_within(&self, timeout: Duration) -> Ran {
        self.run(&["up", "-d"], timeout)
    }

    /// `bow up -d`, which must succeed; returns the status once every service is healthy.
    pub fn up_ok(&self) -> Value {
        let ran = self.up();
        assert!(
            ran.code == 0 && !ran.timed_out,
            "bow up -d failed: {}\n{}",
            ran.describe(),
            self.diagnose()
        );
        self.wait_status("every service healthy after up -d", WAIT, all_healthy)
    }

    /// SIGKILLs instance `<service>.<round % replicas + 1>` for each of `rounds` rounds, each
    /// time waiting until all `replicas` are healthy again (the killed one with a new pid).
    pub fn kill_instances_in_turn(&self, service: &str, replicas: u32, rounds: u32) {
        for round in 0..rounds {
            let id = format!("{service}.{}", round % replicas + 1);
            let pid = pid_in(&self.status_ok(), &id).expect("pid");
            procs::kill(pid, libc::SIGKILL);
            procs::wait_gone(pid, WAIT);
            self.wait_status("all instances healthy again", WAIT, |s| {
                (1..=replicas).all(|i| {
                    instance(s, &format!("{service}.{i}"))
                        .is_some_and(|x| x["health"] == "healthy" && x["pid"] != pid)
                })
            });
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `bow down`.
    pub fn down(&self) -> Ran {
        self.run(&["down"], Duration::from_secs(60))
    }

    /// `bow status --output json`, or `None` when it fails or prints no JSON.
    pub fn status(&self) -> Option<Value> {
        let ran = self.run(&["status", "--output", "json"], Duration::from_secs(15));
        if ran.code != 0 {
            return None;
        }
        let status: Value = serde_json::from_str(&ran.stdout).ok()?;
        let mut seen = self.seen.lock().unwrap();
        for instance in instances(&status) {
            if let Some(pid) = instance["pid"].as_i64()
                && let Some(start) = procs::start_time(pid as i32)
            {
                seen.insert((pid as i32, start));
            }
        }
        if let Some(pid) = status["agent_pid"].as_i64()
            && let Some(start) = procs::start_time(pid as i32)
        {
            seen.insert((pid as i32, start));
        }
        Some(status)
    }

    /// The status, which must be available.
    pub fn status_ok(&self) -> Value {
        match self.status() {
            Some(status) => status,
            None => {
                let ran = self.run(&["status", "--output", "json"], Duration::from_secs(15));
                panic!("bow status --output json failed: {}", ran.describe())
            }
        }
    }

    /// Polls the status (every 100 ms) until `predicate` holds; panics after `timeout`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(status) = self.status() {
                if predicate(&status) {
                    return status;
                }
                last = Some(status);
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nlast status: {}\n{}",
                    last.map(|s| serde_json::to_string_pretty(&s).unwrap())
                        .unwrap_or_else(|| "none".into()),
                    self.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of instance `id` now.
    pub fn pid(&self, id: &str) -> i32 {
        let status = self.status_ok();
        pid_in(&status, id).unwrap_or_else(|| {
            panic!(
                "no pid for {id} in {}",
                serde_json::to_string_pretty(&status).unwrap()
            )
        })
    }

    /// `bow events --output json`, in the order they happened (by id when ids are numbers).
    pub fn events(&self) -> Vec<Event> {
        let ran = self.run(&["events", "--output", "json"], Duration::from_secs(15));
        assert_eq!(ran.code, 0, "bow events failed: {}", ran.describe());
        let value: Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("bow events printed no JSON ({e}): {}", ran.describe()));
        let mut events: Vec<Event> = value
            .as_array()
            .unwrap_or_else(|| panic!("bow events --output json is not an array: {value}"))
            .iter()
            .map(Event::from_json)
            .collect();
        if events.iter().all(|e| e.id.is_i64() || e.id.is_u64()) {
            events.sort_by_key(|e| e.id.as_i64().unwrap_or(i64::MAX));
        } else {
            events.sort_by_key(|e| e.at_ms);
        }
        events
    }

    /// Polls the events until one matches; returns all events then.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if events.iter().any(&predicate) {
                return events;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for the event: {what}\nevents:\n{}\n{}",
                    show_events(&events),
                    self.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid in `<state-dir>/agent.pid`, when there is one.
    pub fn agent_pid_file(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir.join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `logs/<instance>.log` and its rotations, oldest first, parsed.
    pub fn log_lines(&self, instance: &str) -> Vec<procs::LogLine> {
        procs::read_log_files(&self.state_dir.join("logs"), instance)
    }

    /// Waits until `instance`'s log file has at least `count` lines containing `needle`.
    pub fn wait_log(
        &self,
        instance: &str,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<procs::LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_lines(instance);
            if lines.iter().filter(|l| l.text.contains(needle)).count() >= count {
                return lines;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {count} lines with {needle:?} in the log of {instance}; it has:\n{}\n{}",
                    lines
                        .iter()
                        .map(|l| format!("  {} {}\n", l.time, l.text))
                        .collect::<String>(),
                    self.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every live process that belongs to this stack: instances (by `BOW_PROJECT` or their
    /// cgroup), the agent and shims (by the marker variable or the state dir in their command
    /// line), and any pid seen in a status before.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        let seen = self.seen.lock().unwrap().clone();
        let state_dir = self.state_dir.to_string_lossy().into_owned();
        let mark = format!("{MARK_VARIABLE}={}", self.project);
        let project_env = format!("BOW_PROJECT={}", self.project);
        let cgroup = format!("/bow/{}/", self.project);
        let own = std::process::id() as i32;
        procs::all_processes()
            .into_iter()
            .filter(|p| p.pid != own && p.is_alive())
            .filter(|p| {
                seen.contains(&(p.pid, p.start_time))
                    || p.environ.contains(&mark)
                    || p.cmdline.iter().any(|a| a.contains(&state_dir))
                    || (self.unique_project
                        && (p.environ.contains(&project_env) || p.cgroup.contains(&cgroup)))
            })
            .collect()
    }

    /// The processes of instance `id` (by `BOW_INSTANCE` in their environment).
    pub fn instance_processes(&self, id: &str) -> Vec<ProcessInfo> {
        let variable = format!("BOW_INSTANCE={id}");
        self.processes()
            .into_iter()
            .filter(|p| p.environ.contains(&variable))
            .collect()
    }

    /// Remembers the stack's current processes, so cleanup finds them even when their
    /// environment is unreadable later.
    fn remember_processes(&self) {
        if !self.unique_project {
            return;
        }
        let found = self.processes();
        let mut seen = self.seen.lock().unwrap();
        for p in found {
            seen.insert((p.pid, p.start_time));
        }
    }

    /// Status, events, the agent's log tail: what a failing assertion should show.
    pub fn diagnose(&self) -> String {
        let status = run_for(&mut self.command(&["status"]), Duration::from_secs(10));
        let events = run_for(&mut self.command(&["events"]), Duration::from_secs(10));
        let agent_log =
            std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = agent_log.lines().rev().take(30).collect();
        format!(
            "--- bow status\n{}{}--- bow events\n{}{}--- agent.log (last lines)\n{}\n",
            status.stdout,
            status.stderr,
            events.stdout,
            events.stderr,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Asserts that nothing of the stack runs (waiting up to 10 s for processes to go).
    pub fn assert_nothing_runs(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "processes of {} are still running:\n{}",
                    self.project,
                    left.iter().map(|p| format!("  {p}\n")).collect::<String>()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = run_for(&mut self.command(&["down"]), Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for p in &left {
                    eprintln!("cleanup: killing leftover {p}");
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(p.pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.unique_project {
            procs::remove_project_cgroups(&self.project);
        }
    }
}
