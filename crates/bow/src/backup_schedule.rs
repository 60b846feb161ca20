//! Scheduled backups (`backup.schedule`): a thread of `bow agent` that, at each minute a
//! service's cron expression fires (UTC), runs `bow backup run SERVICE` — the very command an
//! operator runs, backup then restore drill then retention — as a child process with the
//! agent's environment (its secrets key), one at a time, and records the outcome as a `backup`
//! event. A minute missed while a backup ran is not run twice: the next due minute is.

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

/// Starts the scheduler; `file`, `environment` and `state_dir` are the agent's own.
pub fn spawn(agent: Arc<Agent>, file: PathBuf, environment: String, state_dir: PathBuf) {
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
                let due: Vec<String> = spec
                    .services
                    .iter()
                    .filter(|(_, s)| {
                        s.backup
                            .as_ref()
                            .and_then(|b| b.schedule.as_deref())
                            .and_then(|c| Cron::parse(c).ok())
                            .is_some_and(|cron| cron.fires_at(minute))
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for service in due {
                    run(&agent, &file, &environment, &state_dir, &service);
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
) {
    let started = std::time::Instant::now();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bow"));
    let output = Command::new(exe)
        .args(["backup", "run", service, "--env", environment])
        .arg("--file")
        .arg(file)
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .output();
    let last_lines = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    };
    let message = match output {
        Ok(output) if output.status.success() => format!(
            "scheduled backup of {service} done in {} s: {}",
            started.elapsed().as_secs(),
            last_lines(&output.stdout)
        ),
        Ok(output) => format!(
            "scheduled backup of {service} FAILED ({}): {} — the previous backups are untouched",
            output.status,
            last_lines(&output.stderr)
        ),
        Err(error) => format!("scheduled backup of {service} could not start: {error}"),
    };
    agent.emit(service, "", EventKind::Backup, &message);
}
