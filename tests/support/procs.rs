//! The operating system side of the end-to-end tests: processes from /proc, signals, captured
//! log files, RFC 3339 times, plain HTTP GETs, leftover cgroups.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `Z`, …
    pub state: char,
    /// Clock ticks after boot; with the pid, names a process uniquely.
    pub start_time: u64,
    pub cmdline: Vec<String>,
    pub environ: Vec<String>,
    /// The whole of /proc/<pid>/cgroup.
    pub cgroup: String,
}

impl ProcessInfo {
    pub fn is_alive(&self) -> bool {
        is_alive(self.pid)
    }

    pub fn env(&self, name: &str) -> Option<&str> {
        self.environ
            .iter()
            .find_map(|v| v.strip_prefix(name)?.strip_prefix('='))
    }
}

impl std::fmt::Display for ProcessInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} (ppid {}, {}) {}",
            self.pid,
            self.ppid,
            self.state,
            self.cmdline.join(" ")
        )
    }
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// (state, ppid, start time) from /proc/<pid>/stat.
fn read_stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start_time))
}

/// The start time of a live process.
pub fn start_time(pid: i32) -> Option<u64> {
    read_stat(pid)
        .filter(|_| is_alive(pid))
        .map(|(_, _, start)| start)
}

/// Whether `pid` is a live process: one of its threads is not a zombie. (A multi-threaded
/// process killed by a signal shows its main thread as a zombie while the other threads are
/// still exiting and its files, sockets included, are still open.)
pub fn is_alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(!matches!(state.as_str(), "Z" | "X"))
            })
            .unwrap_or(false)
    })
}

pub fn process(pid: i32) -> Option<ProcessInfo> {
    let (state, ppid, start_time) = read_stat(pid)?;
    let read = |file: &str| std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
    Some(ProcessInfo {
        pid,
        ppid,
        state,
        start_time,
        cmdline: split_nul(&read("cmdline")),
        environ: split_nul(&read("environ")),
        cgroup: String::from_utf8_lossy(&read("cgroup")).into_owned(),
    })
}

pub fn all_processes() -> Vec<ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// The real and effective uid of a process (`Uid:` in /proc/<pid>/status).
pub fn uids(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut ids = line.split_whitespace().skip(1).map(|v| v.parse().ok());
    Some((ids.next()??, ids.next()??))
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The uid of a user, by `id -u`.
pub fn uid_of(user: &str) -> Option<u32> {
    let output = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        result,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits until `pid` is gone or a zombie; panics after `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) {
    wait_for(&format!("pid {pid} to exit"), timeout, || !is_alive(pid));
}

/// Polls `condition` every 20 ms; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of a captured log file: `<RFC3339 µs UTC> <stdout|stderr> <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp as written.
    pub time: String,
    /// The timestamp in µs since the epoch.
    pub micros: i64,
    pub stream: String,
    pub text: String,
}

pub fn parse_log_line(line: &str) -> Option<LogLine> {
    let (time, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(LogLine {
        time: time.to_string(),
        micros: parse_rfc3339_micros(time)?,
        stream: stream.to_string(),
        text: text.to_string(),
    })
}

/// `<dir>/<instance>.log` and its rotations (`.N` oldest … `.1`, then the current file).
pub fn read_log_files(dir: &Path, instance: &str) -> Vec<LogLine> {
    let mut files = Vec::new();
    for n in (1..=20).rev() {
        files.push(dir.join(format!("{instance}.log.{n}")));
    }
    files.push(dir.join(format!("{instance}.log")));
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().filter_map(parse_log_line).collect::<Vec<_>>())
        .collect()
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-11-22T00:00:00.123456Z` (fraction optional, `Z` or `+00:00`) → µs since the epoch.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock_parts = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (
        clock_parts.next()??,
        clock_parts.next()??,
        clock_parts.next()??,
    );
    let mut micros_text: String = fraction.chars().take(6).collect();
    while micros_text.len() < 6 {
        micros_text.push('0');
    }
    let micros: i64 = micros_text.parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

/// Seconds since the epoch as `2026-11-22T00:00:00Z`.
pub fn format_rfc3339_seconds(seconds: i64) -> String {
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let rest = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Now in µs since the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Whether the tests run as root (some behaviours exist only then: users, cgroups, names).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port free on 127.0.0.1 right now (for settings such as `port:` or edge ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port once. Returns the status and body.
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

/// `GET path`, retried for up to 10 s until the server answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_http_get(port, path) {
            Ok(answer) => return answer,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => panic!("GET http://127.0.0.1:{port}{path} failed: {error}"),
        }
    }
}

/// The directories bow's cgroups for `project` live in, one per mounted hierarchy.
pub fn project_cgroup_dirs(project: &str) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let candidate = root.join("bow").join(project);
    if candidate.is_dir() {
        dirs.push(candidate);
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("bow").join(project);
            if candidate.is_dir() {
                dirs.push(candidate);
            }
        }
    }
    dirs
}

/// Instance cgroups (children of the project's dirs) that still exist.
pub fn leftover_instance_cgroups(project: &str) -> Vec<std::path::PathBuf> {
    project_cgroup_dirs(project)
        .into_iter()
        .flat_map(|dir| {
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Removes what is left of the project's cgroups (empty directories only).
pub fn remove_project_cgroups(project: &str) {
    for dir in leftover_instance_cgroups(project) {
        let _ = std::fs::remove_dir(dir);
    }
    for dir in project_cgroup_dirs(project) {
        let _ = std::fs::remove_dir(dir);
    }
}
