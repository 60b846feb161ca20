//! The built-in alert rules (`alerts:` in bow.yaml; docs/alerts.md). Every two seconds the
//! agent looks at what it knows — instance states, the store's releases, the edge's counters,
//! instances' memory, the state dir's disk — and derives the set of conditions that hold, one
//! per rule and service (so a crash loop of any number of restarts is one alert). A condition
//! that appears fires (after its `for` time); one that has been gone for [`RESOLVE_AFTER`]
//! resolves. Each change is an event and a webhook POST in Alertmanager's format (version 4)
//! with a Slack-compatible `text`, retried with backoff by one sender task.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bow_reconcile::EventKind;
use bow_spec::Spec;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::agent::{Agent, now_ms};
use crate::api::{AlertStatus, Health};
use crate::webhook::Url;

/// How often the rules are evaluated.
const EVALUATE_EVERY: Duration = Duration::from_secs(2);
/// How long a condition must have been gone before its alert resolves (a crash loop passes
/// through `starting` between deaths: that is no recovery).
const RESOLVE_AFTER: Duration = Duration::from_secs(15);
/// Waits between delivery attempts of one notification.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(4),
    Duration::from_secs(16),
    Duration::from_secs(60),
];
/// The window and thresholds of the 5xx rule.
const ERROR_WINDOW: Duration = Duration::from_secs(300);
const ERROR_RATIO: f64 = 0.05;
const ERROR_MIN_REQUESTS: u64 = 20;
/// Memory use of the limit, and disk use of the state dir's file system, that alert.
const MEMORY_RATIO: f64 = 0.9;
const DISK_RATIO: f64 = 0.9;

/// One condition that holds: its identity (`alertname`, `service`, `severity`) and text.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    name: &'static str,
    service: String,
    severity: &'static str,
    summary: String,
    /// Held this long before it fires.
    wait: Duration,
}

impl Condition {
    fn key(&self) -> (String, String) {
        (self.name.to_string(), self.service.clone())
    }
}

/// An alert the engine knows: pending (waiting for its `for`), then firing.
#[derive(Debug, Clone)]
struct Tracked {
    condition: Condition,
    since_ms: i64,
    last_seen_ms: i64,
    firing: bool,
}

/// The running engine of one `alerts:` setting.
pub(crate) struct AlertRuntime {
    settings: bow_spec::Alerts,
    evaluator: JoinHandle<()>,
    sender: JoinHandle<()>,
    tracked: Arc<Mutex<BTreeMap<(String, String), Tracked>>>,
    url: Url,
}

/// A notification waiting to be sent.
struct Notification {
    payload: Vec<u8>,
    what: String,
}

