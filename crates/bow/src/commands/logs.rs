//! `bow logs`: every instance's captured output merged in time order, each line prefixed
//! `service.N | `. Reads the log files in the state dir, so it works without an agent.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use bow_driver::logs::{LogFollower, LogLine, LogQuery};

use crate::cli::StackArgs;
use crate::session;

pub struct LogsArgs<'a> {
    pub service: Option<&'a str>,
    pub follow: bool,
    pub since: Option<&'a str>,
    pub tail: Option<usize>,
    pub timestamps: bool,
}

pub fn run(args: &StackArgs, options: LogsArgs<'_>) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let log_dir = bow_agent::layout::log_dir(&state_dir);
    let since = options.since.map(parse_since).transpose()?;
    session::check_readable(&log_dir)?;
    let mut instances = bow_driver::logs::logged_instances(&log_dir).unwrap_or_default();
    if let Some(service) = options.service {
        instances.retain(|id| selects(service, id));
        if instances.is_empty() && !options.follow {
            bail!("no logs for service `{service}` in {}", log_dir.display());
        }
    }
    let query = LogQuery {
        since,
        tail: options.tail,
    };
    let mut sources = Vec::new();
    for id in &instances {
        let lines = bow_driver::logs::read_instance_log(&log_dir, id, query)
            .with_context(|| format!("cannot read the logs of {id}"))?;
        sources.push((id.clone(), lines));
    }
    let mut merged = bow_driver::logs::merge_by_time(sources);
    if let Some(tail) = options.tail {
        let skip = merged.len().saturating_sub(tail);
        merged.drain(..skip);
    }
    let width = instances.iter().map(String::len).max().unwrap_or(0);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (id, line) in &merged {
        write_line(&mut out, id, width, line, options.timestamps)?;
    }
    out.flush()?;
    if !options.follow {
        return Ok(ExitCode::SUCCESS);
    }
    drop(out);
    follow(&log_dir, options.service, width, options.timestamps)
}

fn write_line(
    out: &mut impl Write,
    id: &str,
    width: usize,
    line: &LogLine,
    timestamps: bool,
) -> std::io::Result<()> {
    if timestamps {
        writeln!(
            out,
            "{id:<width$} | {} {}",
            bow_driver::format_rfc3339_micros(line.time),
            line.text
        )
    } else {
        writeln!(out, "{id:<width$} | {}", line.text)
    }
}

/// Prints new lines of every matching instance as they arrive, including instances that
/// appear later.
fn follow(
    log_dir: &std::path::Path,
    service: Option<&str>,
    mut width: usize,
    timestamps: bool,
) -> Result<ExitCode> {
    let mut followers: BTreeMap<String, LogFollower> = BTreeMap::new();
    let mut first_scan = true;
    loop {
        for id in bow_driver::logs::logged_instances(log_dir).unwrap_or_default() {
            if service.is_some_and(|s| !selects(s, &id)) || followers.contains_key(&id) {
                continue;
            }
            let follower = if first_scan {
                LogFollower::from_end(log_dir, &id)?
            } else {
                LogFollower::from_start(log_dir, &id)
            };
            width = width.max(id.len());
            followers.insert(id, follower);
        }
        first_scan = false;
        let mut batch = Vec::new();
        for (id, follower) in followers.iter_mut() {
            batch.push((id.clone(), follower.poll().unwrap_or_default()));
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (id, line) in bow_driver::logs::merge_by_time(batch) {
            if write_line(&mut out, &id, width, &line, timestamps).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        drop(out);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `filter` (a service `web` or an instance `web.2`) selects the instance `id`.
fn selects(filter: &str, id: &str) -> bool {
    id == filter
        || id
            .rsplit_once('.')
            .is_some_and(|(service, _)| service == filter)
}

/// `--since 10m` (a duration ago) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<SystemTime> {
    if let Ok(duration) = text.parse::<bow_spec::units::Duration>() {
        return Ok(SystemTime::now() - duration.as_std());
    }
    bow_driver::parse_rfc3339(text).with_context(|| format!("--since: expected a duration like 10m or a time like 2026-11-22T10:00:00Z, found {text:?}"))
}
