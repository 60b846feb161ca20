//! `bow status`: services and instances with pid, port, health, restarts, uptime.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use bow_agent::api::{Request, Response, StatusReport};

use crate::cli::{Output, StackArgs};
use crate::session;

pub fn run(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let report = match session::call(&state_dir, &Request::Status, Duration::from_secs(10))? {
        Some(Response::Status(report)) => *report,
        _ => return Err(session::no_agent(&state_dir)),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => {
            print!("{}", table(&report));
            print!(
                "{}",
                backups(&bow_agent::backup_state::read_all(&state_dir))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The last backup and the last passing restore drill of each service, with their age, and
/// a failure that came after either.
fn backups(records: &[(String, bow_agent::backup_state::BackupRecord)]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ago = |ms: Option<i64>| match ms {
        Some(ms) => format!("{} ago", uptime(now.saturating_sub(ms).max(0) as u64)),
        None => "never".to_string(),
    };
    let mut out = String::new();
    for (service, r) in records {
        if out.is_empty() {
            out.push_str(
                "
backups:
",
            );
        }
        out.push_str(&format!(
            "  {service}: last backup {} ({}), last verified restore {}",
            ago(r.last_success_ms),
            r.last_success_id.as_deref().unwrap_or("-"),
            ago(r.last_verified_ms)
        ));
        if r.failing() {
            out.push_str(&format!(
                "; LAST RUN FAILED {}: {}",
                ago(r.last_failure_ms),
                r.last_failure.as_deref().unwrap_or("?")
            ));
        }
        if r.drill_failing() {
            out.push_str(&format!(
                "; LAST DRILL FAILED {}: {}",
                ago(r.last_drill_failure_ms),
                r.last_drill_failure.as_deref().unwrap_or("?")
            ));
        }
        out.push('\n');
    }
    out
}

/// The status as a table, one row per instance.
pub fn table(report: &StatusReport) -> String {
    let mut out = format!(
        "{} ({}), agent pid {}, revision {}\n\n",
        report.project, report.environment, report.agent_pid, report.revision
    );
    let mut rows: Vec<[String; 9]> = vec![[
        "SERVICE".to_string(),
        "INSTANCE".into(),
        "RELEASE".into(),
        "PID".into(),
        "PORT".into(),
        "HEALTH".into(),
        "RESTARTS".into(),
        "UPTIME".into(),
        "LAST".into(),
    ]];
    for service in &report.services {
        if service.instances.is_empty() {
            rows.push([
                service.name.clone(),
                "-".into(),
                service.release.to_string(),
                "-".into(),
                "-".into(),
                service.state.label().into(),
                "-".into(),
                "-".into(),
                format!("{} replicas wanted", service.replicas),
            ]);
        }
        for instance in &service.instances {
            rows.push([
                service.name.clone(),
                instance.id.clone(),
                instance.release.to_string(),
                instance.pid.map_or("-".into(), |p| p.to_string()),
                instance.port.map_or("-".into(), |p| p.to_string()),
                health(instance),
                instance.restarts.to_string(),
                instance.uptime_ms.map_or("-".into(), uptime),
                instance
                    .last_error
                    .clone()
                    .or_else(|| instance.last_exit.clone())
                    .unwrap_or_default(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let sandboxes: Vec<String> = report
        .services
        .iter()
        .filter_map(|s| Some(format!("{} {}", s.name, s.sandbox.as_ref()?)))
        .collect();
    if !sandboxes.is_empty() {
        out.push_str(&format!(
            "\nsandbox: {} (what each may do: bow security SERVICE)\n",
            sandboxes.join(" · ")
        ));
    }
    if !report.discovery.is_empty() {
        out.push_str("\ninternal addresses (other services call these):\n");
        for entry in &report.discovery {
            let names = entry
                .names
                .as_ref()
                .map_or("env BOW_*_URL only".to_string(), |names| names.join(", "));
            let state = match &entry.error {
                Some(error) => error.clone(),
                None if !entry.listening => "starting".to_string(),
                None => format!("{} healthy", entry.healthy),
            };
            out.push_str(&format!(
                "  {}  {}://{}  {names}  ({state})\n",
                entry.service, entry.protocol, entry.address
            ));
        }
    }
    if let Some(edge) = &report.edge {
        out.push_str(&format!(
            "\nedge: https {} · http {} (redirects){}\n",
            edge.https,
            edge.http,
            edge.process
                .as_ref()
                .map(|process| format!(" · process {process}"))
                .unwrap_or_default()
        ));
        for route in &edge.routes {
            out.push_str(&format!("  {route}\n"));
        }
    }
    for note in &report.notes {
        out.push_str(&format!("\nnote: {note}\n"));
    }
    out
}

/// An instance's health; a postgres instance's role and lag beside it
/// (`healthy, replica lag 0 ms`).
fn health(instance: &bow_agent::api::InstanceStatus) -> String {
    let label = instance.health.label();
    match &instance.database {
        Some(role) if role.is_primary() => format!("{label}, primary"),
        Some(role) => format!(
            "{label}, replica lag {} ms{}",
            role.lag_ms.unwrap_or(0),
            if role.serving_reads {
                ""
            } else {
                " (not serving reads)"
            }
        ),
        None => label.to_string(),
    }
}

fn uptime(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h{}m", seconds / 3600, seconds / 60 % 60),
        _ => format!("{}d{}h", seconds / 86_400, seconds / 3600 % 24),
    }
}

/// Ensures the durations print compactly.
#[cfg(test)]
mod tests {
    #[test]
    fn uptime_is_compact() {
        assert_eq!(super::uptime(5_000), "5s");
        assert_eq!(super::uptime(125_000), "2m5s");
        assert_eq!(super::uptime(7_300_000), "2h1m");
        let _ = std::time::Duration::ZERO;
    }
}
