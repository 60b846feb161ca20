//! Releases and deploys.
//!
//! Every apply that changes a service opens a release (`bow-store`): its definition, what
//! changed, a digest. Each service's starter then converges the running slots on the target
//! release: a first release starts its replicas; a change the instances can take in place
//! (replicas, checks, timeouts) updates them without a restart; anything else is a deploy,
//! rolling (new instance healthy → in the edge → an old one drained and stopped, `max_surge`
//! at a time) or blue-green (the whole new set healthy, one atomic switch of the edge, the old
//! set drained). A new instance that exits, fails its checks or is not healthy within
//! `deploy.timeout` stops the deploy: the old release is restored to full strength before the
//! new instances are drained and removed, the release is recorded as failed and the applied
//! spec goes back to the old definition (a new revision), so a restarted agent does not retry.
//!
//! Instances carry their release number in their handle, so an agent killed mid-deploy finds
//! old and new instances on restart and finishes (or rolls back) the same deploy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bow_plan::ChangeClass;
use bow_spec::{Service, Spec, Strategy};
use bow_store::{ReleaseRow, ReleaseStatus};

use crate::agent::{Agent, Slot, now_ms};
use crate::api::{DeployFailure, DeployReport, Health, Phase, ServiceProgress};
use crate::error::{AgentError, Result};
use crate::supervisor::{self, SlotPlan};

/// How often a deploy looks at its instances.
const POLL: Duration = Duration::from_millis(20);
/// Log lines shown for an instance that failed a deploy.
const LAST_LINES: usize = 10;

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
                    .map(|a| (a.handle.service.clone(), a.handle.release as i64)),
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
            new_progress(&name, number, strategy, now_ms()),
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

