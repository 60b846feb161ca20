//! Captured output on disk: the line format, reading current and rotated files, merging
//! instances in time order, and following a log as it grows and rotates.
//!
//! Files: `<log_dir>/<instance_id>.log` is being written; `<instance_id>.log.1` is the newest
//! rotated file, `.2` older, and so on. Each line is
//!
//! ```text
//! 2026-11-22T00:00:00.123456Z stdout hello world
//! ```
//!
//! an RFC 3339 UTC timestamp with microseconds (when the shim read the line), one space,
//! `stdout` or `stderr`, one space, and the line as the service wrote it (without its
//! newline; invalid UTF-8 replaced by U+FFFD, lines over 16 KiB split).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{DriverError, Result};
use crate::timestamp::{format_rfc3339_micros, parse_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: SystemTime,
    pub stream: LogStream,
    pub text: String,
}

/// Formats one line of a log file, newline included.
pub fn format_log_line(time: SystemTime, stream: LogStream, text: &str) -> String {
    format!(
        "{} {} {text}\n",
        format_rfc3339_micros(time),
        stream.as_str()
    )
}

/// Parses one line of a log file (with or without its newline); `None` when malformed.
pub fn parse_log_line(line: &str) -> Option<LogLine> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (time, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let stream = match stream {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        _ => return None,
    };
    Some(LogLine {
        time: parse_rfc3339(time)?,
        stream,
        text: text.to_string(),
    })
}

/// `<log_dir>/<instance_id>.log`.
pub fn current_log_path(log_dir: &Path, instance_id: &str) -> PathBuf {
    log_dir.join(format!("{instance_id}.log"))
}

/// `<log_dir>/<instance_id>.log.<number>` (1 is the newest rotated file).
pub fn rotated_log_path(log_dir: &Path, instance_id: &str, number: u32) -> PathBuf {
    log_dir.join(format!("{instance_id}.log.{number}"))
}

/// The instance's existing log files, oldest first (highest rotation number … current).
pub fn log_files(log_dir: &Path, instance_id: &str) -> Result<Vec<PathBuf>> {
    Ok(numbered_log_files(log_dir, instance_id)?
        .into_iter()
        .map(|(_, path)| path)
        .collect())
}

/// Like [`log_files`], with each file's rotation number (`None` for the current file).
fn numbered_log_files(log_dir: &Path, instance_id: &str) -> Result<Vec<(Option<u32>, PathBuf)>> {
    let prefix = format!("{instance_id}.log.");
    let mut files: Vec<(Option<u32>, PathBuf)> = read_dir_names(log_dir)?
        .into_iter()
        .filter_map(|name| {
            let number = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((Some(number), log_dir.join(name)))
        })
        .collect();
    files.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    let current = current_log_path(log_dir, instance_id);
    if current.exists() {
        files.push((None, current));
    }
    Ok(files)
}

/// Ids of the instances that have a current or rotated log in `log_dir`, sorted.
pub fn logged_instances(log_dir: &Path) -> Result<Vec<String>> {
    let mut ids: Vec<String> = read_dir_names(log_dir)?
        .into_iter()
        .filter_map(|name| {
            let stem = match name.rsplit_once(".log.") {
                Some((stem, number)) if number.parse::<u32>().is_ok() => stem,
                _ => name.strip_suffix(".log")?,
            };
            Some(stem.to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(error) => return Err(DriverError::io(format!("listing {}", dir.display()), error)),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect())
}

/// Which lines to return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only lines at or after this time.
    pub since: Option<SystemTime>,
    /// Only the last N lines (after `since` is applied).
    pub tail: Option<usize>,
}

/// Reads an instance's lines from its rotated and current files, oldest first. Files are read
/// newest first and reading stops once `tail`/`since` are satisfied. Malformed lines are skipped.
pub fn read_instance_log(
    log_dir: &Path,
    instance_id: &str,
    query: LogQuery,
) -> Result<Vec<LogLine>> {
    let mut chunks: Vec<Vec<LogLine>> = Vec::new();
    let mut count = 0;
    for path in log_files(log_dir, instance_id)?.iter().rev() {
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // Rotated away between listing and reading: the next file holds the same lines.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(DriverError::io(
                    format!("reading {}", path.display()),
                    error,
                ));
            }
        };
        let lines: Vec<LogLine> = text
            .lines()
            .filter_map(parse_log_line)
            .filter(|line| query.since.is_none_or(|since| line.time >= since))
            .collect();
        let reached_since = match (query.since, text.lines().find_map(parse_log_line)) {
            (Some(since), Some(first)) => first.time < since,
            _ => false,
        };
        count += lines.len();
        chunks.push(lines);
        if reached_since || query.tail.is_some_and(|tail| count >= tail) {
            break;
        }
    }
    let mut lines: Vec<LogLine> = chunks.into_iter().rev().flatten().collect();
    if let Some(tail) = query.tail {
        lines.drain(..lines.len().saturating_sub(tail));
    }
    Ok(lines)
}