impl Agent {
    /// Starts, restarts (settings changed) or stops the alert engine to match `spec`.
    pub(crate) async fn ensure_alerts(self: &Arc<Self>, spec: &Spec) {
        let mut guard = self.alerts.lock().await;
        if guard.as_ref().map(|r| &r.settings) == spec.alerts.as_ref() {
            return;
        }
        if let Some(old) = guard.take() {
            old.evaluator.abort();
            old.sender.abort();
        }
        let Some(settings) = spec.alerts.clone() else {
            return;
        };
        let url = match Url::parse(&settings.webhook) {
            Ok(url) => url,
            Err(reason) => {
                self.emit("", "", EventKind::AlertNotSent, &reason);
                return;
            }
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let tracked = Arc::new(Mutex::new(BTreeMap::new()));
        let sender = tokio::spawn(deliver(Arc::downgrade(self), url.clone(), receiver));
        let evaluator = tokio::spawn(evaluate_forever(
            Arc::downgrade(self),
            settings.clone(),
            tracked.clone(),
            queue,
        ));
        *guard = Some(AlertRuntime {
            settings,
            evaluator,
            sender,
            tracked,
            url,
        });
    }

    /// Stops the engine (`bow down`).
    pub(crate) async fn stop_alerts(&self) {
        if let Some(old) = self.alerts.lock().await.take() {
            old.evaluator.abort();
            old.sender.abort();
        }
    }

    /// The firing alerts (`bow alerts`).
    pub async fn firing_alerts(&self) -> Vec<AlertStatus> {
        let guard = self.alerts.lock().await;
        let Some(runtime) = guard.as_ref() else {
            return Vec::new();
        };
        let tracked = runtime.tracked.lock().unwrap_or_else(|e| e.into_inner());
        tracked
            .values()
            .filter(|t| t.firing)
            .map(|t| AlertStatus {
                name: t.condition.name.to_string(),
                service: t.condition.service.clone(),
                severity: t.condition.severity.to_string(),
                summary: t.condition.summary.clone(),
                since_ms: t.since_ms,
                fingerprint: fingerprint(&labels(&t.condition)),
            })
            .collect()
    }

    /// Sends one test notification now (`bow alerts test`); the receiver and its answer.
    pub async fn send_test_alert(&self) -> Result<(String, u16), String> {
        let url = match self.alerts.lock().await.as_ref() {
            Some(runtime) => runtime.url.clone(),
            None => return Err("the applied bow.yaml has no `alerts:` section".to_string()),
        };
        let condition = Condition {
            name: "BowTestAlert",
            service: String::new(),
            severity: "info",
            summary: "a test alert sent by `bow alerts test`".to_string(),
            wait: Duration::ZERO,
        };
        let now = now_ms();
        let payload = payload(self, "firing", &condition, now, None);
        crate::webhook::post_json(&url, payload)
            .await
            .map(|status| (url.shown(), status))
            .map_err(|reason| format!("{}: {reason}", url.shown()))
    }
}

/// The labels of an alert: its identity.
fn labels(condition: &Condition) -> BTreeMap<&'static str, String> {
    let mut labels = BTreeMap::from([
        ("alertname", condition.name.to_string()),
        ("severity", condition.severity.to_string()),
    ]);
    if !condition.service.is_empty() {
        labels.insert("service", condition.service.clone());
    }
    labels
}

/// 16 hex digits of FNV-1a over the sorted labels, as Alertmanager shows fingerprints.
fn fingerprint(labels: &BTreeMap<&'static str, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in labels {
        for byte in name
            .bytes()
            .chain([0xff])
            .chain(value.bytes())
            .chain([0xff])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn rfc3339(ms: i64) -> String {
    let mut out = Vec::new();
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    bow_edge::push_rfc3339(&mut out, time);
    String::from_utf8(out).unwrap_or_default()
}

/// One notification in Alertmanager's webhook format (version 4), one alert per group, plus
/// a Slack-compatible `text`.
fn payload(
    agent: &Agent,
    status: &str,
    condition: &Condition,
    since_ms: i64,
    ended_ms: Option<i64>,
) -> Vec<u8> {
    let mut labels = labels(condition);
    labels.insert("project", agent.project.clone());
    labels.insert("environment", agent.environment.clone());
    let fingerprint = fingerprint(&labels);
    let annotations = json!({ "summary": condition.summary });
    let group_labels = json!({ "alertname": condition.name, "service": condition.service });
    let marker = if status == "firing" {
        "FIRING"
    } else {
        "RESOLVED"
    };
    let text = format!(
        "[{marker}] {} {}/{}{}: {}",
        condition.name,
        agent.project,
        agent.environment,
        if condition.service.is_empty() {
            String::new()
        } else {
            format!(" {}", condition.service)
        },
        condition.summary
    );
    let body = json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\", service=\"{}\"}}", condition.name, condition.service),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "bow",
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(since_ms),
            "endsAt": ended_ms.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339),
            "generatorURL": "",
            "fingerprint": fingerprint,
        }],
        "text": text,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Sends queued notifications one after another, each retried with backoff.
