//! `bow promote --from ENV --to ENV [SERVICE…]`: deploys to one environment what is live in
//! another on this host — the same code version and the same image — with the target
//! environment's own settings (its overlay of the file: replicas, routes, env values).
//!
//! The services promoted take the target environment's definition from the file, with the
//! image the source runs; their code must be what the source runs (a process service runs its
//! files from disk, so bow refuses when they changed since: deploy them to the source first,
//! or check out the commit it runs). Every other service of the target stays as it runs.
//! `--dry-run` prints the plan (exit 2 when it would change something), like `bow plan`.
//!
//! Between hosts it goes through a file: `--from ENV --export FILE` writes what is live there
//! (per service: kind, image, code version, PostgreSQL major; nothing else of the source's
//! definition, so no setting or secret digest leaves the host), and `--from-file FILE --to ENV`
//! on the other host promotes exactly that.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bow_agent::api::{Request, Response};
use bow_spec::{Service, Workload};
use bow_store::ReleaseStatus;
use serde::{Deserialize, Serialize};

use crate::cli::StackArgs;
use crate::session::{self, Session};

pub struct Promotion<'a> {
    /// The source environment; with `from_file`, the file's.
    pub from: Option<&'a str>,
    /// The target; `None` with `export`.
    pub to: Option<&'a str>,
    pub from_state_dir: Option<PathBuf>,
    /// Write what is live in `from` here (`-`: stdout) instead of deploying it.
    pub export: Option<PathBuf>,
    /// Promote what a file written by `--export` on another host names.
    pub from_file: Option<PathBuf>,
    pub services: &'a [String],
    pub yes: bool,
    pub dry_run: bool,
}

/// What promotion carries of a live release: enough to pin the target to the same code and
/// image, nothing of the source's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    /// `process`, `container` or `postgres`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A container built from a context: its image is made here from the same code.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub built: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<u32>,
}

impl Pinned {
    fn of(service: &Service) -> Pinned {
        let (image, built, postgres_version) = match &service.workload {
            Workload::Container(c) => (c.image.clone(), c.build.is_some(), None),
            Workload::Postgres(p) => (None, false, Some(p.version)),
            Workload::Command(_) | Workload::Proxy(_) => (None, false, None),
        };
        Pinned {
            kind: service.workload.kind().to_string(),
            image,
            built,
            code: service.code.clone(),
            postgres_version,
        }
    }
}

/// The file `--export` writes and `--from-file` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Exported {
    bow_promotion: u32,
    project: String,
    environment: String,
    exported_at: String,
    services: BTreeMap<String, Pinned>,
}

