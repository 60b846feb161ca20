//! The core's state and its one entry point, [`Core::step`]: an observation in, effects out.
//! Here: dispatching observations, what the driver lists at start (every instance adopted or
//! stopped), apply, this host's assignments, endpoints. Releases and rollback are in
//! `releases.rs`, restart and down in `requests.rs`, each service's convergence in
//! `deploy.rs` and `rollout.rs`, each instance's life in `slot.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use bow_spec::{Service, Spec};

use crate::deploy::Converge;
use crate::effect::{Effect, EventKind, StopReason, Timer};
use crate::model::{
    AssignmentSource, Desired, Endpoint, InstanceKey, InstanceView, Listed, Millis, Phase,
    ReleaseRecord, ServiceProgress,
};
use crate::observe::Observation;
use crate::slot::{Out, Retiring, Run, Slot};

/// A request the core turns down, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// One service on this host: its slots and what they converge on.
pub(crate) struct ServiceState {
    pub slots: BTreeMap<u32, Slot>,
    /// The target release and its definition, from this host's assignments.
    pub release: i64,
    pub definition: Arc<Service>,
    /// How many instances this host should run.
    pub wanted: usize,
    pub converge: Converge,
    pub restart: Option<RestartRun>,
}

/// `bow restart SERVICE`, one instance at a time.
pub(crate) struct RestartRun {
    pub queue: VecDeque<u32>,
    /// The instance restarting now, the request it answers, and its wait's timer token.
    pub current: Option<(u32, u64, u64)>,
    pub expired: bool,
    pub done: Vec<String>,
}

/// `bow down`: services stop one after the other, dependants first.
pub(crate) struct Down {
    pub queue: VecDeque<String>,
    pub current: Option<String>,
    pub stopped: Vec<String>,
}

/// The reconcile core of one host: what should run, what runs, and the deploys between.
pub struct Core {
    pub(crate) host: String,
    source: Box<dyn AssignmentSource>,
    pub(crate) out: Out,
    pub(crate) revision: i64,
    pub(crate) spec: Option<Spec>,
    pub(crate) targets: BTreeMap<String, i64>,
    pub(crate) releases: BTreeMap<String, Vec<ReleaseRecord>>,
    pub(crate) services: BTreeMap<String, ServiceState>,
    /// Instances a deploy took away, until they are gone (their indexes stay taken).
    pub(crate) retiring: BTreeMap<InstanceKey, Retiring>,
    pub(crate) progress: BTreeMap<String, ServiceProgress>,
    pub(crate) progress_revision: i64,
    published: BTreeMap<String, Vec<Endpoint>>,
    pub(crate) shutting_down: bool,
    pub(crate) down: Option<Down>,
}

impl Core {
    /// The core of `host`, running what `source` assigns to it.
    pub fn new(host: &str, source: Box<dyn AssignmentSource>) -> Core {
        Core {
            host: host.to_string(),
            source,
            out: Out::default(),
            revision: 0,
            spec: None,
            targets: BTreeMap::new(),
            releases: BTreeMap::new(),
            services: BTreeMap::new(),
            retiring: BTreeMap::new(),
            progress: BTreeMap::new(),
            progress_revision: 0,
            published: BTreeMap::new(),
            shutting_down: false,
            down: None,
        }
    }

    /// Takes one observation made at `now` and returns what to do. Only requests (apply,
    /// rollback, restart) can be refused; a refused request changes nothing.
    pub fn step(&mut self, now: Millis, observation: Observation) -> Result<Vec<Effect>, Refused> {
        self.out.now = now;
        self.out.effects.clear();
        self.observe(observation)?;
        self.drive_all();
        self.publish_endpoints();
        Ok(std::mem::take(&mut self.out.effects))
    }

