//! `bow import` (a Compose file → bow.yaml) and `bow export` (the resolved stack → Compose or
//! Kubernetes). Notes about what did not translate go to stderr, each with its place.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::{ExportFormat, StackArgs};

pub fn run(
    compose_file: &Path,
    output: Option<&Path>,
    force: bool,
    project: Option<&str>,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(compose_file)
        .with_context(|| format!("cannot read {}", compose_file.display()))?;
    let absolute = std::path::absolute(compose_file)?;
    let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
    let default_project = base
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .to_string();
    let env = |name: &str| std::env::var(name).ok();
    let mut imported = crate::compose::import::import(&text, &base, &default_project, &env)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", compose_file.display()))?;
    if let Some(project) = project {
        let first = imported.yaml.lines().next().unwrap_or_default().to_string();
        imported.yaml = imported
            .yaml
            .replacen(&first, &format!("project: {project:?}"), 1);
    }
    for note in &imported.notes {
        eprintln!(
            "{}:{}:{}: {}",
            compose_file.display(),
            note.line,
            note.col,
            note.text
        );
    }
    let header = format!(
        "# imported from {} by `bow import`{}\n",
        compose_file.display(),
        if imported.notes.is_empty() {
            String::new()
        } else {
            format!(
                "; {} notes on what did not translate were printed",
                imported.notes.len()
            )
        }
    );
    let text = format!("{header}{}", imported.yaml);
    // What was written must be a valid bow.yaml (paths relative to where it is written).
    let check = bow_spec::load(&text, &Default::default());
    match output {
        Some(path) => {
            if path.exists() && !force {
                bail!("{} exists: add --force to replace it", path.display());
            }
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let services = check.as_ref().map_or(0, |spec| spec.services.len());
            eprintln!(
                "wrote {} ({services} services, {} notes)",
                path.display(),
                imported.notes.len()
            );
        }
        None => print!("{text}"),
    }
    if let Err(diagnostics) = check {
        for diagnostic in &diagnostics {
            eprintln!(
                "the result is not a valid bow.yaml yet: {}:{}: {}",
                diagnostic.span.line, diagnostic.span.col, diagnostic.message
            );
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(format: ExportFormat, args: &StackArgs, output: Option<&Path>) -> Result<ExitCode> {
    let session = crate::session::Session::load(args)?;
    let exported = match format {
        ExportFormat::Compose => crate::compose::export::compose(&session.spec),
        ExportFormat::Kubernetes => crate::compose::export::kubernetes(&session.spec),
    };
    for note in &exported.notes {
        eprintln!("note: {note}");
    }
    match output {
        Some(path) => std::fs::write(path, &exported.text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{}", exported.text),
    }
    Ok(ExitCode::SUCCESS)
}
