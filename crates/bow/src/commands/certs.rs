//! `bow certs`: the edge's ACME certificates, from `<state-dir>/acme/hosts.json` (written by the
//! agent as it issues and renews): host, issuer, expiry, next renewal, last result.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{Output, StackArgs};
use crate::session;

#[derive(Serialize)]
struct Row {
    host: String,
    issuer: String,
    not_after_ms: Option<i64>,
    next_renewal_ms: Option<i64>,
    last_result: String,
}

pub fn run(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let dir = bow_agent::acme::acme_dir(&state_dir);
    let rows: Vec<Row> = bow_acme::read_records(&dir)
        .into_iter()
        .map(|(host, record)| Row {
            host,
            issuer: record.issuer,
            not_after_ms: record.not_after_ms,
            next_renewal_ms: record.next_renewal_ms,
            last_result: record.last_result,
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text if rows.is_empty() => println!(
            "no ACME certificates in {}: with `edge.tls: acme` the agent issues one per routed host; otherwise the local CA signs them (`bow trust`)",
            dir.display()
        ),
        Output::Text => {
            let mut table = vec![[
                "HOST".to_string(),
                "ISSUER".into(),
                "EXPIRES".into(),
                "NEXT RENEWAL".into(),
                "LAST RESULT".into(),
            ]];
            for row in &rows {
                table.push([
                    row.host.clone(),
                    row.issuer.clone(),
                    when(row.not_after_ms),
                    when(row.next_renewal_ms),
                    row.last_result.clone(),
                ]);
            }
            let widths: Vec<usize> = (0..5)
                .map(|c| {
                    table
                        .iter()
                        .map(|r| r[c].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in table {
                let line: String = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, width)| format!("{cell:<width$}  "))
                    .collect();
                println!("{}", line.trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn when(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_string(), crate::commands::history::time)
}
