//! `bow down`: stop every instance (dependants first) and the agent. Without a running agent,
//! the instances found in the state dir are stopped directly.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bow_agent::api::{Request, Response};
use bow_agent::{Agent, AgentConfig};

use crate::cli::StackArgs;
use crate::session;

pub fn run(args: &StackArgs) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    match session::call(&state_dir, &Request::Down, Duration::from_secs(3600))? {
        Some(Response::Down { stopped }) => {
            // The agent exits right after answering; return once it has released the state
            // dir, so that an `up` right after starts a new one.
            if !bow_agent::wait_released(&state_dir, Duration::from_secs(10)) {
                eprintln!("warning: the agent answered but has not exited yet");
            }
            eprintln!("stopped {} instances and the agent", stopped.len());
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => {
            if !state_dir.exists() {
                eprintln!("nothing runs: {} does not exist", state_dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let (project, environment) = project_of(args, &state_dir);
            let runtime = crate::runtime()?;
            let stopped = runtime.block_on(async {
                // A dying agent may hold the state dir's lock for a moment longer.
                let deadline = Instant::now() + Duration::from_secs(10);
                let agent = loop {
                    let started = Agent::start(AgentConfig {
                        state_dir: state_dir.clone(),
                        project: project.clone(),
                        environment: environment.clone(),
                        drivers: bow_agent::Drivers::local(
                            bow_driver::ShimCommand::current_exe(),
                            &state_dir,
                            &project,
                            &environment,
                        ),
                        event_sink: None,
                        reconcile_on_start: false,
                        secrets: None,
                        plane: None,
                    })
                    .await;
                    match started {
                        Err(bow_agent::AgentError::AlreadyRunning { .. })
                            if Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => break other?,
                    }
                };
                let stopped = agent.down().await;
                agent.wait_shutdown().await;
                anyhow::Ok(stopped)
            })?;
            eprintln!(
                "no agent was running; stopped {} instances found in {}",
                stopped.len(),
                state_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Project and environment for a state dir: from the recorded spec, else from the file.
fn project_of(args: &StackArgs, state_dir: &std::path::Path) -> (String, String) {
    if let Ok(Some(store)) = bow_store::Store::open_existing(state_dir)
        && let Ok(Some(revision)) = store.latest_revision()
    {
        return (revision.spec.project, revision.spec.environment);
    }
    let project = crate::stack::read(args)
        .ok()
        .and_then(|f| bow_spec::project_name(&f.text))
        .unwrap_or_else(|| "unknown".to_string());
    (project, crate::stack::environment(args))
}
