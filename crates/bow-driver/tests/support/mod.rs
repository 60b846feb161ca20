//! Shared helpers for the driver's integration tests: sandboxes, the testapp, HTTP, waiting.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bow_driver::cgroup::{detect_layout, project_cgroups, remove_project_cgroups};
use bow_driver::{InstanceHandle, InstanceSpec, ProcessState, ShimCommand};

pub const SHIM: &str = env!("CARGO_BIN_EXE_bow-driver-shim");
pub const STARTER: &str = env!("CARGO_BIN_EXE_bow-driver-starter");

pub fn shim() -> ShimCommand {
    ShimCommand {
        program: SHIM.into(),
        args: vec![],
    }
}

/// The `bow-testapp` binary next to this test's target directory, built on demand when a
/// narrower `cargo test -p bow-driver` did not build it.
pub fn testapp() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = profile_dir.join("bow-testapp");
    if !path.exists() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bow-testapp/Cargo.toml");
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--bin",
                "bow-testapp",
                "--manifest-path",
            ])
            .arg(manifest)
            .status()
            .unwrap();
        assert!(status.success(), "building bow-testapp failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn is_root() -> bool {
    bow_driver::users::is_root()
}

static SANDBOXES: AtomicU32 = AtomicU32::new(0);

/// A temp dir and a unique project name; on drop, kills whatever the test left running and
/// removes the project's cgroups.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub project: String,
    handles: std::sync::Mutex<Vec<InstanceHandle>>,
}

impl Sandbox {
    /// Also makes the test process a child subreaper, so that the shims it starts are its
    /// children to reap (pid 1 of some containers never reaps orphans).
    pub fn new() -> Sandbox {
        bow_driver::become_subreaper().unwrap();
        let number = SANDBOXES.fetch_add(1, Ordering::SeqCst);
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            project: format!("test-{}-{number}", std::process::id()),
            handles: std::sync::Mutex::new(vec![]),
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn spec(&self, service: &str, argv: &[&str]) -> InstanceSpec {
        let argv = argv.iter().map(|arg| arg.to_string()).collect();
        let mut spec = InstanceSpec::new(
            &self.project,
            service,
            0,
            argv,
            &self.run_dir(),
            &self.log_dir(),
        );
        spec.working_dir = self.dir.path().to_path_buf();
        spec.stop_timeout = Duration::from_secs(5);
        spec
    }

    /// A spec running the testapp on a free port; returns it with the port.
    pub fn testapp_spec(&self, service: &str, env: &[(&str, &str)]) -> (InstanceSpec, u16) {
        let port = free_port();
        let mut spec = self.spec(service, &[testapp().to_str().unwrap()]);
        spec.env.insert("PORT".into(), port.to_string());
        spec.env.insert("BOW_SERVICE".into(), service.into());
        spec.env
            .insert("BOW_INSTANCE".into(), spec.instance_id.clone());
        for (name, value) in env {
            spec.env.insert(name.to_string(), value.to_string());
        }
        (spec, port)
    }

    /// Starts through the real driver and remembers the handle for cleanup.
    pub fn start(&self, spec: &InstanceSpec) -> bow_driver::Result<InstanceHandle> {
        let handle = bow_driver::start(spec, &shim())?;
        self.track(handle.clone());
        Ok(handle)
    }

    pub fn track(&self, handle: InstanceHandle) {
        self.handles.lock().unwrap().push(handle);
    }

    /// Asserts that nothing of the sandbox's instances is left: processes, shims, cgroups.
    pub fn assert_clean(&self) {
        for handle in self.handles.lock().unwrap().iter() {
            wait_for("the service to be gone", Duration::from_secs(10), || {
                bow_driver::verify(handle).unwrap() != ProcessState::Running
            });
            wait_for("the shim to be gone", Duration::from_secs(10), || {
                bow_driver::verify_shim(handle).unwrap() != ProcessState::Running
            });
            bow_driver::reap_shim(handle);
            if let Some(cgroup) = &handle.cgroup {
                assert!(cgroup.is_removed(), "cgroup left behind: {:?}", cgroup.dirs);
            }
        }
        if let Some(layout) = detect_layout().filter(|_| is_root()) {
            assert_eq!(project_cgroups(&layout, "bow", &self.project), vec![]);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for handle in self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = bow_driver::kill_instance(handle);
            bow_driver::reap_shim(handle);
        }
        if let Some(layout) = detect_layout().filter(|_| is_root()) {
            for cgroup in project_cgroups(&layout, "bow", &self.project) {
                cgroup.kill_all(Duration::from_secs(5));
            }
            let _ = remove_project_cgroups(&layout, "bow", &self.project);
        }
        // Shims of failed starts exit at once; as their subreaper, this process reaps them.
        let mut status = 0;
        // SAFETY: non-blocking reaping of children that already exited.
        while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
    }
}

/// Polls `condition` every 10 ms; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET path` on 127.0.0.1:port, retried until the server answers (at most 10 s).
/// Returns the status and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_http_get(port, path) {
            Ok(answer) => return answer,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("GET http://127.0.0.1:{port}{path} failed: {error}"),
        }
    }
}

pub fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until the instance's log has a line containing `needle`; returns that line's text.
pub fn wait_for_log_line(spec: &InstanceSpec, needle: &str) -> bow_driver::logs::LogLine {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = bow_driver::logs::read_instance_log(
            &spec.log_dir,
            &spec.instance_id,
            Default::default(),
        )
        .unwrap();
        if let Some(line) = lines.into_iter().find(|line| line.text.contains(needle)) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line containing {needle:?} within 10s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the shim recorded the exit.
pub fn wait_for_exit(handle: &InstanceHandle) -> bow_driver::InstanceExit {
    let mut exit = None;
    wait_for("the exit to be recorded", Duration::from_secs(15), || {
        exit = bow_driver::exit_status(handle).unwrap();
        exit.is_some()
    });
    exit.unwrap()
}

/// Runs `bow-driver-starter start <spec.json>` through `command_prefix` (e.g. `setpriv ...`)
/// and returns the starter (still running, sleeping) with the handle it printed, or its
/// stderr when it failed.
pub fn run_starter(
    command_prefix: &[&str],
    spec: &InstanceSpec,
    spec_path: &Path,
) -> Result<(std::process::Child, InstanceHandle), String> {
    use std::io::BufRead;
    std::fs::write(spec_path, serde_json::to_string(spec).unwrap()).unwrap();
    let mut argv: Vec<&str> = command_prefix.to_vec();
    argv.extend([STARTER, "start", spec_path.to_str().unwrap()]);
    let mut starter = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = starter.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the starter printed nothing within 20s");
    match serde_json::from_str(&line) {
        Ok(handle) => Ok((starter, handle)),
        Err(_) => {
            let _ = starter.kill();
            let _ = starter.wait();
            let mut stderr = String::new();
            starter
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            Err(stderr)
        }
    }
}
