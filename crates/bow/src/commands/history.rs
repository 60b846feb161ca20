//! `bow history [SERVICE]`: releases, newest first, with status and what changed. Reads the
//! state dir directly, so it works without an agent.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{Output, StackArgs};
use crate::session;

/// One release as `--output json` prints it.
#[derive(Serialize)]
struct Release {
    service: String,
    release: i64,
    status: String,
    strategy: String,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
    changes: String,
    reason: String,
    digest: String,
    code: Option<String>,
    /// The git commit its revision came from (`bow up --follow`): short hash and subject.
    #[serde(skip_serializing_if = "String::is_empty")]
    commit: String,
}

pub fn run(args: &StackArgs, service: Option<&str>, output: Output) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    session::check_readable(&state_dir.join(bow_store::DATABASE_FILE))?;
    let rows = match bow_store::Store::open_existing(&state_dir)
        .with_context(|| format!("cannot read the state in {}", state_dir.display()))?
    {
        Some(store) => store.releases(service)?,
        None => Vec::new(),
    };
    let mut releases: Vec<Release> = rows
        .into_iter()
        .map(|row| Release {
            service: row.service,
            release: row.number,
            status: row.status.as_str().to_string(),
            strategy: row.strategy,
            created_at_ms: row.created_at_ms,
            finished_at_ms: row.finished_at_ms,
            changes: row.changes,
            reason: row.reason,
            digest: row.digest,
            code: row.definition.code,
            commit: row.source,
        })
        .collect();
    releases.reverse();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&releases)?),
        Output::Text => print!("{}", table(&releases)),
    }
    Ok(ExitCode::SUCCESS)
}

fn table(releases: &[Release]) -> String {
    if releases.is_empty() {
        return "no releases yet: `bow up` or `bow apply` creates them\n".to_string();
    }
    let mut rows = vec![[
        "SERVICE".to_string(),
        "RELEASE".into(),
        "STATUS".into(),
        "STRATEGY".into(),
        "CREATED".into(),
        "TOOK".into(),
        "CHANGES".into(),
    ]];
    for release in releases {
        let mut changes = release.changes.clone();
        if !release.commit.is_empty() {
            changes = format!("commit {}: {changes}", release.commit);
        }
        if !release.reason.is_empty() {
            changes = format!("{changes} — {}", release.reason);
        }
        rows.push([
            release.service.clone(),
            release.release.to_string(),
            release.status.clone(),
            release.strategy.clone(),
            time(release.created_at_ms),
            release
                .finished_at_ms
                .map(|end| format!("{:.1}s", (end - release.created_at_ms) as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            changes,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-11-22 10:00:00` (UTC).
pub(crate) fn time(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    let stamp = bow_driver::format_rfc3339_micros(at);
    stamp.get(..19).unwrap_or(&stamp).replace('T', " ")
}
