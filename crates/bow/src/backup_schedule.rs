//! Scheduled backups (`backup.schedule`) and drills (`backup.verify`): a thread of `bow agent`
//! that, at each minute a service's cron expression fires (UTC), runs `bow backup run SERVICE`
//! — the very command an operator runs, backup then restore drill then retention — or `bow
//! backup verify SERVICE`, as a child process with the agent's environment (its secrets key),
//! one at a time, and records the outcome as a `backup` event. A minute missed while a backup
//! ran is not run twice: the next due minute is. A second thread stores the WAL that servers
//! with `pitr: true` spooled (`bow backup wal-push`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bow_agent::Agent;
use bow_reconcile::EventKind;
use bow_spec::cron::Cron;

fn unix_minute() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 60) as i64)
}

/// Starts the scheduler and the WAL pusher; `file`, `environment` and `state_dir` are the
/// agent's own.
pub fn spawn(agent: Arc<Agent>, file: PathBuf, environment: String, state_dir: PathBuf) {
    spawn_wal_push(
        agent.clone(),
        file.clone(),
        environment.clone(),
        state_dir.clone(),
    );
    std::thread::Builder::new()
        .name("bow-backups".into())
        .spawn(move || {
            let mut last = unix_minute();
            loop {
                // Just past the next minute boundary.
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let into = Duration::from_millis((now.as_millis() % 60_000) as u64);
                std::thread::sleep(Duration::from_secs(60) - into + Duration::from_millis(200));
                let minute = unix_minute();
                if minute <= last {
                    continue;
                }
                last = minute;
                let Some(spec) = agent.applied_spec() else {
                    continue;
                };
                let due = |pick: fn(&bow_spec::Backup) -> Option<&String>| -> Vec<String> {
                    spec.services
                        .iter()
                        .filter(|(_, s)| {
                            s.backup
                                .as_ref()
                                .and_then(pick)
                                .and_then(|c| Cron::parse(c).ok())
                                .is_some_and(|cron| cron.fires_at(minute))
                        })
                        .map(|(name, _)| name.clone())
                        .collect()
                };
                let backups = due(|b| b.schedule.as_ref());
                let drills = due(|b| b.verify.as_ref());
                for service in &backups {
                    run(&agent, &file, &environment, &state_dir, service, "run");
                }
                // A backup run drills its new backup already: no second drill that minute.
                for service in drills.iter().filter(|s| !backups.contains(s)) {
                    run(&agent, &file, &environment, &state_dir, service, "verify");
                }
                // A long backup may have run past minutes: they are not made up.
                last = last.max(unix_minute());
            }
        })
        .expect("a thread starts");
}

fn run(
    agent: &Agent,
    file: &std::path::Path,
    environment: &str,
    state_dir: &std::path::Path,
    service: &str,
    action: &str,
) {
    let started = std::time::Instant::now();
    let what = if action == "run" {
        "backup"
    } else {
        "restore drill"
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bow"));
    let output = Command::new(exe)
        .args(["backup", action, service, "--env", environment])
        .arg("--file")
        .arg(file)
        .arg("--state-dir")
        .arg(state_dir)
        .env(crate::commands::backup::TRIGGER_VARIABLE, "scheduled")
        .stdin(Stdio::null())
        .output();
    // A run records its own `backup` event (kind, size, duration, result); the scheduler
    // records one only when the run could not: it did not start or was killed.
    if action == "run"
        && let Ok(output) = &output
        && output.status.code().is_some()
    {
        return;
    }
    let last_lines = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    };
    let message = match output {
        Ok(output) if output.status.success() => format!(
            "scheduled {what} of {service} done in {} s: {}",
            started.elapsed().as_secs(),
            last_lines(&output.stdout)
        ),
        Ok(output) => format!(
            "scheduled {what} of {service} FAILED ({}): {} — the previous backups are untouched",
            output.status,
            last_lines(&output.stderr)
        ),
        Err(error) => format!("scheduled {what} of {service} could not start: {error}"),
    };
    agent.emit(service, "", EventKind::Backup, &message);
}

/// How often the spools of services with `pitr: true` are looked at.
const WAL_PUSH_EVERY: Duration = Duration::from_secs(5);

/// A thread that stores what the servers of services with `backup: {pitr: true}` spooled
/// (`bow backup wal-push SERVICE`, a child with the agent's environment) whenever a spool has
/// segments. A failure is a `backup` event (once, until it works again): the segments wait in
/// the spool, and postgres keeps nothing back meanwhile.
fn spawn_wal_push(agent: Arc<Agent>, file: PathBuf, environment: String, state_dir: PathBuf) {
    std::thread::Builder::new()
        .name("bow-wal-push".into())
        .spawn(move || {
            let mut failing: std::collections::BTreeSet<String> = Default::default();
            loop {
                std::thread::sleep(WAL_PUSH_EVERY);
                let Some(spec) = agent.applied_spec() else {
                    continue;
                };
                let volumes = bow_agent::postgres::volumes_dir(&state_dir);
                for (service, definition) in &spec.services {
                    if !definition.backup.as_ref().is_some_and(|b| b.pitr) {
                        continue;
                    }
                    let spool = bow_agent::postgres_archive::spool_dir(&volumes.join(service));
                    if bow_backup::pitr::spooled(&spool).is_empty() {
                        continue;
                    }
                    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bow"));
                    let output = Command::new(exe)
                        .args(["backup", "wal-push", service, "--env", &environment])
                        .arg("--file")
                        .arg(&file)
                        .arg("--state-dir")
                        .arg(&state_dir)
                        .stdin(Stdio::null())
                        .output();
                    match output {
                        Ok(output) if output.status.success() => {
                            if failing.remove(service) {
                                agent.emit(
                                    service,
                                    "",
                                    EventKind::Backup,
                                    &format!("WAL archiving of {service} works again: the spool is stored"),
                                );
                            }
                        }
                        failed => {
                            if failing.insert(service.clone()) {
                                let why = match failed {
                                    Ok(output) => String::from_utf8_lossy(&output.stderr)
                                        .lines()
                                        .last()
                                        .unwrap_or("")
                                        .to_string(),
                                    Err(error) => error.to_string(),
                                };
                                agent.emit(
                                    service,
                                    "",
                                    EventKind::Backup,
                                    &format!(
                                        "WAL archiving of {service} FAILED: {why} — segments wait in {}",
                                        spool.display()
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        })
        .expect("a thread starts");
}
