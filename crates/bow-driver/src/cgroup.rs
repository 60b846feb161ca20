//! Cgroups for instances: memory and CPU limits, OOM detection, and finding every process.
//!
//! cgroup v2 is used when its memory controller is available (pure v2 at /sys/fs/cgroup, or a
//! hybrid `unified` mount that has it); otherwise cgroup v1, where each controller has its own
//! mount. An instance's cgroup is `<mount>/<parent>/<project>/<instance_id>` (parent is `bow`
//! by default) in the memory hierarchy (always, as root, so that all its processes can be
//! found and killed) and, on v1, also in the cpu hierarchy when a CPU limit is set.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};
use crate::spec::Resources;

/// CFS period used for CPU limits (100 ms, the kernel default).
const CPU_PERIOD_MICROS: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Where the controllers bow uses are mounted on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    pub version: CgroupVersion,
    /// The v1 memory mount, or the v2 mount when it has the memory controller.
    pub memory_root: Option<PathBuf>,
    /// The v1 cpu mount, or the v2 mount when it has the cpu controller.
    pub cpu_root: Option<PathBuf>,
}

/// The cgroup directories one instance runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlacement {
    pub version: CgroupVersion,
    /// v2: the one directory; v1: the memory directory first, then the cpu directory if any.
    pub dirs: Vec<PathBuf>,
}

impl CgroupPlacement {
    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// Every process in the instance's cgroup(s), sorted and deduplicated.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .procs_files()
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to every process of the cgroup; returns how many were signalled.
    pub fn signal_all(&self, signal: i32) -> usize {
        self.pids()
            .into_iter()
            // SAFETY: kill with a positive pid taken from the cgroup's own list.
            .filter(|&pid| pid > 0 && unsafe { libc::kill(pid, signal) } == 0)
            .count()
    }

