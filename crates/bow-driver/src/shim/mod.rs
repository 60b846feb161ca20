//! The per-instance shim (like conmon): runs the service, captures its output, records its exit.
//!
//! The driver starts `<shim program> <args...> <instance_id>` in a new session and writes a
//! [`protocol::ShimConfig`] to its stdin. The shim then:
//! 1. forks; the first process exits at once (the driver reaps it), the second lives on,
//!    orphaned, in its own session: it survives the agent, even a SIGKILLed one;
//! 2. becomes a child subreaper, so the service's orphaned descendants are its to reap;
//! 3. forks and execs the service in its own process group (cgroup joined and user switched
//!    before exec), writes `state.json` and answers one JSON [`protocol::ShimReply`] line on
//!    stdout, then points stdin and stdout at /dev/null;
//! 4. appends every output line, timestamped, to `<log_dir>/<instance_id>.log` (rotated);
//! 5. when the service exits: stops what is left of its process group and cgroup, removes the
//!    cgroup, writes `exit.json` (written last: its presence means the shim is done) and exits.
//!
//! SIGTERM, SIGINT or SIGHUP sent to the shim are forwarded as SIGTERM to the service's group.
//! The shim is single-threaded until the service is exec'd, so forking is safe.

pub mod log_writer;
pub mod protocol;
pub mod redact;
pub mod service;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use crate::cgroup::CgroupPlacement;
use crate::handle::{EXIT_FILE, InstanceExit, InstanceHandle, STATE_FILE};
use crate::logs::LogStream;
use crate::procfs;
use crate::timestamp::{format_rfc3339_micros, unix_millis};
use log_writer::RotatingLog;
use protocol::{ExitRecord, ShimConfig, ShimReply, StartFailure};

/// How long leftover processes get between SIGTERM and SIGKILL once the main process exited.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);
/// How long the shim waits for the output pipes to close after everything was killed.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The service's process group, for the signal handler that forwards SIGTERM.
static SERVICE_PGID: AtomicI32 = AtomicI32::new(0);
/// The instance id, for lines in the shim's own log.
static INSTANCE_ID: Mutex<String> = Mutex::new(String::new());

/// Entry point of the shim. `args` are the arguments after the shim subcommand: exactly one,
/// the instance id (shown by `ps`); the configuration arrives on stdin. Never returns.
pub fn shim_main(args: &[OsString]) -> ! {
    let code = match args {
        [instance_id] => {
            *INSTANCE_ID.lock().unwrap_or_else(|p| p.into_inner()) =
                instance_id.to_string_lossy().into_owned();
            run()
        }
        _ => {
            eprintln!(
                "usage: shim <instance-id>, with the JSON configuration on stdin (bow starts this itself)"
            );
            2
        }
    };
    std::process::exit(code)
}

/// Writes a timestamped line to the shim's stderr (`<run_dir>/<instance_id>/shim.log`).
pub(crate) fn shim_log(message: &str) {
    let instance = INSTANCE_ID.lock().map(|id| id.clone()).unwrap_or_default();
    eprintln!(
        "{} shim[{}] {instance}: {message}",
        format_rfc3339_micros(SystemTime::now()),
        std::process::id()
    );
}

fn run() -> i32 {
    // SAFETY: the shim is single-threaded here; the parent only calls _exit.
    match unsafe { libc::fork() } {
        -1 => {
            let message = format!("fork failed: {}", std::io::Error::last_os_error());
            reply(&ShimReply::Failed(StartFailure::Shim { message }));
            return 1;
        }
        0 => {}
        // SAFETY: leave without running destructors or flushing buffers shared with the child.
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: plain syscalls. close_range marks inherited descriptors close-on-exec so the
    // service never inherits the agent's files (errors are harmless: old kernels lack it).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let config = match read_config() {
        Ok(config) => config,
        Err(message) => {
            shim_log(&message);
            reply(&ShimReply::Failed(StartFailure::Shim { message }));
            return 1;
        }
    };
    supervise(config)
}

fn read_config() -> Result<ShimConfig, String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the configuration from stdin: {e}"))?;
    let config: ShimConfig = serde_json::from_slice(&input)
        .map_err(|e| format!("malformed configuration on stdin: {e}"))?;
    if config.argv.is_empty() {
        return Err("the configuration has an empty argv".into());
    }
    Ok(config)
}

