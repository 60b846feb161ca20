//! `bow db switchover SERVICE [--to N]`: the agent moves a postgres service's primary to a
//! caught-up replica (docs/postgres.md says how, and what clients see).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use bow_agent::api::{Request, Response};

use crate::cli::{DbCommand, StackArgs};
use crate::session;

pub fn run(command: DbCommand, global: &StackArgs) -> Result<ExitCode> {
    match command {
        DbCommand::Switchover { stack, service, to } => {
            let state_dir = session::state_dir_only(&stack.or(global))?;
            let request = Request::Switchover {
                service: service.clone(),
                to,
            };
            match session::call(&state_dir, &request, Duration::from_secs(600))? {
                Some(Response::SwitchedOver { message }) => {
                    eprintln!("{message}");
                    Ok(ExitCode::SUCCESS)
                }
                Some(Response::Error { message }) => bail!("switchover of {service}: {message}"),
                Some(other) => bail!("unexpected answer from the agent: {other:?}"),
                None => Err(session::no_agent(&state_dir)),
            }
        }
    }
}
