//! What the alert rules see (alerts.rs runs them): every evaluation derives the conditions that
//! hold now, one per rule and service (or host, or series), from the instances' states, the
//! store's releases, the edge's counters over a five-minute window, instances' memory, the
//! certificates the edge serves, the state dir's disk, and — for the operator's own rules —
//! the agent's own series as `/metrics` shows them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, now_ms};
use crate::alerts::Condition;
use crate::api::Health;

/// The window of the edge's rules (5xx share, p99).
const WINDOW: Duration = Duration::from_secs(300);
/// Fewer requests than this in the window say nothing about a service's errors or latency.
const MIN_REQUESTS: u64 = 20;
/// Memory use of the limit, and disk use of the state dir's file system, that alert.
const MEMORY_RATIO: f64 = 0.9;
const DISK_RATIO: f64 = 0.9;

/// One evaluation's view of a service at the edge.
struct EdgeSample {
    at_ms: i64,
    requests: u64,
    server_errors: u64,
    /// Per-bucket latency counts.
    latency: Vec<u64>,
}

/// What the edge's rules remember between evaluations: per service, its samples over the
/// last [`WINDOW`].
#[derive(Default)]
pub(crate) struct History {
    edge: BTreeMap<String, VecDeque<EdgeSample>>,
}

fn condition(
    name: &str,
    service: &str,
    severity: &str,
    summary: String,
    wait: Duration,
) -> Condition {
    Condition {
        name: name.to_string(),
        service: service.to_string(),
        extra: BTreeMap::new(),
        severity: severity.to_string(),
        summary,
        wait,
    }
}

/// What holds now. `series` is the agent's `/metrics` text when user rules need it.
pub(crate) fn conditions(
    agent: &Arc<Agent>,
    settings: &bow_spec::Alerts,
    history: &mut History,
    series: Option<&str>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    instances(agent, settings, &mut out);
    releases(agent, &mut out);
    edge(agent, settings, history, &mut out);
    certificates(agent, settings, &mut out);
    edge_process(agent, &mut out);
    // Backups: a failed run or drill holds until one succeeds again (`backup_state`).
    for (name, service, summary) in crate::backup_state::failing(&agent.state_dir) {
        out.push(condition(
            name,
            &service,
            "critical",
            summary,
            Duration::ZERO,
        ));
    }
    if let Some(used) = disk_used_ratio(&agent.state_dir)
        && used >= DISK_RATIO
    {
        out.push(condition(
            "StateDiskFull",
            "",
            "critical",
            format!(
                "the file system of {} is {:.0}% full",
                agent.state_dir.display(),
                used * 100.0
            ),
            Duration::ZERO,
        ));
    }
    if let Some(series) = series {
        out.extend(user_rules(&settings.rules, &parse_series(series)));
    }
    out
}

/// How long `EdgeCrashed` holds after a crash of the edge process.
const EDGE_CRASH_HOLDS_MS: i64 = 15 * 60 * 1000;

/// The edge process: crashed lately, or not serving routes at all.
fn edge_process(agent: &Arc<Agent>, out: &mut Vec<Condition>) {
    if let Some((at_ms, pid)) = agent.plane.last_crash()
        && now_ms() - at_ms < EDGE_CRASH_HOLDS_MS
    {
        out.push(condition(
            "EdgeCrashed",
            "",
            "warning",
            format!(
                "the edge process (pid {pid}) ended by itself at {} and was started again",
                crate::agent::clock(at_ms)
            ),
            Duration::ZERO,
        ));
    }
    let routed = agent
        .applied_spec()
        .is_some_and(|spec| spec.services.values().any(|s| !s.routes.is_empty()));
    let serving = agent.plane.report().is_some_and(|r| r.https.is_some());
    if routed && !serving {
        let why = agent
            .edge_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "no edge process answers".to_string());
        out.push(condition(
            "EdgeDown",
            "",
            "critical",
            format!("services have routes and the edge does not serve them: {why}"),
            Duration::from_secs(30),
        ));
    }
}

