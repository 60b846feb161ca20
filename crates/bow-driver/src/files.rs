//! Small JSON state files, written atomically (temp file, rename) and read leniently.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DriverError, Result};

/// Writes `value` as JSON to `path` so that readers see the old file or the new one, never a
/// half-written one. The file is created with `mode`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| DriverError::StateFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push(b'\n');
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let context = |what: &str| format!("{what} {}", temporary.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|e| DriverError::io(context("creating"), e))?;
    file.write_all(&text)
        .map_err(|e| DriverError::io(context("writing"), e))?;
    // No fsync: these files describe processes, which do not outlive the machine either; the
    // rename is atomic against a crash of any process, and an fsync costs a restart
    // milliseconds.
    std::fs::rename(&temporary, path).map_err(|e| {
        DriverError::io(
            format!("renaming {} to {}", temporary.display(), path.display()),
            e,
        )
    })
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(DriverError::io(
                format!("reading {}", path.display()),
                error,
            ));
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| DriverError::StateFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Creates a directory (and its parents) and sets its mode.
pub fn create_dir_with_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| DriverError::io(format!("creating {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DriverError::io(format!("setting the mode of {}", path.display()), e))
}

/// Removes a file, treating "already gone" as success.
pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(DriverError::io(
            format!("removing {}", path.display()),
            error,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn atomic_write_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let value: BTreeMap<String, u32> = [("pid".to_string(), 7)].into();
        write_json_atomic(&path, &value, 0o600).unwrap();
        assert_eq!(
            read_json::<BTreeMap<String, u32>>(&path).unwrap(),
            Some(value)
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_files_read_as_none_and_garbage_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_json::<u32>(&dir.path().join("absent")).unwrap(), None);
        std::fs::write(dir.path().join("bad"), "{").unwrap();
        let error = read_json::<u32>(&dir.path().join("bad")).unwrap_err();
        assert!(
            error.to_string().contains("malformed state file"),
            "{error}"
        );
    }
}
