//! `bow volume ls|rm`: the named volumes of an environment. Volumes hold data: no deploy,
//! `bow down` or removal of a service from bow.yaml deletes one; `bow volume rm` is the one
//! way, asked for by name and confirmed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
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
    let found = engine_volumes(&scope)?;
    match output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = found
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "name": v.name,
                        "engine_name": v.engine_name,
                        "mountpoint": v.mountpoint,
                        "declared_by": users.get(&v.name).cloned().unwrap_or_default(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Text => {
            if found.is_empty() {
                println!("no volumes for {scope}");
            }
            for volume in &found {
                let by = users
                    .get(&volume.name)
                    .map_or("(no service declares it)".to_string(), |s| s.join(", "));
                println!("{:<20} {:<24} {}", volume.name, by, volume.mountpoint);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(args: &StackArgs, name: &str, yes: bool) -> Result<ExitCode> {
    let session = crate::session::Session::load(args)?;
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
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "deleting volume {name} deletes its data: add --yes to confirm (stdin is not a terminal)"
            );
        }
        print!(
            "delete volume {name} ({}) and all its data? [y/N] ",
            volume.mountpoint
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("kept");
            return Ok(ExitCode::FAILURE);
        }
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