/// `initial`, `in-place`, `rolling` or `blue-green`: how `definition` replaces `live`.
fn strategy_of(definition: &Service, live: Option<&ReleaseRow>) -> &'static str {
    let Some(live) = live else {
        return "initial";
    };
    match bow_plan::classify_service_change(&live.definition, definition) {
        Some(ChangeClass::Replace) => match definition.deploy.strategy {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue-green",
        },
        _ => "in-place",
    }
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
    let in_place = strategy == "in-place";
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
        strategy: strategy.to_string(),
        changes,
        digest: digest(definition),
        reason: note.unwrap_or_default(),
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
        DeployReport {
            revision,
            done: services.iter().all(|p| p.phase.finished()),
            services,
        }
    }

    fn set_phase(&self, service: &str, phase: Phase, detail: impl Into<String>) {
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

    fn set_failed(&self, service: &str, failure: DeployFailure) {
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
            "rollback",
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
                new_progress(service, number, strategy, now_ms()),
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

/// The definition and release number a service converges on.
fn target(agent: &Agent, name: &str) -> Option<(Arc<Service>, i64)> {
    let inner = agent.lock();
    let definition = inner.spec.as_ref()?.services.get(name)?.clone();
    let release = inner.services.get(name)?.release;
    Some((Arc::new(definition), release))
}

/// A slot that must be replaced (not updated in place) to run `definition`.
fn is_stale(slot: &Slot, definition: &Service, release: i64) -> bool {
    slot.release != release
        && slot.definition.as_ref() != definition
        && bow_plan::classify_service_change(&slot.definition, definition)
            == Some(ChangeClass::Replace)
}

/// Waits for the service's dependencies, then brings its slots to the target release.
pub(crate) async fn converge(agent: Arc<Agent>, name: String) {
    // Instances found running at start get their slots at once, before any wait: what runs
    // is what the deploy below continues from, and their ids stay visibly taken.
    if let Some((definition, release)) = target(&agent, &name) {
        take_adopted(&agent, &name, &definition, release);
    }
    agent.set_phase(&name, Phase::Waiting, "");
    loop {
        let waiting: Vec<String> = {
            let inner = agent.lock();
            let Some(service) = inner.spec.as_ref().and_then(|s| s.services.get(&name)) else {
                return;
            };
            // A dependency is ready when it is healthy and its own deploy of this apply (if
            // any) has finished: dependencies deploy before dependants.
            service
                .depends_on
                .iter()
                .filter(|d| {
                    !agent.service_healthy(&inner, d)
                        || inner.progress.get(*d).is_some_and(|p| !p.phase.finished())
                })
                .cloned()
                .collect()
        };
        if waiting.is_empty() {
            break;
        }
        agent.set_phase(&name, Phase::Waiting, waiting.join(", "));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some((definition, release)) = target(&agent, &name) else {
        return;
    };
    if definition.python.is_some() {
        agent.set_phase(&name, Phase::Building, "python environment");
        if let Err(reason) = agent.build_venv(&name, &definition).await {
            agent.set_failed(
                &name,
                DeployFailure {
                    reason: format!("python environment: {reason}"),
                    instance: None,
                    last_lines: Vec::new(),
                    serving: None,
                },
            );
            return;
        }
    }
    // Instances whose release differs only in what the agent itself does (checks, timeouts,
    // replicas) take the new definition as they run.
    let stale: Vec<u32> = {
        let mut inner = agent.lock();
        let Some(runtime) = inner.services.get_mut(&name) else {
            return;
        };
        let mut stale = Vec::new();
        for (index, slot) in runtime.slots.iter_mut() {
            if is_stale(slot, &definition, release) {
                stale.push(*index);
            } else if slot.release != release {
                slot.release = release;
                slot.definition = definition.clone();
                slot.status.release = release;
                slot.control.send_modify(|c| c.reconfigure += 1);
            }
        }
        stale
    };
    if stale.is_empty() {
        scale(&agent, &name, &definition, release).await;
        settle(&agent, &name, &definition, release).await;
        return;
    }
    let outcome = match definition.deploy.strategy {
        Strategy::Rolling => rolling(&agent, &name, &definition, release, stale).await,
        Strategy::BlueGreen => blue_green(&agent, &name, &definition, release, stale).await,
    };
    match outcome {
        Ok(()) => went_live(&agent, &name, release),
        Err(failure) => roll_back(&agent, &name, release, failure).await,
    }
}

/// Hands instances found running at start to slots, each with the release it runs.
fn take_adopted(agent: &Arc<Agent>, name: &str, definition: &Arc<Service>, release: i64) {
    let releases: BTreeMap<i64, Arc<Service>> = agent
        .store()
        .releases(Some(name))
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.number, Arc::new(r.definition)))
        .collect();
    let mut inner = agent.lock();
    let ids: Vec<String> = inner
        .adopted
        .iter()
        .filter(|(_, a)| a.handle.service == name)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        let Some(adopted) = inner.adopted.remove(&id) else {
            continue;
        };
        let index = adopted.handle.index;
        // From a bow without releases: it runs what is applied.
        let (slot_release, slot_definition) = match releases.get(&(adopted.handle.release as i64)) {
            Some(found) => (adopted.handle.release as i64, found.clone()),
            None => (release, definition.clone()),
        };
        let Some(runtime) = inner.services.get_mut(name) else {
            return;
        };
        if runtime.slots.contains_key(&index) || runtime.stopping.contains(&index) {
            // Its id is taken by a slot already: it cannot be adopted, and must not run on
            // unseen.
            let agent = agent.clone();
            tokio::spawn(async move {
                crate::adopt::stop_orphan(
                    &agent,
                    &adopted.handle,
                    "its id is taken by another instance",
                )
                .await;
            });
            continue;
        }
        let slot = supervisor::spawn(
            agent.clone(),
            name,
            index,
            Some(adopted),
            SlotPlan {
                release: slot_release,
                definition: slot_definition,
                routable: true,
            },
        );
        runtime.slots.insert(index, slot);
    }
}

