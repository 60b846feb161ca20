//! `bow validate`: check the file in every environment and report every problem at once.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{Output, StackArgs};
use crate::stack;

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: String,
    line: usize,
    column: usize,
    path: &'a str,
    message: &'a str,
    hint: Option<&'a str>,
}

pub fn run(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let (file, problem) = stack::read_lenient(args)?;
    let diagnostics = match problem {
        Some(not_utf8) => vec![not_utf8],
        None => bow_spec::validate_with(&file.text, &stack::load_options(args)),
    };
    if output == Output::Json {
        let items: Vec<JsonDiagnostic<'_>> = diagnostics
            .iter()
            .map(|d| JsonDiagnostic {
                file: file.path.display().to_string(),
                line: d.span.line,
                column: d.span.col,
                path: &d.path,
                message: &d.message,
                hint: d.hint.as_deref(),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "valid": items.is_empty(), "diagnostics": items })
            )?
        );
        return Ok(if diagnostics.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if diagnostics.is_empty() {
        println!("{} is valid", file.path.display());
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("{}", stack::render_diagnostics(&file, &diagnostics));
    Err(stack::invalid(&file, diagnostics.len()))
}