    pub(crate) fn observe(&mut self, observation: Observation) -> Result<(), Refused> {
        let request = matches!(
            observation,
            Observation::Apply { .. }
                | Observation::Rollback { .. }
                | Observation::Restart { .. }
                | Observation::Down
        );
        if request && self.shutting_down {
            return Err(Refused("the agent is shutting down".into()));
        }
        match observation {
            Observation::Down => self.start_down(),
            Observation::Restored {
                applied,
                releases,
                running,
            } => self.restore(applied, releases, running),
            Observation::Apply { spec } => self.apply(*spec),
            Observation::Rollback { service, to } => self.rollback(&service, to)?,
            Observation::Restart { service } => self.restart(&service)?,
            Observation::Started { key, process } => {
                let launching = self
                    .services
                    .get(&key.service)
                    .and_then(|s| s.slots.get(&key.index))
                    .is_some_and(|slot| slot.run == Run::Launching);
                if launching {
                    self.with_slot(&key, |slot, out| slot.on_started(process, out));
                } else {
                    // A start nobody waits for any more: stop it, never leave it running.
                    let retiring = self
                        .retiring
                        .entry(key.clone())
                        .or_insert_with(|| Retiring::unwanted(true));
                    if retiring.awaiting_start {
                        retiring.awaiting_start = false;
                        let effect = retiring.stop(&key, &process);
                        self.out.effects.push(effect);
                    }
                }
            }
            Observation::StartFailed { key, reason } => {
                if self.retiring.get(&key).is_some_and(|r| r.awaiting_start) {
                    self.retiring.remove(&key);
                } else {
                    self.with_slot(&key, |slot, out| slot.on_start_failed(reason, out));
                }
            }
            Observation::Exited { key, handle, exit } => {
                self.with_slot(&key, |slot, out| slot.on_exited(&handle, exit, out));
            }
            Observation::Healthy {
                key,
                handle,
                message,
            } => {
                self.with_slot(&key, |slot, out| slot.on_healthy(&handle, message, out));
            }
            // Decisions wait for `Unhealthy`; one failed check changes nothing.
            Observation::Failing { .. } => {}
            Observation::Unhealthy {
                key,
                handle,
                reason,
            } => {
                self.with_slot(&key, |slot, out| slot.on_unhealthy(&handle, reason, out));
            }
            Observation::Found { listed } => self.found(listed),
            Observation::StopFinished { key, outcome } => {
                if let Some(retiring) = self.retiring.remove(&key) {
                    self.out.emit(
                        &key.service,
                        &key.to_string(),
                        EventKind::Stopped,
                        format!("{}: {outcome}", retiring.reason.label()),
                    );
                    if retiring.reason == StopReason::Orphan {
                        self.with_slot(&key, |slot, out| slot.relaunch(out));
                    }
                } else {
                    self.with_slot(&key, |slot, out| slot.on_stop_finished(&outcome, out));
                }
            }
            Observation::TimerFired(timer) => self.timer_fired(timer),
            Observation::Prepared { service, detail } => self.prepared(&service, Ok(detail)),
            Observation::PrepareFailed { service, reason } => self.prepared(&service, Err(reason)),
        }
        Ok(())
    }

    pub(crate) fn timer_fired(&mut self, timer: Timer) {
        match timer {
            Timer::Backoff { key, token } => {
                self.with_slot(&key, |slot, out| slot.on_backoff_over(token, out));
            }
            Timer::UpLongEnough { key, token } => {
                self.with_slot(&key, |slot, out| slot.on_up_long_enough(token, out));
            }
            Timer::Deadline { service, token } => {
                if let Some(state) = self.services.get_mut(&service) {
                    state.converge.deadline_passed(token);
                }
            }
            Timer::RestartWait { service, token } => {
                if let Some(run) = self
                    .services
                    .get_mut(&service)
                    .and_then(|s| s.restart.as_mut())
                    && run.current.is_some_and(|(_, _, t)| t == token)
                {
                    run.expired = true;
                }
            }
        }
    }

    /// Runs `change` on the slot of `key`, if there is one.
    pub(crate) fn with_slot(
        &mut self,
        key: &InstanceKey,
        change: impl FnOnce(&mut Slot, &mut Out),
    ) {
        if let Some(slot) = self
            .services
            .get_mut(&key.service)
            .and_then(|s| s.slots.get_mut(&key.index))
        {
            change(slot, &mut self.out);
        }
    }

