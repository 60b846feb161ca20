//! `bow apply`: plan, show the plan, ask on a terminal, apply on the running agent, then
//! follow the deploys (a live view on a terminal, plain lines otherwise) to a summary.
//! Exit 0 when every release went live (or nothing changed), 1 when one failed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use bow_agent::api::{DeployReport, Phase, Request, Response, ServiceProgress};

use crate::cli::StackArgs;
use crate::session::{self, Session};

pub fn run(args: &StackArgs, yes: bool) -> Result<ExitCode> {
    let mut session = Session::load(args)?;
    crate::secret_store::attach_digests(&mut session)?;
    if session
        .call(&Request::Ping, Duration::from_secs(5))?
        .is_none()
    {
        return Err(session::no_agent(&session.state_dir));
    }
    let recorded = crate::commands::plan::recorded_spec(&session.state_dir)?;
    let plan = bow_plan::plan(&session.spec, recorded.as_ref());
    if !plan.has_changes() {
        println!(
            "nothing to do: {} ({}) already runs what the file says",
            session.spec.project, session.spec.environment
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", crate::commands::plan::render(&plan, &session.file));
    if let Some(note) = crate::commands::plan::engine_note(&session.spec) {
        println!("\n{note}");
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive && !yes && !confirm()? {
        eprintln!("not applied");
        return Ok(ExitCode::FAILURE);
    }
    let request = Request::Apply {
        spec: Box::new(session.spec.clone()),
    };
    let revision = match session.call(&request, Duration::from_secs(30))? {
        Some(Response::Applied { revision, .. }) => revision,
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => return Err(session::no_agent(&session.state_dir)),
    };
    println!("\napplying revision {revision}");
    follow(&session.state_dir, revision)
}

fn confirm() -> Result<bool> {
    print!("\napply these changes? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Follows the deploys of `revision` until each service is done or failed, then prints the
/// summary. Exit 1 when a release failed.
pub fn follow(state_dir: &Path, revision: i64) -> Result<ExitCode> {
    let live = std::io::stdout().is_terminal();
    let mut shown: BTreeMap<String, (Phase, String)> = BTreeMap::new();
    let mut drawn_lines = 0;
    let report = loop {
        let report = match session::call(
            state_dir,
            &Request::Progress { revision },
            Duration::from_secs(10),
        )? {
            Some(Response::Progress(report)) => report,
            Some(other) => bail!("unexpected answer from the agent: {other:?}"),
            None => bail!("the agent stopped while applying revision {revision}"),
        };
        if live {
            drawn_lines = redraw(&report, drawn_lines);
        } else {
            for service in &report.services {
                let now = (service.phase, service.detail.clone());
                if shown.get(&service.service) != Some(&now) {
                    println!("{}", progress_line(service));
                    shown.insert(service.service.clone(), now);
                }
            }
        }
        if report.done {
            break report;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    print!("\n{}", summary(&report));
    let failed = report.services.iter().any(|s| s.phase == Phase::Failed);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn progress_line(service: &ServiceProgress) -> String {
    format!(
        "{:<14} release {:<4} {:<11} {:<24} {}",
        service.service,
        service.release,
        service.strategy,
        service.phase.label(),
        service.detail
    )
    .trim_end()
    .to_string()
}

/// Redraws one line per service in place; returns how many lines it drew.
fn redraw(report: &DeployReport, previous: usize) -> usize {
    let mut out = String::new();
    if previous > 0 {
        out.push_str(&format!("\x1b[{previous}A"));
    }
    for service in &report.services {
        let mark = match service.phase {
            Phase::Done => "✓",
            Phase::Failed => "✗",
            _ => "…",
        };
        out.push_str(&format!("\r\x1b[K{mark} {}\n", progress_line(service)));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    report.services.len()
}

/// One paragraph per service: live with how long it took, or why it failed and what serves.
pub fn summary(report: &DeployReport) -> String {
    let mut out = String::new();
    for service in &report.services {
        let took = service
            .finished_at_ms
            .map(|end| format!("{:.1} s", (end - service.started_at_ms) as f64 / 1000.0))
            .unwrap_or_default();
        match &service.failure {
            None => out.push_str(&format!(
                "{}: release {} live ({}, {took})\n",
                service.service, service.release, service.strategy
            )),
            Some(failure) => {
                out.push_str(&format!(
                    "{}: release {} FAILED after {took}: {}\n",
                    service.service, service.release, failure.reason
                ));
                match failure.serving {
                    Some(old) => {
                        out.push_str(&format!("  rolled back: release {old} keeps serving\n"))
                    }
                    None => out.push_str(
                        "  nothing to roll back to: its instances keep being restarted\n",
                    ),
                }
                if let Some(instance) = &failure.instance
                    && !failure.last_lines.is_empty()
                {
                    out.push_str(&format!("  last lines of {instance}:\n"));
                    for line in &failure.last_lines {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
        }
    }
    out
}
