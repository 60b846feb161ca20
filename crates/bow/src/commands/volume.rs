//! `bow volume ls|rm`: the volumes of an environment: the named volumes of container services
//! (in the engine) and the data of postgres services (`<state-dir>/volumes/<service>`). Volumes
//! hold data: no deploy, `bow down` or removal of a service from bow.yaml deletes one; `bow
//! volume rm` is the one way, asked for by name and confirmed, and refused while in use.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use bow_container::Engine;
use bow_container::volumes::{self, VolumeInfo};
use bow_spec::VolumeSource;

use crate::cli::{Output, StackArgs, VolumeCommand};

pub fn run(command: crate::cli::VolumeCommand, outer: &StackArgs) -> Result<ExitCode> {
    match command {
        VolumeCommand::Ls { stack, output } => list(&stack.or(outer), output),
        VolumeCommand::Rm { stack, name, yes } => remove(&stack.or(outer), &name, yes),
    }
}

/// The services of the file that declare each named volume.
fn declared(spec: &bow_spec::Spec) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (service, definition) in &spec.services {
        for volume in &definition.volumes {
            if let VolumeSource::Named(name) = &volume.source {
                users.entry(name.clone()).or_default().push(service.clone());
            }
        }
    }
    users
}

fn engine_volumes(scope: &str) -> Result<Vec<VolumeInfo>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = Engine::from_env();
    runtime
        .block_on(volumes::list(&engine, scope))
        .map_err(|reason| anyhow!(reason))
}

fn list(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let session = crate::session::Session::load(args)?;
    let scope = format!("{}-{}", session.spec.project, session.spec.environment);
    let users = declared(&session.spec);
    let databases = postgres_volumes(&session);
    // Without container volumes in the file, an engine that does not answer is no error.
    let found = match engine_volumes(&scope) {
        Ok(found) => found,
        Err(_) if users.is_empty() => Vec::new(),
        Err(error) => return Err(error),
    };
    match output {
        Output::Json => {
            let mut rows: Vec<serde_json::Value> = found
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "name": v.name,
                        "kind": "container",
                        "engine_name": v.engine_name,
                        "mountpoint": v.mountpoint,
                        "declared_by": users.get(&v.name).cloned().unwrap_or_default(),
                    })
                })
                .collect();
            rows.extend(databases.iter().map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "kind": "postgres",
                    "mountpoint": d.path,
                    "declared_by": if d.in_file { vec![d.name.clone()] } else { Vec::new() },
                    "in_use": d.in_use,
                })
            }));
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Text => {
            if found.is_empty() && databases.is_empty() {
                println!("no volumes for {scope}");
            }
            for volume in &found {
                let by = users
                    .get(&volume.name)
                    .map_or("(no service declares it)".to_string(), |s| s.join(", "));
                println!("{:<20} {:<24} {}", volume.name, by, volume.mountpoint);
            }
            for database in &databases {
                let by = match (database.in_use, database.in_file) {
                    (true, _) => "postgres, in use",
                    (false, true) => "postgres, stopped",
                    (false, false) => "postgres, orphaned",
                };
                println!("{:<20} {:<24} {}", database.name, by, database.path);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The data volume of a postgres service (`<state-dir>/volumes/<service>`).
struct DatabaseVolume {
    name: String,
    path: String,
    /// A service of that name is in the file.
    in_file: bool,
    /// A server runs on it now.
    in_use: bool,
}

fn postgres_volumes(session: &crate::session::Session) -> Vec<DatabaseVolume> {
    let dir = bow_agent::postgres::volumes_dir(&session.state_dir);
    let mut rows: Vec<DatabaseVolume> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    DatabaseVolume {
                        in_file: session.spec.services.contains_key(&name),
                        in_use: running_server(&entry.path()).is_some(),
                        path: entry.path().display().to_string(),
                        name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

/// The pid of a live PostgreSQL server on a volume (its `postmaster.pid`).
fn running_server(volume: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(volume.join("data/postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
    alive.then_some(pid)
}

/// `bow volume rm` of a postgres service's data volume: refused while its server runs.
fn remove_database(session: &crate::session::Session, name: &str, yes: bool) -> Result<ExitCode> {
    let path = bow_agent::postgres::volumes_dir(&session.state_dir).join(name);
    if let Some(pid) = running_server(&path) {
        bail!(
            "volume {name} is in use: its postgres server runs (pid {pid}); remove the service from bow.yaml and apply, or bow down, first"
        );
    }
    if session.spec.services.contains_key(name) {
        eprintln!(
            "note: {name} is still in {}: its next start makes a new, empty cluster",
            session.file.display()
        );
    }
    if !confirmed(name, &path.display().to_string(), yes)? {
        return Ok(ExitCode::FAILURE);
    }
    std::fs::remove_dir_all(&path)?;
    println!("deleted volume {name} ({})", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `--yes`, or a `y` on a terminal.
fn confirmed(name: &str, place: &str, yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "deleting volume {name} deletes its data: add --yes to confirm (stdin is not a terminal)"
        );
    }
    print!("delete volume {name} ({place}) and all its data? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        eprintln!("kept");
        return Ok(false);
    }
    Ok(true)
}

fn remove(args: &StackArgs, name: &str, yes: bool) -> Result<ExitCode> {
    let session = crate::session::Session::load(args)?;
    if !name.contains('/')
        && !name.starts_with('.')
        && bow_agent::postgres::volumes_dir(&session.state_dir)
            .join(name)
            .is_dir()
    {
        return remove_database(&session, name, yes);
    }
    let scope = format!("{}-{}", session.spec.project, session.spec.environment);
    let found = engine_volumes(&scope)?;
    let Some(volume) = found.iter().find(|v| v.name == name) else {
        let known: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
        bail!(
            "no volume {name} in {scope} (volumes: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    if let Some(services) = declared(&session.spec).get(name) {
        eprintln!(
            "note: {} still declare{} {name} in {}: the next start makes it again, empty",
            services.join(", "),
            if services.len() == 1 { "s" } else { "" },
            session.file.display()
        );
    }
    if !confirmed(name, &volume.mountpoint, yes)? {
        return Ok(ExitCode::FAILURE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = Engine::from_env();
    match runtime.block_on(volumes::remove(&engine, &volume.engine_name)) {
        Ok(_) => {
            println!("deleted volume {name}");
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) if reason.contains("in use") || reason.contains("being used") => bail!(
            "volume {name} is in use by a running container ({reason}); stop its service first (remove it from bow.yaml and apply, or bow down)"
        ),
        Err(reason) => bail!("cannot delete volume {name}: {reason}"),
    }
}
