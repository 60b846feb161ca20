//! `bow promote --from ENV --to ENV [SERVICE…]`: deploys to one environment what is live in
//! another on this host — the same code version and the same image — with the target
//! environment's own settings (its overlay of the file: replicas, routes, env values).
//!
//! The services promoted take the target environment's definition from the file, with the
//! image the source runs; their code must be what the source runs (a process service runs its
//! files from disk, so bow refuses when they changed since: deploy them to the source first,
//! or check out the commit it runs). Every other service of the target stays as it runs.
//! `--dry-run` prints the plan (exit 2 when it would change something), like `bow plan`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bow_agent::api::{Request, Response};
use bow_spec::{Service, Workload};
use bow_store::ReleaseStatus;

use crate::cli::StackArgs;
use crate::session::{self, Session};

pub struct Promotion<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub from_state_dir: Option<PathBuf>,
    pub services: &'a [String],
    pub yes: bool,
    pub dry_run: bool,
}

pub fn run(args: &StackArgs, promotion: &Promotion<'_>) -> Result<ExitCode> {
    if promotion.from == promotion.to {
        bail!("--from and --to are both {}", promotion.to);
    }
    let to_args = StackArgs {
        env: Some(promotion.to.to_string()),
        ..args.clone()
    };
    let mut session = Session::load(&to_args)?;
    crate::secret_store::attach_digests(&mut session)?;
    let from_dir = match &promotion.from_state_dir {
        Some(dir) => dir.clone(),
        None => crate::stack::state_dir(
            &StackArgs {
                env: Some(promotion.from.to_string()),
                state_dir: None,
                ..args.clone()
            },
            &session.spec.project,
            promotion.from,
        )?,
    };
    let live = live_definitions(&from_dir)?;
    if live.is_empty() {
        bail!(
            "nothing is live in {} ({}): deploy it there first",
            promotion.from,
            from_dir.display()
        );
    }
    let Some(running) = crate::commands::plan::recorded_spec(&session.state_dir)? else {
        bail!(
            "nothing runs in {} ({}): `bow up -e {}` first; promotion changes a running environment",
            promotion.to,
            session.state_dir.display(),
            promotion.to
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
            bail!("{name} is not live in {}", promotion.from);
        };
        let Some(mut target) = session.spec.services.get(name).cloned() else {
            bail!(
                "{name} is not a service of {} in {}",
                promotion.to,
                session.file.display()
            );
        };
        pin(name, source, &mut target, promotion)?;
        notes.push(format!(
            "{name}: {}",
            describe(source).unwrap_or_else(|| "its definition".to_string())
        ));
        promoted.services.insert(name.clone(), target);
    }
    let plan = bow_plan::plan(&promoted, Some(&running));
    println!(
        "promote from {} to {}: {}\n",
        promotion.from,
        promotion.to,
        notes.join("; ")
    );
    print!("{}", crate::commands::plan::render(&plan, &session.file));
    if promotion.dry_run {
        return Ok(if plan.has_changes() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    if !plan.has_changes() {
        println!("nothing to promote: {} already runs it", promotion.to);
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
    println!("\npromoting as revision {revision} of {}", promotion.to);
    crate::commands::apply::follow(&session.state_dir, revision)
}

/// The definitions live in an environment's state dir, by service.
fn live_definitions(state_dir: &std::path::Path) -> Result<BTreeMap<String, Service>> {
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
        .map(|r| (r.service, r.definition))
        .collect())
}

/// Gives `target` what `source` runs: its image; its code must be the same.
fn pin(
    name: &str,
    source: &Service,
    target: &mut Service,
    promotion: &Promotion<'_>,
) -> Result<()> {
    match (&source.workload, &mut target.workload) {
        (Workload::Container(from), Workload::Container(to)) if from.build.is_none() => {
            to.image = from.image.clone();
        }
        (Workload::Container(_), Workload::Container(_))
        | (Workload::Command(_), Workload::Command(_)) => {}
        (Workload::Postgres(from), Workload::Postgres(to)) => {
            if from.version != to.version {
                bail!(
                    "{name}: {} runs PostgreSQL {}, {} is set to {}: a major version is never promoted",
                    promotion.from,
                    from.version,
                    promotion.to,
                    to.version
                );
            }
        }
        _ => bail!(
            "{name} runs as a {} in {} and is a {} in {}: nothing to promote",
            source.workload.kind(),
            promotion.from,
            target.workload.kind(),
            promotion.to
        ),
    }
    if source.code != target.code {
        bail!(
            "{name}: {} runs code {}, and its files here are {}: bow runs a process from its files, so it cannot deploy the older code to {}. Check out what {} runs (`git checkout <commit>`), or deploy these files to {} first",
            promotion.from,
            source.code.as_deref().unwrap_or("-"),
            target.code.as_deref().unwrap_or("-"),
            promotion.to,
            promotion.from,
            promotion.from
        );
    }
    Ok(())
}

/// What a source release pins: its code and image.
fn describe(source: &Service) -> Option<String> {
    let image = match &source.workload {
        Workload::Container(c) => c.image.clone(),
        _ => None,
    };
    let parts: Vec<String> = [
        source.code.as_ref().map(|c| format!("code {c}")),
        image.map(|i| format!("image {i}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}
