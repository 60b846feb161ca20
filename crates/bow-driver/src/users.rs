//! Unix users for services: look them up, and create a system user when one is missing.
//!
//! Created users are system users (`useradd --system`) with their own group, no home
//! directory (`/nonexistent`, the Debian convention) and the `nologin` shell.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};

/// How long `ensure_system_user` keeps retrying while another `useradd` holds the lock.
const USERADD_RETRY_FOR: Duration = Duration::from_secs(10);

/// Serializes user creation inside one process (concurrent starts of one service's replicas).
static CREATING_USERS: Mutex<()> = Mutex::new(());

/// A resolved unix user: what the service process switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from `/etc/group`), including `gid`.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// True when the driver runs with root privileges (and so can switch users and use cgroups).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user bow creates for a service when bow.yaml names none: `bow-<service>`, cut to the
/// 32 characters `useradd` allows.
pub fn default_service_user(service: &str) -> String {
    let mut name = format!("bow-{service}");
    name.truncate(32);
    name
}

/// `[a-z_][a-z0-9_-]*`, at most 32 characters: names every `useradd` accepts.
pub fn is_valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The user this process runs as.
pub fn current_user() -> Result<ServiceUser> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    lookup(Lookup::Uid(uid))?.ok_or_else(|| DriverError::UserLookup {
        user: format!("uid {uid}"),
        message: "the current uid has no passwd entry".into(),
    })
}

/// Looks a user up by name; `Ok(None)` when there is no such user.
pub fn lookup_user(name: &str) -> Result<Option<ServiceUser>> {
    lookup(Lookup::Name(name))
}

/// Returns the user, creating it as a system user first when it does not exist. Safe to call
/// concurrently from several processes: "already exists" and lock contention are retried.
pub fn ensure_system_user(name: &str) -> Result<ServiceUser> {
    if !is_valid_user_name(name) {
        return Err(DriverError::UserCreation {
            user: name.into(),
            message: "the name must match [a-z_][a-z0-9_-]* and be at most 32 characters".into(),
        });
    }
    if let Some(user) = lookup_user(name)? {
        return Ok(user);
    }
    let _serialized = CREATING_USERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let deadline = Instant::now() + USERADD_RETRY_FOR;
    loop {
        if let Some(user) = lookup_user(name)? {
            return Ok(user);
        }
        let group_exists = group_exists(name)?;
        let output = useradd_command(name, group_exists).output().map_err(|e| {
            DriverError::UserCreation {
                user: name.into(),
                message: format!("running useradd: {e}"),
            }
        })?;
        if output.status.success() {
            continue; // the lookup at the top of the loop returns the new user
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        // 9: name already in use (another process won the race); 1 and 10: passwd/group
        // file locked by a concurrent useradd. All are worth another look.
        let retryable = matches!(output.status.code(), Some(1 | 9 | 10));
        if !retryable || Instant::now() >= deadline {
            return Err(DriverError::UserCreation {
                user: name.into(),
                message: format!("useradd failed ({}): {stderr}", output.status),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn useradd_command(name: &str, group_exists: bool) -> Command {
    let program =
        first_existing(&["/usr/sbin/useradd", "/sbin/useradd"]).unwrap_or(Path::new("useradd"));
    let shell =
        first_existing(&["/usr/sbin/nologin", "/sbin/nologin"]).unwrap_or(Path::new("/bin/false"));
    let mut command = Command::new(program);
    command
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
        ])
        .arg(shell);
    if group_exists {
        command.args(["--gid", name]);
    } else {
        command.arg("--user-group");
    }
    command
        .arg(name)
        .env_clear()
        .env("PATH", crate::spec::DEFAULT_PATH);
    command
}

fn first_existing<'a>(paths: &[&'a str]) -> Option<&'a Path> {
    paths
        .iter()
        .map(|p| Path::new(*p))
        .find(|path| path.exists())
}

enum Lookup<'a> {
    Name(&'a str),
    Uid(u32),
}

fn lookup(key: Lookup<'_>) -> Result<Option<ServiceUser>> {
    let label = match &key {
        Lookup::Name(name) => name.to_string(),
        Lookup::Uid(uid) => format!("uid {uid}"),
    };
    let lookup_error = |message: String| DriverError::UserLookup {
        user: label.clone(),
        message,
    };
    let c_name = match &key {
        Lookup::Name(name) => {
            Some(CString::new(*name).map_err(|_| lookup_error("name contains NUL".into()))?)
        }
        Lookup::Uid(_) => None,
    };
    let mut buffer = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: passwd is plain data; the buffer outlives every use of the pointers into it.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = match (&key, &c_name) {
            // SAFETY: every pointer is valid for the call; the buffer length is its real size.
            (Lookup::Name(_), Some(c_name)) => unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            },
            (Lookup::Uid(uid), _) => unsafe {
                libc::getpwuid_r(
                    *uid,
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            },
            (Lookup::Name(_), None) => unreachable!("names are converted to C strings above"),
        };
        if status == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        // getpwnam_r(3): ENOENT, ESRCH, EBADF and EPERM mean "no such user" on some systems.
        if status != 0 && ![libc::ENOENT, libc::ESRCH, libc::EBADF, libc::EPERM].contains(&status) {
            return Err(lookup_error(
                std::io::Error::from_raw_os_error(status).to_string(),
            ));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the fields point into `buffer` and are NUL-terminated.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(entry.pw_name).to_string_lossy().into_owned(),
                CStr::from_ptr(entry.pw_dir).to_string_lossy().into_owned(),
            )
        };
        let groups = supplementary_groups(&name, entry.pw_gid).map_err(lookup_error)?;
        return Ok(Some(ServiceUser {
            name,
            uid: entry.pw_uid,
            gid: entry.pw_gid,
            groups,
            home: PathBuf::from(home),
        }));
    }
}