/// Starts `count` new slots; returns their indexes (the lowest free ones).
fn start_slots(agent: &Arc<Agent>, name: &str, count: usize, plan: &SlotPlan) -> Vec<u32> {
    let mut inner = agent.lock();
    let adopted: std::collections::BTreeSet<String> = inner.adopted.keys().cloned().collect();
    let Some(runtime) = inner.services.get_mut(name) else {
        return Vec::new();
    };
    let mut orphans = Vec::new();
    let mut started = Vec::new();
    for _ in 0..count {
        // Never an id whose handle is live: a process there that no slot holds is an orphan,
        // stopped (its id stays taken until it is gone) while the deploy goes on with the next id.
        let index = free_index(
            |i| runtime.slots.contains_key(&i) || runtime.stopping.contains(&i),
            |i| {
                let id = format!("{name}.{i}");
                if adopted.contains(&id) {
                    return true;
                }
                let Some(handle) = crate::adopt::live_handle(agent, &id) else {
                    return false;
                };
                orphans.push((i, handle));
                true
            },
        );
        for (orphan_index, handle) in orphans.drain(..) {
            runtime.stopping.insert(orphan_index);
            let agent = agent.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                crate::adopt::stop_orphan(
                    &agent,
                    &handle,
                    "found where a new instance was to start",
                )
                .await;
                if let Some(runtime) = agent.lock().services.get_mut(&name) {
                    runtime.stopping.remove(&orphan_index);
                }
            });
        }
        let slot = supervisor::spawn(
            agent.clone(),
            name,
            index,
            None,
            SlotPlan {
                release: plan.release,
                definition: plan.definition.clone(),
                routable: plan.routable,
            },
        );
        runtime.slots.insert(index, slot);
        started.push(index);
    }
    started
}

/// The lowest instance number that no slot uses (`used`) and no process holds (`held`, asked
/// only of numbers no slot uses).
fn free_index(used: impl Fn(u32) -> bool, mut held: impl FnMut(u32) -> bool) -> u32 {
    (1..u32::MAX)
        .find(|i| !used(*i) && !held(*i))
        .unwrap_or(u32::MAX)
}

/// Takes slots out of the service and stops them (drained first); waits until they are gone.
async fn stop(agent: &Arc<Agent>, name: &str, indexes: &[u32]) {
    let slots: BTreeMap<u32, Slot> = {
        let mut inner = agent.lock();
        let Some(runtime) = inner.services.get_mut(name) else {
            return;
        };
        let slots: BTreeMap<u32, Slot> = indexes
            .iter()
            .filter_map(|i| runtime.slots.remove(i).map(|s| (*i, s)))
            .collect();
        // Their ids stay taken from this moment until they are gone.
        runtime.stopping.extend(slots.keys().copied());
        slots
    };
    agent.refresh_routes();
    // A task of its own: a deploy interrupted by a newer apply (its task aborted) still
    // finishes the stop and frees the ids.
    let stopping = {
        let agent = agent.clone();
        let name = name.to_string();
        tokio::spawn(async move { agent.stop_slots(&name, slots).await })
    };
    let _ = stopping.await;
}

/// Makes the number of current slots match `replicas`: new ones start, extra ones (newest
/// first) stop.
async fn scale(agent: &Arc<Agent>, name: &str, definition: &Arc<Service>, release: i64) {
    let replicas = definition.replicas as usize;
    let current: Vec<u32> = agent
        .lock()
        .services
        .get(name)
        .map(|r| r.slots.keys().copied().collect())
        .unwrap_or_default();
    if current.len() < replicas {
        let plan = SlotPlan {
            release,
            definition: definition.clone(),
            routable: true,
        };
        let started = start_slots(agent, name, replicas - current.len(), &plan);
        agent.set_phase(name, Phase::Starting, ids(name, &started));
    } else if current.len() > replicas {
        let extra: Vec<u32> = current
            .iter()
            .rev()
            .take(current.len() - replicas)
            .copied()
            .collect();
        agent.set_phase(name, Phase::Draining, ids(name, &extra));
        let agent = agent.clone();
        let service = name.to_string();
        tokio::spawn(async move { stop(&agent, &service, &extra).await });
    }
}