/// Sends the one reply line to the driver.
fn reply(reply: &ShimReply) {
    let mut line =
        serde_json::to_string(reply).unwrap_or_else(|e| format!("{{\"unserializable\":\"{e}\"}}"));
    line.push('\n');
    let mut stdout = std::io::stdout().lock();
    // The driver may be gone (killed mid-start): nothing to do about it.
    let _ = stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush());
}

fn supervise(config: ShimConfig) -> i32 {
    let fail = |failure: StartFailure| {
        shim_log(&format!("could not start: {failure:?}"));
        reply(&ShimReply::Failed(failure));
        1
    };
    let log = match RotatingLog::open(&config.log_dir, &config.instance_id, config.log_rotation) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(error) => {
            let message = format!(
                "cannot open the log file in {}: {error}",
                config.log_dir.display()
            );
            return fail(StartFailure::Shim { message });
        }
    };
    if let Some(dir) = &config.secrets_dir {
        match crate::secret_files::deliver(dir, &config.secrets, config.uid, config.gid, is_root())
        {
            Ok(Some(note)) => shim_log(&note),
            Ok(None) => {}
            Err(message) => return fail(StartFailure::Shim { message }),
        }
    }
    let remove_secrets = || {
        if let Some(dir) = &config.secrets_dir
            && let Err(error) = crate::secret_files::remove(dir)
        {
            shim_log(&format!("could not remove {}: {error}", dir.display()));
        }
    };
    let spawning = Instant::now();
    let mut child = match service::spawn_service(&config) {
        Ok(child) => child,
        Err(failure) => {
            remove_secrets();
            return fail(failure);
        }
    };
    let pid = child.id() as i32;
    let handle = match describe(&config, pid) {
        Ok(handle) => handle,
        Err(message) => {
            let _ = child.kill();
            let _ = child.wait();
            remove_secrets();
            return fail(StartFailure::Shim { message });
        }
    };
    if let Err(error) =
        crate::files::write_json_atomic(&config.run_dir.join(STATE_FILE), &handle, 0o644)
    {
        let _ = child.kill();
        let _ = child.wait();
        remove_secrets();
        return fail(StartFailure::Shim {
            message: error.to_string(),
        });
    }
    SERVICE_PGID.store(handle.pgid, Ordering::SeqCst);
    install_signal_forwarding();
    // How long fork, confinement and exec took (bench/sandbox.sh reads it).
    let sandbox = config.sandbox.as_ref().map_or("off", |s| s.level.as_str());
    shim_log(&format!(
        "started pid {pid} in {} us (sandbox {sandbox}): {:?}",
        spawning.elapsed().as_micros(),
        config.argv
    ));
    reply(&ShimReply::Started(Box::new(handle.clone())));
    detach_stdio();
    service::join_cgroup_after_exec(&config, pid);

    let (done_sender, pumps_done) = mpsc::channel();
    let pipes = [
        child
            .stdout
            .take()
            .map(|pipe| (Box::new(pipe) as Box<dyn Read + Send>, LogStream::Stdout)),
        child
            .stderr
            .take()
            .map(|pipe| (Box::new(pipe) as Box<dyn Read + Send>, LogStream::Stderr)),
    ];
    let pump_count = pipes.iter().flatten().count();
    for (pipe, stream) in pipes.into_iter().flatten() {
        let log = Arc::clone(&log);
        let done = done_sender.clone();
        let redactor = redact::Redactor::new(&config.secrets);
        std::thread::spawn(move || {
            log_writer::pump(pipe, stream, log, redactor);
            let _ = done.send(());
        });
    }

    let status = wait_for_main_process(pid);
    let killed_by_sigkill = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
    let oom_killed = config
        .cgroup
        .as_ref()
        .is_some_and(|cgroup| cgroup.oom_killed(killed_by_sigkill));
    stop_leftovers(handle.pgid, config.cgroup.as_ref());
    let drain_deadline = Instant::now() + PIPE_DRAIN_TIMEOUT;
    for _ in 0..pump_count {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        if pumps_done.recv_timeout(left).is_err() {
            shim_log(
                "output pipes are still open (a process outside the group holds them); not waiting",
            );
            break;
        }
    }
    if let Some(placement) = &config.cgroup
        && let Err(error) = placement.remove()
    {
        shim_log(&format!("could not remove the cgroup: {error}"));
    }
    remove_secrets();
    let exit = InstanceExit {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        oom_killed,
        exited_at_unix_ms: unix_millis(SystemTime::now()),
    };
    shim_log(&format!("pid {pid} {exit}"));
    let record = ExitRecord {
        pid,
        start_time: handle.start_time,
        exit,
    };
    if let Err(error) =
        crate::files::write_json_atomic(&config.run_dir.join(EXIT_FILE), &record, 0o644)
    {
        shim_log(&format!("could not record the exit: {error}"));
        return 1;
    }
    0
}