/// Crash loops, services without a healthy instance, memory near the limit.
fn instances(agent: &Arc<Agent>, settings: &bow_spec::Alerts, out: &mut Vec<Condition>) {
    let status = agent.status();
    for service in &status.services {
        let looping: Vec<&str> = service
            .instances
            .iter()
            .filter(|i| i.health == Health::CrashLooping)
            .map(|i| i.id.as_str())
            .collect();
        if !looping.is_empty() {
            out.push(condition(
                "InstanceCrashLooping",
                &service.name,
                "critical",
                format!(
                    "{} crash-looping (dies before it is healthy, restarted with backoff)",
                    looping.join(", ")
                ),
                Duration::ZERO,
            ));
        }
        let healthy = service
            .instances
            .iter()
            .filter(|i| i.health == Health::Healthy)
            .count();
        if service.replicas > 0 && healthy == 0 {
            out.push(condition(
                "ServiceDown",
                &service.name,
                "critical",
                format!(
                    "no healthy instance of {} for {}",
                    service.name, settings.no_healthy_for
                ),
                settings.no_healthy_for.as_std(),
            ));
        }
        for instance in &service.instances {
            let limit = agent
                .lock()
                .slot(&service.name, instance.index)
                .and_then(|slot| slot.definition.resources.memory)
                .map(|size| size.bytes());
            let used = crate::adopt::live_handle(agent, &instance.id).and_then(|handle| {
                agent
                    .drivers
                    .for_handle(&handle)
                    .usage(&handle)
                    .memory_bytes
            });
            if let (Some(limit), Some(used)) = (limit, used)
                && limit > 0
                && used as f64 >= MEMORY_RATIO * limit as f64
            {
                out.push(condition(
                    "MemoryNearLimit",
                    &service.name,
                    "warning",
                    format!(
                        "{} uses {} MiB of its {} MiB limit",
                        instance.id,
                        used >> 20,
                        limit >> 20
                    ),
                    Duration::ZERO,
                ));
                break;
            }
        }
    }
}

/// A service whose newest release failed (rolled back, or never healthy).
fn releases(agent: &Arc<Agent>, out: &mut Vec<Condition>) {
    let mut newest: BTreeMap<String, bow_store::ReleaseRow> = BTreeMap::new();
    for release in agent.store().releases(None).unwrap_or_default() {
        if newest
            .get(&release.service)
            .is_none_or(|r| r.number < release.number)
        {
            newest.insert(release.service.clone(), release);
        }
    }
    for (service, release) in &newest {
        if release.status == bow_store::ReleaseStatus::Failed {
            out.push(condition(
                "DeployFailed",
                service,
                "warning",
                format!("release {} failed: {}", release.number, release.reason),
                Duration::ZERO,
            ));
        }
    }
}

/// The share of 5xx answers and the p99 at the edge, per service, over [`WINDOW`].
fn edge(
    agent: &Arc<Agent>,
    settings: &bow_spec::Alerts,
    history: &mut History,
    out: &mut Vec<Condition>,
) {
    let edge = agent.edge_metrics();
    let Some(edge) = edge else { return };
    let now = now_ms();
    for service in &edge.services {
        let samples = history.edge.entry(service.service.clone()).or_default();
        samples.push_back(EdgeSample {
            at_ms: now,
            requests: service.requests.total(),
            server_errors: service.requests.server_error,
            latency: service.latency.counts.clone(),
        });
        while samples
            .front()
            .is_some_and(|s| now - s.at_ms > WINDOW.as_millis() as i64)
        {
            samples.pop_front();
        }
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
            continue;
        };
        let requests = last.requests.saturating_sub(first.requests);
        if requests < MIN_REQUESTS {
            continue;
        }
        let seconds = (last.at_ms - first.at_ms) / 1000;
        let errors = last.server_errors.saturating_sub(first.server_errors);
        if errors as f64 > settings.error_ratio * requests as f64 {
            out.push(condition(
                "HighErrorRate",
                &service.service,
                "critical",
                format!("{errors} of {requests} requests answered 5xx in the last {seconds} s"),
                Duration::ZERO,
            ));
        }
        if let Some(limit) = settings.p99_over {
            let window: Vec<u64> = last
                .latency
                .iter()
                .zip(&first.latency)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect();
            let p99 = crate::dashboard_history::quantile(&window, 0.99);
            if p99 > limit.as_std().as_secs_f64() {
                out.push(condition(
                    "HighLatency",
                    &service.service,
                    "warning",
                    format!(
                        "p99 {:.0} ms over {requests} requests in the last {seconds} s (limit {limit})",
                        p99 * 1000.0
                    ),
                    Duration::ZERO,
                ));
            }
        }
    }
}

/// A certificate the edge serves that ends within `certificate_expiry` (one alert per host).
fn certificates(agent: &Arc<Agent>, settings: &bow_spec::Alerts, out: &mut Vec<Condition>) {
    let now = now_ms();
    let within = settings.certificate_expiry.as_std().as_millis() as i64;
    for certificate in crate::certificates::served(agent) {
        if certificate.not_after_ms - now > within {
            continue;
        }
        let left = certificate.not_after_ms - now;
        let summary = if left <= 0 {
            format!("the certificate of {} has expired", certificate.host)
        } else {
            format!(
                "the certificate of {} ({}) ends in {}",
                certificate.host,
                certificate.source,
                bow_spec::units::Duration(Duration::from_secs((left / 1000) as u64))
            )
        };
        let mut found = condition(
            "CertificateExpiring",
            "",
            if left < 3 * 86_400_000 {
                "critical"
            } else {
                "warning"
            },
            summary,
            Duration::ZERO,
        );
        found.extra.insert("host".to_string(), certificate.host);
        out.push(found);
    }
}