/// The last `lines` lines of an instance's output, oldest first (none when it has no log).
pub fn tail(log_dir: &Path, instance_id: &str, lines: usize) -> Vec<LogLine> {
    read_instance_log(
        log_dir,
        instance_id,
        LogQuery {
            since: None,
            tail: Some(lines),
        },
    )
    .unwrap_or_default()
}

/// Merges the lines of several instances into one time-ordered list, each line labelled with
/// its source (e.g. the instance id). Lines with equal times keep their source order.
pub fn merge_by_time<L: Clone>(sources: Vec<(L, Vec<LogLine>)>) -> Vec<(L, LogLine)> {
    let mut merged: Vec<(L, LogLine)> = sources
        .into_iter()
        .flat_map(|(label, lines)| lines.into_iter().map(move |line| (label.clone(), line)))
        .collect();
    merged.sort_by_key(|(_, line)| line.time);
    merged
}

/// Follows one instance's log like `tail -F`: every [`LogFollower::poll`] returns the complete
/// lines written since the last one. Rotations between two polls lose nothing: the rest of
/// the file being read, then every newer rotated file, then the new current file are read
/// (unless more files rotated away than `keep` allows). A log that does not exist yet is
/// waited for.
#[derive(Debug)]
pub struct LogFollower {
    log_dir: PathBuf,
    instance_id: String,
    /// The file being read (once it exists) and its inode.
    file: Option<(File, u64)>,
    /// The inode of the last file read to its end after it was rotated.
    finished_inode: Option<u64>,
    /// Nothing read yet and the first poll starts at the oldest rotated file.
    from_oldest: bool,
    pending: Vec<u8>,
}

impl LogFollower {
    /// Starts at the current end of the log: only lines written from now on.
    pub fn from_end(log_dir: &Path, instance_id: &str) -> Result<LogFollower> {
        let mut follower = LogFollower::from_start(log_dir, instance_id);
        let path = follower.current_path();
        if let Some((mut file, inode)) = open_with_inode(&path)? {
            file.seek(SeekFrom::End(0))
                .map_err(|e| DriverError::io(format!("seeking {}", path.display()), e))?;
            follower.file = Some((file, inode));
        }
        follower.from_oldest = false;
        Ok(follower)
    }

    /// Starts at the beginning: the first poll returns every line of the rotated and current
    /// files. For `logs -f --tail N`, keep the last N lines of the first poll: unlike
    /// reading and then following, nothing written in between is lost or repeated.
    pub fn from_start(log_dir: &Path, instance_id: &str) -> LogFollower {
        LogFollower {
            log_dir: log_dir.to_path_buf(),
            instance_id: instance_id.to_string(),
            file: None,
            finished_inode: None,
            from_oldest: true,
            pending: Vec::new(),
        }
    }

    fn current_path(&self) -> PathBuf {
        current_log_path(&self.log_dir, &self.instance_id)
    }

    /// The complete lines written since the last call, oldest first.
    pub fn poll(&mut self) -> Result<Vec<LogLine>> {
        let mut lines = Vec::new();
        let path = self.current_path();
        if let Some((file, inode)) = self.file.as_mut() {
            read_lines(file, &path, &mut self.pending, &mut lines)?;
            match std::fs::metadata(&path) {
                Ok(metadata) if metadata.ino() != *inode => {}
                // Unchanged, or rotated away and not recreated yet: keep reading the held file.
                _ => return Ok(lines),
            }
            // Rotated, and the writer has moved on to a new file: what is left is final.
            read_lines(file, &path, &mut self.pending, &mut lines)?;
            self.finished_inode = Some(*inode);
            self.file = None;
            self.pending.clear();
        }
        match self.finished_inode {
            None if !self.from_oldest => {
                self.file = open_with_inode(&path)?;
                if let Some((file, _)) = self.file.as_mut() {
                    read_lines(file, &path, &mut self.pending, &mut lines)?;
                }
            }
            _ => self.catch_up(&mut lines)?,
        }
        Ok(lines)
    }