    /// SIGKILLs every process of the cgroup until it is empty; false when processes remain
    /// after `timeout` (e.g. stuck in uninterruptible sleep).
    pub fn kill_all(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.signal_all(libc::SIGKILL) == 0 && self.pids().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many times the OOM killer killed a process in this cgroup (v1 `memory.oom_control`,
    /// v2 `memory.events`); `None` when the kernel does not say.
    pub fn oom_kill_count(&self) -> Option<u64> {
        let memory_dir = self.dirs.first()?;
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(memory_dir.join(file)).ok()?;
        parse_counter(&text, "oom_kill")
    }

    /// How often the memory limit was hit (v1 `memory.failcnt`, v2 `max` in `memory.events`).
    /// Hits alone only mean reclaim; see [`CgroupPlacement::oom_killed`].
    pub fn memory_limit_hits(&self) -> Option<u64> {
        let memory_dir = self.dirs.first()?;
        match self.version {
            CgroupVersion::V1 => std::fs::read_to_string(memory_dir.join("memory.failcnt"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            CgroupVersion::V2 => parse_counter(
                &std::fs::read_to_string(memory_dir.join("memory.events")).ok()?,
                "max",
            ),
        }
    }

    /// Whether the OOM killer struck in this cgroup: its `oom_kill` counter is above zero or,
    /// on kernels without that counter (before 4.13), the process died of SIGKILL after
    /// hitting the memory limit.
    pub fn oom_killed(&self, killed_by_sigkill: bool) -> bool {
        match self.oom_kill_count() {
            Some(count) => count > 0,
            None => killed_by_sigkill && self.memory_limit_hits().unwrap_or(0) > 0,
        }
    }

    /// Removes the directories; retried for a moment while exiting processes leave them.
    pub fn remove(&self) -> Result<()> {
        for dir in &self.dirs {
            remove_cgroup_dir(dir, Duration::from_secs(2))?;
        }
        Ok(())
    }

    /// True when none of the directories exists any more.
    pub fn is_removed(&self) -> bool {
        self.dirs.iter().all(|dir| !dir.exists())
    }
}

/// Finds the cgroup mounts from `/proc/self/mounts`; `None` when there are none usable.
pub fn detect_layout() -> Option<CgroupLayout> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    layout_from_mounts(&mounts, |mount| {
        std::fs::read_to_string(mount.join("cgroup.controllers")).ok()
    })
}

/// The layout implied by a mount table; `controllers` reads a v2 mount's `cgroup.controllers`.
pub fn layout_from_mounts(
    mounts: &str,
    controllers: impl Fn(&Path) -> Option<String>,
) -> Option<CgroupLayout> {
    let mut v1_memory = None;
    let mut v1_cpu = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields[..] else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_path(mount_point));
        match fs_type {
            "cgroup2" => {
                let available = controllers(&mount_point).unwrap_or_default();
                let has = |name: &str| available.split_whitespace().any(|c| c == name);
                if has("memory") {
                    let cpu_root = has("cpu").then(|| mount_point.clone());
                    return Some(CgroupLayout {
                        version: CgroupVersion::V2,
                        memory_root: Some(mount_point),
                        cpu_root,
                    });
                }
            }
            "cgroup" => {
                let has = |name: &str| options.split(',').any(|option| option == name);
                if has("memory") && v1_memory.is_none() {
                    v1_memory = Some(mount_point.clone());
                }
                if has("cpu") && v1_cpu.is_none() {
                    v1_cpu = Some(mount_point);
                }
            }
            _ => {}
        }
    }
    (v1_memory.is_some() || v1_cpu.is_some()).then_some(CgroupLayout {
        version: CgroupVersion::V1,
        memory_root: v1_memory,
        cpu_root: v1_cpu,
    })
}

/// `/proc/mounts` escapes spaces and friends as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates the instance's cgroup and writes its limits. Returns `None` when there is no
/// usable cgroup hierarchy and no limit was asked for.
pub fn create_instance_cgroup(
    layout: Option<&CgroupLayout>,
    parent: &str,
    project: &str,
    instance_id: &str,
    resources: &Resources,
) -> Result<Option<CgroupPlacement>> {
    let Some(layout) = layout else {
        if resources.is_empty() {
            return Ok(None);
        }
        return Err(DriverError::CgroupUnavailable(
            "no cgroup hierarchy is mounted".into(),
        ));
    };
    let relative = Path::new(parent).join(project).join(instance_id);
    let Some(memory_root) = &layout.memory_root else {
        if resources.is_empty() {
            return Ok(None);
        }
        return Err(DriverError::CgroupUnavailable(
            "the memory cgroup controller is not mounted".into(),
        ));
    };
    if resources.cpu_cores.is_some() && layout.cpu_root.is_none() {
        return Err(DriverError::CgroupUnavailable(
            "the cpu cgroup controller is not mounted".into(),
        ));
    }
    let placement = match layout.version {
        CgroupVersion::V2 => {
            let mut controllers = vec!["memory"];
            if resources.cpu_cores.is_some() {
                controllers.push("cpu");
            }
            enable_v2_controllers(memory_root, &relative, &controllers)?;
            let dir = fresh_dir(&memory_root.join(&relative))?;
            CgroupPlacement {
                version: CgroupVersion::V2,
                dirs: vec![dir],
            }
        }
        CgroupVersion::V1 => {
            let mut dirs = vec![fresh_dir(&memory_root.join(&relative))?];
            if let (Some(_), Some(cpu_root)) = (resources.cpu_cores, &layout.cpu_root)
                && cpu_root != memory_root
            {
                dirs.push(fresh_dir(&cpu_root.join(&relative))?);
            }
            CgroupPlacement {
                version: CgroupVersion::V1,
                dirs,
            }
        }
    };
    if let Err(error) = write_limits(&placement, resources) {
        let _ = placement.remove();
        return Err(error);
    }
    Ok(Some(placement))
}

fn write_limits(placement: &CgroupPlacement, resources: &Resources) -> Result<()> {
    let memory_dir = &placement.dirs[0];
    let cpu_dir = placement.dirs.last().unwrap_or(memory_dir);
    match placement.version {
        CgroupVersion::V1 => {
            if let Some(bytes) = resources.memory_bytes {
                write_file(memory_dir, "memory.limit_in_bytes", &bytes.to_string())?;
                // Without a memory+swap limit the service would swap instead of being limited.
                // The file exists only when swap accounting is on; a failure to write it
                // (no swap configured) leaves the RAM limit in force.
                if memory_dir.join("memory.memsw.limit_in_bytes").exists() {
                    let _ = write_file(
                        memory_dir,
                        "memory.memsw.limit_in_bytes",
                        &bytes.to_string(),
                    );
                }
            }
            if let Some(cores) = resources.cpu_cores {
                write_file(cpu_dir, "cpu.cfs_period_us", &CPU_PERIOD_MICROS.to_string())?;
                write_file(
                    cpu_dir,
                    "cpu.cfs_quota_us",
                    &cpu_quota_micros(cores).to_string(),
                )?;
            }
        }
        CgroupVersion::V2 => {
            if let Some(bytes) = resources.memory_bytes {
                write_file(memory_dir, "memory.max", &bytes.to_string())?;
                if memory_dir.join("memory.swap.max").exists() {
                    write_file(memory_dir, "memory.swap.max", "0")?;
                }
            }
            if let Some(cores) = resources.cpu_cores {
                write_file(
                    cpu_dir,
                    "cpu.max",
                    &format!("{} {CPU_PERIOD_MICROS}", cpu_quota_micros(cores)),
                )?;
            }
        }
    }
    Ok(())
}

/// CPU quota per period for a number of cores (at least the kernel's 1 ms minimum).
pub fn cpu_quota_micros(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_MICROS as f64).round() as u64).max(1000)
}

/// Creates `dir` afresh: a leftover empty directory is removed first so counters such as
/// `oom_kill` start at zero; a leftover directory with processes is an error.
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        let leftover = CgroupPlacement {
            version: CgroupVersion::V1,
            dirs: vec![dir.to_path_buf()],
        };
        let pids = leftover.pids();
        if !pids.is_empty() {
            return Err(DriverError::Cgroup {
                path: dir.to_path_buf(),
                message: format!(
                    "still holds processes {pids:?} of an earlier run; stop them first"
                ),
            });
        }
        remove_cgroup_dir(dir, Duration::from_secs(2))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| cgroup_error(dir, "creating it", e))?;
    Ok(dir.to_path_buf())
}

