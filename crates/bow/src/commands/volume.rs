//! `bow volume ls` and `bow volume rm NAME`: bow-managed volumes (`<state-dir>/volumes/`; a
//! postgres service's data directory is the volume of its name). No deploy, `down` or removal
//! of a service from the file deletes one: only `bow volume rm` does, and never while a
//! server still runs on it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{Output, StackArgs};
use crate::session;

#[derive(serde::Serialize)]
struct Listed {
    name: String,
    path: String,
    bytes: u64,
    /// Whether a service of that name is in the stack file.
    in_file: bool,
    /// Whether a server runs on it now.
    in_use: bool,
}

pub fn list(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let in_file: Vec<String> = crate::stack::load(args)
        .map(|(_, spec)| spec.services.keys().cloned().collect())
        .unwrap_or_default();
    let dir = bow_agent::postgres::volumes_dir(&state_dir);
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            rows.push(Listed {
                in_file: in_file.contains(&name),
                in_use: running_pid(&path).is_some(),
                bytes: size(&path),
                path: path.display().to_string(),
                name,
            });
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!("no volumes in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:>10}  {:<8} PATH", "NAME", "SIZE", "STATE");
    for row in rows {
        let state = match (row.in_use, row.in_file) {
            (true, _) => "in use",
            (false, true) => "stopped",
            (false, false) => "orphaned",
        };
        println!(
            "{:<20} {:>10}  {:<8} {}",
            row.name,
            human(row.bytes),
            state,
            row.path
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn remove(args: &StackArgs, name: &str, yes: bool) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let path = bow_agent::postgres::volumes_dir(&state_dir).join(name);
    if name.contains('/') || name.starts_with('.') || !path.is_dir() {
        bail!(
            "no volume {name} in {}; `bow volume ls` lists them",
            bow_agent::postgres::volumes_dir(&state_dir).display()
        );
    }
    if let Some(pid) = running_pid(&path) {
        bail!(
            "volume {name} is in use: its server runs (pid {pid}); remove the service from the file and `bow up`, or `bow down`, first"
        );
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("removing volume {name} deletes its data for good; pass --yes to confirm");
        }
        eprint!(
            "This deletes {} ({}) for good. Type the volume's name to go on: ",
            path.display(),
            human(size(&path))
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != name {
            eprintln!("not removed");
            return Ok(ExitCode::from(1));
        }
    }
    std::fs::remove_dir_all(&path)?;
    eprintln!("removed volume {name} ({})", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The pid of a live PostgreSQL server on the volume (its `postmaster.pid`).
fn running_pid(volume: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(volume.join("data/postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
    alive.then_some(pid)
}

fn size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size(&e.path())).sum())
        .unwrap_or(0)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