    /// Reads every file newer than the finished one, oldest first, and holds the current one.
    /// A file list that changes while it is read (another rotation) is listed again.
    fn catch_up(&mut self, lines: &mut Vec<LogLine>) -> Result<()> {
        for attempt in 0..50 {
            if attempt > 0 {
                // The writer is in the middle of renaming files; let it finish.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let files = numbered_log_files(&self.log_dir, &self.instance_id)?;
            let inodes: Vec<Option<u64>> = files
                .iter()
                .map(|(_, file)| std::fs::metadata(file).ok().map(|m| m.ino()))
                .collect();
            if files.is_empty() {
                return Ok(()); // nothing written yet
            }
            let first_newer = match self.finished_inode {
                None => 0,
                Some(finished) => inodes
                    .iter()
                    .position(|inode| *inode == Some(finished))
                    .map_or(0, |position| position + 1),
            };
            let newer = &files[first_newer.min(files.len())..];
            // A directory listing taken during a rename cascade may miss names: the newer
            // files must be numbered N, N-1, ..., 1 and end with the current file.
            let mut numbers: Vec<Option<u32>> = newer.iter().map(|(number, _)| *number).collect();
            if first_newer > 0 {
                numbers.insert(0, files[first_newer - 1].0);
            }
            let contiguous = numbers.last() == Some(&None)
                && numbers
                    .windows(2)
                    .all(|pair| pair[1].map_or(pair[0] == Some(1), |n| pair[0] == Some(n + 1)));
            if !contiguous {
                continue;
            }
            let mut list_changed = false;
            for ((number, file_path), listed) in newer.iter().zip(&inodes[first_newer..]) {
                let Some((mut file, inode)) = open_with_inode(file_path)? else {
                    list_changed = true;
                    break;
                };
                if Some(inode) != *listed {
                    list_changed = true;
                    break;
                }
                read_lines(&mut file, file_path, &mut self.pending, lines)?;
                if number.is_none() {
                    self.file = Some((file, inode));
                    self.finished_inode = None;
                    self.from_oldest = false;
                    return Ok(());
                }
                self.finished_inode = Some(inode);
                self.pending.clear();
            }
            if !list_changed {
                return Ok(());
            }
        }
        // Still moving: the next poll carries on from the last file read.
        Ok(())
    }
}

fn open_with_inode(path: &Path) -> Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(file) => {
            let inode = file
                .metadata()
                .map_err(|e| DriverError::io(format!("reading {}", path.display()), e))?
                .ino();
            Ok(Some((file, inode)))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(DriverError::io(
            format!("opening {}", path.display()),
            error,
        )),
    }
}

