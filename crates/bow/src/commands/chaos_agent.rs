//! `bow chaos agent`: the agent SIGKILLed at random moments and started again at once, the
//! way a service manager restarts it, whatever it was doing (deploys under way included). The
//! instances run on without it; what is measured is how long each new agent takes to answer
//! and to have every service healthy again, and the shared report says whether the system
//! came back to where it was.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::commands::chaos::Random;
use crate::session::Session;

pub fn drill(
    session: &Session,
    every: Duration,
    duration: Duration,
    random: &mut Random,
) -> Result<String> {
    let started = Instant::now();
    let mut back_after = Vec::new();
    while started.elapsed() < duration {
        // A random moment of 0.5–1.5 × `every`, within the drill.
        let span = every.as_millis().max(2) as usize;
        let wait = Duration::from_millis((span / 2 + random.below(span)) as u64);
        std::thread::sleep(wait.min(duration.saturating_sub(started.elapsed())));
        if started.elapsed() >= duration {
            break;
        }
        let Some(pid) = agent_pid(session) else {
            bail!("no agent runs for {}", session.state_dir.display());
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is the agent's own.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let gone = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed_at = Instant::now();
        let up = std::process::Command::new(std::env::current_exe()?)
            .arg("up")
            .arg("-d")
            .arg("--file")
            .arg(&session.file)
            .arg("--state-dir")
            .arg(&session.state_dir)
            .arg("--env")
            .arg(&session.spec.environment)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()?;
        if !up.status.success() {
            eprintln!(
                "chaos: the agent started again but `bow up -d` said: {}",
                String::from_utf8_lossy(&up.stderr).trim()
            );
        }
        back_after.push(killed_at.elapsed());
        eprintln!(
            "chaos: agent pid {pid} killed; a new agent had every service healthy after {} ms",
            killed_at.elapsed().as_millis()
        );
    }
    if back_after.is_empty() {
        return Ok("the agent was not killed (the drill was shorter than half of --every)".into());
    }
    back_after.sort();
    let median = back_after[back_after.len() / 2];
    let worst = back_after[back_after.len() - 1];
    Ok(format!(
        "{} agent kills, each followed by `bow up -d`: every service healthy again after {} ms (median), {} ms at worst",
        back_after.len(),
        median.as_millis(),
        worst.as_millis()
    ))
}

fn agent_pid(session: &Session) -> Option<i32> {
    std::fs::read_to_string(session.state_dir.join(bow_agent::api::PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}