pub fn run(args: &StackArgs, promotion: &Promotion<'_>) -> Result<ExitCode> {
    if promotion.from.is_some() && promotion.from == promotion.to {
        bail!(
            "--from and --to are both {}",
            promotion.from.unwrap_or_default()
        );
    }
    if let (Some(from), Some(file)) = (promotion.from, &promotion.export) {
        return export(args, promotion, from, file);
    }
    let to = promotion
        .to
        .context("--to names the environment that gets the releases")?;
    let to_args = StackArgs {
        env: Some(to.to_string()),
        ..args.clone()
    };
    let mut session = Session::load(&to_args)?;
    crate::secret_store::attach_digests(&mut session)?;
    let (from, live) = match (&promotion.from_file, promotion.from) {
        (Some(file), _) => read_export(file, &session.spec.project)?,
        (None, Some(from)) => {
            let dir = source_state_dir(args, promotion, &session.spec.project, from)?;
            (from.to_string(), live_definitions(&dir)?)
        }
        (None, None) => bail!("--from ENV or --from-file FILE names what is promoted"),
    };
    if from == to {
        bail!("--from and --to are both {to}");
    }
    if live.is_empty() {
        bail!("nothing is live in {from}: deploy it there first");
    }
    let Some(running) = crate::commands::plan::recorded_spec(&session.state_dir)? else {
        bail!(
            "nothing runs in {to} ({}): `bow up -e {to}` first; promotion changes a running environment",
            session.state_dir.display(),
        );
    };
    let names: Vec<String> = if promotion.services.is_empty() {
        session
            .spec
            .services
            .keys()
            .filter(|name| live.contains_key(*name))
            .cloned()
            .collect()
    } else {
        promotion.services.to_vec()
    };
    let mut promoted = running.clone();
    let mut notes = Vec::new();
    for name in &names {
        let Some(source) = live.get(name) else {
            bail!("{name} is not live in {from}");
        };
        let Some(mut target) = session.spec.services.get(name).cloned() else {
            bail!(
                "{name} is not a service of {to} in {}",
                session.file.display()
            );
        };
        pin(name, source, &mut target, &from, to)?;
        notes.push(format!(
            "{name}: {}",
            describe(source).unwrap_or_else(|| "its definition".to_string())
        ));
        promoted.services.insert(name.clone(), target);
    }
    let plan = bow_plan::plan(&promoted, Some(&running));
    println!("promote from {from} to {to}: {}\n", notes.join("; "));
    print!("{}", crate::commands::plan::render(&plan, &session.file));
    if promotion.dry_run {
        return Ok(if plan.has_changes() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    if !plan.has_changes() {
        println!("nothing to promote: {to} already runs it");
        return Ok(ExitCode::SUCCESS);
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive && !promotion.yes {
        print!("\npromote? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not promoted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let request = Request::Apply {
        spec: Box::new(promoted),
    };
    let revision = match session.call(&request, Duration::from_secs(30))? {
        Some(Response::Applied { revision, .. }) => revision,
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => return Err(session::no_agent(&session.state_dir)),
    };
    println!("\npromoting as revision {revision} of {to}");
    crate::commands::apply::follow(&session.state_dir, revision)
}

/// The source environment's state dir: `--from-state-dir` or its usual place.
fn source_state_dir(
    args: &StackArgs,
    promotion: &Promotion<'_>,
    project: &str,
    from: &str,
) -> Result<PathBuf> {
    match &promotion.from_state_dir {
        Some(dir) => Ok(dir.clone()),
        None => crate::stack::state_dir(
            &StackArgs {
                env: Some(from.to_string()),
                state_dir: None,
                ..args.clone()
            },
            project,
            from,
        ),
    }
}

/// `--export`: what is live in `from`, written for `--from-file` on another host.
fn export(
    args: &StackArgs,
    promotion: &Promotion<'_>,
    from: &str,
    file: &std::path::Path,
) -> Result<ExitCode> {
    let session = Session::load(&StackArgs {
        env: Some(from.to_string()),
        ..args.clone()
    })?;
    // On the source's host its state dir is this command's own (`--state-dir`) unless
    // `--from-state-dir` names another.
    let dir = match (&promotion.from_state_dir, &args.state_dir) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => source_state_dir(args, promotion, &session.spec.project, from)?,
    };
    let mut services = live_definitions(&dir)?;
    if services.is_empty() {
        bail!(
            "nothing is live in {from} ({}): deploy it there first",
            dir.display()
        );
    }
    if !promotion.services.is_empty() {
        for name in promotion.services {
            if !services.contains_key(name) {
                bail!("{name} is not live in {from}");
            }
        }
        services.retain(|name, _| promotion.services.contains(name));
    }
    let exported = Exported {
        bow_promotion: 1,
        project: session.spec.project.clone(),
        environment: from.to_string(),
        exported_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        services,
    };
    let text = serde_json::to_string_pretty(&exported)? + "\n";
    if file.as_os_str() == "-" {
        print!("{text}");
    } else {
        std::fs::write(file, &text).with_context(|| format!("cannot write {}", file.display()))?;
        eprintln!(
            "wrote what is live in {from} ({} services) to {}: `bow promote --from-file {} --to ENV` on the other host",
            exported.services.len(),
            file.display(),
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--from-file`: the source environment's name and what it runs; another project's file is
/// refused.
fn read_export(
    file: &std::path::Path,
    project: &str,
) -> Result<(String, BTreeMap<String, Pinned>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let exported: Exported = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a file `bow promote --export` wrote",
            file.display()
        )
    })?;
    if exported.bow_promotion != 1 {
        bail!(
            "{} is promotion format {}; this bow reads format 1",
            file.display(),
            exported.bow_promotion
        );
    }
    if exported.project != project {
        bail!(
            "{} was exported from project {}, and this file is project {project}",
            file.display(),
            exported.project
        );
    }
    Ok((exported.environment, exported.services))
}

/// What is live in an environment's state dir, by service.
fn live_definitions(state_dir: &std::path::Path) -> Result<BTreeMap<String, Pinned>> {
    session::check_readable(&state_dir.join(bow_store::DATABASE_FILE))?;
    let Some(store) = bow_store::Store::open_existing(state_dir)
        .with_context(|| format!("cannot read the state in {}", state_dir.display()))?
    else {
        return Ok(BTreeMap::new());
    };
    Ok(store
        .releases(None)?
        .into_iter()
        .filter(|r| r.status == ReleaseStatus::Live)
        .map(|r| (r.service, Pinned::of(&r.definition)))
        .collect())
}

/// Gives `target` what `source` runs: its image; its code must be the same.
fn pin(name: &str, source: &Pinned, target: &mut Service, from: &str, to: &str) -> Result<()> {
    match (source.kind.as_str(), &mut target.workload) {
        ("container", Workload::Container(to)) if !source.built => {
            to.image = source.image.clone();
        }
        ("container", Workload::Container(_)) | ("process", Workload::Command(_)) => {}
        ("postgres", Workload::Postgres(target_pg)) => {
            if source.postgres_version != Some(target_pg.version) {
                bail!(
                    "{name}: {from} runs PostgreSQL {}, {to} is set to {}: a major version is never promoted",
                    source.postgres_version.unwrap_or_default(),
                    target_pg.version
                );
            }
        }
        (kind, workload) => bail!(
            "{name} runs as a {kind} in {from} and is a {} in {to}: nothing to promote",
            workload.kind(),
        ),
    }
    if source.code != target.code {
        bail!(
            "{name}: {from} runs code {}, and its files here are {}: bow runs a process from its files, so it cannot deploy the older code to {to}. Check out what {from} runs (`git checkout <commit>`), or deploy these files to {from} first",
            source.code.as_deref().unwrap_or("-"),
            target.code.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

/// What a source release pins: its code and image.
fn describe(source: &Pinned) -> Option<String> {
    let parts: Vec<String> = [
        source.code.as_ref().map(|c| format!("code {c}")),
        source.image.as_ref().map(|i| format!("image {i}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}
