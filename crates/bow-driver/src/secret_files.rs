//! An instance's secrets as files: one private tmpfs per instance (as root) holding one file
//! per secret, mode 0400, owned by the service's user; `BOW_SECRETS_DIR` names the directory.
//! The shim creates it before exec'ing the service and removes it when the service has
//! ended; the driver's stop and the agent's sweep remove what a killed shim left behind.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where root instances' secrets go: `/run/bow/<project>/<instance_id>/`.
pub const ROOT_SECRETS_BASE: &str = "/run/bow";
/// The variable that tells the service where its secret files are.
pub const SECRETS_DIR_ENV: &str = "BOW_SECRETS_DIR";

/// One secret to deliver: `<secrets dir>/<name>` holding `value`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    pub name: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({}, {} bytes)", self.name, self.value.len())
    }
}

/// The directory that holds the secret dirs of `project`'s instances: `/run/bow/<project>`
/// as root; otherwise `$XDG_RUNTIME_DIR/bow/<project>` (a tmpfs on systemd hosts), or
/// `<run_dir>/secrets` when that is not set.
pub fn project_secrets_base(project: &str, run_dir: &Path, root: bool) -> PathBuf {
    if root {
        return Path::new(ROOT_SECRETS_BASE).join(project);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("bow").join(project),
        None => run_dir.join("secrets"),
    }
}

/// Whether `name` can be a file name in the secrets dir: letters, digits, `_`, `-`.
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Creates `dir` with one file per secret. As root, `dir` is its own tmpfs mount (size
/// bounded by the secrets' size), falling back to a plain directory when mounting is not
/// permitted (the returned note says so). Files are 0400 and the directory 0500, both owned
/// by `uid`:`gid`.
pub fn deliver(
    dir: &Path,
    files: &[SecretFile],
    uid: u32,
    gid: u32,
    root: bool,
) -> Result<Option<String>, String> {
    let fail = |what: &str, error: std::io::Error| format!("{what} {}: {error}", dir.display());
    remove(dir).map_err(|e| fail("cannot clear the old secrets dir", e))?;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(|e| fail("cannot create the parent of", e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("cannot create", e))?;
    let mut note = None;
    if root {
        let total: usize = files.iter().map(|f| f.value.len() + 4096).sum();
        let size_kib = (total / 1024 + 64).max(64);
        if let Err(error) = mount_tmpfs(dir, size_kib) {
            note = Some(format!(
                "could not mount a private tmpfs on {} ({error}); the secrets are in a plain directory",
                dir.display()
            ));
        }
    }
    for file in files {
        let path = dir.join(&file.name);
        let write = || -> std::io::Result<()> {
            let mut handle = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)?;
            handle.write_all(&file.value)?;
            std::os::unix::fs::fchown(&handle, Some(uid), Some(gid))?;
            handle.set_permissions(std::fs::Permissions::from_mode(0o400))
        };
        if let Err(error) = write() {
            let _ = remove(dir);
            return Err(format!(
                "cannot write secret file {}: {error}",
                path.display()
            ));
        }
    }
    let finish = || -> std::io::Result<()> {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
    };
    if let Err(error) = finish() {
        let _ = remove(dir);
        return Err(fail("cannot hand over", error));
    }
    Ok(note)
}

fn mount_tmpfs(dir: &Path, size_kib: usize) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let options = CString::new(format!("size={size_kib}k,mode=0700")).expect("no NUL");
    // SAFETY: NUL-terminated strings that outlive the call.
    let result = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes a secrets dir: unmounts its tmpfs (if it is one) and deletes what is left. A
/// missing dir is fine.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    if let Ok(target) = CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path. EINVAL (not a mount point) and EPERM are expected.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    // The dir is 0500: its owner (not root) may delete its files only once it is writable.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Removes the secrets dirs under `base` whose instance id `keep` rejects (instances that no
/// longer run); returns the ids removed.
pub fn sweep(base: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep(&name) {
            continue;
        }
        if remove(&entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_files_are_read_only_and_removed_whole() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("web.1");
        let files = [SecretFile {
            name: "token".into(),
            value: b"v".to_vec(),
        }];
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        // Not as root: no mount, which this unit test must not leave behind either way.
        deliver(&dir, &files, uid, gid, false).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o500);
        assert_eq!(mode(&dir.join("token")), 0o400);
        assert_eq!(std::fs::read(dir.join("token")).unwrap(), b"v");
        // Delivering again replaces what a previous run left.
        deliver(&dir, &files, uid, gid, false).unwrap();
        remove(&dir).unwrap();
        assert!(!dir.exists());
        remove(&dir).unwrap();
        assert_eq!(format!("{:?}", files[0]), "SecretFile(token, 1 bytes)");
    }
}
