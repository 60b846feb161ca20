//! The process table's view of a run dir: every live process of one of its instances, found
//! without trusting `state.json` (shims by the `shim.log` their stderr points to, services
//! by marker variables in their environment), so that a process no handle accounts for (a
//! shim killed with its agent before it wrote `state.json`, a handle overwritten) is found
//! and stopped instead of holding its instance id unseen.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::handle::{InstanceHandle, SHIM_LOG_FILE};
use crate::procfs;

/// One live process that belongs to an instance of a run dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunProcess {
    pub pid: i32,
    /// With the pid, names the process uniquely (signals are sent only while it matches).
    pub start_time: u64,
    pub pgid: i32,
    pub session: i32,
    /// `web.1`: from the shim's log path, or from the instance variable of the environment.
    pub instance_id: String,
    /// The instance's shim (else a process of the service).
    pub shim: bool,
}

/// What identifies the processes of one run dir's instances in `/proc`.
#[derive(Debug, Clone)]
pub struct Markers<'a> {
    /// `<state-dir>/run`: a shim's stderr is `<run_dir>/<instance>/shim.log`.
    pub run_dir: &'a Path,
    /// Variables every service process of the run dir carries, all of which must match
    /// (`BOW_PROJECT`, `BOW_ENV`).
    pub environment: &'a [(&'a str, &'a str)],
    /// The variable that names the instance (`BOW_INSTANCE`).
    pub instance_variable: &'a str,
}

/// Every live process of the run dir's instances (never the calling process). A process
/// whose environment carries the markers but whose session holds another run dir's shim (a
/// second state dir of the same project and environment) is not one of them.
pub fn list(markers: &Markers<'_>) -> Vec<RunProcess> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut foreign_sessions = BTreeSet::new();
    let own_pid_namespace = std::fs::read_link("/proc/self/ns/pid").ok();
    for pid in entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
    {
        let Ok(Some(stat)) = procfs::read_stat(pid) else {
            continue;
        };
        if !stat.is_alive() {
            continue;
        }
        let log = std::fs::read_link(format!("/proc/{pid}/fd/2")).ok();
        let (instance_id, shim) = match log
            .as_deref()
            .map(|log| shim_instance(markers.run_dir, log))
        {
            Some(ShimOf::Ours(id)) => (id, true),
            Some(ShimOf::Foreign) => {
                foreign_sessions.insert(stat.session);
                continue;
            }
            Some(ShimOf::NotAShim) | None => {
                // A process of another pid namespace runs in a container (the container
                // driver's, whose environment carries the same markers): not ours.
                if own_pid_namespace.is_some()
                    && std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != own_pid_namespace
                {
                    continue;
                }
                let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                    continue;
                };
                match instance_in_environ(&environ, markers) {
                    Some(id) => (id, false),
                    None => continue,
                }
            }
        };
        found.push(RunProcess {
            pid,
            start_time: stat.start_time,
            pgid: stat.pgid,
            session: stat.session,
            instance_id,
            shim,
        });
    }
    found.retain(|p| p.shim || !foreign_sessions.contains(&p.session));
    found
}

/// Whose shim a process is, by the log its stderr points to.
#[derive(Debug, PartialEq, Eq)]
enum ShimOf {
    /// A shim of an instance of this run dir.
    Ours(String),
    /// A shim of another run dir.
    Foreign,
    NotAShim,
}

/// Whose shim a process whose stderr is `log` is.
fn shim_instance(run_dir: &Path, log: &Path) -> ShimOf {
    if log.file_name().is_none_or(|name| name != SHIM_LOG_FILE) {
        return ShimOf::NotAShim;
    }
    let Some(dir) = log.parent() else {
        return ShimOf::NotAShim;
    };
    match dir.file_name().and_then(|id| id.to_str()) {
        Some(id) if dir.parent() == Some(run_dir) => ShimOf::Ours(id.to_string()),
        _ => ShimOf::Foreign,
    }
}

