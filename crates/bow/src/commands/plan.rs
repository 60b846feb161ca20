//! `bow plan`: what apply would change, against the state recorded in the state dir.
//! Exit 0: nothing to do; 2: changes; 1: error.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{Output, StackArgs};

pub fn run(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let mut session = crate::session::Session::load(args)?;
    crate::secret_store::attach_digests(&mut session)?;
    let recorded = recorded_spec(&session.state_dir)?;
    let plan = bow_plan::plan(&session.spec, recorded.as_ref());
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Text => print!("{}", render(&plan, &session.file)),
    }
    Ok(if plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The last applied spec in `state_dir` (read-only), if any.
pub fn recorded_spec(state_dir: &Path) -> Result<Option<bow_spec::Spec>> {
    crate::session::check_readable(&state_dir.join(bow_store::DATABASE_FILE))?;
    Ok(
        match bow_store::Store::open_existing(state_dir)
            .with_context(|| format!("cannot read the recorded state in {}", state_dir.display()))?
        {
            Some(store) => store.latest_revision()?.map(|revision| revision.spec),
            None => None,
        },
    )
}

/// The plan as text. Paths are compared absolute; people read them relative to the file.
pub fn render(plan: &bow_plan::Plan, file: &Path) -> String {
    let base = file
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    plan.to_string()
        .replace(&format!("\"{base}/"), "\"./")
        .replace(&format!("\"{base}\""), "\".\"")
}
