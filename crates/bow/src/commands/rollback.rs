//! `bow rollback SERVICE [--to RELEASE]`: a zero-downtime deploy of an earlier release (the
//! last good one before the live release by default), followed like `bow apply`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use bow_agent::api::{Request, Response};

use crate::cli::StackArgs;
use crate::session;

pub fn run(args: &StackArgs, service: &str, to: Option<i64>) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let request = Request::Rollback {
        service: service.to_string(),
        to,
    };
    let revision = match session::call(&state_dir, &request, Duration::from_secs(30))? {
        Some(Response::Applied { revision, .. }) => revision,
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => return Err(session::no_agent(&state_dir)),
    };
    println!("rolling {service} back as revision {revision}");
    crate::commands::follow::pause_for_rollback(&state_dir, service);
    crate::commands::apply::follow(&state_dir, revision)
}
