//! Starting an instance: resolve the user and cgroup, launch the shim detached, wait for its answer.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::{self, CgroupPlacement};
use crate::error::{DriverError, Result};
use crate::files;
use crate::handle::{EXIT_FILE, InstanceHandle, ProcessState, SHIM_LOG_FILE, STATE_FILE};
use crate::shim::protocol::{ShimConfig, ShimReply};
use crate::spec::{InstanceSpec, ShimCommand};
use crate::users;

/// How long `start` waits for the shim to report that the service was exec'd.
pub const SHIM_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts one instance and returns once its process was exec'd (or with the reason it could
/// not be). The process runs under a shim in its own session, so it outlives the caller.
///
/// As root: the user named in the spec is created when missing and the service runs as it
/// (`user: None` runs it as root); the instance gets a cgroup with the spec's limits. Not
/// root: it runs as the current user, `user` is ignored, and limits are an error.
pub fn start(spec: &InstanceSpec, shim: &ShimCommand) -> Result<InstanceHandle> {
    spec.validate()?;
    let run_dir = spec.instance_run_dir();
    files::create_dir_with_mode(&run_dir, 0o750)?;
    std::fs::create_dir_all(&spec.log_dir)
        .map_err(|e| DriverError::io(format!("creating {}", spec.log_dir.display()), e))?;
    refuse_if_running(&run_dir, &spec.instance_id)?;
    files::remove_file_if_exists(&run_dir.join(STATE_FILE))?;
    files::remove_file_if_exists(&run_dir.join(EXIT_FILE))?;

    let root = users::is_root();
    let (user, switch_user) = match (&spec.user, root) {
        (Some(name), true) => (users::ensure_system_user(name)?, true),
        _ => (users::current_user()?, false),
    };
    let layout = if root {
        cgroup::detect_layout()
    } else if spec.resources.is_empty() {
        None
    } else {
        return Err(DriverError::CgroupUnavailable(
            "bow is not running as root".into(),
        ));
    };
    let placement = cgroup::create_instance_cgroup(
        layout.as_ref(),
        &spec.cgroup_parent,
        &spec.project,
        &spec.instance_id,
        &spec.resources,
    )?;
    let secrets_dir = (!spec.secrets.is_empty()).then(|| {
        crate::secret_files::project_secrets_base(&spec.project, &spec.run_dir, root)
            .join(&spec.instance_id)
    });
    let mut env = spec.effective_env(&user.name, &user.home);
    if let Some(dir) = &secrets_dir {
        env.insert(
            crate::SECRETS_DIR_ENV.to_string(),
            dir.display().to_string(),
        );
    }
    let config = ShimConfig {
        project: spec.project.clone(),
        service: spec.service.clone(),
        index: spec.index,
        instance_id: spec.instance_id.clone(),
        release: spec.release,
        argv: spec.argv.clone(),
        working_dir: spec.working_dir.clone(),
        env,
        run_dir: run_dir.clone(),
        log_dir: spec.log_dir.clone(),
        log_rotation: spec.log_rotation,
        cgroup: placement.clone(),
        join_cgroup_before_exec: !spec.resources.is_empty(),
        user: user.name.clone(),
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
        switch_user,
        hosts_file: spec.hosts_file.clone().filter(|_| root),
        secrets_dir,
        secrets: spec.secrets.clone(),
        sandbox: spec.sandbox.clone(),
        stop_signal: spec.stop_signal,
    };
    let result = run_shim(shim, &config, &run_dir.join(SHIM_LOG_FILE));
    if result.is_err()
        && let Some(placement) = &placement
    {
        discard_cgroup(placement);
    }
    result
}

/// An instance id can only run once: a live process recorded in `state.json` is an error.
/// A shim still cleaning up after its service exited is given a moment to finish, so that
/// it cannot remove the cgroup of the new run.
fn refuse_if_running(run_dir: &Path, instance_id: &str) -> Result<()> {
    // An unreadable or malformed state file belongs to no live process we could verify.
    let Ok(Some(previous)) = InstanceHandle::load(run_dir) else {
        return Ok(());
    };
    if crate::status::verify(&previous)? == ProcessState::Running {
        return Err(DriverError::AlreadyRunning {
            instance: instance_id.to_string(),
            pid: previous.pid,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::status::verify_shim(&previous)? == ProcessState::Running {
        if Instant::now() >= deadline {
            return Err(DriverError::AlreadyRunning {
                instance: instance_id.to_string(),
                pid: previous.shim_pid,
            });
        }
        // The shim exits right after recording the exit; a restart waits on this loop.
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

fn run_shim(shim: &ShimCommand, config: &ShimConfig, shim_log: &Path) -> Result<InstanceHandle> {
    let shim_error = |message: String| DriverError::Shim {
        instance: config.instance_id.clone(),
        message,
        log: shim_log.to_path_buf(),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(shim_log)
        .map_err(|e| DriverError::io(format!("opening {}", shim_log.display()), e))?;
    let mut command = Command::new(&shim.program);
    if shim.program == Path::new("/proc/self/exe") {
        // Show the binary's name in `ps`, not "/proc/self/exe".
        let name = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_name().map(|name| name.to_owned()));
        command.arg0(name.unwrap_or_else(|| "bow".into()));
    }
    command
        .args(&shim.args)
        .arg(&config.instance_id)
        .env_clear()
        .env("PATH", crate::spec::DEFAULT_PATH)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it gives the shim its own session so that signals
    // to the agent's process group or terminal never reach it.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| shim_error(format!("could not run {}: {e}", shim.program.display())))?;
    let input = serde_json::to_vec(config)
        .map_err(|e| shim_error(format!("encoding its configuration: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A shim that died at once shows up as a missing reply below.
        let _ = stdin.write_all(&input);
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let reply = read_reply_line(stdout, Instant::now() + SHIM_REPLY_TIMEOUT);
    reap_first_shim_process(&mut child);
    let line = reply.map_err(shim_error)?;
    match serde_json::from_slice::<ShimReply>(&line) {
        Ok(ShimReply::Started(handle)) => Ok(*handle),
        Ok(ShimReply::Failed(failure)) => {
            Err(failure.into_error(&config.instance_id, shim_log.to_path_buf()))
        }
        Err(error) => Err(shim_error(format!(
            "its answer {:?} was not understood ({error}); is {} a bow shim?",
            String::from_utf8_lossy(&line),
            shim.program.display()
        ))),
    }
}

/// Reads up to the first newline, giving up at `deadline`.
fn read_reply_line(
    mut stdout: ChildStdout,
    deadline: Instant,
) -> std::result::Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(newline) = line.iter().position(|&b| b == b'\n') {
            line.truncate(newline);
            return Ok(line);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "it did not answer within {}s",
                SHIM_REPLY_TIMEOUT.as_secs()
            ));
        }
        let mut poll_fd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
        if ready <= 0 {
            continue; // timeout (re-checked above) or EINTR
        }
        match stdout.read(&mut chunk) {
            Ok(0) if line.is_empty() => return Err("it exited without answering".into()),
            Ok(0) => return Ok(line),
            Ok(read) => line.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("reading its answer: {error}")),
        }
    }
}

/// The first shim process exits right after forking the long-lived one; reap it. A program
/// that is not a shim and keeps running is killed.
fn reap_first_shim_process(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills whatever runs in a cgroup created for a start that failed, and removes it.
fn discard_cgroup(placement: &CgroupPlacement) {
    placement.kill_all(Duration::from_secs(2));
    let _ = placement.remove();
}
