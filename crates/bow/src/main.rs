//! The `bow` binary: parses the command line and runs one command.

mod cli;
mod commands;
mod stack;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { stack, output } => {
            commands::validate::run(&stack.or(&cli.stack), output)
        }
        Command::Config { stack, output } => commands::config::run(&stack.or(&cli.stack), output),
        Command::Plan { stack, output } => commands::plan::run(&stack.or(&cli.stack), output),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
