//! `bow edge-plane` (hidden): the edge's own process, started by the agent (docs/agent.md).
//! It serves the edge, the discovery listeners and the TCP routes from what the agent sends
//! over `<state-dir>/edge/plane.sock`, and keeps serving while no agent runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

pub fn run(
    state_dir: PathBuf,
    project: String,
    environment: String,
    secrets_file: Option<PathBuf>,
    take_over: bool,
) -> Result<ExitCode> {
    // The key as the agent finds it: the environment (inherited) or the default file.
    let secrets = secrets_file.and_then(|file| {
        let key = bow_secrets::KeySource::from_env(&project, &environment).ok()?;
        Some(bow_secrets::Source { file, key })
    });
    let runtime = crate::runtime()?;
    let served = runtime.block_on(bow_agent::plane::serve(bow_agent::plane::PlaneConfig {
        state_dir,
        project,
        environment,
        secrets,
        take_over,
    }));
    match served {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(reason) => {
            eprintln!("bow edge: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// How the agent starts the edge process: this binary (`/proc/self/exe`, which still runs
/// this very binary after the file was replaced by an upgrade).
pub fn command(session: &crate::session::Session) -> bow_agent::plane::PlaneCommand {
    bow_agent::plane::PlaneCommand {
        exe: PathBuf::from("/proc/self/exe"),
        secrets_file: crate::secret_store::source(session).map(|source| source.file),
    }
}