/// One sample of the agent's exposition: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of Prometheus' text format (comments skipped; labels unescaped).
pub(crate) fn parse_series(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_end, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some((labels, rest)) = parse_labels(&line[i + 1..]) else {
                    continue;
                };
                (i, labels, rest)
            }
            Some(i) => (i, BTreeMap::new(), &line[i..]),
            None => continue,
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => match other.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Sample {
            name: line[..name_end].to_string(),
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y\"z"} rest` → the labels and what follows the `}`.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(name.trim().to_string(), value);
        rest = &after[end + 1..];
    }
}

/// The operator's rules over the agent's series: one condition per matching series over (or
/// under) its threshold.
pub(crate) fn user_rules(rules: &[bow_spec::AlertRule], samples: &[Sample]) -> Vec<Condition> {
    let mut out = Vec::new();
    for rule in rules {
        for sample in samples.iter().filter(|s| s.name == rule.metric) {
            if !rule
                .labels
                .iter()
                .all(|(k, v)| sample.labels.get(k) == Some(v))
            {
                continue;
            }
            let (holds, relation, threshold) = match (rule.above, rule.below) {
                (Some(above), _) => (sample.value > above, "above", above),
                (None, Some(below)) => (sample.value < below, "below", below),
                (None, None) => continue,
            };
            if !holds {
                continue;
            }
            let mut labels = sample.labels.clone();
            let service = labels.remove("service").unwrap_or_default();
            let shown = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let summary = match &rule.summary {
                Some(summary) => format!("{summary} ({} = {})", rule.metric, sample.value),
                None => format!(
                    "{}{{{shown}}} = {} is {relation} {threshold}",
                    rule.metric, sample.value
                ),
            };
            out.push(Condition {
                name: rule.name.clone(),
                service,
                extra: labels,
                severity: rule.severity.clone(),
                summary,
                wait: rule.wait.as_std(),
            });
        }
    }
    out
}

/// The used share of the file system that holds `dir` (blocks for unprivileged users).
fn disk_used_ratio(dir: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs the call fills.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 || stat.f_blocks == 0 {
        return None;
    }
    let total = stat.f_blocks as f64;
    let available = stat.f_bavail as f64;
    let free = stat.f_bfree as f64;
    // Used over what users may fill, as `df` shows it.
    let used = total - free;
    Some(used / (used + available))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP bow_instance_memory_bytes Memory.\n\
        # TYPE bow_instance_memory_bytes gauge\n\
        bow_instance_memory_bytes{service=\"web\",instance=\"web.1\"} 900\n\
        bow_instance_memory_bytes{service=\"web\",instance=\"web.2\"} 100\n\
        bow_instance_memory_bytes{service=\"api\",instance=\"a \\\"q\\\"\"} 5000\n\
        bow_agent_up 1\n";

    fn rule(
        above: Option<f64>,
        below: Option<f64>,
        labels: &[(&str, &str)],
    ) -> bow_spec::AlertRule {
        bow_spec::AlertRule {
            name: "WebMemory".to_string(),
            metric: "bow_instance_memory_bytes".to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            above,
            below,
            wait: bow_spec::units::Duration(Duration::from_secs(60)),
            severity: "warning".to_string(),
            summary: None,
        }
    }

    #[test]
    fn the_exposition_parses_with_escaped_labels() {
        let samples = parse_series(TEXT);
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[2].labels["instance"], "a \"q\"");
        assert_eq!(samples[2].value, 5000.0);
        assert_eq!(samples[3].name, "bow_agent_up");
        assert!(samples[3].labels.is_empty());
    }

    #[test]
    fn a_rule_fires_per_matching_series_over_its_threshold() {
        let samples = parse_series(TEXT);
        let fired = user_rules(&[rule(Some(500.0), None, &[("service", "web")])], &samples);
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].service, "web");
        assert_eq!(fired[0].extra["instance"], "web.1");
        assert_eq!(fired[0].wait, Duration::from_secs(60));
        // Without a label filter: web.1 and the api instance.
        assert_eq!(
            user_rules(&[rule(Some(500.0), None, &[])], &samples).len(),
            2
        );
        // Below: web.2 only.
        let low = user_rules(&[rule(None, Some(500.0), &[("service", "web")])], &samples);
        assert_eq!(low.len(), 1);
        assert_eq!(low[0].extra["instance"], "web.2");
        // A series that is not there fires nothing.
        let mut absent = rule(Some(0.0), None, &[]);
        absent.metric = "bow_nothing".to_string();
        assert!(user_rules(&[absent], &samples).is_empty());
    }
}