/// v2 only: enables the controllers in `cgroup.subtree_control` of every ancestor of the
/// instance directory, from the mount down.
fn enable_v2_controllers(root: &Path, relative: &Path, controllers: &[&str]) -> Result<()> {
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = relative
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
    for component in std::iter::once(None).chain(parents.into_iter().map(Some)) {
        if let Some(component) = component {
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(cgroup_error(&dir, "creating it", error)),
            }
        }
        write_file(&dir, "cgroup.subtree_control", enable.trim_end())?;
    }
    Ok(())
}

fn write_file(dir: &Path, name: &str, value: &str) -> Result<()> {
    std::fs::write(dir.join(name), value)
        .map_err(|e| cgroup_error(dir, &format!("writing {value:?} to {name}"), e))
}

fn cgroup_error(dir: &Path, what: &str, error: io::Error) -> DriverError {
    DriverError::Cgroup {
        path: dir.to_path_buf(),
        message: format!("{what}: {error}"),
    }
}

fn remove_cgroup_dir(dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => return Err(cgroup_error(dir, "removing it", error)),
        }
    }
}

/// The cgroups of every instance of a project, one placement per instance directory found
/// in the memory (and, on v1, cpu) hierarchy. For `down`: kill and remove what is left.
pub fn project_cgroups(layout: &CgroupLayout, parent: &str, project: &str) -> Vec<CgroupPlacement> {
    let mut roots = vec![];
    roots.extend(layout.memory_root.iter());
    roots.extend(
        layout
            .cpu_root
            .iter()
            .filter(|cpu| Some(*cpu) != layout.memory_root.as_ref()),
    );
    let mut found: Vec<CgroupPlacement> = Vec::new();
    for root in roots {
        let project_dir = root.join(parent).join(project);
        let Ok(entries) = std::fs::read_dir(&project_dir) else {
            continue;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let name = entry.file_name();
            match found
                .iter_mut()
                .find(|p| p.dirs[0].file_name() == Some(name.as_os_str()))
            {
                Some(placement) => placement.dirs.push(entry.path()),
                None => found.push(CgroupPlacement {
                    version: layout.version,
                    dirs: vec![entry.path()],
                }),
            }
        }
    }
    found.sort_by(|a, b| a.dirs.cmp(&b.dirs));
    found
}

/// Removes the project's cgroup directory (`<parent>/<project>`) in every hierarchy, after
/// its instances' cgroups. Fails when one still holds processes.
pub fn remove_project_cgroups(layout: &CgroupLayout, parent: &str, project: &str) -> Result<()> {
    for placement in project_cgroups(layout, parent, project) {
        placement.remove()?;
    }
    for root in layout.memory_root.iter().chain(layout.cpu_root.iter()) {
        remove_cgroup_dir(&root.join(parent).join(project), Duration::from_secs(1))?;
    }
    Ok(())
}

/// Finds `name N` in a flat-keyed cgroup file such as `memory.events`.
pub fn parse_counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_without_v2_memory_uses_v1() {
        let layout = layout_from_mounts(HYBRID, |_| Some("hugetlb".into())).unwrap();
        assert_eq!(layout.version, CgroupVersion::V1);
        assert_eq!(
            layout.memory_root.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            layout.cpu_root.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu"))
        );
    }

    #[test]
    fn v2_with_memory_wins() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let layout =
            layout_from_mounts(mounts, |_| Some("cpuset cpu io memory pids".into())).unwrap();
        assert_eq!(layout.version, CgroupVersion::V2);
        assert_eq!(layout.memory_root, layout.cpu_root);
        let without_cpu = layout_from_mounts(mounts, |_| Some("memory".into())).unwrap();
        assert_eq!(without_cpu.cpu_root, None);
    }

    #[test]
    fn combined_v1_cpu_mounts_are_recognised() {
        let mounts = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        let layout = layout_from_mounts(mounts, |_| None).unwrap();
        assert_eq!(
            layout.cpu_root.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(layout.memory_root, None);
        assert_eq!(
            layout_from_mounts("proc /proc proc rw 0 0\n", |_| None),
            None
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn counters_are_found_by_name() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_counter(oom_control, "oom_kill"), Some(2));
        assert_eq!(parse_counter("low 0\nhigh 0\n", "oom_kill"), None);
    }

    #[test]
    fn cpu_quota_has_a_floor() {
        assert_eq!(cpu_quota_micros(0.5), 50_000);
        assert_eq!(cpu_quota_micros(2.0), 200_000);
        assert_eq!(cpu_quota_micros(0.001), 1000);
    }

    #[test]
    fn limits_without_cgroups_are_refused() {
        let limits = Resources {
            memory_bytes: Some(1 << 20),
            cpu_cores: None,
        };
        let error = create_instance_cgroup(None, "bow", "p", "s.0", &limits).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot enforce resource limits"),
            "{error}"
        );
        assert_eq!(
            create_instance_cgroup(None, "bow", "p", "s.0", &Resources::default()).unwrap(),
            None
        );
    }
}
