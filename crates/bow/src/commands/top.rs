//! `bow top`: a live terminal view of the running system. Every interval it asks the agent
//! for its counters (each instance's cpu time and memory, each service's requests, 5xx answers
//! and latency buckets at the edge) and shows the rates since the last ones: cpu as a share of
//! one core, requests per second, p99 and the share of 5xx over the interval. On a terminal it
//! redraws in place until Ctrl-C; `--once` (or output to a pipe) prints one view.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use bow_agent::api::{Request, Response, UsageReport};

use crate::cli::StackArgs;
use crate::session;

pub fn run(args: &StackArgs, interval: Duration, once: bool) -> Result<ExitCode> {
    if interval < Duration::from_millis(200) {
        bail!("--interval is at least 200ms");
    }
    let state_dir = session::state_dir_only(args)?;
    let sample = || -> Result<UsageReport> {
        match session::call(&state_dir, &Request::Usage, Duration::from_secs(10))? {
            Some(Response::Usage(report)) => Ok(*report),
            Some(Response::Error { message }) => bail!("{message}"),
            Some(other) => bail!("unexpected answer from the agent: {other:?}"),
            None => Err(session::no_agent(&state_dir)),
        }
    };
    let live = !once && std::io::stdout().is_terminal();
    let mut before = sample()?;
    loop {
        std::thread::sleep(interval);
        let now = sample()?;
        let view = render(&before, &now, interval);
        let mut out = std::io::stdout().lock();
        if live {
            // Home and clear, then the view: a redraw in place.
            write!(out, "\x1b[H\x1b[2J{view}")?;
        } else {
            write!(out, "{view}")?;
        }
        out.flush()?;
        if !live {
            return Ok(ExitCode::SUCCESS);
        }
        before = now;
    }
}

/// Bytes as `12.3 MiB`.
fn size(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// The view over the span between two samples.
pub fn render(before: &UsageReport, now: &UsageReport, interval: Duration) -> String {
    let seconds = ((now.at_ms - before.at_ms) as f64 / 1000.0).max(interval.as_secs_f64() / 2.0);
    let cpu_before: BTreeMap<&str, f64> = before
        .instances
        .iter()
        .filter_map(|i| Some((i.instance.as_str(), i.cpu_seconds?)))
        .collect();
    let traffic_before: BTreeMap<&str, &bow_agent::api::ServiceTraffic> = before
        .traffic
        .iter()
        .map(|t| (t.service.as_str(), t))
        .collect();
    let mut services: BTreeMap<&str, Vec<&bow_agent::api::InstanceUsage>> = BTreeMap::new();
    for instance in &now.instances {
        services
            .entry(&instance.service)
            .or_default()
            .push(instance);
    }
    for traffic in &now.traffic {
        services.entry(&traffic.service).or_default();
    }
    let mut rows = vec![[
        "SERVICE".to_string(),
        "HEALTH".to_string(),
        "CPU".to_string(),
        "MEMORY".to_string(),
        "REQ/S".to_string(),
        "P99".to_string(),
        "5XX".to_string(),
    ]];
    for (service, instances) in &services {
        let cpu_of = |i: &bow_agent::api::InstanceUsage| {
            Some((i.cpu_seconds? - cpu_before.get(i.instance.as_str())?).max(0.0) / seconds)
        };
        let healthy = instances
            .iter()
            .filter(|i| i.health == bow_agent::api::Health::Healthy)
            .count();
        let cpu: f64 = instances.iter().filter_map(|i| cpu_of(i)).sum();
        let memory: u64 = instances.iter().filter_map(|i| i.memory_bytes).sum();
        let (rate, p99, errors) = match (
            now.traffic.iter().find(|t| t.service == *service),
            traffic_before.get(service),
        ) {
            (Some(now_traffic), then) => {
                let zero = Vec::new();
                let (requests, server_errors, latency) = match then {
                    Some(t) => (t.requests, t.server_errors, &t.latency),
                    None => (0, 0, &zero),
                };
                let count = now_traffic.requests.saturating_sub(requests);
                let buckets: Vec<u64> = now_traffic
                    .latency
                    .iter()
                    .enumerate()
                    .map(|(k, n)| n.saturating_sub(latency.get(k).copied().unwrap_or(0)))
                    .collect();
                let p99 = bow_agent::histogram_quantile(&now.latency_bounds, &buckets, 0.99);
                let errors = now_traffic.server_errors.saturating_sub(server_errors);
                (
                    format!("{:.1}", count as f64 / seconds),
                    if count == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.0} ms", p99 * 1000.0)
                    },
                    if count == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.1}%", 100.0 * errors as f64 / count as f64)
                    },
                )
            }
            (None, _) => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        rows.push([
            service.to_string(),
            format!("{healthy}/{}", instances.len()),
            format!("{:.1}%", cpu * 100.0),
            size(memory),
            rate,
            p99,
            errors,
        ]);
        for instance in instances {
            rows.push([
                format!("  {}", instance.instance),
                instance.health.label().to_string(),
                cpu_of(instance).map_or("-".to_string(), |c| format!("{:.1}%", c * 100.0)),
                instance.memory_bytes.map_or("-".to_string(), size),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (k, cell) in row.iter().enumerate() {
            widths[k] = widths[k].max(cell.chars().count());
        }
    }
    let mut out = format!(
        "bow top: {}/{} revision {}, over {:.1} s (Ctrl-C ends)\n\n",
        now.project, now.environment, now.revision, seconds
    );
    for row in &rows {
        let mut line = String::new();
        for (k, cell) in row.iter().enumerate() {
            // Names left, numbers right.
            if k < 2 {
                line.push_str(&format!("{cell:<width$}  ", width = widths[k]));
            } else {
                line.push_str(&format!("{cell:>width$}  ", width = widths[k]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
