//! The shim's side of logging: timestamp each output line and append it to a size-rotated file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::logs::{LogStream, format_log_line, rotated_log_path};
use crate::spec::LogRotation;

/// Longer output without a newline is cut into lines of this many bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Mode of log files: the service never writes them, operators in the file's group read them.
const LOG_FILE_MODE: u32 = 0o640;

/// The current log file of one instance, rotated by size.
pub struct RotatingLog {
    path: PathBuf,
    log_dir: PathBuf,
    instance_id: String,
    rotation: LogRotation,
    file: File,
    size: u64,
    /// Set after the first write error, so the shim log is not flooded.
    failed: bool,
}

impl RotatingLog {
    /// Opens (appending to) `<log_dir>/<instance_id>.log`.
    pub fn open(
        log_dir: &Path,
        instance_id: &str,
        rotation: LogRotation,
    ) -> io::Result<RotatingLog> {
        let path = crate::logs::current_log_path(log_dir, instance_id);
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            log_dir: log_dir.to_path_buf(),
            instance_id: instance_id.to_string(),
            rotation,
            file,
            size,
            failed: false,
        })
    }

    /// Appends one timestamped line, rotating first when it would not fit. Errors are
    /// reported once on the shim's stderr and otherwise ignored: the service must never block
    /// because its log cannot be written.
    pub fn write_line(&mut self, time: SystemTime, stream: LogStream, text: &str) {
        let line = format_log_line(time, stream, text);
        let result = self
            .rotate_if_needed(line.len() as u64)
            .and_then(|()| self.file.write_all(line.as_bytes()));
        match result {
            Ok(()) => {
                self.size += line.len() as u64;
                self.failed = false;
            }
            Err(error) if !self.failed => {
                self.failed = true;
                super::shim_log(&format!("writing {} failed: {error}", self.path.display()));
            }
            Err(_) => {}
        }
    }

    fn rotate_if_needed(&mut self, incoming: u64) -> io::Result<()> {
        if self.size == 0 || self.size + incoming <= self.rotation.max_bytes {
            return Ok(());
        }
        let keep = self.rotation.keep;
        if keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&rotated_log_path(&self.log_dir, &self.instance_id, keep))?;
            for number in (1..keep).rev() {
                let from = rotated_log_path(&self.log_dir, &self.instance_id, number);
                match std::fs::rename(
                    &from,
                    rotated_log_path(&self.log_dir, &self.instance_id, number + 1),
                ) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
            std::fs::rename(
                &self.path,
                rotated_log_path(&self.log_dir, &self.instance_id, 1),
            )?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Reads a pipe until EOF and writes each line to the log. Lines are split at `\n` (a
/// trailing `\r` is dropped); invalid UTF-8 is replaced; output without a newline is flushed
/// as a line when it reaches [`MAX_LINE_BYTES`] or at EOF.
pub fn pump(
    mut pipe: impl Read,
    stream: LogStream,
    log: Arc<Mutex<RotatingLog>>,
    mut redactor: super::redact::Redactor,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let emit = |bytes: &[u8]| {
        let mut rest = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = SystemTime::now();
        loop {
            let cut = split_point(rest);
            log.write_line(now, stream, &String::from_utf8_lossy(&rest[..cut]));
            rest = &rest[cut..];
            if rest.is_empty() {
                break;
            }
        }
    };
    loop {
        let read = match pipe.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        redactor.feed(&buffer[..read], &mut pending);
        let mut start = 0;
        while let Some(newline) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + newline]);
            start += newline + 1;
        }
        while pending.len() - start >= MAX_LINE_BYTES {
            let cut = split_point(&pending[start..]);
            emit(&pending[start..start + cut]);
            start += cut;
        }
        pending.drain(..start);
    }
    redactor.finish(&mut pending);
    if !pending.is_empty() {
        emit(&pending);
    }
}

/// Where to cut `bytes` so the first piece has at most [`MAX_LINE_BYTES`], preferring not to
/// split a UTF-8 character.
fn split_point(bytes: &[u8]) -> usize {
    if bytes.len() <= MAX_LINE_BYTES {
        return bytes.len();
    }
    (MAX_LINE_BYTES - 3..=MAX_LINE_BYTES)
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
        .unwrap_or(MAX_LINE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::parse_log_line;

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| parse_log_line(line).unwrap().text)
            .collect()
    }

    #[test]
    fn pump_splits_lines_and_flushes_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = RotatingLog::open(dir.path(), "web.0", LogRotation::default()).unwrap();
        let log = Arc::new(Mutex::new(log));
        let long = "x".repeat(MAX_LINE_BYTES + 5);
        let input = format!("one\r\ntwo\n\n{long}\nlast-without-newline");
        pump(
            input.as_bytes(),
            LogStream::Stderr,
            Arc::clone(&log),
            crate::shim::redact::Redactor::new(&[]),
        );
        let lines = lines_of(&dir.path().join("web.0.log"));
        assert_eq!(lines.len(), 6);
        assert_eq!(&lines[..3], ["one", "two", ""]);
        assert_eq!(lines[3].len(), MAX_LINE_BYTES);
        assert_eq!(lines[4], "xxxxx");
        assert_eq!(lines[5], "last-without-newline");
        let accented = "é".repeat(MAX_LINE_BYTES);
        let cut = split_point(accented.as_bytes());
        assert!(cut <= MAX_LINE_BYTES && accented.is_char_boundary(cut));
        let raw = std::fs::read_to_string(dir.path().join("web.0.log")).unwrap();
        assert!(
            raw.lines()
                .all(|line| line.split(' ').nth(1) == Some("stderr"))
        );
    }

    #[test]
    fn rotation_keeps_n_files_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = LogRotation {
            max_bytes: 1024,
            keep: 2,
        };
        let mut log = RotatingLog::open(dir.path(), "web.0", rotation).unwrap();
        for number in 0..100 {
            log.write_line(
                SystemTime::now(),
                LogStream::Stdout,
                &format!("line {number:03}"),
            );
        }
        let current = dir.path().join("web.0.log");
        for path in [
            &current,
            &dir.path().join("web.0.log.1"),
            &dir.path().join("web.0.log.2"),
        ] {
            let size = std::fs::metadata(path).unwrap().len();
            assert!(
                size > 0 && size <= 1024,
                "{} has {size} bytes",
                path.display()
            );
        }
        assert!(!dir.path().join("web.0.log.3").exists());
        assert_eq!(lines_of(&current).last().unwrap(), "line 099");
        let older = lines_of(&dir.path().join("web.0.log.1"));
        let newest_first = lines_of(&current)[0].clone();
        assert!(older.last().unwrap() < &newest_first);
    }

    #[test]
    fn keep_zero_truncates_instead_of_rotating() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = LogRotation {
            max_bytes: 1024,
            keep: 0,
        };
        let mut log = RotatingLog::open(dir.path(), "w.0", rotation).unwrap();
        for number in 0..100 {
            log.write_line(
                SystemTime::now(),
                LogStream::Stdout,
                &format!("line {number}"),
            );
        }
        assert!(std::fs::metadata(dir.path().join("w.0.log")).unwrap().len() <= 1024);
        assert!(!dir.path().join("w.0.log.1").exists());
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["first", "second"] {
            let mut log = RotatingLog::open(dir.path(), "w.0", LogRotation::default()).unwrap();
            log.write_line(SystemTime::now(), LogStream::Stdout, text);
        }
        assert_eq!(lines_of(&dir.path().join("w.0.log")), ["first", "second"]);
    }
}