async fn deliver(
    agent: std::sync::Weak<Agent>,
    url: Url,
    mut queue: mpsc::UnboundedReceiver<Notification>,
) {
    while let Some(notification) = queue.recv().await {
        let mut attempt = 0;
        loop {
            match crate::webhook::post_json(&url, notification.payload.clone()).await {
                Ok(_) => break,
                Err(_) if attempt < RETRY_DELAYS.len() => {
                    tokio::time::sleep(RETRY_DELAYS[attempt]).await;
                    attempt += 1;
                }
                Err(reason) => {
                    if let Some(agent) = agent.upgrade() {
                        agent.emit(
                            "",
                            "",
                            EventKind::AlertNotSent,
                            &format!(
                                "{} to {}: {reason} ({} attempts)",
                                notification.what,
                                url.shown(),
                                attempt + 1
                            ),
                        );
                    }
                    break;
                }
            }
        }
    }
}

/// Per service, `(at, requests, 5xx responses)` over the last [`ERROR_WINDOW`].
type ErrorHistory = BTreeMap<String, VecDeque<(i64, u64, u64)>>;

async fn evaluate_forever(
    agent: std::sync::Weak<Agent>,
    settings: bow_spec::Alerts,
    tracked: Arc<Mutex<BTreeMap<(String, String), Tracked>>>,
    queue: mpsc::UnboundedSender<Notification>,
) {
    let mut history = ErrorHistory::new();
    loop {
        tokio::time::sleep(EVALUATE_EVERY).await;
        let Some(agent) = agent.upgrade() else { return };
        let conditions = {
            let agent = agent.clone();
            let settings = settings.clone();
            let mut moved = std::mem::take(&mut history);
            let (conditions, kept) = tokio::task::spawn_blocking(move || {
                let conditions = conditions(&agent, &settings, &mut moved);
                (conditions, moved)
            })
            .await
            .unwrap_or_default();
            history = kept;
            conditions
        };
        let now = now_ms();
        let changes = step(
            &mut tracked.lock().unwrap_or_else(|e| e.into_inner()),
            conditions,
            now,
        );
        for (status, condition, since, ended) in changes {
            let (kind, verb) = if status == "firing" {
                (EventKind::AlertFiring, "firing")
            } else {
                (EventKind::AlertResolved, "resolved")
            };
            agent.emit(
                &condition.service,
                "",
                kind,
                &format!("{} {verb}: {}", condition.name, condition.summary),
            );
            let _ = queue.send(Notification {
                payload: payload(&agent, status, &condition, since, ended),
                what: format!("{} {verb}", condition.name),
            });
        }
    }
}

/// Moves the tracked alerts on by one evaluation: returns what started firing and what
/// resolved, as `(status, condition, since, ended)`.
fn step(
    tracked: &mut BTreeMap<(String, String), Tracked>,
    conditions: Vec<Condition>,
    now: i64,
) -> Vec<(&'static str, Condition, i64, Option<i64>)> {
    let mut changes = Vec::new();
    for condition in conditions {
        let entry = tracked.entry(condition.key()).or_insert_with(|| Tracked {
            condition: condition.clone(),
            since_ms: now,
            last_seen_ms: now,
            firing: false,
        });
        entry.last_seen_ms = now;
        entry.condition.summary = condition.summary.clone();
        if !entry.firing && now - entry.since_ms >= condition.wait.as_millis() as i64 {
            entry.firing = true;
            changes.push(("firing", entry.condition.clone(), entry.since_ms, None));
        }
    }
    tracked.retain(|_, alert| {
        if alert.last_seen_ms == now {
            return true;
        }
        if !alert.firing {
            return false;
        }
        if now - alert.last_seen_ms < RESOLVE_AFTER.as_millis() as i64 {
            return true;
        }
        changes.push((
            "resolved",
            alert.condition.clone(),
            alert.since_ms,
            Some(now),
        ));
        false
    });
    changes
}