/// After a first release or an in-place change: waits until every instance is healthy, then
/// records the release live. A first release has nothing to roll back to: when it is not
/// healthy within its deploy timeout it is reported failed and its instances keep being
/// retried; it goes live when they recover.
async fn settle(agent: &Arc<Agent>, name: &str, definition: &Arc<Service>, release: i64) {
    let deadline = tokio::time::Instant::now() + definition.deploy.timeout.as_std();
    let mut reported = false;
    loop {
        let (healthy, worst) = {
            let inner = agent.lock();
            let Some(runtime) = inner.services.get(name) else {
                return;
            };
            let healthy = runtime
                .slots
                .values()
                .filter(|s| s.status.health == Health::Healthy)
                .count();
            let worst = runtime
                .slots
                .values()
                .filter(|s| s.status.health != Health::Healthy)
                .max_by_key(|s| s.status.health)
                .map(|s| (s.status.id.clone(), describe_failure(&s.status)));
            (healthy, worst)
        };
        if healthy >= definition.replicas as usize {
            went_live(agent, name, release);
            return;
        }
        agent.set_phase(
            name,
            Phase::Health,
            format!("{healthy} of {} healthy", definition.replicas),
        );
        if !reported && tokio::time::Instant::now() >= deadline {
            reported = true;
            let (instance, reason) = worst.unwrap_or_default();
            let reason = format!(
                "not healthy within {}: {instance} {reason}",
                definition.deploy.timeout
            );
            let _ = agent.store().set_release_status(
                name,
                release,
                ReleaseStatus::Failed,
                Some(&reason),
                now_ms(),
            );
            agent.emit(name, &instance, "deploy-failed", &reason);
            let last_lines = last_lines(agent, &instance);
            agent.set_failed(
                name,
                DeployFailure {
                    reason,
                    instance: Some(instance),
                    last_lines,
                    serving: None,
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records the release live (the one before it superseded) and the deploy done.
fn went_live(agent: &Arc<Agent>, name: &str, release: i64) {
    let at = now_ms();
    let rows = agent.store().releases(Some(name)).unwrap_or_default();
    let Some(row) = rows.iter().find(|r| r.number == release) else {
        return;
    };
    if row.status != ReleaseStatus::Live {
        let store = agent.store();
        let _ = store.set_release_status(name, release, ReleaseStatus::Live, None, at);
        for older in rows
            .iter()
            .filter(|r| r.number != release && r.status == ReleaseStatus::Live)
        {
            let _ =
                store.set_release_status(name, older.number, ReleaseStatus::Superseded, None, at);
        }
        drop(store);
        let took = at - row.created_at_ms;
        agent.emit(
            name,
            "",
            "deployed",
            &format!("release {release} live ({}, {} ms)", row.strategy, took),
        );
    }
    agent.set_phase(name, Phase::Done, format!("release {release} live"));
}

/// Why an instance is not healthy, in a few words.
fn describe_failure(status: &crate::api::InstanceStatus) -> String {
    if let Some(error) = &status.last_error {
        return error.clone();
    }
    if let Some(exit) = &status.last_exit {
        return format!("exited: {exit}");
    }
    status.health.label().to_string()
}

/// The last lines an instance wrote, for a failed deploy's report.
fn last_lines(agent: &Agent, instance: &str) -> Vec<String> {
    bow_driver::logs::read_instance_log(
        &crate::layout::log_dir(&agent.state_dir),
        instance,
        bow_driver::logs::LogQuery {
            since: None,
            tail: Some(LAST_LINES),
        },
    )
    .map(|lines| lines.into_iter().map(|l| l.text).collect())
    .unwrap_or_default()
}

fn ids(name: &str, indexes: &[u32]) -> String {
    indexes
        .iter()
        .map(|i| format!("{name}.{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a deploy stopped: which new instance failed and how.
struct Failure {
    reason: String,
    instance: Option<String>,
}

/// Waits until every slot in `indexes` is healthy; fails at the first one that exits, cannot
/// start, fails its checks, or is not healthy by the deadline.
async fn wait_healthy(
    agent: &Agent,
    name: &str,
    indexes: &[u32],
    timeout: Duration,
) -> std::result::Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Restarts counted before the wait (an adopted instance carries its own) are not failures.
    let restarts_before: BTreeMap<u32, u32> = {
        let inner = agent.lock();
        indexes
            .iter()
            .filter_map(|i| Some((*i, inner.slot(name, *i)?.status.restarts)))
            .collect()
    };
    loop {
        let mut pending = None;
        {
            let inner = agent.lock();
            for index in indexes {
                let id = format!("{name}.{index}");
                let Some(slot) = inner.slot(name, *index) else {
                    return Err(Failure {
                        reason: format!("{id} was removed"),
                        instance: None,
                    });
                };
                let status = &slot.status;
                if status.health == Health::Healthy {
                    continue;
                }
                let failed = status.restarts > restarts_before.get(index).copied().unwrap_or(0)
                    || status.last_exit.is_some()
                    || matches!(
                        status.health,
                        Health::Failed
                            | Health::Unhealthy
                            | Health::Backoff
                            | Health::CrashLooping
                            | Health::Stopped
                    );
                if failed {
                    let what = if status.last_exit.is_some() {
                        "exited before it was healthy"
                    } else if status.health == Health::Failed {
                        "could not start"
                    } else {
                        "failed its health check"
                    };
                    return Err(Failure {
                        reason: format!("{id} {what}: {}", describe_failure(status)),
                        instance: Some(id),
                    });
                }
                pending.get_or_insert(id);
            }
        }
        let Some(pending) = pending else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure {
                reason: format!(
                    "{pending} was not healthy within {}",
                    bow_spec::units::Duration(timeout)
                ),
                instance: Some(pending),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Rolling: `max_surge` new instances at a time; each batch healthy (and so in the edge)
/// before as many old ones are drained and stopped.
async fn rolling(
    agent: &Arc<Agent>,
    name: &str,
    definition: &Arc<Service>,
    release: i64,
    stale: Vec<u32>,
) -> std::result::Result<(), Failure> {
    let replicas = definition.replicas as usize;
    let surge = definition.deploy.max_surge.max(1) as usize;
    let timeout = definition.deploy.timeout.as_std();
    let mut old = stale;
    // New instances already running (an interrupted deploy's, adopted) count once healthy.
    let present: Vec<u32> = agent
        .lock()
        .services
        .get(name)
        .map(|r| {
            r.slots
                .keys()
                .filter(|i| !old.contains(i))
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let mut ready = present.len();
    let plan = SlotPlan {
        release,
        definition: definition.clone(),
        routable: true,
    };
    agent.emit(
        name,
        "",
        "deploying",
        &format!(
            "release {release} (rolling, {replicas} instances, {} to replace)",
            old.len()
        ),
    );
    if !present.is_empty() {
        agent.set_phase(name, Phase::Health, ids(name, &present));
        wait_healthy(agent, name, &present, timeout).await?;
    }
    while ready < replicas || !old.is_empty() {
        let batch = surge.min(replicas.saturating_sub(ready));
        if batch > 0 {
            let started = start_slots(agent, name, batch, &plan);
            agent.set_phase(name, Phase::Starting, ids(name, &started));
            agent.set_phase(name, Phase::Health, ids(name, &started));
            wait_healthy(agent, name, &started, timeout).await?;
            ready += batch;
        }
        let retire = if ready >= replicas {
            old.len()
        } else {
            batch.min(old.len())
        };
        let retiring: Vec<u32> = old.drain(..retire).collect();
        if !retiring.is_empty() {
            agent.set_phase(name, Phase::Draining, ids(name, &retiring));
            stop(agent, name, &retiring).await;
        }
    }
    // More new instances than replicas (an interrupted deploy to another replica count).
    let extra: Vec<u32> = present
        .iter()
        .rev()
        .take(ready.saturating_sub(replicas))
        .copied()
        .collect();
    if !extra.is_empty() {
        agent.set_phase(name, Phase::Draining, ids(name, &extra));
        stop(agent, name, &extra).await;
    }
    Ok(())
}

/// Blue-green: the whole new set healthy while held out of the edge, one atomic switch, then
/// the old set drained and stopped.
async fn blue_green(
    agent: &Arc<Agent>,
    name: &str,
    definition: &Arc<Service>,
    release: i64,
    stale: Vec<u32>,
) -> std::result::Result<(), Failure> {
    let replicas = definition.replicas as usize;
    agent.emit(
        name,
        "",
        "deploying",
        &format!("release {release} (blue-green, {replicas} instances)"),
    );
    // New instances already running (an interrupted deploy) wait for the switch too.
    let current: Vec<u32> = {
        let mut inner = agent.lock();
        let Some(runtime) = inner.services.get_mut(name) else {
            return Ok(());
        };
        let mut current = Vec::new();
        for (index, slot) in runtime.slots.iter_mut() {
            if !stale.contains(index) {
                slot.routable = false;
                current.push(*index);
            }
        }
        current
    };
    agent.refresh_routes();
    let plan = SlotPlan {
        release,
        definition: definition.clone(),
        routable: false,
    };
    let mut green = current;
    let missing = replicas.saturating_sub(green.len());
    let started = start_slots(agent, name, missing, &plan);
    agent.set_phase(name, Phase::Starting, ids(name, &started));
    green.extend(started);
    agent.set_phase(name, Phase::Health, ids(name, &green));
    wait_healthy(agent, name, &green, definition.deploy.timeout.as_std()).await?;
    agent.set_phase(name, Phase::Switching, "");
    {
        let mut inner = agent.lock();
        if let Some(runtime) = inner.services.get_mut(name) {
            for (index, slot) in runtime.slots.iter_mut() {
                slot.routable = green.contains(index);
            }
        }
    }
    agent.refresh_routes();
    agent.emit(
        name,
        "",
        "switched",
        &format!("edge: {} → {}", ids(name, &stale), ids(name, &green)),
    );
    agent.set_phase(name, Phase::Draining, ids(name, &stale));
    stop(agent, name, &stale).await;
    Ok(())
}

/// A deploy failed: the old release goes back to full strength, the new instances are
/// drained and removed, the release is recorded failed and the applied spec goes back to
/// the old definition.
async fn roll_back(agent: &Arc<Agent>, name: &str, release: i64, failure: Failure) {
    agent.set_phase(name, Phase::RollingBack, failure.reason.clone());
    let last_lines = failure
        .instance
        .as_deref()
        .map(|id| last_lines(agent, id))
        .unwrap_or_default();
    agent.emit(
        name,
        failure.instance.as_deref().unwrap_or(""),
        "deploy-failed",
        &format!("release {release}: {}", failure.reason),
    );
    let rows = agent.store().releases(Some(name)).unwrap_or_default();
    let live = rows
        .iter()
        .rev()
        .find(|r| r.status == ReleaseStatus::Live && r.number != release);
    // What the old release runs: its recorded definition, else what an old instance runs.
    let old = {
        let inner = agent.lock();
        let running_old = inner.services.get(name).and_then(|r| {
            r.slots
                .values()
                .filter(|s| s.release != release)
                .max_by_key(|s| s.release)
                .map(|s| (s.release, s.definition.clone()))
        });
        live.map(|r| (r.number, Arc::new(r.definition.clone())))
            .or(running_old)
    };
    let Some((old_release, old_definition)) = old else {
        agent.set_failed(
            name,
            DeployFailure {
                reason: failure.reason,
                instance: failure.instance,
                last_lines,
                serving: None,
            },
        );
        return;
    };
    let (new, remaining_old): (Vec<u32>, usize) = {
        let inner = agent.lock();
        let slots = inner.services.get(name).map(|r| &r.slots);
        let new = slots
            .map(|s| {
                s.iter()
                    .filter(|(_, slot)| slot.release == release)
                    .map(|(i, _)| *i)
                    .collect()
            })
            .unwrap_or_default();
        let old = slots.map_or(0, |s| s.values().filter(|s| s.release != release).count());
        (new, old)
    };
    // New instances that never became healthy serve nothing: out at once.
    let (serving, failing): (Vec<u32>, Vec<u32>) = new.into_iter().partition(|index| {
        agent
            .lock()
            .slot(name, *index)
            .is_some_and(|s| s.status.health == Health::Healthy && s.routable)
    });
    stop(agent, name, &failing).await;
    let restore = (old_definition.replicas as usize).saturating_sub(remaining_old);
    if restore > 0 {
        let plan = SlotPlan {
            release: old_release,
            definition: old_definition.clone(),
            routable: true,
        };
        let started = start_slots(agent, name, restore, &plan);
        agent.set_phase(
            name,
            Phase::RollingBack,
            format!("restoring {}", ids(name, &started)),
        );
        if let Err(again) = wait_healthy(
            agent,
            name,
            &started,
            old_definition.deploy.timeout.as_std(),
        )
        .await
        {
            agent.emit(name, "", "rollback-degraded", &again.reason);
        }
    }
    // Every old instance serves again before the new ones leave the edge.
    {
        let mut inner = agent.lock();
        if let Some(runtime) = inner.services.get_mut(name) {
            for slot in runtime.slots.values_mut() {
                if slot.release != release {
                    slot.routable = true;
                }
            }
        }
    }
    agent.refresh_routes();
    stop(agent, name, &serving).await;
    let reason = failure.reason.clone();
    let _ = agent.store().set_release_status(
        name,
        release,
        ReleaseStatus::Failed,
        Some(&reason),
        now_ms(),
    );
    // What is applied is the old definition again: a restarted agent must not retry.
    let applying = agent.applying_lock();
    let spec = {
        let mut inner = agent.lock();
        if let Some(runtime) = inner.services.get_mut(name) {
            runtime.release = old_release;
        }
        inner.spec.as_mut().map(|spec| {
            spec.services
                .insert(name.to_string(), old_definition.as_ref().clone());
            spec.clone()
        })
    };
    if let Some(spec) = spec {
        match agent.store().record_revision(&spec, now_ms()) {
            Ok(revision) => agent.lock().revision = revision,
            Err(error) => eprintln!("bow agent: cannot record the rolled-back spec: {error}"),
        }
    }
    drop(applying);
    agent.emit(
        name,
        "",
        "rolled-back",
        &format!("release {old_release} serves again; release {release} failed"),
    );
    agent.set_failed(
        name,
        DeployFailure {
            reason,
            instance: failure.instance,
            last_lines,
            serving: Some(old_release),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_instance_takes_the_lowest_number_nothing_holds() {
        let used = |i: u32| [1, 2].contains(&i);
        assert_eq!(free_index(used, |_| false), 3);
        // web.3 is held by a process no slot has (an orphan): the next number, and every
        // number a slot uses is never asked about.
        let mut asked = Vec::new();
        let index = free_index(used, |i| {
            asked.push(i);
            i == 3
        });
        assert_eq!(index, 4);
        assert_eq!(asked, [3, 4]);
    }
}