/// The instance an environment block (`NAME=value\0…`) names, when it carries every marker.
fn instance_in_environ(environ: &[u8], markers: &Markers<'_>) -> Option<String> {
    let variables: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    let value_of = |name: &str| {
        variables.iter().find_map(|entry| {
            let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            std::str::from_utf8(rest).ok()
        })
    };
    let marked = markers
        .environment
        .iter()
        .all(|(name, value)| value_of(name) == Some(*value));
    if !marked {
        return None;
    }
    value_of(markers.instance_variable)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// The processes of `found` that no handle accounts for. `named` are every handle of the run
/// dir: their shims, and every process in a session of one of those shims, are accounted for
/// (a shim whose service ended may still be stopping what is left of it). `live` are the
/// handles whose service runs: their process groups are accounted for.
pub fn unaccounted(
    found: &[RunProcess],
    named: &[InstanceHandle],
    live: &[InstanceHandle],
) -> Vec<RunProcess> {
    let is_named_shim = |p: &RunProcess| {
        p.shim
            && named
                .iter()
                .any(|h| h.shim_pid == p.pid && h.shim_start_time == p.start_time)
    };
    let groups: BTreeSet<i32> = live.iter().map(|h| h.pgid).collect();
    let sessions: BTreeSet<i32> = found
        .iter()
        .filter(|p| is_named_shim(p))
        .map(|p| p.session)
        .collect();
    found
        .iter()
        .filter(|p| {
            !is_named_shim(p) && !groups.contains(&p.pgid) && !sessions.contains(&p.session)
        })
        .cloned()
        .collect()
}

/// Stops processes that no handle accounts for: SIGTERM to the services (their shims pass
/// it on, record the exit and leave), up to `timeout`, then SIGKILL to whatever of them is
/// left, shims included. Returns once all are gone (or after 5 s more). A process whose start
/// time no longer matches is another process: it is never signalled.
pub fn stop(processes: &[RunProcess], timeout: Duration) {
    let signal_all = |signal: i32, shims: bool| {
        for process in processes.iter().filter(|p| shims || !p.shim) {
            if same_process(process) {
                // SAFETY: the pid names the very process found (start time checked).
                unsafe { libc::kill(process.pid, signal) };
            }
        }
    };
    let all_gone = || !processes.iter().any(same_process);
    signal_all(libc::SIGTERM, false);
    let deadline = Instant::now() + timeout;
    // The shims leave by themselves once their service is gone.
    while !all_gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_gone() && Instant::now() < deadline {
        signal_all(libc::SIGKILL, true);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn same_process(process: &RunProcess) -> bool {
    procfs::read_stat(process.pid)
        .ok()
        .flatten()
        .is_some_and(|stat| stat.start_time == process.start_time && stat.is_alive())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn process(pid: i32, pgid: i32, session: i32, id: &str, shim: bool) -> RunProcess {
        RunProcess {
            pid,
            start_time: 1000 + pid as u64,
            pgid,
            session,
            instance_id: id.to_string(),
            shim,
        }
    }

    fn handle(id: &str, pid: i32, shim_pid: i32) -> InstanceHandle {
        InstanceHandle {
            project: "p-e".into(),
            service: "web".into(),
            index: 1,
            instance_id: id.into(),
            release: 1,
            pid,
            start_time: 1000 + pid as u64,
            pgid: pid,
            shim_pid,
            shim_start_time: 1000 + shim_pid as u64,
            run_dir: PathBuf::from("/s/run").join(id),
            log_path: PathBuf::from("/s/logs").join(format!("{id}.log")),
            cgroup: None,
            user: "u".into(),
            uid: 1,
            gid: 1,
            started_at_unix_ms: 0,
            secrets_dir: None,
            sandbox: None,
            stop_signal: None,
        }
    }

    #[test]
    fn a_handles_shim_group_and_session_are_accounted_for() {
        let found = vec![
            // web.1: shim 10 (session 9), service 11 and a worker of its group.
            process(10, 9, 9, "web.1", true),
            process(11, 11, 9, "web.1", false),
            process(12, 11, 9, "web.1", false),
            // A child that left the group but not the session.
            process(13, 13, 9, "web.1", false),
            // web.3: a service whose state.json names another process (a stray).
            process(21, 21, 19, "web.3", false),
            process(20, 19, 19, "web.3", true),
            // web.4: a shim still starting (no state.json yet).
            process(30, 29, 29, "web.4", true),
        ];
        let live = vec![handle("web.1", 11, 10)];
        let strays: Vec<i32> = unaccounted(&found, &live, &live)
            .iter()
            .map(|p| p.pid)
            .collect();
        assert_eq!(strays, [21, 20, 30]);
        assert_eq!(unaccounted(&found, &[], &[]).len(), found.len());
        // A handle whose service ended still accounts for its shim, which may be stopping
        // what is left in its session, but not for its old process group.
        let ended = vec![handle("web.3", 21, 20)];
        let strays: Vec<i32> = unaccounted(&found, &ended, &[])
            .iter()
            .map(|p| p.pid)
            .collect();
        assert_eq!(strays, [10, 11, 12, 13, 30]);
    }

    #[test]
    fn a_reused_shim_pid_does_not_account_for_a_session() {
        let mut shim = process(10, 9, 9, "web.1", true);
        shim.start_time = 5;
        let found = vec![shim, process(14, 14, 9, "web.1", false)];
        let live = vec![handle("web.1", 11, 10)];
        assert_eq!(unaccounted(&found, &live, &[]).len(), 2);
    }

    #[test]
    fn shims_are_known_by_their_log_in_the_run_dir() {
        let run = Path::new("/s/run");
        assert_eq!(
            shim_instance(run, Path::new("/s/run/web.2/shim.log")),
            ShimOf::Ours("web.2".into())
        );
        assert_eq!(
            shim_instance(run, Path::new("/t/run/web.2/shim.log")),
            ShimOf::Foreign
        );
        assert_eq!(
            shim_instance(run, Path::new("/s/run/web.2/other.log")),
            ShimOf::NotAShim
        );
        assert_eq!(
            shim_instance(run, Path::new("/s/state/agent.log")),
            ShimOf::NotAShim
        );
    }

    #[test]
    fn services_are_known_by_every_marker_in_their_environment() {
        let markers = Markers {
            run_dir: Path::new("/s/run"),
            environment: &[("BOW_PROJECT", "p"), ("BOW_ENV", "dev")],
            instance_variable: "BOW_INSTANCE",
        };
        let ours = b"PATH=/bin\0BOW_PROJECT=p\0BOW_ENV=dev\0BOW_INSTANCE=web.3\0";
        assert_eq!(
            instance_in_environ(ours, &markers).as_deref(),
            Some("web.3")
        );
        let other_env = b"BOW_PROJECT=p\0BOW_ENV=prod\0BOW_INSTANCE=web.3\0";
        assert_eq!(instance_in_environ(other_env, &markers), None);
        let prefix = b"BOW_PROJECT=px\0BOW_ENV=dev\0BOW_INSTANCE=web.3\0";
        assert_eq!(instance_in_environ(prefix, &markers), None);
        let unnamed = b"BOW_PROJECT=p\0BOW_ENV=dev\0";
        assert_eq!(instance_in_environ(unnamed, &markers), None);
    }
}
