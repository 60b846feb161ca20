//! `bow config`: the fully resolved file for one environment (secret references stay references).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{ConfigOutput, StackArgs};
use crate::stack;

pub fn run(args: &StackArgs, output: ConfigOutput) -> Result<ExitCode> {
    let (_, spec) = stack::load(args)?;
    let text = match output {
        ConfigOutput::Json => {
            serde_json::to_string_pretty(&spec).context("cannot print the config as JSON")? + "\n"
        }
        ConfigOutput::Yaml => {
            serde_saphyr::to_string(&spec).context("cannot print the config as YAML")?
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