/// What holds now.
fn conditions(
    agent: &Arc<Agent>,
    settings: &bow_spec::Alerts,
    history: &mut ErrorHistory,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let condition = |name, service: &str, severity, summary: String, wait| Condition {
        name,
        service: service.to_string(),
        severity,
        summary,
        wait,
    };
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
    let mut releases: BTreeMap<String, bow_store::ReleaseRow> = BTreeMap::new();
    for release in agent.store().releases(None).unwrap_or_default() {
        let newest = releases
            .get(&release.service)
            .is_none_or(|r| r.number < release.number);
        if newest {
            releases.insert(release.service.clone(), release);
        }
    }
    for (service, release) in &releases {
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
    let edge = agent
        .edge_handle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|edge| edge.metrics());
    if let Some(edge) = edge {
        let now = now_ms();
        for service in &edge.services {
            let samples = history.entry(service.service.clone()).or_default();
            samples.push_back((now, service.requests.total(), service.requests.server_error));
            while samples
                .front()
                .is_some_and(|(at, _, _)| now - at > ERROR_WINDOW.as_millis() as i64)
            {
                samples.pop_front();
            }
            if let (Some(first), Some(last)) = (samples.front(), samples.back()) {
                let requests = last.1.saturating_sub(first.1);
                let errors = last.2.saturating_sub(first.2);
                if requests >= ERROR_MIN_REQUESTS && errors as f64 > ERROR_RATIO * requests as f64 {
                    out.push(condition(
                        "HighErrorRate",
                        &service.service,
                        "critical",
                        format!(
                            "{errors} of {requests} requests answered 5xx in the last {} s",
                            (last.0 - first.0) / 1000
                        ),
                        Duration::ZERO,
                    ));
                }
            }
        }
    }
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

    fn looping(service: &str) -> Condition {
        Condition {
            name: "InstanceCrashLooping",
            service: service.to_string(),
            severity: "critical",
            summary: "web.1 crash-looping".to_string(),
            wait: Duration::ZERO,
        }
    }

    #[test]
    fn a_crash_loop_fires_once_and_resolves_once_after_a_quiet_spell() {
        let mut tracked = BTreeMap::new();
        let mut sent = Vec::new();
        // Looping, briefly starting between deaths, looping again: one alert.
        for (at, holds) in [(0, true), (2_000, false), (4_000, true), (6_000, true)] {
            let conditions = if holds { vec![looping("web")] } else { vec![] };
            sent.extend(step(&mut tracked, conditions, at));
        }
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "firing");
        for at in (8_000..=20_000).step_by(2_000) {
            sent.extend(step(&mut tracked, vec![], at));
        }
        assert_eq!(
            sent.len(),
            1,
            "not resolved before 15 s without the condition"
        );
        sent.extend(step(&mut tracked, vec![], 22_000));
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[1].0, sent[1].3), ("resolved", Some(22_000)));
    }

    #[test]
    fn a_condition_with_a_wait_fires_only_after_it() {
        let mut tracked = BTreeMap::new();
        let down = Condition {
            wait: Duration::from_secs(60),
            name: "ServiceDown",
            ..looping("web")
        };
        assert!(step(&mut tracked, vec![down.clone()], 0).is_empty());
        assert!(step(&mut tracked, vec![down.clone()], 59_000).is_empty());
        assert_eq!(step(&mut tracked, vec![down.clone()], 60_000).len(), 1);
        // A pending one that goes away is forgotten without a notification.
        let mut tracked = BTreeMap::new();
        assert!(step(&mut tracked, vec![down.clone()], 0).is_empty());
        assert!(step(&mut tracked, vec![], 2_000).is_empty());
        assert!(tracked.is_empty());
    }

    #[test]
    fn fingerprints_follow_the_labels() {
        let a = labels(&looping("web"));
        let b = labels(&looping("api"));
        assert_eq!(fingerprint(&a).len(), 16);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
