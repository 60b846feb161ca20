//! What most commands need: the loaded stack (paths anchored), its state dir, the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bow_agent::api::{Request, Response};
use bow_spec::Spec;

use crate::cli::StackArgs;
use crate::stack;

/// A validated stack for one environment, with absolute paths, and where its state lives.
pub struct Session {
    pub file: PathBuf,
    pub spec: Spec,
    pub state_dir: PathBuf,
}

impl Session {
    pub fn load(args: &StackArgs) -> Result<Session> {
        let (file, mut spec) = stack::load(args)?;
        let absolute = std::path::absolute(&file.path)
            .with_context(|| format!("cannot resolve {}", file.path.display()))?;
        let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
        bow_spec::anchor_paths(&mut spec, &base);
        let state_dir = stack::state_dir(args, &spec.project, &spec.environment)?;
        let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
        crate::code_version::stamp(&mut spec, &absolute, &state_dir);
        Ok(Session {
            file: absolute,
            spec,
            state_dir,
        })
    }

    /// Sends one request to this stack's agent; `None` when no agent runs.
    pub fn call(&self, request: &Request, timeout: Duration) -> Result<Option<Response>> {
        call(&self.state_dir, request, timeout)
    }
}

/// Sends one request to the agent of `state_dir`; `None` when no agent runs.
pub fn call(state_dir: &Path, request: &Request, timeout: Duration) -> Result<Option<Response>> {
    let response = bow_agent::client::call(state_dir, request, timeout)
        .with_context(|| format!("cannot talk to the agent in {}", state_dir.display()))?;
    if let Some(Response::Error { message }) = &response {
        bail!("{message}");
    }
    Ok(response)
}

/// The state dir of the stack: from the file when it is readable, otherwise from the flags.
pub fn state_dir_only(args: &StackArgs) -> Result<PathBuf> {
    if let Some(dir) = stack::explicit_state_dir(args) {
        return Ok(dir);
    }
    let file = stack::read(args)?;
    let project = bow_spec::project_name(&file.text).with_context(|| {
        format!(
            "{} has no valid `project:`; pass --state-dir",
            file.path.display()
        )
    })?;
    stack::state_dir(args, &project, &stack::environment(args))
}

/// A message for when no agent answers.
pub fn no_agent(state_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "no agent is running for {}; start one with `bow up -d`",
        state_dir.display()
    )
}