/// Reads what `file` has beyond its position and moves the complete lines into `lines`.
fn read_lines(
    file: &mut File,
    path: &Path,
    pending: &mut Vec<u8>,
    lines: &mut Vec<LogLine>,
) -> Result<()> {
    file.read_to_end(pending)
        .map_err(|e| DriverError::io(format!("reading {}", path.display()), e))?;
    if let Some(last_newline) = pending.iter().rposition(|&b| b == b'\n') {
        let complete: Vec<u8> = pending.drain(..=last_newline).collect();
        lines.extend(
            String::from_utf8_lossy(&complete)
                .lines()
                .filter_map(parse_log_line),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_305_600 + seconds)
    }

    fn write(dir: &Path, name: &str, lines: &[(u64, &str)]) {
        let text: String = lines
            .iter()
            .map(|(second, text)| format_log_line(at(*second), LogStream::Stdout, text))
            .collect();
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|line| line.text.as_str()).collect()
    }

    #[test]
    fn lines_round_trip() {
        let line = format_log_line(at(0), LogStream::Stderr, "hello  world ");
        assert_eq!(line, "2026-11-22T00:00:00.000000Z stderr hello  world \n");
        let parsed = parse_log_line(&line).unwrap();
        assert_eq!(
            parsed,
            LogLine {
                time: at(0),
                stream: LogStream::Stderr,
                text: "hello  world ".into()
            }
        );
        assert_eq!(
            parse_log_line("2026-11-22T00:00:00Z stdout ").unwrap().text,
            ""
        );
        assert_eq!(
            parse_log_line("2026-11-22T00:00:00Z stdout").unwrap().text,
            ""
        );
        assert_eq!(parse_log_line("2026-11-22T00:00:00Z other x"), None);
        assert_eq!(parse_log_line("garbage"), None);
    }

    #[test]
    fn reads_rotated_files_oldest_first_with_since_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.0.log.2", &[(1, "a"), (2, "b")]);
        write(dir.path(), "web.0.log.1", &[(3, "c"), (4, "d")]);
        write(dir.path(), "web.0.log", &[(5, "e"), (6, "f")]);
        write(dir.path(), "web.1.log", &[(1, "other")]);
        let all = read_instance_log(dir.path(), "web.0", LogQuery::default()).unwrap();
        assert_eq!(texts(&all), ["a", "b", "c", "d", "e", "f"]);
        let tail = read_instance_log(
            dir.path(),
            "web.0",
            LogQuery {
                tail: Some(3),
                since: None,
            },
        )
        .unwrap();
        assert_eq!(texts(&tail), ["d", "e", "f"]);
        let since = read_instance_log(
            dir.path(),
            "web.0",
            LogQuery {
                since: Some(at(2)),
                tail: None,
            },
        )
        .unwrap();
        assert_eq!(texts(&since), ["b", "c", "d", "e", "f"]);
        let both = read_instance_log(
            dir.path(),
            "web.0",
            LogQuery {
                since: Some(at(2)),
                tail: Some(10),
            },
        )
        .unwrap();
        assert_eq!(texts(&both), ["b", "c", "d", "e", "f"]);
        assert_eq!(logged_instances(dir.path()).unwrap(), ["web.0", "web.1"]);
        assert!(
            read_instance_log(dir.path(), "absent", LogQuery::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn merges_instances_in_time_order() {
        let line = |second, text: &str| LogLine {
            time: at(second),
            stream: LogStream::Stdout,
            text: text.into(),
        };
        let merged = merge_by_time(vec![
            ("web.0", vec![line(1, "a1"), line(3, "a3")]),
            ("web.1", vec![line(1, "b1"), line(2, "b2")]),
        ]);
        let order: Vec<String> = merged
            .iter()
            .map(|(label, line)| format!("{label}:{}", line.text))
            .collect();
        assert_eq!(order, ["web.0:a1", "web.1:b1", "web.1:b2", "web.0:a3"]);
    }

    #[test]
    fn follower_sees_growth_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut follower = LogFollower::from_end(dir.path(), "web.0").unwrap();
        assert!(follower.poll().unwrap().is_empty());
        write(dir.path(), "web.0.log", &[(1, "a")]);
        assert_eq!(texts(&follower.poll().unwrap()), ["a"]);
        let path = dir.path().join("web.0.log");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format_log_line(at(2), LogStream::Stdout, "b"));
        text.push_str("2026-11-22T00:00:03.000000Z stdout partial");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(texts(&follower.poll().unwrap()), ["b"]);
        // Rotate: the writer finishes the partial line in the old file, then starts anew.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b" line\n")
            .unwrap();
        std::fs::rename(&path, dir.path().join("web.0.log.1")).unwrap();
        write(dir.path(), "web.0.log", &[(4, "c")]);
        assert_eq!(texts(&follower.poll().unwrap()), ["partial line", "c"]);
        assert!(follower.poll().unwrap().is_empty());
        // Two rotations between polls: the file in the middle is read too.
        let rotate = |from: &str, to: &str| {
            std::fs::rename(dir.path().join(from), dir.path().join(to)).unwrap()
        };
        rotate("web.0.log.1", "web.0.log.3");
        rotate("web.0.log", "web.0.log.2");
        write(dir.path(), "web.0.log.1", &[(5, "d")]);
        write(dir.path(), "web.0.log", &[(6, "e")]);
        assert_eq!(texts(&follower.poll().unwrap()), ["d", "e"]);
    }

    #[test]
    fn follower_from_end_skips_existing_lines() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.0.log", &[(1, "old")]);
        let mut follower = LogFollower::from_end(dir.path(), "web.0").unwrap();
        assert!(follower.poll().unwrap().is_empty());
        write(dir.path(), "web.0.log.1", &[(0, "older")]);
        let mut from_start = LogFollower::from_start(dir.path(), "web.0");
        assert_eq!(texts(&from_start.poll().unwrap()), ["older", "old"]);
    }
}