/// The groups `initgroups` would give the user, computed here so that the forked child only
/// has to call `setgroups`.
fn supplementary_groups(name: &str, gid: u32) -> std::result::Result<Vec<u32>, String> {
    let c_name = CString::new(name).map_err(|_| "name contains NUL".to_string())?;
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that many.
        let found =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if found >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        if groups.len() >= 65_536 {
            return Err("too many supplementary groups".into());
        }
        let wanted = (count as usize).max(groups.len() * 2);
        groups.resize(wanted, 0);
    }
}

fn group_exists(name: &str) -> Result<bool> {
    let c_name = CString::new(name).map_err(|_| DriverError::UserLookup {
        user: name.into(),
        message: "NUL in name".into(),
    })?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: as in `lookup`, for struct group.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let status = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if status == libc::ERANGE && buffer.len() < 1 << 22 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        return Ok(!result.is_null());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_prefixed_and_bounded() {
        assert_eq!(default_service_user("back"), "bow-back");
        let long = default_service_user(&"x".repeat(40));
        assert_eq!(long.len(), 32);
        assert!(is_valid_user_name(&long));
    }

    #[test]
    fn user_names_are_checked() {
        for good in ["bow-back", "_svc", "a1_b-c"] {
            assert!(is_valid_user_name(good), "{good}");
        }
        for bad in ["", "Root", "1abc", "a b", "a:b", &"x".repeat(33)] {
            assert!(!is_valid_user_name(bad), "{bad}");
        }
    }

    #[test]
    fn looks_up_root_and_the_current_user() {
        let root = lookup_user("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(lookup_user("no-such-user-bow").unwrap(), None);
        let me = current_user().unwrap();
        // SAFETY: getuid has no preconditions.
        assert_eq!(me.uid, unsafe { libc::getuid() });
    }

    #[test]
    fn invalid_names_are_refused_before_useradd() {
        let error = ensure_system_user("Bad Name").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("could not create system user Bad Name"),
            "{error}"
        );
    }
}