    /// The agent started: releases as recorded, and every instance the driver lists is
    /// adopted into its service or stopped, whatever its release.
    pub(crate) fn restore(
        &mut self,
        applied: Option<(i64, Box<Spec>)>,
        releases: Vec<ReleaseRecord>,
        running: Vec<Listed>,
    ) {
        for release in releases {
            self.releases
                .entry(release.service.clone())
                .or_default()
                .push(release);
        }
        for list in self.releases.values_mut() {
            list.sort_by_key(|r| r.number);
        }
        let Some((revision, spec)) = applied else {
            for listed in running {
                self.stop_unwanted(listed);
            }
            return;
        };
        self.revision = revision;
        self.open_releases(&spec, revision);
        self.spec = Some((*spec).clone());
        self.assign();
        for listed in running {
            let Some(state) = self.services.get_mut(&listed.key.service) else {
                self.stop_unwanted(listed);
                continue;
            };
            let known = listed.release.and_then(|number| {
                self.releases
                    .get(&listed.key.service)?
                    .iter()
                    .find(|r| r.number == number)
                    .map(|r| (number, Arc::new(r.definition.clone())))
            });
            // From a bow without releases: it runs what is applied.
            let (release, definition) =
                known.unwrap_or_else(|| (state.release, state.definition.clone()));
            let index = listed.key.index;
            let slot = Slot::adopt(listed, release, definition, &mut self.out);
            state.slots.insert(index, slot);
        }
        self.reconcile();
    }

    /// An instance running that the core may not know of: nothing to do when it is the
    /// slot's own process or already being stopped; stopped when another instance holds (or
    /// is starting at) its id; else adopted into its service, or stopped when no service
    /// wants it.
    fn found(&mut self, listed: Listed) {
        let key = listed.key.clone();
        if self.retiring.contains_key(&key) {
            return;
        }
        let Some(state) = self.services.get_mut(&key.service) else {
            self.stop_unwanted(listed);
            return;
        };
        let Some(slot) = state.slots.get(&key.index) else {
            let known = listed.release.and_then(|number| {
                self.releases
                    .get(&key.service)?
                    .iter()
                    .find(|r| r.number == number)
                    .map(|r| (number, Arc::new(r.definition.clone())))
            });
            let (release, definition) =
                known.unwrap_or_else(|| (state.release, state.definition.clone()));
            let slot = Slot::adopt(listed, release, definition, &mut self.out);
            state.slots.insert(key.index, slot);
            return;
        };
        if slot
            .process()
            .is_some_and(|p| p.handle == listed.process.handle)
        {
            return;
        }
        self.out.emit(
            &key.service,
            &key.to_string(),
            EventKind::Stopping,
            format!(
                "{} (release {}) runs untracked at this id; stopping it",
                listed.process.process,
                listed
                    .release
                    .map_or_else(|| "unknown".to_string(), |r| r.to_string())
            ),
        );
        let retiring = Retiring::untracked(StopReason::Orphan, false);
        self.out.effects.push(retiring.stop(&key, &listed.process));
        self.retiring.insert(key, retiring);
    }

    pub(crate) fn stop_unwanted(&mut self, listed: Listed) {
        let key = listed.key;
        self.out.emit(
            &key.service,
            &key.to_string(),
            EventKind::Stopping,
            "no longer in the applied file".to_string(),
        );
        let retiring = Retiring::unwanted(false);
        self.out.effects.push(retiring.stop(&key, &listed.process));
        self.retiring.insert(key, retiring);
    }

    /// Records `spec` as applied (unless it already is) and converges on it.
    pub(crate) fn apply(&mut self, spec: Spec) {
        if self.spec.as_ref() == Some(&spec) && self.revision > 0 {
            return;
        }
        self.revision += 1;
        let revision = self.revision;
        self.out.effects.push(Effect::RecordRevision {
            revision,
            spec: Box::new(spec.clone()),
        });
        self.out.emit(
            "",
            "",
            EventKind::Applied,
            format!("revision {revision}: {} services", spec.services.len()),
        );
        self.open_releases(&spec, revision);
        self.spec = Some(spec);
        self.assign();
        self.reconcile();
    }

    /// Each service's target, definition and count from this host's assignments.
    pub(crate) fn assign(&mut self) {
        let Some(spec) = &self.spec else {
            return;
        };
        let assignments = self.source.assignments(Desired {
            spec,
            targets: &self.targets,
        });
        for (name, definition) in &spec.services {
            let mine: Vec<_> = assignments
                .iter()
                .filter(|a| &a.service == name && a.host == self.host)
                .collect();
            let release = mine
                .first()
                .map_or(self.targets.get(name).copied().unwrap_or(0), |a| a.release);
            let definition = mine
                .first()
                .map_or_else(|| Arc::new(definition.clone()), |a| a.definition.clone());
            let state = self
                .services
                .entry(name.clone())
                .or_insert_with(|| ServiceState {
                    slots: BTreeMap::new(),
                    release,
                    definition: definition.clone(),
                    wanted: 0,
                    converge: Converge::Idle,
                    restart: None,
                });
            state.release = release;
            state.definition = definition;
            state.wanted = mine.len();
        }
    }