/// Builds the handle from what `/proc` says about the service and the shim.
fn describe(config: &ShimConfig, pid: i32) -> Result<InstanceHandle, String> {
    let read = |pid: i32| match procfs::read_stat(pid) {
        Ok(Some(stat)) => Ok(stat),
        Ok(None) => Err(format!(
            "process {pid} vanished before it could be described"
        )),
        Err(error) => Err(format!("reading /proc/{pid}/stat: {error}")),
    };
    let service = read(pid)?;
    let shim = read(std::process::id() as i32)?;
    Ok(InstanceHandle {
        project: config.project.clone(),
        service: config.service.clone(),
        index: config.index,
        instance_id: config.instance_id.clone(),
        release: config.release,
        pid,
        start_time: service.start_time,
        pgid: service.pgid,
        shim_pid: shim.pid,
        shim_start_time: shim.start_time,
        run_dir: config.run_dir.clone(),
        log_path: crate::logs::current_log_path(&config.log_dir, &config.instance_id),
        cgroup: config.cgroup.clone(),
        user: config.user.clone(),
        uid: config.uid,
        gid: config.gid,
        started_at_unix_ms: unix_millis(SystemTime::now()),
        secrets_dir: config.secrets_dir.clone(),
        sandbox: config.sandbox.clone().map(Box::new),
        stop_signal: config.stop_signal,
    })
}

extern "C" fn forward_termination(_signal: libc::c_int) {
    let pgid = SERVICE_PGID.load(Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
}

fn install_signal_forwarding() {
    // SAFETY: installs a handler that only calls kill; SA_RESTART keeps reads going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = forward_termination as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Points stdin and stdout at /dev/null: the driver has its answer and may go away.
fn detach_stdio() {
    // SAFETY: dup2 onto the standard descriptors; the Rust stdout buffer was flushed.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// Reaps children until the main process exits; orphaned descendants (the shim is a
/// subreaper) are reaped on the way. Returns the raw wait status.
fn wait_for_main_process(pid: i32) -> libc::c_int {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status of a reaped child.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == pid {
            return status;
        }
        if reaped < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            shim_log(&format!("waitpid failed: {error}"));
            return 0;
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn reap_orphans() {
    let mut status = 0;
    // SAFETY: non-blocking reaping of already-exited children.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// After the main process exited: SIGTERM what is left of its process group and cgroup, wait
/// [`LEFTOVER_GRACE`], then SIGKILL.
fn stop_leftovers(pgid: i32, cgroup: Option<&CgroupPlacement>) {
    let remaining = || {
        reap_orphans();
        // SAFETY: signal 0 only checks whether the group has members.
        let group_alive = unsafe { libc::kill(-pgid, 0) } == 0;
        group_alive || cgroup.is_some_and(|c| !c.pids().is_empty())
    };
    if !remaining() {
        return;
    }
    shim_log("the main process exited; stopping the processes it left behind");
    let signal_all = |signal| {
        // SAFETY: the group's leader was ours; the id cannot be reused while members live.
        unsafe { libc::kill(-pgid, signal) };
        if let Some(cgroup) = cgroup {
            cgroup.signal_all(signal);
        }
    };
    signal_all(libc::SIGTERM);
    let deadline = Instant::now() + LEFTOVER_GRACE;
    while remaining() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + LEFTOVER_GRACE;
    while remaining() && Instant::now() < deadline {
        signal_all(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
}
