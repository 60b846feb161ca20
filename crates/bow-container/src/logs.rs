//! A container's output into bow's log pipeline: the engine's log stream (stdout and stderr,
//! with the engine's timestamps) written line by line to `<log_dir>/<instance_id>.log` in
//! the same format, rotation and redaction as a process's, so `bow logs` mixes both. A
//! follower resumes after the last line already written (an agent restart loses and doubles
//! nothing: the engine keeps the lines meanwhile).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bow_driver::logs::LogStream;
use bow_driver::{LogRotation, Redactor, RotatingLog, SecretFile, parse_rfc3339};
use futures_util::StreamExt;

/// Where a follower writes.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub log_dir: PathBuf,
    pub instance_id: String,
    pub rotation: LogRotation,
}

/// Copies the container's output written since the last line in its log file; with
/// `keep_following`, goes on until the output ends (the container stopped or was removed).
pub async fn follow(
    docker: Docker,
    container_id: String,
    target: LogTarget,
    secrets: Vec<SecretFile>,
    keep_following: bool,
) {
    let last = last_written(&target.log_dir, &target.instance_id);
    let since = last
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i32);
    let mut log = match RotatingLog::open(&target.log_dir, &target.instance_id, target.rotation) {
        Ok(log) => log,
        Err(error) => {
            eprintln!(
                "bow agent: cannot open the log of {}: {error}",
                target.instance_id
            );
            return;
        }
    };
    let options = LogsOptionsBuilder::default()
        .follow(keep_following)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since)
        .build();
    let mut stream = docker.logs(&container_id, Some(options));
    while let Some(item) = stream.next().await {
        let Ok(output) = item else { break };
        let (stream_kind, bytes) = match output {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (LogStream::Stdout, message)
            }
            LogOutput::StdErr { message } => (LogStream::Stderr, message),
            LogOutput::StdIn { .. } => continue,
        };
        let (time, text) = split_timestamp(&bytes);
        // Lines of the second the last follower stopped in were written already.
        if let (Some(last), Some(time)) = (last, time)
            && time <= last
        {
            continue;
        }
        let mut redactor = Redactor::new(&secrets);
        let mut clean = Vec::with_capacity(text.len());
        redactor.feed(text, &mut clean);
        redactor.finish(&mut clean);
        let line = String::from_utf8_lossy(&clean);
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        log.write_line(time.unwrap_or_else(SystemTime::now), stream_kind, line);
    }
}

/// The time of the last line in the instance's log, if any.
fn last_written(log_dir: &Path, instance_id: &str) -> Option<SystemTime> {
    bow_driver::logs::tail(log_dir, instance_id, 1)
        .last()
        .map(|line| line.time)
}

/// `2026-12-06T13:10:00.123456789Z text` → the time and the text.
fn split_timestamp(bytes: &[u8]) -> (Option<SystemTime>, &[u8]) {
    let Some(space) = bytes.iter().position(|b| *b == b' ') else {
        return (None, bytes);
    };
    let time = std::str::from_utf8(&bytes[..space])
        .ok()
        .and_then(parse_rfc3339);
    match time {
        Some(time) => (Some(time), &bytes[space + 1..]),
        None => (None, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_timestamp_is_split_off() {
        let (time, text) = split_timestamp(b"2026-12-06T13:10:00.123456789Z hello world\n");
        assert!(time.is_some());
        assert_eq!(text, b"hello world\n");
        let (time, text) = split_timestamp(b"no timestamp here");
        assert!(time.is_none());
        assert_eq!(text, b"no timestamp here");
    }
}
