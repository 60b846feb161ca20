//! Reading `/proc/<pid>/stat`: state, process group and start time (the pid-reuse guard);
//! what a process uses ([`usage_of`]: cpu time, memory, threads, descriptors).

use std::io;

/// The fields of `/proc/<pid>/stat` the driver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z` (zombie: exited, not yet reaped), `T`, ...
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub session: i32,
    /// Field 22: clock ticks after boot at which the process started. Together with the pid
    /// it names a process uniquely for the life of the machine.
    pub start_time: u64,
}

impl ProcStat {
    /// Running or sleeping; a zombie has already exited.
    pub fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// What one process uses, from `/proc/<pid>/stat` and `/proc/<pid>/fd`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// User and system cpu time of the process.
    pub cpu_micros: Option<u64>,
    /// The same with the children it waited for.
    pub cpu_micros_with_children: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub threads: Option<u64>,
    /// When it started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
}

/// What the calling process uses (the agent's own series in `/metrics`).
pub fn own_usage() -> ProcessUsage {
    usage_of("self")
}

/// What the process `pid` uses (`"self"` for the calling process); fields it cannot read
/// (another user's descriptors, a process gone) are `None`.
pub fn usage_of(pid: &str) -> ProcessUsage {
    // SAFETY: sysconf with a valid name has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64,
            libc::sysconf(libc::_SC_PAGESIZE).max(0) as u64,
        )
    };
    let mut usage = ProcessUsage {
        open_fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|entries| entries.count() as u64),
        ..ProcessUsage::default()
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return usage;
    };
    // After the command name (in parentheses, which may hold spaces) comes field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return usage;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let micros = |ticks_used: u64| ticks_used * 1_000_000 / ticks;
    usage.cpu_micros = field(14).zip(field(15)).map(|(u, s)| micros(u + s));
    usage.cpu_micros_with_children = usage
        .cpu_micros
        .zip(field(16).zip(field(17)))
        .map(|(own, (cu, cs))| own + micros(cu + cs));
    usage.threads = field(20);
    usage.resident_bytes = field(24).map(|pages| pages * page);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse::<u64>().ok())
    });
    usage.start_time_seconds = boot
        .zip(field(22))
        .map(|(boot, started)| boot as f64 + started as f64 / ticks as f64);
    usage
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` when there is no such process.
pub fn read_stat(pid: i32) -> io::Result<Option<ProcStat>> {
    if pid <= 0 {
        return Ok(None);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed /proc/{pid}/stat"),
            )
        }),
        Err(error)
            if error.kind() == io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Parses the text of a stat file. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    // Fields after the name start at field 3 (state).
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3).copied();
    Some(ProcStat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// The uid a process runs as (the real uid from `/proc/<pid>/status`).
pub fn read_uid(pid: i32) -> io::Result<Option<u32>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok()))
}

/// The binary this process runs: its path (`… (deleted)` once the file was replaced) and its
/// identity (device, inode), which differs for another build installed at the same path.
pub fn running_binary() -> (String, (u64, u64)) {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let id = std::fs::metadata("/proc/self/exe")
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0));
    (path, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let text = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 \
                    1000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgid: 4242,
                session: 4242,
                start_time: 987654
            }
        );
        assert!(stat.is_alive());
    }

    #[test]
    fn zombies_are_not_alive() {
        let text = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(!parse_stat(text).unwrap().is_alive());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id() as i32;
        let stat = read_stat(pid).unwrap().unwrap();
        assert_eq!(stat.pid, pid);
        assert!(stat.start_time > 0);
        assert_eq!(read_stat(i32::MAX).unwrap(), None);
        assert_eq!(read_stat(0).unwrap(), None);
        assert!(read_uid(pid).unwrap().is_some());
    }

    #[test]
    fn truncated_text_is_rejected() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