    /// Removed services stop; every other service converges again (waiting for its
    /// dependencies first).
    pub(crate) fn reconcile(&mut self) {
        let Some(spec) = self.spec.clone() else {
            return;
        };
        let removed: Vec<String> = self
            .services
            .keys()
            .filter(|name| !spec.services.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(state) = self.services.remove(&name) {
                for slot in state.slots.into_values() {
                    self.retire_slot(slot);
                }
            }
        }
        for name in bow_spec::dependency_order(&spec) {
            if let Some(state) = self.services.get_mut(&name) {
                state.converge = Converge::Waiting;
            }
            self.set_phase(&name, Phase::Waiting, "");
        }
    }

    pub(crate) fn retire_slot(&mut self, slot: Slot) {
        let key = slot.key.clone();
        if let Some(retiring) = slot.retire(&mut self.out) {
            self.retiring.insert(key, retiring);
        }
    }

    /// Emits the endpoints of every service whose healthy, routable set changed, ahead of
    /// the step's other effects.
    pub(crate) fn publish_endpoints(&mut self) {
        let mut now: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for (name, state) in &self.services {
            now.insert(name.clone(), endpoints_of(state));
        }
        for name in self.published.keys() {
            now.entry(name.clone()).or_default();
        }
        let mut changed = Vec::new();
        for (name, endpoints) in now {
            if self.published.get(&name).is_none_or(|e| *e != endpoints)
                && (!endpoints.is_empty() || self.published.contains_key(&name))
            {
                changed.push(Effect::SetEndpoints {
                    service: name.clone(),
                    endpoints: endpoints.clone(),
                });
            }
            if endpoints.is_empty() && !self.services.contains_key(&name) {
                self.published.remove(&name);
            } else {
                self.published.insert(name, endpoints);
            }
        }
        // First: an instance this step stops has left the edge before its drain begins.
        self.out.effects.splice(0..0, changed);
    }

    /// The last applied revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// What is applied now (a failed deploy's revert included).
    pub fn spec(&self) -> Option<&Spec> {
        self.spec.as_ref()
    }

    /// The release `service` converges on.
    pub fn target(&self, service: &str) -> Option<i64> {
        self.services.get(service).map(|s| s.release)
    }

    /// The healthy, routable endpoints of every service on this host (an `EndpointSource`).
    pub fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>> {
        self.services
            .iter()
            .map(|(name, state)| (name.clone(), endpoints_of(state)))
            .collect()
    }

    /// Every instance of a service, for `bow status`.
    pub fn instances(&self, service: &str) -> Vec<InstanceView> {
        self.services
            .get(service)
            .map(|s| s.slots.values().map(Slot::view).collect())
            .unwrap_or_default()
    }

    /// The deploys of `revision`, and whether all are done (`None`: another revision's).
    pub fn deploys(&self, revision: i64) -> Option<(Vec<ServiceProgress>, bool)> {
        if self.progress_revision != revision {
            return None;
        }
        let services: Vec<ServiceProgress> = self.progress.values().cloned().collect();
        let done = services.iter().all(|p| p.phase.finished());
        Some((services, done))
    }

    /// Instance ids being stopped (their indexes stay taken until they are gone).
    pub fn retiring(&self) -> Vec<String> {
        self.retiring.keys().map(ToString::to_string).collect()
    }
}

fn endpoints_of(state: &ServiceState) -> Vec<Endpoint> {
    state
        .slots
        .values()
        .filter(|slot| slot.routable && slot.health == crate::Health::Healthy)
        .filter_map(|slot| match &slot.run {
            Run::Running { process, .. } => Some(Endpoint {
                instance: slot.key.to_string(),
                address: process.address.clone(),
                port: process.port,
            }),
            _ => None,
        })
        .collect()
}

pub(crate) fn no_service(spec: &Spec, service: &str) -> Refused {
    Refused(format!(
        "no service `{service}`; services: {}",
        spec.services.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// `web.1, web.2`.
pub(crate) fn ids(name: &str, indexes: &[u32]) -> String {
    indexes
        .iter()
        .map(|i| format!("{name}.{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
