//! `bow restart SERVICE`: one instance at a time, each healthy before the next.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use bow_agent::api::{Request, Response};

use crate::cli::StackArgs;
use crate::session;

pub fn run(args: &StackArgs, service: &str) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let request = Request::Restart {
        service: service.to_string(),
    };
    match session::call(&state_dir, &request, Duration::from_secs(3600))? {
        Some(Response::Restarted { instances, .. }) => {
            eprintln!("restarted {}", instances.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => Err(session::no_agent(&state_dir)),
    }
}
