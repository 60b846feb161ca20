//! Releases: every apply that changes a service opens one (`bow-store`: its definition,
//! what changed, a digest, the strategy its deploy uses), the progress of each deploy as the
//! API shows it, and `bow rollback` (an earlier release's definition deployed again as a new
//! release). Carrying a release out is the deploy engine's (`deploy.rs`).

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::sync::Arc;

use bow_reconcile::DeployStrategy;
use bow_spec::{Service, Spec};
use bow_store::{ReleaseRow, ReleaseStatus};

use crate::agent::{Agent, now_ms};
use crate::api::{DeployFailure, DeployReport, Health, Phase, ServiceProgress};
use crate::deploy::converge;
use crate::error::{AgentError, Result};

/// Opens a release for every service of `spec` whose definition differs from its current
/// (live or deploying) release, and points each service at its target release. Returns the
/// services that have work to do; their progress starts over.
pub(crate) fn open_releases(agent: &Arc<Agent>, spec: &Spec, revision: i64) -> Result<Vec<String>> {
    let releases = agent.store().releases(None)?;
    let mut by_service: BTreeMap<&str, Vec<&ReleaseRow>> = BTreeMap::new();
    for release in &releases {
        by_service
            .entry(release.service.as_str())
            .or_default()
            .push(release);
    }
    // Releases with a healthy instance serve, even when their deploy has not been recorded
    // as finished yet; so do those of instances found running at start (what runs counts,
    // not what the store last recorded).
    let serving: std::collections::BTreeSet<(String, i64)> = {
        let inner = agent.lock();
        inner
            .services
            .iter()
            .flat_map(|(name, runtime)| {
                runtime
                    .slots
                    .values()
                    .filter(|s| s.status.health == Health::Healthy)
                    .map(|s| (name.clone(), s.release))
            })
            .chain(
                inner
                    .adopted
                    .values()
                    .map(|a| (a.handle.service().to_string(), a.handle.release() as i64)),
            )
            .collect()
    };
    let mut targets = Vec::new();
    let mut progress = BTreeMap::new();
    for name in bow_spec::dependency_order(spec) {
        let definition = &spec.services[&name];
        let rows = by_service.get(name.as_str()).cloned().unwrap_or_default();
        let current = rows
            .iter()
            .rev()
            .find(|r| matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
        if let Some(current) = current
            && &current.definition == definition
        {
            targets.push((name.clone(), current.number));
            if current.status == ReleaseStatus::Deploying {
                progress.insert(
                    name.clone(),
                    new_progress(&name, current.number, &current.strategy, now_ms()),
                );
            }
            continue;
        }
        // A deploy still under way whose instances already serve counts as the base.
        let live = rows
            .iter()
            .rev()
            .find(|r| {
                r.status == ReleaseStatus::Live
                    || (r.status == ReleaseStatus::Deploying
                        && serving.contains(&(name.clone(), r.number)))
            })
            .copied();
        let number = record_release(agent, &name, definition, live, revision, None)?;
        for interrupted in rows.iter().filter(|r| r.status == ReleaseStatus::Deploying) {
            let served = serving.contains(&(name.clone(), interrupted.number));
            agent.store().set_release_status(
                &name,
                interrupted.number,
                if served {
                    ReleaseStatus::Superseded
                } else {
                    ReleaseStatus::Failed
                },
                Some(&format!("interrupted by release {number}")),
                now_ms(),
            )?;
        }
        let strategy = strategy_of(definition, live);
        targets.push((name.clone(), number));
        progress.insert(
            name.clone(),
            new_progress(&name, number, strategy.label(), now_ms()),
        );
    }
    let changed: Vec<String> = progress.keys().cloned().collect();
    let mut inner = agent.lock();
    for (name, number) in targets {
        inner.services.entry(name).or_default().release = number;
    }
    if !progress.is_empty() {
        inner.progress = progress;
        inner.progress_revision = revision;
    }
    Ok(changed)
}

/// How `definition` replaces `live`: `bow_plan`'s change class, through the core's typed
/// strategy (one source of truth with `bow plan`).
fn strategy_of(definition: &Service, live: Option<&ReleaseRow>) -> DeployStrategy {
    DeployStrategy::of(definition, live.map(|l| &l.definition))
}

/// Records a new release of `name`; an in-place one is live at once.
fn record_release(
    agent: &Agent,
    name: &str,
    definition: &Service,
    live: Option<&ReleaseRow>,
    revision: i64,
    note: Option<String>,
) -> Result<i64> {
    let strategy = strategy_of(definition, live);
    let changes = match live {
        None => "created".to_string(),
        Some(live) => {
            let mut fields: Vec<String> =
                bow_plan::service_fields(&format!("services.{name}"), &live.definition, definition)
                    .into_iter()
                    .map(|f| f.path.split('.').skip(2).collect::<Vec<_>>().join("."))
                    .collect();
            fields.dedup();
            fields.join(", ")
        }
    };
    let in_place = strategy == DeployStrategy::InPlace;
    let at = now_ms();
    let store = agent.store();
    let number = store.create_release(&ReleaseRow {
        service: name.to_string(),
        number: 0,
        revision,
        created_at_ms: at,
        finished_at_ms: in_place.then_some(at),
        status: if in_place {
            ReleaseStatus::Live
        } else {
            ReleaseStatus::Deploying
        },
        strategy: strategy.label().to_string(),
        changes,
        digest: digest(definition),
        reason: note.unwrap_or_default(),
        source: String::new(),
        definition: definition.clone(),
    })?;
    if in_place && let Some(live) = live {
        store.set_release_status(name, live.number, ReleaseStatus::Superseded, None, at)?;
    }
    Ok(number)
}

/// SHA-256 of a definition (which holds secret references, never values), 12 hex digits.
fn digest(definition: &Service) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(definition).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_progress(service: &str, release: i64, strategy: &str, at: i64) -> ServiceProgress {
    ServiceProgress {
        service: service.to_string(),
        release,
        strategy: strategy.to_string(),
        phase: Phase::Waiting,
        detail: String::new(),
        started_at_ms: at,
        finished_at_ms: None,
        failure: None,
    }
}

impl Agent {
    /// How the deploys of `revision` are going.
    pub fn progress(&self, revision: i64) -> DeployReport {
        let inner = self.lock();
        if inner.progress_revision != revision {
            return DeployReport {
                revision,
                services: Vec::new(),
                done: true,
            };
        }
        let services: Vec<ServiceProgress> = inner.progress.values().cloned().collect();
        // Done once the edge process serves what the deploys left, too.
        DeployReport {
            revision,
            done: services.iter().all(|p| p.phase.finished()) && self.plane.synced(),
            services,
        }
    }

    pub(crate) fn set_phase(&self, service: &str, phase: Phase, detail: impl Into<String>) {
        let mut inner = self.lock();
        if let Some(progress) = inner.progress.get_mut(service)
            && !progress.phase.finished()
        {
            progress.phase = phase;
            progress.detail = detail.into();
            if phase.finished() {
                progress.finished_at_ms = Some(now_ms());
            }
        }
    }

    pub(crate) fn set_failed(&self, service: &str, failure: DeployFailure) {
        let mut inner = self.lock();
        if let Some(progress) = inner.progress.get_mut(service) {
            progress.phase = Phase::Failed;
            progress.detail = failure.reason.clone();
            progress.failure = Some(failure);
            progress.finished_at_ms = Some(now_ms());
        }
    }

    /// `bow rollback SERVICE [--to N]`: deploys release `to` (or the last good one before the
    /// live release) again, as a new release. Returns the revision it records.
    pub fn rollback(self: &Arc<Self>, service: &str, to: Option<i64>) -> Result<(i64, i64)> {
        let _applying = self.applying_lock();
        let releases = self.store().releases(Some(service))?;
        let spec = self
            .lock()
            .spec
            .clone()
            .ok_or_else(|| AgentError::Other("nothing is applied yet".into()))?;
        if !spec.services.contains_key(service) {
            return Err(AgentError::Other(format!(
                "no service `{service}`; services: {}",
                spec.services.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let live = releases
            .iter()
            .rev()
            .find(|r| matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
        let target = match to {
            Some(number) => releases
                .iter()
                .find(|r| r.number == number)
                .ok_or_else(|| {
                    AgentError::Other(format!(
                        "{service} has no release {number}; `bow history {service}` lists them"
                    ))
                })?,
            None => releases
                .iter()
                .rev()
                .filter(|r| live.is_none_or(|l| r.number < l.number))
                .find(|r| {
                    r.status == ReleaseStatus::Superseded
                        && live.is_none_or(|l| l.definition != r.definition)
                })
                .ok_or_else(|| {
                    AgentError::Other(format!(
                        "{service} has no earlier good release to roll back to; `bow history {service}` lists its releases"
                    ))
                })?,
        };
        if live.is_some_and(|l| l.definition == target.definition) {
            return Err(AgentError::Other(format!(
                "{service} already runs what release {} ran",
                target.number
            )));
        }
        let mut spec = spec;
        spec.services
            .insert(service.to_string(), target.definition.clone());
        let revision = self.store().record_revision(&spec, now_ms())?;
        let live_row = releases
            .iter()
            .rev()
            .find(|r| r.status == ReleaseStatus::Live);
        let number = record_release(
            self,
            service,
            &target.definition,
            live_row,
            revision,
            Some(format!("rollback to release {}", target.number)),
        )?;
        for interrupted in releases
            .iter()
            .filter(|r| r.status == ReleaseStatus::Deploying)
        {
            self.store().set_release_status(
                service,
                interrupted.number,
                ReleaseStatus::Failed,
                Some(&format!("interrupted by release {number}")),
                now_ms(),
            )?;
        }
        self.emit(
            service,
            "",
            EventKind::Rollback,
            &format!(
                "release {number}: back to what release {} ran",
                target.number
            ),
        );
        let strategy = strategy_of(&target.definition, live_row);
        {
            let mut inner = self.lock();
            inner.revision = revision;
            inner.spec = Some(spec);
            inner.progress = BTreeMap::from([(
                service.to_string(),
                new_progress(service, number, strategy.label(), now_ms()),
            )]);
            inner.progress_revision = revision;
            let runtime = inner.services.entry(service.to_string()).or_default();
            runtime.release = number;
            if let Some(starter) = runtime.starter.take() {
                starter.abort();
            }
            runtime.starter = Some(tokio::spawn(converge(self.clone(), service.to_string())));
        }
        Ok((revision, number))
    }
}
